"""The GPU path (device=cuda): crossover and mutation by gathers, the perplexity search with few
host synchronisations, the mixed-width forward pass on padded stacks, and the evaluator, against
the CPU path (tests/test_padded.py runs the same code forced on the CPU). Skipped where no GPU is present."""

from __future__ import annotations

import pytest
import torch

from conftest import random_mlp
from ecomp.core.evolution import EComp, MutationSpec
from ecomp.core.fitness import Evaluator, Weights
from ecomp.core.initialiser import l1_population
from ecomp.core.recombination import recombine
from ecomp.core.selection import select_pairs
from ecomp.kernels.tsne_torch import calibrate, shifted_distances
from ecomp.measures.tsne import TSNE
from ecomp.kernels import net_forward
from ecomp.kernels.backend import resolve
from ecomp.nets.structure import to_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def to(net, device):
    return to_device(net, device)


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_cuda_crossover_equals_the_cpu_bit_for_bit(n_hidden):
    parent = random_mlp([12, *[8] * n_hidden, 3], gen(0))
    cpu = l1_population(parent, 8, 1.0, 0.25)
    gpu = l1_population(to(parent, "cuda"), 8, 1.0, 0.25)
    pairs = select_pairs(torch.randn(8, generator=gen(1)), gen(2))
    a = recombine(cpu, pairs, gen(3), use_native=False)
    b = recombine(gpu, pairs, gen(3))                          # the gather path (default off the CPU)
    assert a.widths == b.widths
    assert all(torch.equal(x, y.cpu()) for x, y in zip([a.first_w, a.first_b, *a.layer_w, *a.layer_b],
                                                       [b.first_w, b.first_b, *b.layer_w, *b.layer_b]))


def test_cuda_perplexity_search_syncs_every_few_iterations_and_agrees():
    g = gen(0)
    xs = [torch.relu(torch.randn(100, w, generator=g)) for w in (5, 60, 200)]
    d = shifted_distances(xs)
    stats = {}
    p_cpu, b_cpu = calibrate(d, 30.0)
    p_gpu, b_gpu = calibrate(d.cuda(), 30.0, stats=stats)
    assert stats["checks"] < stats["iterations"]
    assert torch.allclose(p_cpu, p_gpu.cpu(), rtol=1e-4, atol=1e-7)
    assert torch.allclose(b_cpu, b_gpu.cpu(), rtol=1e-4)


def test_cuda_evaluation_and_a_few_generations_match_the_cpu():
    g = gen(0)
    parent = random_mlp([30, 24, 24, 5], g)
    batches = [(torch.rand(40, 30, generator=g), torch.randint(0, 5, (40,), generator=g)) for _ in range(3)]
    pop = l1_population(parent, 10, 0.9, 0.3)
    cpu = Evaluator(parent, batches, TSNE(10.0, backend=resolve("cpu", "torch"))).evaluate(pop, 0)
    gpu_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    gpu = Evaluator(to(parent, "cuda"), gpu_batches, TSNE(10.0, backend=resolve("cuda"))).evaluate(
        l1_population(to(parent, "cuda"), 10, 0.9, 0.3), 0)
    assert torch.allclose(cpu.accuracy, gpu.accuracy)
    assert torch.allclose(cpu.similarity, gpu.similarity, rtol=1e-3, atol=1e-5)
    evaluator = Evaluator(to(parent, "cuda"), gpu_batches, TSNE(10.0, backend=resolve("cuda")))
    ecomp = EComp(evaluator, Weights(1, 2, 1), MutationSpec(rate=0.5), gen(4))
    records = list(ecomp.run(l1_population(to(parent, "cuda"), 10, 0.9, 0.3), epochs=1))
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(list(r.metrics.values()))).all() for r in records)


@pytest.mark.parametrize("n_hidden", [1, 2, 3])
def test_cuda_mutation_is_gathered_and_equals_the_cpu_bit_for_bit(n_hidden):
    from ecomp.core.mutation import mutate_

    parent = random_mlp([20, *[16 - 2 * l for l in range(n_hidden)], 4], gen(0))
    cpu = l1_population(parent, 12, 1.0, 0.2)
    gpu = l1_population(to(parent, "cuda"), 12, 1.0, 0.2)
    assert mutate_(cpu, 0.5, 0.5, 1.5, gen(5)) == mutate_(gpu, 0.5, 0.5, 1.5, gen(5))   # gathered: the default
    assert all(torch.equal(x, y.cpu()) for x, y in zip([cpu.first_w, *cpu.layer_w], [gpu.first_w, *gpu.layer_w]))


def test_cuda_mixed_widths_forward_is_padded_and_matches_the_cpu_loop():
    from ecomp.kernels.forward import forward

    parent = random_mlp([20, 16, 14, 4], gen(0))
    cpu = l1_population(parent, 9, 1.0, 0.2)
    gpu = l1_population(to(parent, "cuda"), 9, 1.0, 0.2)
    x = torch.rand(30, 20, generator=gen(1))
    logits_c, hidden_c, _ = forward(cpu, x)
    logits_g, hidden_g, stacked = forward(gpu, x.cuda())
    assert stacked is not None and stacked[0].shape[1] == max(w[0] for w in gpu.widths)   # the padded path
    assert torch.allclose(logits_c, logits_g.cpu(), rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b.cpu(), rtol=1e-4, atol=1e-5) for la, lb in zip(hidden_c, hidden_g) for a, b in zip(la, lb))


# -- convolutional populations on the GPU ---------------------------------------------------------

def lenet(image, classes):
    from ecomp.nets import convnet

    plan = convnet.lenet5(image, classes, channels=(4, 8), hidden=(16,))
    return plan, convnet.build_module(plan)


def resnet8(image, classes):
    from ecomp.nets.resnet import cifar_resnet

    plan = cifar_resnet(image, classes, 8, (8, 16, 32))
    return plan, plan.build(batchnorm=True).eval()


@pytest.mark.parametrize("make", [lenet, resnet8])
def test_cuda_population_forward_and_evolution_equal_the_cpu(make):
    """A CNN's and a ResNet's grouped pass on the GPU (the GPU's default) against the CPU loop."""
    torch.manual_seed(0)
    plan, model = make((1, 28, 28), 10)
    parent = plan.network(model)
    cpu = l1_population(parent, 8, 0.9, 0.3)
    gpu = l1_population(to(parent, "cuda"), 8, 0.9, 0.3)
    x = torch.rand(32, 784, generator=gen(0))
    ref, _ = cpu.run_each(x)
    fast, hidden, _ = net_forward.forward(gpu, x.cuda())
    torch.testing.assert_close(fast.cpu(), ref, rtol=1e-3, atol=1e-3)
    assert hidden[0][0].is_cuda
    batches = [(x.cuda(), torch.randint(0, 10, (32,), generator=gen(1)).cuda())]
    measure = TSNE(backend=resolve("cuda", "torch"))
    ecomp = EComp(Evaluator(to(parent, "cuda"), batches, measure), Weights(1, 2, 1), MutationSpec(), gen(2))
    records = list(ecomp.run(gpu, 2))
    assert len(records) == 3 and ecomp.population.device.type == "cuda"
