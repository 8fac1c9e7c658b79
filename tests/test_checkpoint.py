"""The user's own network: checkpoints read safely, refused in one line, compressed end to end."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from torch import nn

from conftest import TINY, run_cli
from ecomp.nets.checkpoint import CheckpointError, read_checkpoint
from ecomp.nets.mlp import MLP, layers_of
from ecomp.nets.network import save_network
from ecomp.nets.structure import accuracy


def lenet(widths=(784, 300, 100, 10), flatten=True, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i in range(len(widths) - 1):
        mods.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def same(a, b) -> bool:
    a, b = getattr(a, "layers", a), getattr(b, "layers", b)        # a network or its (weight, bias) pairs
    return len(a) == len(b) and all(torch.equal(w1, w2) and torch.equal(b1, b2) for (w1, b1), (w2, b2) in zip(a, b))


@pytest.mark.parametrize("flatten", [True, False])
def test_a_sequential_state_dict_is_read_with_its_architecture(tmp_path, flatten):
    model = lenet((20, 12, 5, 3), flatten=flatten)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert same(read_checkpoint(tmp_path / "m.pt")[0], layers_of(model))


def test_linear_without_bias_and_the_projects_own_files_are_read(tmp_path):
    model = nn.Sequential(nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 2))
    torch.save(model.state_dict(), tmp_path / "nobias.pt")
    layers = read_checkpoint(tmp_path / "nobias.pt")[0].layers
    assert torch.equal(layers[0][1], torch.zeros(6)) and torch.equal(layers[0][0], model[0].weight.detach())
    own = layers_of(lenet((8, 7, 3, 2)))
    save_network(MLP(own), tmp_path / "best_network.pt")
    assert same(read_checkpoint(tmp_path / "best_network.pt")[0], own)


def test_a_torch_export_program_is_read(tmp_path):
    model = lenet((20, 12, 5, 3))
    program = torch.export.export(model, (torch.rand(2, 20),))
    torch.export.save(program, tmp_path / "m.pt2")
    assert same(read_checkpoint(tmp_path / "m.pt2")[0], layers_of(model))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    torch.export.save(torch.export.export(conv, (torch.rand(1, 1, 6, 6),)), tmp_path / "conv.pt2")
    with pytest.raises(CheckpointError, match="computes 'conv"):
        read_checkpoint(tmp_path / "conv.pt2")[0]


def _bad_files(tmp_path):
    """(file, expected part of the one-line message) for each kind of unusable checkpoint."""
    cases = []
    p = tmp_path / "whole.pt"
    torch.save(lenet((8, 4, 2)), p)                            # a pickled module: needs code
    cases.append((p, "pickled Python objects"))
    p = tmp_path / "conv.pt"
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).state_dict(), p)
    cases.append((p, "layer 0 has a 4-D weight (4, 1, 3, 3) (a Conv?)"))
    p = tmp_path / "bn.pt"
    torch.save(nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).state_dict(), p)
    cases.append((p, "(a BatchNorm?)"))
    p = tmp_path / "nan.pt"
    sd = lenet((8, 4, 2)).state_dict()
    sd["1.weight"][0, 0] = float("nan")
    torch.save(sd, p)
    cases.append((p, "layer 1 has non-finite weights"))
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"not a checkpoint at all")
    cases.append((p, "not a readable PyTorch file"))
    p = tmp_path / "single.pt"
    torch.save(nn.Sequential(nn.Linear(8, 2)).state_dict(), p)
    cases.append((p, "a single linear layer"))
    cases.append((tmp_path / "missing.pt", "no such file"))
    return cases


def test_unusable_checkpoints_are_refused_in_one_line_naming_the_file(tmp_path):
    for path, needle in _bad_files(tmp_path):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        msg = str(err.value)
        assert msg.startswith(f"parent.path='{path}'") and needle in msg and "\n" not in msg, msg


def test_a_network_that_does_not_fit_the_data_is_refused_before_any_run(tmp_path, make_cfg):
    from ecomp.app.spec import build

    for widths, needle in (((64, 32, 10), "the network takes 64 inputs but data=fashion_mnist has 784 features"),
                           ((784, 32, 7), "the network has 7 outputs but data=fashion_mnist has 10 classes")):
        torch.save(lenet(widths).state_dict(), tmp_path / "m.pt")
        with pytest.raises(CheckpointError, match=needle):
            build(make_cfg("parent=checkpoint", f"parent.path={tmp_path / 'm.pt'}"))
    # through run.py, as a user meets it: one line, exit 2, and the store holds no run
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3)).state_dict(), tmp_path / "conv.pt")
    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *TINY, "parent=checkpoint", f"parent.path={tmp_path / 'conv.pt'}",
                   f"tracking.uri=sqlite:///{db}", f"hydra.run.dir={tmp_path / 'out'}", timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "(a Conv?)" in lines[0], proc.stderr
    tables = sqlite3.connect(db).execute("select name from sqlite_master where name='runs'").fetchall() \
        if db.exists() else []
    assert not tables or sqlite3.connect(db).execute("select count(*) from runs").fetchone()[0] == 0


@pytest.mark.slow
def test_users_lenet_300_100_is_compressed_by_ecomp_and_a_baseline(tmp_path, make_cfg):
    """A 784-300-100-10 parent trained here on FashionMNIST, saved as a plain nn.Sequential state
    dict, compressed into a real MLflow store by EComp (parameters as the fitness's size) and
    by l1_finetune."""
    import mlflow

    from ecomp.app.parents import load_split
    from ecomp.app.spec import data_spec

    from ecomp.app.pipeline import run_experiment
    from ecomp.nets.training import fit

    cfg0 = make_cfg()
    train, test = load_split(data_spec(cfg0), train=True), load_split(data_spec(cfg0), train=False)
    model = fit(lenet(), train.x[:6000], train.y[:6000], 1, 1e-3, 100, torch.Generator().manual_seed(0))
    path = tmp_path / "lenet.pt"
    torch.save(model.state_dict(), path)
    expected = accuracy(MLP(layers_of(model)), test.x[:1000], test.y[:1000])
    assert data_spec(cfg0).root.exists()

    ecomp = run_experiment(make_cfg("parent=checkpoint", f"parent.path={path}", "fitness.compression=params"))
    base = run_experiment(make_cfg("parent=checkpoint", f"parent.path={path}", "method=l1_finetune",
                                   "method.keep=0.5"))
    client = mlflow.MlflowClient(make_cfg().tracking.uri)
    for result in (ecomp, base):
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["parent_test_accuracy"] == pytest.approx(expected)
        assert run.data.params["parent.hidden"] == "[300, 100]" and run.data.tags["parent_sha256"]
        for k in ("best_compression", "best_params_ratio"):
            assert 0 < run.data.metrics[k] <= 1
    assert client.get_run(base.run_id).data.metrics["best_compression"] == pytest.approx((150 + 50) / 400)
    assert client.get_run(ecomp.run_id).data.tags["variant"] == "121 [compression=params]"
    # the returned network keeps the parent's unequal proportions: every layer pruned alike at first
    art = client.download_artifacts(ecomp.run_id, "best_network.pt", str(tmp_path / "art"))
    widths = [w.shape[0] for w, _ in read_checkpoint(art)[0].layers[:-1]]
    assert widths[0] > widths[1] and len(widths) == 2


@pytest.mark.slow
def test_a_three_hidden_layer_parent_on_digits_runs_every_method(tmp_path, parent_cache):
    """data=digits (scikit-learn's bundled images: real and offline) with a tool-trained
    64-32-24-16-10 parent, through run.py as a user types it: EComp and l1_prune."""
    import mlflow

    db = tmp_path / "mlflow.db"
    common = ["data=digits", "parent.hidden=[32,24,16]", "parent.epochs=20", "population.size=10",
              "progress=false", f"parent.cache_dir={parent_cache}", f"tracking.uri=sqlite:///{db}",
              f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = run_cli("run.py", "-m", *common, "method=ecomp,l1_prune", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    everything = client.search_runs([client.get_experiment_by_name("ecomp").experiment_id])
    runs = [r for r in everything if "ecomp.kind" not in r.data.tags]      # the sweep's parent aside
    assert sorted(r.data.tags["method"] for r in runs) == ["ecomp", "l1_prune"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["data.name"] == "digits"
        assert r.data.params["parent.input_dim"] == "64" and r.data.params["parent.hidden"] == "[32, 24, 16]"
        assert r.data.metrics["parent_test_accuracy"] > 0.5        # a real parent on real digits
        assert 0 < r.data.metrics["best_test_accuracy"] <= 1
