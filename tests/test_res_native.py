"""The residual population's C pass (``ecomp/kernels/res_native.py``, ``csrc/resnet.c``) against the
per-network loop, its oracle: logits and every block's features, on random plans, image counts
and mixed widths; its two vector copies bit for bit; and where it declines, the PyTorch pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ecomp.core.fitness import in_precision
from ecomp.core.initialiser import l1_population
from ecomp.kernels import res_forward, res_native
from ecomp.kernels.backend import resolve
from ecomp.nets.resnet import cifar_resnet

from kinds import resnet8
from test_native import in_both_copies, needs_conv

pytestmark = needs_conv


def as_hwc(a: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """The loop's flat ``(C, H, W)`` features in the C pass's ``(H, W, C)`` order."""
    return a.view(-1, c, h, w).permute(0, 2, 3, 1).reshape(a.shape[0], -1)


def assert_matches_the_loop(pop, x: torch.Tensor, features: str) -> None:
    want_logits, want_hidden = res_forward.forward_loop(pop, x, features)
    got = res_native.forward(pop, x, features)
    assert got is not None
    got_logits, got_hidden = got
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    convs, blocks = pop.plan.layout()
    assert len(got_hidden) == len(blocks)
    for (_, i2, _), got_l, want_l in zip(blocks, got_hidden, want_hidden, strict=True):
        for i, (g, w) in enumerate(zip(got_l, want_l, strict=True)):
            c, _, h, ww = pop.plan.with_units(pop.widths[i]).geometry()[i2]
            assert g.shape == w.shape
            torch.testing.assert_close(g, w if features != "flat" else as_hwc(w, c, h, ww), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("features", ["flat", "pooled"])
@pytest.mark.parametrize("n", [1, 16, 37])
def test_the_c_pass_is_the_per_network_loop_on_mixed_widths(features, n):
    parent = resnet8(5)
    pop = l1_population(parent, 6, 1.0, 0.4).take([0, 3, 3, 5, 1, 2])     # architectures repeated
    x = torch.rand(n, parent.in_features, generator=torch.Generator().manual_seed(n))
    assert_matches_the_loop(pop, x, features)


@st.composite
def populations(draw):
    """Small CIFAR ResNets of depth 8, 14 or 20 (identity shortcuts inside a stage) on 1- or
    3-channel images of 5-13 pixels a side, any stem (kernel 1 to 7, stride 1 to 3), with or
    without torchvision's max-pooling after it, a population of mixed keep ratios."""
    depth = draw(st.sampled_from([8, 14, 20]))
    widths = tuple(draw(st.integers(1, 9)) for _ in range(3))
    image = (draw(st.sampled_from([1, 3])), draw(st.integers(5, 13)), draw(st.integers(5, 13)))
    k = draw(st.sampled_from([1, 3, 5, 7]))
    plan = replace(cifar_resnet(image, draw(st.integers(2, 11)), depth, widths), stem_kernel=k,
                   stem_stride=draw(st.integers(1, 3)), stem_padding=draw(st.integers(0, k)),
                   stem_pool=draw(st.sampled_from([0, 3])))
    assume(plan.problems() is None)
    torch.manual_seed(draw(st.integers(0, 99)))
    parent = plan.network(plan.build(batchnorm=False))
    keeps = sorted(draw(st.lists(st.floats(0.3, 1.0), min_size=1, max_size=4)))
    return l1_population(parent, len(keeps), keeps[-1], keeps[0]), draw(st.integers(1, 40))


@settings(max_examples=25, deadline=None)
@given(populations(), st.sampled_from(["flat", "pooled"]))
def test_the_c_pass_is_the_per_network_loop_on_random_plans(case, features):
    pop, n = case
    x = torch.randn(n, pop.plan.features, generator=torch.Generator().manual_seed(n))
    assert_matches_the_loop(pop, x, features)


@pytest.mark.parametrize("features", ["flat", "pooled"])
def test_last_images_of_several_networks_in_one_vector_give_the_same_bits(monkeypatch, features):
    """Where a batch's last few images would fill a quarter or half of a vector, that vector holds
    them for four or two networks of one architecture: each lane's operations are the same, so the
    outputs are the same bits as one network per vector. Nine individuals of one architecture (two
    groups of four and one left) and three of others; 3, 21, 37 and 100 images leave 3, 5, 5 and 4
    (vectors of 16; 3, 5, 5 and 4 of 8 with AVX2), 30 and 32 leave 14 and none."""
    parent = resnet8(4)
    pop = l1_population(parent, 4, 1.0, 0.5).take([0, 1, 1, 1, 1, 1, 2, 1, 1, 1, 3, 1])
    for i in range(pop.size):           # the copies of individual 1 made unlike: each lane's network shows
        pop.members[i] = [(w * (1 + 0.05 * i), b + 0.01 * i) for w, b in pop.members[i]]
    for n in (3, 21, 37, 100, 30, 32):
        x = torch.rand(n, parent.in_features, generator=torch.Generator().manual_seed(n))
        packed = res_native.forward(pop, x, features)
        monkeypatch.setattr(res_native, "PACK_TAILS", False)
        alone = res_native.forward(pop, x, features)
        monkeypatch.setattr(res_native, "PACK_TAILS", True)
        assert torch.equal(packed[0], alone[0]), n
        for got_l, want_l in zip(packed[1], alone[1], strict=True):
            assert all(torch.equal(g, w) for g, w in zip(got_l, want_l, strict=True)), n
    assert res_native._tasks(pop, 100, 16)[1] == 4 and res_native._tasks(pop, 21, 16)[1] == 2


def test_the_run_takes_the_c_pass_and_large_maps_or_bfloat16_the_pytorch_one(monkeypatch):
    parent = resnet8(2)
    pop = l1_population(parent, 4, 0.9, 0.5)
    x = torch.rand(9, parent.in_features, generator=torch.Generator().manual_seed(0))
    logits, hidden, _ = res_forward.forward(pop, x, "flat", backend=resolve("cpu"))
    c_logits, c_hidden = res_native.forward(pop, x, "flat")
    assert torch.equal(logits, c_logits) and all(torch.equal(a, b) for a, b in zip(hidden[0], c_hidden[0]))
    with in_precision("bfloat16", x.device):                      # oneDNN's bfloat16 kernels, not these
        assert res_native.forward(pop, x, "flat") is None
        half = res_forward.forward(pop, x, "flat", backend=resolve("cpu"))[0]
    assert not torch.equal(half, logits)                               # rounded to bfloat16 on the way
    torch.testing.assert_close(half, logits, rtol=0.05, atol=0.05)
    monkeypatch.setattr(res_native, "MAX_THREAD_BYTES", 1024)          # below any six maps of 16 images
    assert res_native.forward(pop, x, "flat") is None
    torch.testing.assert_close(res_forward.forward(pop, x, "flat", backend=resolve("cpu"))[0], logits,
                               rtol=1e-5, atol=1e-5)


def test_a_nan_goes_through_as_in_the_loop_and_wrong_shapes_are_refused():
    """A NaN weight makes NaN outputs, as the loop's (torch's ReLU and max-pooling keep NaN; x86's
    max instruction alone would turn it into 0), and images or weights of the wrong shape are a
    one-line error, not a read out of bounds."""
    pooled = replace(cifar_resnet((1, 12, 12), 5, 8, (4, 6, 8)), stem_kernel=3, stem_stride=1, stem_padding=1,
                     stem_pool=3)
    torch.manual_seed(3)
    pop = l1_population(pooled.network(pooled.build(batchnorm=False)), 3, 0.9, 0.5)
    pop.members[1][0][0][0, 0, 1, 1] = float("nan")                # a stem filter of individual 1
    x = torch.rand(5, pooled.features, generator=torch.Generator().manual_seed(4))
    x[2, 5 * 12 + 6] = float("nan")                                   # and one pixel of image 2
    want = res_forward.forward_loop(pop, x, "flat")
    got = res_native.forward(pop, x, "flat")
    assert torch.equal(got[0].isnan(), want[0].isnan()) and bool(got[0][1].isnan().all())
    for got_l, want_l in zip(got[1], want[1]):
        assert [int(g.isnan().sum()) for g in got_l] == [int(w.isnan().sum()) for w in want_l]
    assert int(got[1][0][0].isnan().sum()) > 0                         # image 2's NaN made it through the pool
    with pytest.raises(ValueError, match=r"expected images \(n, 144\)"):
        res_native.forward(pop, torch.rand(5, 140), "flat")
    pop.members[2][1] = (pop.members[2][1][0][:1], pop.members[2][1][1][:1])   # a conv1 of one filter too few
    with pytest.raises(ValueError, match="not those of its widths"):
        res_native.forward(pop, x, "flat")


CASES = """
import sys, torch
sys.path.insert(0, "tests")
from ecomp.core.fitness import in_precision
from ecomp.core.initialiser import l1_population
from ecomp.kernels import native, res_native
from kinds import resnet8
pop = l1_population(resnet8(7), 5, 1.0, 0.3)
out = {"block": native.conv_block()}
for n in (3, 16, 21):
    x = torch.rand(n, 36, generator=torch.Generator().manual_seed(n))
    logits, hidden = res_native.forward(pop, x, "flat")
    out[f"logits {n}"] = logits
    out[f"features {n}"] = torch.cat([a.flatten() for layer in hidden for a in layer])
torch.save(out, sys.argv[1])
"""


def test_the_avx2_copy_of_the_residual_pass_gives_the_same_bits(tmp_path):
    """Both copies make each lane's output by the same operations in the same order: equal bit for
    bit (on a CPU without AVX-512 both runs take the AVX2 copy)."""
    got = in_both_copies(CASES, tmp_path)
    assert got["avx2"]["block"] == 8
    for name in got["auto"].keys() - {"block"}:
        assert torch.equal(got["auto"][name], got["avx2"][name]), name
