"""A user's residual network as a ``.pt2``: rebuilt from the program's graph (never executed, nothing
unpickled) into a ResNet with the module's logits and torch's MAC count; everything the ResNet kind
cannot hold is refused in one line. Every program here is exported by the test."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest
import torch
import torchvision
from torch import nn

from conftest import TINY, run_cli
from ecomp.errors import CheckpointError
from ecomp.nets import resnet
from ecomp.nets.checkpoint import read_checkpoint
from ecomp.nets.resnet import ResNet, cifar_resnet
from ecomp.nets.sizes import counted_macs


class Payload:
    """Unpickling this object creates ``marker``: proof that the file ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def random_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine terms far from the identity; evaluation mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 2.8 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def cifar8(shape=(3, 16, 16)) -> nn.Module:
    torch.manual_seed(0)
    return random_batchnorm(cifar_resnet(shape, 10, depth=8, widths=(4, 8, 16)).build(batchnorm=True))


def pt2_bytes(model: nn.Module, shape, decompose: bool = False) -> bytes:
    program = torch.export.export(model.eval(), (torch.zeros(*shape),))
    buf = io.BytesIO()
    torch.export.save(program.run_decompositions() if decompose else program, buf)
    return buf.getvalue()


def export(model: nn.Module, path, shape=(1, 3, 16, 16), decompose: bool = False):
    path.write_bytes(pt2_bytes(model, shape, decompose))
    return path


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"parent.path='{path}'") and "\n" not in msg, msg
    return msg


def assert_same_logits(net: ResNet, model: nn.Module, shape) -> None:
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.eval()(x)
    got = net.run(x.flatten(1))[0]
    assert got.shape == want.shape and (got - want).abs().max() < 1e-4, (got - want).abs().max()


@pytest.mark.parametrize("decompose", [False, True])
def test_a_cifar_resnet_reads_as_its_plan_with_the_modules_logits_and_macs(tmp_path, decompose):
    model = cifar8()
    net, sha = read_checkpoint(export(model, tmp_path / "r8.pt2", decompose=decompose))
    assert isinstance(net, ResNet) and len(sha) == 64
    assert net.plan == cifar_resnet((3, 16, 16), 10, depth=8, widths=(4, 8, 16))
    assert_same_logits(net, model, (3, 16, 16))
    folded = resnet.fold(model)                       # the tool's own folding gives the same layers
    assert all(torch.allclose(w, wf, atol=1e-5) and torch.allclose(b, bf, atol=1e-5)
               for (w, b), (wf, bf) in zip(net.layers, folded))
    assert net.size("macs") == counted_macs(net)


def test_torchvisions_resnet18_reads_with_its_stem_pooling_and_stages(tmp_path):
    torch.manual_seed(0)
    model = random_batchnorm(torchvision.models.resnet18(num_classes=10))
    net = read_checkpoint(export(model, tmp_path / "r18.pt2", (1, 3, 32, 32)))[0]
    p = net.plan
    assert (p.stem_kernel, p.stem_stride, p.stem_padding, p.stem_pool) == (7, 2, 3, 3)
    assert (p.blocks, p.strides, p.projections) == ((2, 2, 2, 2), (1, 2, 2, 2), (False, True, True, True))
    assert p.widths == (64, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512)
    assert_same_logits(net, model, (3, 32, 32))
    assert net.size("macs") == counted_macs(net)


def test_the_tools_own_folded_resnet_on_flat_images_reads_back(tmp_path):
    net = resnet.ResPlan((1, 12, 12), 3, (3, 2, 4, 4), (1, 1), (1, 2), (False, True)).net(
        resnet.fold(random_batchnorm(resnet.ResPlan((1, 12, 12), 3, (3, 2, 4, 4), (1, 1), (1, 2), (False, True))
                                     .build(batchnorm=True))))
    module = net.to_module()                          # convolutions with biases, no BatchNorm; flat input
    back = read_checkpoint(export(module, tmp_path / "own.pt2", (1, 144)))[0]
    assert back.plan == net.plan
    assert all(torch.allclose(w, w2) and torch.allclose(b, b2) for (w, b), (w2, b2) in zip(back.layers, net.layers))


# ---- nothing in the archive runs -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet_pt2() -> bytes:
    return pt2_bytes(cifar8(), (1, 3, 16, 16))


def with_payload(good: bytes, path, member: str, marker) -> None:
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, pickle.dumps(Payload(str(marker))) if info.filename == member else src.read(info))


def test_a_pickle_in_any_member_of_a_residual_pt2_is_refused_and_never_runs(tmp_path, resnet_pt2):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(str(marker))))             # the payload is real
    assert marker.exists()
    marker.unlink()
    members = [i.filename for i in zipfile.ZipFile(io.BytesIO(resnet_pt2)).infolist() if not i.is_dir()]
    assert any("/models/" in m for m in members) and any("/data/weights/" in m for m in members)
    for i, member in enumerate(members):
        path = tmp_path / f"evil{i}.pt2"
        with_payload(resnet_pt2, path, member, marker)
        refusal(path)
        assert not marker.exists(), member
    path = tmp_path / "evil_inputs.pt2"
    member = next(m for m in members if m.endswith("data/sample_inputs/model.pt"))
    with_payload(resnet_pt2, path, member, marker)
    assert f"member {member!r} holds pickled objects that are not plain tensors" in refusal(path)
    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *TINY, "parent=checkpoint", f"parent.path={path}", f"tracking.uri=sqlite:///{db}",
                   f"hydra.run.dir={tmp_path / 'out'}", timeout=180)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "not plain tensors" in lines[0], proc.stderr
    assert not marker.exists()


# ---- what a ResNet cannot hold ---------------------------------------------------------------------------------

class Gated(nn.Module):
    """A ResNet-8 whose scores go through a sigmoid."""

    def __init__(self):
        super().__init__()
        self.net = cifar8()

    def forward(self, x):
        return torch.sigmoid(self.net(x))


class Concat(nn.Module):
    """A residual block whose stem doubles its channels by concatenation."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv1, self.conv2 = nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.cat([h, h], 1)
        h = torch.relu(self.conv2(torch.relu(self.conv1(h))) + h)
        return self.fc(h.mean((2, 3)))


class OddBlock(nn.Module):
    """A stem and one block of ``kind``: ``one conv`` (a single convolution added to its input),
    ``5x5`` (two 5x5 convolutions), ``preact`` (BatchNorm after the addition)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        k = 5 if kind == "5x5" else 3
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(4, 4, k, padding=k // 2), nn.Conv2d(4, 4, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        if self.kind == "one conv":
            h = torch.relu(self.conv1(h) + h)
        elif self.kind == "preact":
            h = torch.relu(self.bn(self.conv2(torch.relu(self.conv1(h))) + h))
        else:
            h = torch.relu(self.conv2(torch.relu(self.conv1(h))) + h)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("case", ["sigmoid", "cat", "one conv", "5x5", "preact", "stem pool"])
def test_residual_programs_the_resnet_kind_cannot_hold_are_refused_in_one_line(tmp_path, case):
    torch.manual_seed(0)
    if case == "stem pool":
        model = torchvision.models.resnet18(num_classes=3)
        model.maxpool = nn.MaxPool2d(2)
    else:
        model = {"sigmoid": Gated, "cat": Concat}.get(case, lambda: OddBlock(case))()
    shape = (1, 3, 32, 32) if case == "stem pool" else (1, 3, 16, 16)
    msg = refusal(export(model.eval(), tmp_path / "m.pt2", shape))
    needle = {"sigmoid": "computes 'sigmoid'", "cat": "computes 'cat'",
              "one conv": "adds conv3x3(relu(conv3x3(the input))) and relu(conv3x3(the input)): a residual or "
                          "branching connection that is not a basic block's",
              "5x5": "a block that is not a basic block (3x3 convolutions",
              "preact": "is a BatchNorm of add(",
              "stem pool": "max-pools with window 2, stride 2, padding 0 after the stem"}[case]
    assert needle in msg, msg
