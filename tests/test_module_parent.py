"""``parent=module``: the user's own nn.Module class and weights, built at the entry point, exported and
read through the same safe graph reader as a .pt2; every bad class, weights file or graph refused in
one line naming its key before any run. The classes are torchvision's and one the test writes as a
user would (a module file on PYTHONPATH); weights and data are made by the test."""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import textwrap

import numpy as np
import pytest
import torch
import torchvision

from conftest import run_cli
from ecomp.app.caches import Caches
from ecomp.app.parents import prepare_parent
from ecomp.app.spec import build
from ecomp.errors import ConfigError
from ecomp.nets.resnet import ResNet

SIDE, CLASSES = 16, 3

USER_NET = textwrap.dedent('''
    """A user's small CIFAR-style ResNet, written without EComp."""
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else None)

        def forward(self, x):
            h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(h + (x if self.down is None else self.down(x)))


    class SmallResNet(nn.Module):
        def __init__(self, num_classes=10, width=4):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.layers = nn.Sequential(Block(width, width, 1), Block(width, 2 * width, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))
''')


def images(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` colour images whose class is a bright band of rows, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    y[:CLASSES] = np.arange(CLASSES)
    x = (rng.random((n, 3, SIDE, SIDE)) * 60).astype(np.uint8)
    for c in range(CLASSES):
        x[y == c, :, 5 * c:5 * (c + 1), :] += 180
    return x, y


@pytest.fixture
def data(tmp_path) -> str:
    x, y = images()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return str(tmp_path / "data.npz")


def resnet18(seed: int = 0, classes: int = CLASSES) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=classes)
    with torch.no_grad():                                   # BatchNorm statistics far from the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def save(state: dict, path) -> str:
    torch.save(state, path)
    return str(path)


R18 = ["parent=module", "parent.model._target_=torchvision.models.resnet18", f"parent.model.num_classes={CLASSES}"]


def tensors(data: str) -> list[str]:
    return ["data=tensors", f"data.path={data}", "data.train_size=200", "data.test_size=60",
            "similarity.perplexity=10"]


def test_torchvisions_resnet18_is_the_parent_with_its_modules_logits_and_its_weights_in_the_hash(
        tmp_path, make_cfg, data):
    model = resnet18()
    weights = save(model.state_dict(), tmp_path / "r18.pt")
    spec = build(make_cfg(*R18, f"parent.weights={weights}", *tensors(data)))
    plan = spec.parent.recipe.arch
    assert (plan.stem_kernel, plan.stem_pool, plan.blocks, plan.in_shape) == (7, 3, (2, 2, 2, 2), (3, SIDE, SIDE))
    assert spec.parent.sha256 == hashlib.sha256((tmp_path / "r18.pt").read_bytes()).hexdigest()
    assert spec.parent.path is None and spec.config["parent"]["model"]["_target_"] == "torchvision.models.resnet18"
    _, net = prepare_parent(spec.parent, spec.data, Caches())
    assert isinstance(net, ResNet)
    x = torch.rand(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (net.run(x.flatten(1))[0] - model(x)).abs().max() < 1e-4
    # other weights, or another model config, are another run
    other = save(resnet18(seed=1).state_dict(), tmp_path / "r18b.pt")
    assert build(make_cfg(*R18, f"parent.weights={other}", *tensors(data))).config_hash != spec.config_hash
    changed = build(make_cfg(*R18, "parent.model.zero_init_residual=true", f"parent.weights={weights}", *tensors(data)))
    assert changed.config_hash != spec.config_hash


def refused(make_cfg, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        build(make_cfg(*overrides))
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_bad_classes_weights_and_graphs_are_refused_in_one_line_naming_the_key(tmp_path, make_cfg, data):
    good = save(resnet18().state_dict(), tmp_path / "r18.pt")
    state = resnet18().state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    keys = save(state, tmp_path / "keys.pt")
    ten = save(resnet18(classes=10).state_dict(), tmp_path / "ten.pt")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"fc.weight": Payload()}))
    empty = save({}, tmp_path / "empty.pt")
    linear = save(torch.nn.Linear(5, 3).state_dict(), tmp_path / "linear.pt")
    t = tensors(data)
    cases = [
        (["parent=module", f"parent.weights={good}"], "parent.model._target_=None: the import path"),
        ([*R18], "parent.weights=None: the state dict"),
        (["parent=module", "parent.model._target_=torchvision.models.resnet99", f"parent.weights={good}"],
         "parent.model._target_='torchvision.models.resnet99': cannot be imported (module 'torchvision.models' "
         "has no 'resnet99')"),
        (["parent=module", "parent.model._target_=nosuchpackage.Net", f"parent.weights={good}"],
         "parent.model._target_='nosuchpackage.Net': cannot be imported (no module named 'nosuchpackage')"),
        (["parent=module", "parent.model._target_=collections.OrderedDict", f"parent.weights={good}"],
         "parent.model._target_='collections.OrderedDict': made a OrderedDict, not a torch.nn.Module"),
        (["parent=module", "parent.model._target_=torchvision.models.resnet18", "parent.model.num_clases=3",
          f"parent.weights={good}"], "parent.model: torchvision.models.resnet18(num_clases=3) failed: "),
        ([*R18, f"parent.weights={tmp_path / 'none.pt'}"], f"parent.weights='{tmp_path / 'none.pt'}': no such file"),
        ([*R18, f"parent.weights={keys}"], "does not fit parent.model torchvision.models.resnet18: 1 missing keys "
                                           "(fc.bias); 1 unexpected keys (extra.weight)"),
        ([*R18, f"parent.weights={ten}"], "2 shapes that differ (fc.weight (10, 512) (the model's (3, 512)), fc.bias (10,)"),
        ([*R18, f"parent.weights={evil}"], f"parent.weights='{evil}': the file holds pickled Python objects"),
        ([*R18, f"parent.weights={good}", "parent.path=x.pt"], "parent.path='x.pt': null with parent=module"),
        (["parent=module", "parent.model._target_=torch.nn.Sigmoid", f"parent.weights={empty}"],
         "parent.model=torch.nn.Sigmoid: the program computes 'sigmoid'"),
        (["parent=module", "parent.model._target_=torch.nn.Linear", "parent.model.in_features=5",
          "parent.model.out_features=3", f"parent.weights={linear}"],
         f"parent.model: torch.nn.Linear cannot be exported by torch.export on a 3x{SIDE}x{SIDE} image of the data"),
    ]
    for overrides, needle in cases:
        msg = refused(make_cfg, *overrides, *t)
        assert needle in msg, (needle, msg)
    assert not marker.exists()


def test_run_py_refuses_a_module_parent_in_one_line_before_any_run(tmp_path, data):
    db = tmp_path / "store" / "mlflow.db"
    proc = run_cli("run.py", *R18, f"parent.weights={tmp_path / 'none.pt'}", *tensors(data),
                   f"tracking.uri=sqlite:///{db}", "progress=false", f"hydra.run.dir={tmp_path / 'out'}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "parent.weights=" in lines[0], proc.stderr[-2000:]
    if db.exists():
        con = sqlite3.connect(db)
        if con.execute("select name from sqlite_master where name='runs'").fetchall():
            assert con.execute("select count(*) from runs").fetchone()[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("which", ["user's small resnet", "torchvision resnet18"])
def test_a_tiny_run_compresses_the_users_module_end_to_end(tmp_path, data, which):
    import mlflow

    (tmp_path / "usernet.py").write_text(USER_NET)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)}
    if which == "torchvision resnet18":
        model, args = resnet18(), R18
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("usernet", tmp_path / "usernet.py")
        usernet = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(usernet)
        torch.manual_seed(0)
        model = usernet.SmallResNet(num_classes=CLASSES)
        args = ["parent=module", "parent.model._target_=usernet.SmallResNet", f"parent.model.num_classes={CLASSES}"]
    weights = save(model.state_dict(), tmp_path / "w.pt")
    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *args, f"parent.weights={weights}", *tensors(data), "population.size=4",
                   "similarity.features=pooled", f"tracking.uri=sqlite:///{db}", "progress=false",
                   f"hydra.run.dir={tmp_path / 'out'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("ecomp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["parent_sha256"] == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()
    assert run.data.params["parent.kind"] == "resnet" and run.data.params["parent.model._target_"] == args[1].split("=")[1]
    assert 0 < run.data.metrics["best_macs_ratio"] <= 1
    from ecomp.nets.user_data import UserData, describe

    test = describe(UserData("tensors", data)).read(tmp_path, False, False)       # the run's test images
    with torch.no_grad():
        hits = int((model.eval()(test.x[:60].view(-1, 3, SIDE, SIDE)).argmax(1) == test.y[:60]).sum())
    assert run.data.metrics["parent_test_accuracy"] == pytest.approx(hits / 60, abs=1e-9)    # the user's weights
    local = client.download_artifacts(run.info.run_id, "best_network.pt", str(tmp_path / "dl"))
    assert os.path.getsize(local) > 0
