"""Time one generation's similarity with each measure, the paper's native t-SNE as the baseline.

    python benchmarks/bench_similarity.py            # 15 paired repetitions
    python benchmarks/bench_similarity.py --reps 30

On the paper's defaults (the cached 784-256-256-10 parent, 100 networks, a batch of
100 images), for two populations: the initial one (100 widths, the loop path) and one
architecture at keep 0.75 (the batched path, as from about generation 35 on). Times
:meth:`SimilarityMeasure.score` on the population's hidden activations (the forward
pass is done once, outside the timing), the measures alternating in every repetition
so that the machine's drift hits all alike. Prints medians and ratios to t-SNE native.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere  # noqa: E402

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from ecomp.kernels import c_library  # noqa: E402
from ecomp.kernels.backend import resolve  # noqa: E402
from ecomp.app.cli import CONF_DIR  # noqa: E402
from ecomp.app.config import register_configs  # noqa: E402
from ecomp.nets.data import random_subset  # noqa: E402
from ecomp.core.fitness import Evaluator  # noqa: E402
from ecomp.core.initialiser import l1_population  # noqa: E402
from ecomp.measures.cka import LinearCKA  # noqa: E402
from ecomp.measures.tsne import TSNE  # noqa: E402
from ecomp.app.parents import prepare_parent  # noqa: E402
from ecomp.app.spec import build  # noqa: E402
from ecomp.kernels.forward import forward  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config")
    spec = build(cfg)
    train, parent = prepare_parent(spec.parent, spec.data)
    sub = random_subset(train, 100, torch.Generator().manual_seed(0))
    batches = [(sub.x, sub.y)]
    measures = {"tsne (native)": TSNE(backend=resolve("cpu", "native"))} if c_library.available() else {}
    measures.update({"tsne (torch)": TSNE(backend=resolve("cpu", "torch")), "cka": LinearCKA()})
    base = next(iter(measures))
    kr = cfg.population.keep_ratio
    for label, pop in (("initial population, 100 widths", l1_population(parent, 100, kr.high, kr.low)),
                       ("one architecture, keep 0.75", l1_population(parent, 100, 0.75, 0.75))):
        with torch.no_grad():
            _, hidden, stacked = forward(pop, sub.x)
            states = {name: Evaluator(parent, batches, measure=m)._parent_state(0) for name, m in measures.items()}
            times = {name: [] for name in measures}
            for _ in range(a.reps + 1):                                       # the first is a warm-up
                for name, m in measures.items():
                    t = time.perf_counter()
                    m.score(hidden, stacked, [states[name]], 100)
                    times[name].append(time.perf_counter() - t)
        print(f"\n{label} ({torch.get_num_threads()} threads, medians of {a.reps}):")
        med = {name: statistics.median(ts[1:]) for name, ts in times.items()}
        for name, s in med.items():
            print(f"  {name:<14} {1000 * s:8.2f} ms per generation   {s / med[base]:6.2f} x {base}")


if __name__ == "__main__":
    main()
