"""The fused C kernels (ecomp.kernels.native) against the float64 reference and scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecomp.kernels import blocked, native, peak
from ecomp.kernels import c_library
from ecomp.kernels.backend import resolve
from ecomp.kernels.tsne_torch import (conditional_probabilities_reference, joint_probabilities_reference, kl_divergence,
                              squared_distances)
from test_similarity import embeddings, sklearn_p

# Only a machine without a C compiler skips these; a compiler that fails to build them is a failure.
pytestmark = pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler (set CC)")


def gram(points: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([a @ a.T for a in points]).contiguous()


def parent_joints(points: list[torch.Tensor]) -> torch.Tensor:
    """Parents' joints as the evaluator makes them: Grams by the kernel that the children's go through."""
    return native.joint(native.conditionals(native.grams_acts(points, points[0].shape[0]), 30.0)[0])


def ref_conditionals(x: torch.Tensor, perplexity: float) -> np.ndarray:
    return conditional_probabilities_reference(squared_distances([x.double()])[0].numpy(), perplexity)


def test_exp_and_log_match_libm():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(100_000, generator=g) * 80, torch.tensor([0.0, 1e-8, 79.99, 80.0])])
    ex, _ = native.exp_log(x)
    want = torch.exp(-x.double())
    assert ((ex.double() - want).abs() / want).max() < 4e-7
    y = torch.cat([torch.exp(torch.rand(100_000, generator=g) * 140 - 70), torch.tensor([1.0, 2.0, 0.5, 1e-30])])
    _, lg = native.exp_log(y)
    want = torch.log(y.double())
    assert ((lg.double() - want).abs() / want.abs().clamp(min=1.0)).max() < 4e-7
    assert float(native.exp_log(torch.ones(1))[1]) == 0.0          # log 1 is exactly 0


@pytest.mark.parametrize("n, width, perplexity", [(100, 2, 30.0), (100, 64, 30.0), (100, 256, 5.0),
                                                  (37, 17, 10.0), (12, 5, 3.0)])
def test_conditionals_equal_the_reference(n, width, perplexity):
    xs = [embeddings(width, s, n) for s in range(3)]
    cond, bm = native.conditionals(gram(xs), perplexity)
    assert cond.shape == (3, n, n) and bm.shape == (3, n)
    for k, x in enumerate(xs):
        ref = ref_conditionals(x, perplexity)
        assert np.abs(cond[k].double().numpy() - ref).max() <= 1e-4 * ref.max()
        assert torch.equal(cond[k].diagonal(), torch.zeros(n))
        assert torch.allclose(cond[k].sum(1), torch.ones(n), atol=1e-5)


@pytest.mark.parametrize("width", [2, 17, 64, 256])
def test_joint_equals_sklearn(width):
    xs = [embeddings(width, s) for s in range(4)]
    p = native.joint(native.conditionals(gram(xs), 30.0)[0]).double().numpy()
    for k, x in enumerate(xs):
        ref = sklearn_p(x, 30.0)
        assert np.abs(p[k] - ref).max() <= 1e-4 * ref.max()


def test_a_guess_changes_the_start_not_the_probabilities():
    xs = [embeddings(w, w) for w in (5, 60, 200)]
    plain, bm = native.conditionals(gram(xs), 30.0)
    guessed, _ = native.conditionals(gram(xs), 30.0, guess=bm * 1.3)                 # 30 % wrong
    assert torch.allclose(plain, guessed, rtol=1e-3, atol=1e-7)
    nan = torch.full_like(bm, float("nan"))                                           # unusable: fall back
    assert torch.equal(plain, native.conditionals(gram(xs), 30.0, guess=nan)[0])


@pytest.mark.parametrize("case", ["dead", "identical_rows", "width1_identical", "duplicates", "huge_scale"])
def test_degenerate_activations_stay_finite(case):
    n = 100
    g = torch.Generator().manual_seed(0)
    x = {
        "dead": torch.zeros(n, 40),
        "identical_rows": torch.ones(n, 7) * 3.0,
        "width1_identical": torch.full((n, 1), 0.5),
        "duplicates": torch.randn(5, 8, generator=g).repeat(20, 1),
        "huge_scale": torch.randn(n, 8, generator=g) * 1e4,
    }[case]
    p = native.joint(native.conditionals(gram([x]), 30.0)[0])[0]
    assert torch.isfinite(p).all() and (p > 0).all()
    assert abs(float(p.sum()) - 1.0) < 1e-4
    assert torch.allclose(p, torch.from_numpy(sklearn_p(x, 30.0)).float(), rtol=1e-3, atol=1e-7)
    pp = parent_joints([embeddings(64, 1)])
    kl = native.similarity_acts([x], n, pp, torch.zeros(1, dtype=torch.int64), 30.0)
    assert torch.isfinite(kl).all()


def test_similarity_within_1e4_relative_of_the_float64_reference():
    parents = [embeddings(256, 0), embeddings(128, 9)]
    children = [embeddings(w, s + 1) for s, w in enumerate([5, 40, 100, 200])]
    p_ref = [joint_probabilities_reference(squared_distances([x.double()])[0].numpy(), 30.0) for x in parents]
    cond, bm = native.conditionals(native.grams_acts(parents, 100), 30.0)
    pp = native.joint(cond)
    # every child against both parents: set m = 2 c + q is compared with parent q
    sets = [c for c in children for _ in parents]
    index = torch.tensor([q for _ in children for q in range(2)])
    for guess in (None, bm):
        kl = native.similarity_acts(sets, 100, pp, index, 30.0, guess=guess)
        for m, c in enumerate(sets):
            q_ref = joint_probabilities_reference(squared_distances([c.double()])[0].numpy(), 30.0)
            ref = float(kl_divergence(torch.from_numpy(p_ref[m % 2]), torch.from_numpy(q_ref)))
            assert abs(float(kl[m]) - ref) <= 1e-4 * abs(ref), (m, float(kl[m]), ref)


def test_a_child_identical_to_its_parent_has_similarity_exactly_zero():
    parent = [embeddings(64, 3), embeddings(32, 4)]
    cond, bm = native.conditionals(native.grams_acts(parent, 100), 30.0)
    kl = native.similarity_acts(parent, 100, native.joint(cond), torch.arange(2), 30.0, guess=bm)
    assert torch.equal(kl, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "python-threads"])
def test_results_do_not_depend_on_the_thread_split(openmp, monkeypatch):
    if not openmp:                       # the fallback of a library built without OpenMP
        monkeypatch.setattr(c_library.load(), "ecomp_openmp", lambda: 0)
    xs = [embeddings(w, s) for s, w in enumerate([3, 50, 120, 7, 64])]
    pp = parent_joints(xs[:1])
    index = torch.zeros(len(xs), dtype=torch.int64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.similarity_acts(xs, 100, pp, index, 30.0), native.conditionals(gram(xs), 30.0)
        torch.set_num_threads(3)
        three = native.similarity_acts(xs, 100, pp, index, 30.0), native.conditionals(gram(xs), 30.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], three[0])
    assert torch.equal(one[1][0], three[1][0]) and torch.equal(one[1][1], three[1][1])


def test_bad_arguments_get_one_line_errors():
    g = gram([embeddings(4, 0)])
    with pytest.raises(ValueError, match=r"^gram: expected a CPU torch.float32 tensor"):
        native.conditionals(g.double(), 30.0)
    pp = native.joint(native.conditionals(g, 30.0)[0])
    with pytest.raises(ValueError, match=r"^parent: indices must lie in \[0, 1\)"):
        native.similarity_acts([embeddings(4, 0)], 100, pp, torch.tensor([1]), 30.0)
    with pytest.raises(ValueError, match=r"similarity.kernels='fast': expected one of auto, native, torch"):
        resolve("cpu", "fast")
    with pytest.raises(ValueError, match=r"run on the CPU, not on cuda"):
        resolve("cuda", "native")
    assert resolve("cuda", "auto").kernels == "torch" and resolve("cpu", "torch").kernels == "torch"


def _in_subprocess(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_a_fresh_cache_builds_and_a_missing_compiler_falls_back(tmp_path):
    code = ("from ecomp.kernels import c_library; from ecomp.kernels.backend import resolve; "
            "print(resolve('cpu', 'auto').kernels, c_library.isa() if c_library.available() else '-')")
    built = _in_subprocess(code, ECOMP_CACHE_DIR=str(tmp_path / "a"))
    assert built.returncode == 0, built.stderr
    assert built.stdout.split()[0] == "native" and list((tmp_path / "a" / "kernels").glob("tsne-*.so"))
    missing = _in_subprocess(code, ECOMP_CACHE_DIR=str(tmp_path / "b"), CC="/nonexistent/cc")
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout.split() == ["torch", "-"]
    assert "no C compiler found" in missing.stderr and "using the PyTorch similarity path" in missing.stderr
    strict = _in_subprocess(
        "from ecomp.app.config import resolve_backend; resolve_backend('cpu', 'native')",
        ECOMP_CACHE_DIR=str(tmp_path / "c"), CC="/nonexistent/cc")
    assert strict.returncode != 0
    assert "invalid config: similarity.kernels='native': native similarity kernels unavailable: no C compiler" \
        in strict.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("n, g", [(100, 1), (37, 3), (16, 2), (5, 4)])
def test_grams_from_activations_in_either_layout(n, g):
    """Points as rows (contiguous (G n, w)) or as columns (a transposed (w, G n) block), any width."""
    gen = torch.Generator().manual_seed(n)
    rows = [torch.randn(g * n, w, generator=gen).relu() for w in (1, 7, 33, 142)]
    cols = [torch.randn(w, g * n, generator=gen).relu().T for w in (1, 16, 50)]
    acts = rows + cols
    want = torch.stack([a[k * n:(k + 1) * n].double() @ a[k * n:(k + 1) * n].double().T
                        for a in acts for k in range(g)])
    got = native.grams_acts(acts, n)
    assert got.shape == (len(acts) * g, n, n)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)
    assert torch.equal(got, got.transpose(1, 2))                       # mirrored exactly


def test_fused_similarity_equals_its_steps():
    """similarity_acts (Gram, search and KL per set in cache) = grams_acts, conditionals and
    joint one after another, with the KL taken in float64 by PyTorch."""
    n, g = 100, 2
    gen = torch.Generator().manual_seed(1)
    parents = [torch.randn(n, 64, generator=gen).relu() for _ in range(g)]
    pp = parent_joints(parents)
    acts = [torch.randn(w, g * n, generator=gen).relu().T for w in (3, 40, 120)]
    index = torch.arange(g).repeat(len(acts))                          # set s * G + k vs parent k
    fused = native.similarity_acts(acts, n, pp, index, 30.0)
    q = native.joint(native.conditionals(native.grams_acts(acts, n), 30.0)[0])
    steps = kl_divergence(pp[index].double(), q.double())
    assert torch.allclose(fused, steps, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match=r"^acts: 200 rows are not whole sets of 30 points"):
        native.similarity_acts(acts, 30, pp, index, 30.0)


def test_similarity_from_grams_equals_the_fused_kernel():
    """similarity_grams on grams_acts' Grams = similarity_acts bit for bit: the same search and KL
    after the same Gram, wherever the Gram was made."""
    n, g = 100, 2
    gen = torch.Generator().manual_seed(2)
    parents = [torch.randn(n, 64, generator=gen).relu() for _ in range(g)]
    cond, bm = native.conditionals(native.grams_acts(parents, n), 30.0)
    pp = native.joint(cond)
    acts = [torch.randn(g * n, w, generator=gen).relu() for w in (5, 64, 300)]
    index = torch.tensor([1, 0]).repeat(len(acts))
    for guess in (None, bm):
        fused = native.similarity_acts(acts, n, pp, index, 30.0, guess=guess)
        split = native.similarity_grams(native.grams_acts(acts, n), pp, index, 30.0, guess=guess)
        assert torch.equal(fused, split)
    with pytest.raises(ValueError, match=r"^parent: indices must lie in \[0, 2\)"):
        native.similarity_grams(native.grams_acts(acts, n), pp, index + 1, 30.0)


@pytest.mark.parametrize("width", [33, native.BLAS_GRAM_WIDTH - 1, native.BLAS_GRAM_WIDTH, 3136])
def test_blas_grams_agree_with_the_kernel(width):
    """The GEMM's Grams equal the C kernel's to float rounding (measured: relative 5e-6 at 12,544
    features), per set of rows; the path is the width's alone."""
    n, g = 100, 3
    acts = [torch.randn(g * n, width, generator=torch.Generator().manual_seed(width)).relu()]
    want = native.grams_acts(acts, n).double()
    got = native.blas_grams(acts, n)
    assert got.shape == (g, n, n)
    assert torch.allclose(got.double(), want, rtol=2e-5, atol=1e-3 * float(want.abs().max()) * 1e-2)
    both = blocked.grams(acts, n)
    assert torch.equal(both, got if width >= native.BLAS_GRAM_WIDTH else native.grams_acts(acts, n))
    assert native.is_wide(acts[0]) == (width >= native.BLAS_GRAM_WIDTH)


needs_vectors = pytest.mark.skipif(c_library.compiler() is None or not native.conv_block(),
                                   reason="no vector copy of the C kernels on this CPU")


@needs_vectors
@pytest.mark.parametrize("n, width, block", [(100, 1176, 192), (37, 1500, 64), (100, 3136, 256), (16, 1024, 5000),
                                             (9, 40, 7)])
def test_the_blocked_gram_kernel_is_the_float64_gram_and_symmetric(n, width, block):
    """``csrc/blocked.c`` (upper triangle, mirrored; sums in blocks) against float64 products, on row
    views with a leading dimension wider than the rows (a slice of a wider map)."""
    gen = torch.Generator().manual_seed(width + block)
    wider = torch.randn(3 * n, width + 5, generator=gen).relu()
    acts = [wider[:, 2:2 + width], torch.randn(3 * n, width, generator=gen).relu()]
    got = blocked.gram_blocked(acts, n, block)
    want = torch.cat([torch.bmm(x, x.transpose(1, 2)) for x in (a.double().unflatten(0, (-1, n)) for a in acts)])
    assert got.shape == (6, n, n) and torch.equal(got, got.transpose(1, 2))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@needs_vectors
@pytest.mark.parametrize("width", [native.BLAS_GRAM_WIDTH, 1176, 3136])
def test_wide_grams_are_the_gemms_bits(width):
    """The wide sets' Grams are the GEMM library's bit for bit, whichever path :func:`native.gram_block`
    chose (the kernel where a block reproduces the library's order on this machine), including a
    mix of row sets and column sets (a transposed view: always the library's)."""
    n = 100
    gen = torch.Generator().manual_seed(width)
    acts = [torch.randn(2 * n, width, generator=gen).relu(), torch.randn(width, 2 * n, generator=gen).relu().T]
    assert torch.equal(blocked.wide_grams(acts, n), native.blas_grams(acts, n))
    assert torch.equal(blocked.wide_grams(acts[:1], n), native.blas_grams(acts[:1], n))
    kb = blocked.gram_block(n, width)
    if kb:                                       # the order found is the library's on other data too
        assert torch.equal(blocked.gram_blocked(acts[:1], n, kb), native.blas_grams(acts[:1], n))
    with pytest.raises(ValueError, match=r"^gram_blocked: needs .* points as rows"):
        blocked.gram_blocked(acts[1:], n, 192)


@needs_vectors
@pytest.mark.parametrize("n, k, f, block, relu", [(100, 400, 120, 192, True), (37, 300, 17, 150, False),
                                                 (5, 84, 10, 84, True), (100, 25, 40, 7, False)])
def test_the_blocked_linear_kernel_is_the_float64_product(n, k, f, block, relu):
    """``csrc/blocked.c``'s linear stages against float64 ``baddbmm`` (+ ReLU), on rows read both
    ways the CNN pass hands them over: each individual's block, and one channels-last map's rows
    (individuals ``k`` floats apart, rows ``g * k`` apart)."""
    g = 3
    gen = torch.Generator().manual_seed(k + f)
    w, b = torch.randn(g, f, k, generator=gen) / k ** 0.5, torch.randn(g, f, generator=gen)
    for h in (torch.randn(g, n, k, generator=gen).relu(), torch.randn(n, g, k, generator=gen).relu().transpose(0, 1)):
        want = torch.baddbmm(b.double().unsqueeze(1), h.double(), w.double().transpose(1, 2))
        want = want.relu() if relu else want
        got = blocked.linear_blocked(h, w, b, block, relu)
        assert got.shape == (g, n, f) and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        # however the rows are shared out among the threads (each individual's on its own, or a few
        # individuals' in blocks), the same bits
        for m in (1, 8):
            many = blocked.linear_blocked(torch.cat([h] * 3)[:m], torch.cat([w] * 3)[:m], torch.cat([b] * 3)[:m],
                                          block, relu)
            assert torch.equal(many[:min(m, g)], got[:min(m, g)])
        filters = native.conv_filters(w.reshape(g * f, k, 1, 1), b.reshape(-1), g)
        assert torch.equal(blocked.linear_blocked(h, w, b, block, relu, filters), got)
        kb = blocked.linear_block(n, k, f)
        if kb:                                   # the order found is baddbmm's on these rows too
            plain = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            assert torch.equal(blocked.linear_blocked(h, w, b, kb, relu), plain.relu() if relu else plain)
    with pytest.raises(ValueError, match=r"^linear_blocked: needs .* unit stride along K"):
        blocked.linear_blocked(h.transpose(1, 2), w, b, block)
    # a row's terms read out of order where they lie (a channels-last map as its flattening)
    terms = torch.randperm(k, generator=gen).to(torch.int32)
    h = torch.randn(g, n, k, generator=gen).relu()
    assert torch.equal(blocked.linear_blocked(h, w, b, block, relu, terms=terms),
                       blocked.linear_blocked(h[..., terms.long()].contiguous(), w, b, block, relu))
    for bad in (terms.long(), terms[:-1], terms + 1):
        with pytest.raises(ValueError, match="terms"):
            blocked.linear_blocked(h, w, b, block, relu, terms=bad)


def test_tsne_on_wide_feature_maps_matches_scikit_learn():
    """The measure with sets on both paths (a narrow and a BLAS-wide layer) against scikit-learn's
    float64 joint probabilities and the reference KL, per network; an unchanged child scores ~0."""
    from ecomp.measures.tsne import TSNE

    n, wide = 100, native.BLAS_GRAM_WIDTH + 500
    gen = torch.Generator().manual_seed(3)
    parent = [torch.randn(n, 40, generator=gen).relu(), torch.randn(n, wide, generator=gen).relu()]
    children = [[parent[0].clone(), torch.randn(n, 30, generator=gen).relu()],
                [parent[1].clone(), torch.randn(n, wide - 700, generator=gen).relu()]]  # [layer][network]
    measure = TSNE(30.0, backend=resolve("cpu", "native"))
    states = measure.prepare(parent, n)
    got = measure.score(children, None, states, n)[0]                 # (networks,)
    ref_state = measure.reference_prepare(parent)
    want = torch.tensor([measure.reference(ref_state, [children[0][c], children[1][c]]) for c in range(2)],
                        dtype=torch.float64)
    assert torch.allclose(got.double(), want, rtol=1e-3, atol=1e-4)
    assert abs(float(measure.score([[parent[0]], [parent[1]]], None, states, n)[0, 0])) < 1e-5


@pytest.mark.parametrize("g,c,pad,offset", [(1, 1, 0, 0), (3, 5, 2, 1), (7, 3, 0, 4), (4, 6, 5, 0)])
def test_gather_runs_copies_each_individuals_channels(g, c, pad, offset):
    """``gather_runs`` is ``copy_`` of a channels-last map's per-individual runs: rows of ``g * c``
    values ``g * c + pad`` floats apart, starting ``offset`` floats in, bit for bit."""
    rows = 37
    base = torch.randn(rows, offset + g * c + pad)
    src = base[:, offset:offset + g * c].view(rows, g, c).permute(1, 0, 2)          # (g, rows, c)
    dst = torch.full((g, rows, c), float("nan"))
    native.gather_runs(dst, src)
    assert torch.equal(dst, src.contiguous())


def test_gather_runs_refuses_a_layout_it_cannot_read():
    src = torch.randn(4, 5, 3)                                   # individuals 15 floats apart, not 3
    with pytest.raises(ValueError, match="gather_runs"):
        native.gather_runs(torch.empty(4, 5, 3), src)


def has_fused_conv() -> bool:
    return c_library.available() and native.conv_block() > 0


needs_conv = pytest.mark.skipif(not has_fused_conv(), reason="no vector copy of the fused convolution on this CPU")


def conv_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int, stride: int, pool: int,
                   groups: int) -> torch.Tensor:
    """The straightforward stage in float64: ``(g, n, H', W', f)``."""
    h = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), stride, padding, 1, groups)
    h = torch.nn.functional.max_pool2d(h, pool).relu() if pool > 1 else h.relu()
    n, gf, hh, ww = h.shape
    return h.view(n, groups, gf // groups, hh, ww).permute(1, 0, 3, 4, 2)


@needs_conv
@pytest.mark.parametrize("order, lanes", [("patches", "auto"), ("pixels", "filters"), ("pixels", "images")])
@pytest.mark.parametrize("n,groups,c,f,size,k,padding,stride,pool", [
    (5, 1, 1, 6, 28, 5, 2, 1, 2),      # LeNet-5's first stage
    (3, 1, 1, 37, 12, 5, 2, 1, 2),     # 37 filters: blocks of two vectors and a last of one
    (4, 7, 5, 14, 14, 5, 0, 1, 2),     # its second stage, seven individuals
    (2, 3, 3, 9, 11, 3, 1, 2, 3),      # odd maps, stride 2, a 3x3 pool (window padded to 12)
    (3, 2, 16, 17, 9, 3, 1, 1, 1),     # no pool, 17 filters
    (2, 1, 3, 40, 32, 5, 0, 1, 2),     # an RGB image
    (21, 3, 6, 15, 14, 5, 0, 1, 2),    # a run's second stage: 21 images, one vector and a part
])
def test_conv_pool_equals_convolution_then_pool(n, groups, c, f, size, k, padding, stride, pool, order, lanes):
    """The fused stage against conv2d, max-pool and ReLU in float64, on a channels-last input
    seen through an offset (as a chunk of a population's maps is), into both output layouts;
    in (ky, kx, c) order with either the filters or the images in the vectors' lanes."""
    gen = torch.Generator().manual_seed(n * 100 + f)
    base = torch.randn(n, groups * c + 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    x = base[:, 2:2 + groups * c]
    w = torch.randn(groups * f, c, k, k, generator=gen)
    b = torch.randn(groups * f, generator=gen)
    want = conv_reference(x, w, b, padding, stride, pool, groups)
    per = torch.full(want.shape, float("nan"))
    assert native.conv_pool(x, w, b, padding, stride, pool, per, groups, order, lanes=lanes)
    torch.testing.assert_close(per.double(), want, rtol=1e-5, atol=1e-5)
    cl = torch.full((n, groups * f, *want.shape[2:4]), float("nan")).contiguous(memory_format=torch.channels_last)
    view = cl.permute(0, 2, 3, 1).unflatten(3, (groups, f)).permute(3, 0, 1, 2, 4)      # (g, n, H', W', f)
    assert native.conv_pool(x, w, b, padding, stride, pool, view, groups, order, lanes=lanes)
    assert torch.equal(view, per)
    five = x.view(n, groups, c, size, size).transpose(0, 1)                            # (g, n, C, H, W)
    again = torch.empty(want.shape)
    assert native.conv_pool(five, w, b, padding, stride, pool, again, groups, order, lanes=lanes)
    assert torch.equal(again, per)


@needs_conv
@pytest.mark.parametrize("layout", ["blocks", "one group", "channels_last", "contiguous"])
@pytest.mark.parametrize("n, padding", [(1, 0), (16, 0), (37, 1), (100, 0)])
def test_the_images_in_lanes_give_the_filters_bits(n, padding, layout):
    """The two passes of the (ky, kx, c) order do the same operations on each output in the same
    order: equal bit for bit, for any number of images (whole vectors of them and a part), padded
    or not, from maps whose rows are runs of floats (each group's maps a block, channels innermost,
    as a run's stages hand them over; or one group's channels-last maps: copied by tile
    transposes) or not (several groups' channels-last maps, channels-first maps: float by float)."""
    gen = torch.Generator().manual_seed(n + padding)
    g = 1 if layout == "one group" else 4
    if layout == "blocks":
        x = torch.randn(g, n, 14, 14, 6, generator=gen).permute(0, 1, 4, 2, 3)
    else:
        x = torch.randn(n, g * 6, 14, 14, generator=gen)
        x = x if layout == "contiguous" else x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(g * 11, 6, 5, 5, generator=gen), torch.randn(g * 11, generator=gen)
    side = (14 + 2 * padding - 5 + 1) // 2
    out = {lanes: torch.full((g, n, side, side, 11), float("nan")) for lanes in ("filters", "images")}
    for lanes, o in out.items():
        assert native.conv_pool(x, w, b, padding, 1, 2, o, g, "pixels", lanes=lanes)
    assert not out["images"].isnan().any()
    assert torch.equal(out["images"], out["filters"])


@needs_conv
def test_conv_pool_puts_a_runs_images_in_the_lanes_and_a_mixed_first_stage_s_filters():
    """``auto``: the images where each group has a few filters (an individual's, on a run's 100
    images), the filters where one group holds a whole population's or the images are few."""
    vw = native.conv_block()
    assert native.conv_lanes(100, 6) == native.conv_lanes(100, 15) == native.conv_lanes(vw, vw) == "images"
    assert native.conv_lanes(100, 600) == native.conv_lanes(5, 14) == native.conv_lanes(1, 3) == "filters"


@needs_conv
@pytest.mark.parametrize("groups, f, c, k", [(1, 6, 1, 5), (3, 17, 2, 3), (100, 15, 6, 5), (2, 108, 375, 1), (1, 40, 1, 1)])
@pytest.mark.parametrize("order", sorted(native.SUM_ORDERS))
def test_conv_filters_are_the_weights_transposed_and_padded(groups, f, c, k, order):
    """The C library's tile transposes make what the straightforward indexing makes."""
    gen = torch.Generator().manual_seed(f * c + k)
    w, b = torch.randn(groups * f, c, k, k, generator=gen), torch.randn(groups * f, generator=gen)
    wt, bp = native.conv_filters(w, b, groups, order)
    vw = native.conv_block()
    fpad = -(-f // vw) * vw
    want = torch.zeros(groups, c * k * k, fpad)
    for j in range(groups):
        for i in range(f):
            t = w[j * f + i] if order == "patches" else w[j * f + i].permute(1, 2, 0)
            want[j, :, i] = t.flatten()
    assert torch.equal(wt, want)
    assert torch.equal(bp[:, :f], b.view(groups, f)) and not bp[:, f:].any()


@needs_conv
def test_conv_pool_sums_in_the_order_it_is_asked():
    """The two orders are two different roundings of one sum: on random data some outputs
    differ in their last bits, each within a float32 rounding of the float64 sum."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, 12, 12, generator=gen)
    w = torch.randn(20, 6, 5, 5, generator=gen)
    b = torch.zeros(20)
    out = {o: torch.empty(1, 8, 4, 4, 20) for o in native.SUM_ORDERS}
    for o, t in out.items():
        native.conv_pool(x, w, b, 0, 1, 2, t, 1, o)
    assert not torch.equal(out["patches"], out["pixels"])
    torch.testing.assert_close(out["patches"], out["pixels"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(c_library.compiler() is None, reason="no C compiler")
def test_conv_pool_refuses_what_it_cannot_compute():
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    with pytest.raises(ValueError, match="conv_pool"):                 # output of the wrong size
        native.conv_pool(x, w, b, 0, 1, 2, torch.empty(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="conv_pool"):                 # one group's filters split into blocks
        native.conv_pool(x, w, b, 0, 1, 2, torch.empty(2, 2, 3, 3, 2))
    with pytest.raises(ValueError, match="conv_pool"):                 # channels not innermost
        native.conv_pool(x, w, b, 0, 1, 2, torch.empty(1, 2, 4, 3, 3).transpose(2, 4))
    with pytest.raises(ValueError, match="order"):
        native.conv_pool(x, w, b, 0, 1, 2, torch.empty(1, 2, 3, 3, 4), order="columns")
    with pytest.raises(ValueError, match="lanes"):
        native.conv_pool(x, w, b, 0, 1, 2, torch.empty(1, 2, 3, 3, 4), order="pixels", lanes="pixels")
    if has_fused_conv():                                               # filters built for other weights
        other = native.conv_filters(torch.randn(4, 2, 3, 3), b)
        with pytest.raises(ValueError, match="filters"):
            native.conv_pool(x, w, b, 0, 1, 2, torch.empty(1, 2, 3, 3, 4), filters=other)


@needs_vectors
@pytest.mark.parametrize("steps, threads", [(1, 1), (1000, 1), (3000, 2)])
def test_the_fma_ceiling_runs_every_chain_it_counts(steps, threads):
    """The benchmarks' ceiling (``rates.fma_gflops``) counts 12 chains of ``steps`` vector FMAs per
    thread: their final values show that every one ran, each step, on every lane."""
    width = native.conv_block()
    flops, seconds, total = peak.fma_peak(steps, threads)
    assert flops == threads * steps * 12 * width * 2 and seconds > 0
    per_lane = sum(1 + (j - 1) * 0.999 ** steps for j in range(12))
    assert total == pytest.approx(threads * width * per_lane, rel=1e-4)



def shape_reference(name: str, reps: int, width: int) -> float:
    """``peak.fma_shape``'s accumulators summed over every lane, written out from the loops of
    ``csrc/peak.c`` (inputs that are multiples of 1/8 and 1/4: every sum exact)."""
    img = 16
    x = [(i % 7) * 0.125 for i in range(img * img * 16)]
    w = [(i % 5) * 0.25 for i in range(25 * 32)]
    koff = [(k // 5) * img + k % 5 for k in range(25)]
    pos = [0, 1, img, img + 1, 2, 3, img + 2, img + 3]
    total = 0.0
    for r in range(reps):
        for k in range(25):
            if name == "first":          # 8 positions by two vectors of filters
                total += sum(x[r % 8 + koff[k] + p] for p in pos) * sum(w[k * 2 * width:(k + 1) * 2 * width])
            elif name == "later":        # 8 positions by one vector
                total += sum(x[r % 8 + koff[k] + p] for p in pos) * sum(w[k * width:(k + 1) * width])
            else:                        # 4 positions' vectors of images by 6 broadcast filters
                base = (r % 8 + koff[k]) * width
                total += (sum(x[base + p * width + lane] for p in pos[:4] for lane in range(width))
                          * sum(w[k * 6:k * 6 + 6]))
    return total


@needs_vectors
@pytest.mark.parametrize("shape", sorted(peak.FMA_SHAPES))
@pytest.mark.parametrize("reps, threads", [(1, 1), (3, 2)])
def test_the_inner_loop_shapes_run_every_fma_they_count(shape, reps, threads):
    """``bench_conv.py``'s inner-loop rates (``peak.fma_shape``) count ``reps x 25 x fmas``
    vector FMAs per thread: the exact sum of their accumulators shows each ran on its operands."""
    width = native.conv_block()
    flops, seconds, total = peak.fma_shape(shape, reps, threads)
    assert flops == threads * reps * 25 * peak.FMA_SHAPES[shape][1] * width * 2 and seconds > 0
    assert total == threads * shape_reference(shape, reps, width)
    with pytest.raises(ValueError, match="fma_shape: shape 'fourth'"):
        peak.fma_shape("fourth", 1)

CONV_CASES = """
import sys, torch
from ecomp.kernels import native
out = {"block": native.conv_block()}
gen = torch.Generator().manual_seed(7)
for name, (n, g, c, f, size, k, pad, pool, order, lanes) in {
        "first": (6, 1, 1, 30, 28, 5, 2, 2, "patches", "auto"), "wide": (3, 1, 3, 53, 16, 3, 1, 2, "patches", "auto"),
        "later": (5, 9, 6, 15, 14, 5, 0, 2, "pixels", "filters"), "odd": (4, 3, 5, 9, 11, 3, 0, 3, "pixels", "filters"),
        "images": (21, 3, 6, 15, 14, 5, 1, 2, "pixels", "images")}.items():
    x = torch.randn(n, g * c, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(g * f, c, k, k, generator=gen), torch.randn(g * f, generator=gen)
    side = ((size + 2 * pad - k) + 1) // pool
    o = torch.full((g, n, side, side, f), float("nan"))
    assert native.conv_pool(x, w, b, pad, 1, pool, o, g, order, lanes=lanes)
    out[name] = o
# the images in the lanes from maps whose rows are runs of floats (tile transposes): each group's
# maps a block of its own, and one-channel images shared by every group (a stride-0 group dimension)
for name, x, g, f, pad, order in (
        ("images blocks", torch.randn(3, 21, 14, 14, 6, generator=gen).permute(0, 1, 4, 2, 3), 3, 15, 0, "pixels"),
        ("images shared", torch.randn(21, 1, 28, 28, generator=gen).unsqueeze(0).expand(4, -1, -1, -1, -1), 4, 6, 2,
         "patches")):
    c, size = x.shape[2], x.shape[3]
    w, b = torch.randn(g * f, c, 5, 5, generator=gen), torch.randn(g * f, generator=gen)
    side = (size + 2 * pad - 5 + 1) // 2
    o = torch.full((g, 21, side, side, f), float("nan"))
    assert native.conv_pool(x, w, b, pad, 1, 2, o, g, order, lanes="images")
    out[name] = o
for n, w in ((100, 375), (100, 108), (100, 76), (37, 20), (5, 3)):      # the t-SNE kernels' own Grams
    out[f"gram {n}x{w}"] = native.grams_acts([torch.rand(2 * n, w, generator=gen)], n)
torch.save(out, sys.argv[1])
"""


def in_both_copies(script: str, tmp_path: Path) -> dict[str, dict]:
    """What ``script`` saves (``torch.save`` to its first argument) when run under each vector copy
    of the library, ``auto`` and ``avx2``: each in a process of its own, the copy being chosen once
    per process (``ECOMP_KERNEL_ISA``)."""
    got = {}
    for isa in ("auto", "avx2"):
        env = {**os.environ, "ECOMP_KERNEL_ISA": isa}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{isa}.pt")], env=env, check=True,
                       cwd=Path(__file__).parents[1], timeout=300)
        got[isa] = torch.load(tmp_path / f"{isa}.pt")
    return got


@needs_conv
def test_the_avx2_copy_of_the_fused_convolution_and_the_grams_gives_the_same_bits(tmp_path):
    """Both vector copies sum each output (and each Gram entry) in the same order with the same
    roundings: equal bit for bit (on a CPU without AVX-512 both runs take the AVX2 copy). Each run
    in a process of its own, the library's copy being chosen once per process (``ECOMP_KERNEL_ISA``)."""
    got = in_both_copies(CONV_CASES, tmp_path)
    assert got["avx2"]["block"] == 8
    assert len(got["auto"]) == 13
    for name in got["auto"].keys() - {"block"}:
        assert not got["auto"][name].isnan().any()
        assert torch.equal(got["auto"][name], got["avx2"][name]), name
