"""A user's convolutional network and named state dicts as the parent: read safely from real files,
architecture from the program's graph, BatchNorm folded exactly; everything else refused in one line."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ecomp.errors import CheckpointError
from ecomp.nets import convnet
from ecomp.nets.checkpoint import check_fits, read_checkpoint
from ecomp.nets.convnet import ConvNet, ConvPlan, Stage
from ecomp.nets.mlp import layers_of
from ecomp.nets.network import save_network


def same(a, b) -> bool:
    a, b = getattr(a, "layers", a), getattr(b, "layers", b)        # a network or its (weight, bias) pairs
    return len(a) == len(b) and all(torch.equal(w1, w2) and torch.equal(b1, b2) for (w1, b1), (w2, b2) in zip(a, b))


def export(model: nn.Module, path, shape=(2, 1, 12, 12), decompose=False):
    program = torch.export.export(model.eval(), (torch.rand(*shape),))
    torch.export.save(program.run_decompositions() if decompose else program, path)
    return path


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"parent.path='{path}'") and "\n" not in msg, msg
    return msg


def lenet(pool=nn.MaxPool2d, batchnorm=True, dropout=False, seed=0) -> nn.Sequential:
    """1x12x12 -> conv 3 (5x5, pad 2) [BN] ReLU pool 2 -> conv 4 (3x3) [BN] ReLU pool 2 -> 16 -> 6 -> 3."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Conv2d(1, 3, 5, padding=2)]
    mods += [nn.BatchNorm2d(3)] if batchnorm else []
    mods += [nn.ReLU(), pool(2)] + ([nn.Dropout(0.3)] if dropout else [])
    mods += [nn.Conv2d(3, 4, 3, bias=not batchnorm)] + ([nn.BatchNorm2d(4)] if batchnorm else [])
    mods += [nn.ReLU(), pool(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 6), nn.ReLU()]
    mods += [nn.Dropout(0.5)] if dropout else []
    mods += [nn.Linear(6, 3)]
    model = nn.Sequential(*mods)
    with torch.no_grad():                      # BatchNorm statistics far from the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 3)
                m.weight.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    return model.eval()


def assert_same_logits(net: ConvNet, model: nn.Module) -> None:
    x = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.eval()(x)
    got = convnet.run(net, x.flatten(1))[0]
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5


# ---- named state dicts -----------------------------------------------------------------------------------------

def test_a_named_sequential_state_dict_reads_like_the_numeric_one(tmp_path):
    torch.manual_seed(0)
    numeric = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    named = nn.Sequential(OrderedDict([("layer_1_linear", nn.Linear(20, 12)), ("layer_1_relu", nn.ReLU()),
                                       ("layer_2_linear", nn.Linear(12, 5)), ("layer_2_relu", nn.ReLU()),
                                       ("output", nn.Linear(5, 3))]))
    named.load_state_dict(dict(zip(named.state_dict(), numeric.state_dict().values())))
    assert list(named.state_dict())[:2] == ["layer_1_linear.weight", "layer_1_linear.bias"]
    torch.save(numeric.state_dict(), tmp_path / "numeric.pt")
    torch.save(named.state_dict(), tmp_path / "named.pt")
    a, b = read_checkpoint(tmp_path / "numeric.pt")[0], read_checkpoint(tmp_path / "named.pt")[0]
    assert b.kind == "mlp" and same(a, b) and same(b, layers_of(numeric))
    # nested names, and the same network as a torch.export program
    nested = nn.Sequential(OrderedDict([("features", nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5),
                                                                   nn.ReLU())), ("output", nn.Linear(5, 3))]))
    nested.load_state_dict(dict(zip(nested.state_dict(), numeric.state_dict().values())))
    assert "features.0.weight" in nested.state_dict()
    torch.save(nested.state_dict(), tmp_path / "nested.pt")
    assert same(read_checkpoint(tmp_path / "nested.pt")[0], a)
    assert same(read_checkpoint(export(named, tmp_path / "named.pt2", (2, 20)))[0], a)


def test_a_named_state_dict_keeps_every_check(tmp_path):
    torch.manual_seed(0)
    sd = OrderedDict([("hidden.weight", torch.rand(6, 8)), ("hidden.bias", torch.rand(6)),
                      ("output.weight", torch.rand(2, 5)), ("output.bias", torch.rand(2))])
    torch.save(sd, tmp_path / "chain.pt")
    assert "layer 'output' takes 5 inputs but the layer before gives 6" in refusal(tmp_path / "chain.pt")
    sd["output.weight"] = torch.rand(2, 6)
    sd["output.bias"] = torch.rand(3)
    torch.save(sd, tmp_path / "bias.pt")
    assert "layer 'output''s bias has shape (3,), expected (2,)" in refusal(tmp_path / "bias.pt")
    sd["output.bias"] = torch.rand(2)
    sd["hidden.weight"][0, 0] = float("inf")
    torch.save(sd, tmp_path / "inf.pt")
    assert "layer 'hidden' has non-finite weights" in refusal(tmp_path / "inf.pt")
    torch.save(OrderedDict([("only.weight", torch.rand(2, 8)), ("only.bias", torch.rand(2))]), tmp_path / "one.pt")
    assert "a single linear layer" in refusal(tmp_path / "one.pt")


# ---- torch.export programs of CNNs -------------------------------------------------------------------------------

@pytest.mark.parametrize("decompose", [False, True])
def test_a_lenet_with_batchnorm_reads_as_a_convnet_with_the_modules_logits(tmp_path, decompose):
    model = lenet()
    net, sha = read_checkpoint(export(model, tmp_path / "lenet.pt2", decompose=decompose))
    assert isinstance(net, ConvNet) and len(sha) == 64
    assert net.plan == ConvPlan((1, 12, 12), (Stage("conv", 3, 5, 1, 2, "max", 2), Stage("conv", 4, 3, 1, 0, "max", 2),
                                              Stage("linear", 6), Stage("linear", 3)))
    assert all(w.dtype == torch.float32 for w, _ in net.layers)
    assert_same_logits(net, model)
    folded = convnet.fold_batchnorm(model)            # the tool's own folding gives the same layers
    assert all(torch.allclose(w, wf, atol=1e-6) and torch.allclose(b, bf, atol=1e-6)
               for (w, b), (wf, bf) in zip(net.layers, folded))


def test_average_pooling_dropout_and_flat_inputs_are_read(tmp_path):
    model = lenet(pool=nn.AvgPool2d, batchnorm=False, dropout=True)
    net = read_checkpoint(export(model, tmp_path / "avg.pt2"))[0]
    assert [s.pool for s in net.plan.stages] == ["avg", "avg", None, None]
    assert_same_logits(net, model)
    # the tool's own module form: flat images unflattened inside, strided convolution
    plan = ConvPlan((1, 12, 12), (Stage("conv", 3, 3, 2, 1, "max", 2), Stage("linear", 5), Stage("linear", 3)))
    torch.manual_seed(0)
    own = convnet.build_module(plan)
    net = read_checkpoint(export(own, tmp_path / "own.pt2", (2, 144)))[0]
    assert net.plan == plan
    assert_same_logits(net, nn.Sequential(nn.Flatten(), own))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 12 * 12, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv2(h) + h).flatten(1))


def head(flat: int) -> list[nn.Module]:
    return [nn.ReLU(), nn.Flatten(), nn.Linear(flat, 3)]


@pytest.mark.parametrize("case", ["residual", "groups", "dilation", "pool stride", "pool padding", "nan", "no relu",
                                  "training mode"])
def test_programs_the_convnet_cannot_hold_are_refused_in_one_line(tmp_path, case):
    torch.manual_seed(0)
    model, shape = {
        "residual": (Residual(), (2, 1, 12, 12)),
        "groups": (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), *head(4 * 10 * 10)), (2, 2, 12, 12)),
        "dilation": (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), *head(2 * 8 * 8)), (2, 1, 12, 12)),
        "pool stride": (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, stride=1), nn.Flatten(),
                                      nn.Linear(2 * 9 * 9, 3)), (2, 1, 12, 12)),
        "pool padding": (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2, padding=1), nn.Flatten(),
                                       nn.Linear(2 * 6 * 6, 3)), (2, 1, 12, 12)),
        "nan": (nn.Sequential(nn.Conv2d(1, 2, 3), *head(2 * 10 * 10)), (2, 1, 12, 12)),
        "no relu": (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 10 * 10, 3)), (2, 1, 12, 12)),
        "training mode": (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), *head(2 * 10 * 10)), (2, 1, 12, 12)),
    }[case]
    if case == "nan":
        with torch.no_grad():
            model[0].weight[0, 0, 0, 0] = float("nan")
    if case == "training mode":                # exported without .eval(): BatchNorm updates its statistics
        torch.export.save(torch.export.export(model.train(), (torch.rand(*shape),)), tmp_path / "m.pt2")
        msg = refusal(tmp_path / "m.pt2")
    else:
        msg = refusal(export(model, tmp_path / "m.pt2", shape))
    needle = {"residual": "a residual or branching connection", "groups": "grouped or depthwise convolution (groups=2)",
              "dilation": "dilated convolution (dilation=2)", "pool stride": "window 2, stride 1",
              "pool padding": "window 2, stride 2, padding 1", "nan": "non-finite weights",
              "no relu": "computes 'conv2d' (layer 0 (Conv2d)) with no ReLU after it",
              "training mode": "exported in training mode? export the model in evaluation mode"}[case]
    assert needle in msg, msg
    if case not in ("nan", "training mode"):
        assert "supported" in msg, msg


# ---- the tool's own files and state dicts with 4-D weights ------------------------------------------------------

def test_the_tools_own_convnet_file_round_trips(tmp_path):
    model = lenet()
    plan = ConvPlan((1, 12, 12), (Stage("conv", 3, 5, 1, 2, "max", 2), Stage("conv", 4, 3, 1, 0, "max", 2),
                                  Stage("linear", 6), Stage("linear", 3)))
    net = ConvNet(plan, convnet.fold_batchnorm(model))
    save_network(net, tmp_path / "best_network.pt", {"accuracy": 0.5})
    back, sha = read_checkpoint(tmp_path / "best_network.pt")
    assert isinstance(back, ConvNet) and back.plan == plan and same(back.layers, net.layers)
    assert_same_logits(back, model)
    check_fits(back, "parent.path='x'", 144, 3, "digits")
    with pytest.raises(CheckpointError, match=r"takes 144 inputs \(1x12x12 images\) but data=mnist has 784"):
        check_fits(back, "parent.path='x'", 784, 3, "mnist")
    with pytest.raises(CheckpointError, match="has 3 outputs but data=mnist has 10 classes"):
        check_fits(back, "parent.path='x'", 144, 10, "mnist")
    # the same weights under another plan (average pooling) are another network: another digest
    avg = ConvPlan(plan.in_shape, tuple(Stage(s.kind, s.out, s.kernel, s.stride, s.padding,
                                              "avg" if s.pool else None, s.pool_size) for s in plan.stages))
    save_network(ConvNet(avg, net.layers), tmp_path / "avg" / "best_network.pt")
    assert read_checkpoint(tmp_path / "avg" / "best_network.pt")[1] != sha


def test_four_d_weights_need_the_plan_and_must_match_it(tmp_path):
    model = lenet(batchnorm=False)
    torch.save(model.state_dict(), tmp_path / "conv.pt")
    msg = refusal(tmp_path / "conv.pt")
    assert "layer 0 has a 4-D weight (3, 1, 5, 5) (a Conv?)" in msg and "does not say" in msg, msg
    assert "torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2')" in msg, msg
    plan = ConvPlan((1, 12, 12), (Stage("conv", 3, 5, 1, 2, "max", 2), Stage("conv", 4, 3, 1, 0, "max", 2),
                                  Stage("linear", 6), Stage("linear", 3)))
    save_network(ConvNet(plan, layers_of_conv(model)), tmp_path / "best_network.pt")
    meta_path = tmp_path / "best_network.pt.json"
    meta = json.loads(meta_path.read_text())
    meta["plan"]["stages"][1]["kernel"] = 5                       # the file's conv is 3x3
    meta_path.write_text(json.dumps(meta))
    msg = refusal(tmp_path / "best_network.pt")
    assert "layer 1's weight has shape (4, 3, 3, 3) but the plan in best_network.pt.json needs (4, 3, 5, 5)" in msg
    meta["plan"]["stages"][1]["kernel"] = 3
    meta["plan"]["stages"] = meta["plan"]["stages"][:3]          # a layer short
    meta_path.write_text(json.dumps(meta))
    assert "holds 4 layers but the plan in best_network.pt.json has 3" in refusal(tmp_path / "best_network.pt")
    meta_path.write_text(json.dumps({"kind": "mlp"}))
    assert "holds no \"plan\"" in refusal(tmp_path / "best_network.pt")


def layers_of_conv(model: nn.Module):
    return [(m.weight.detach().clone(), m.bias.detach().clone()) for m in convnet.weight_modules(model)]


# ---- through run.py: refused in one line, before any run is created ---------------------------------------------

@pytest.mark.parametrize("case", ["residual", "wrong images"])
def test_a_cnn_checkpoint_that_cannot_be_compressed_is_refused_through_run_py(tmp_path, case):
    from conftest import TINY, run_cli

    if case == "residual":
        path, needle = export(Residual(), tmp_path / "res.pt2"), "a residual or branching connection"
    else:                                      # 12x12 images; FashionMNIST's are 28x28
        path, needle = export(lenet(), tmp_path / "lenet.pt2"), "inputs (1x12x12 images) but data=fashion_mnist"
    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *TINY, "parent=checkpoint", f"parent.path={path}", f"tracking.uri=sqlite:///{db}",
                   f"hydra.run.dir={tmp_path / 'out'}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not db.exists()
