"""How EComp scales: time per generation (by phase) and peak memory while one factor grows.

    python benchmarks/bench_scaling.py                 # the four sweeps below, 2 rounds: about 9-11 minutes
    python benchmarks/bench_scaling.py --quick         # two points per factor, 1 round: about 2 minutes
    python benchmarks/bench_scaling.py --from-csv reports/scaling/scaling.csv   # redraw table and plot
    python benchmarks/bench_scaling.py --factors population batch --gens 12
    python benchmarks/bench_scaling.py --device cuda   # on a GPU (adds its peak memory)

One factor grows while the others stay at the paper's defaults (population 100, a
784-256-256-10 parent, i.e. two hidden layers of width 256, batches of 100 images):

    population  100, 200, 400, 1000
    width       256, 512, 1024, 2048     (every hidden layer)
    depth       2, 3, 4                  (hidden layers of width 256)
    batch       100, 200, 500, 1000      (images per generation; t-SNE is quadratic in it)

Every point runs in a fresh subprocess (so its peak RSS, ``ru_maxrss``, is its own), through
the real code path: :func:`ecomp.core.initialiser.l1_population` (the paper's L1-pruned initial
population, keep ratios 0.9 .. 0.207), :class:`ecomp.core.fitness.Evaluator` with the t-SNE measure
(native kernels where they build) and :class:`ecomp.core.evolution.EComp` with a
:class:`ecomp.timing.PhaseTimer`, on FashionMNIST training images. The parent has *random*
weights of the wanted shape (``nn.Linear``'s default initialisation, seeded), not a trained
network: training a 2048-wide parent would cost more than the whole sweep, and the work per
generation depends on the shapes, not on the weights' values. After ``--warmup`` generations,
``--gens`` generations are timed one by one; the table gives medians. These are the first
generations of a run, when the population still has many widths (the per-network loop path of
the forward pass); later in a run it converges to one architecture and the batched path takes
over (``bench_run.py`` times whole runs). Tracking (MLflow) is not run here: it logs 12
scalars per generation whatever the factors (about 1 ms, ``bench_run.py``).

What the arithmetic predicts, per point, from the population actually evaluated:

* forward: the FLOPs of every network's forward pass (``2 x batch x sum of in x out``);
* similarity: ``pop x layers x batch^2`` (the perplexity search, joint and KL per point set)
  plus the Gram products, ``pop x batch^2 x sum of widths``, weighted as in the base point is
  not knowable from counts alone: the prediction uses the search term only, so the Gram's
  share shows up as a measured/predicted ratio above 1 when widths grow;
* operators: the population's weights (crossover writes every child once);
* the total: each phase's time at the base point scaled by its predicted growth.

Also per point: minor page faults per generation (fresh allocations over glibc's 32 MiB mmap
threshold show up there), the final pick's time per batch (``PICK_GROUP`` batches in one
forward pass, as :meth:`ecomp.core.evolution.EComp.pick_best` does) and an estimated whole run of
the paper's 10,000-image subset: ``(10,000 / batch + 1)`` generations at the median time plus a
``10,000 / batch``-batch pick (no set-up, no tracking; the later, one-architecture generations of
a real run are faster than these first ones).

The fitted exponent is the least-squares slope of log(time) on log(factor); the predicted
exponent is the same fit on the predicted times. Writes ``scaling.csv`` and ``scaling.png``
(log-log, one panel per factor) to ``--out`` (default ``reports/scaling/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere  # noqa: E402

DEFAULTS = {"population": 100, "width": 256, "depth": 2, "batch": 100}
SWEEPS = {"population": [100, 200, 400, 1000], "width": [256, 512, 1024, 2048],
          "depth": [2, 3, 4], "batch": [100, 200, 500, 1000]}
QUICK = {"population": [100, 400], "width": [256, 1024], "depth": [2, 4], "batch": [100, 500]}
PHASES = ("forward", "similarity", "operators")
INPUT, CLASSES = 784, 10
TRAIN_SIZE = 10_000          # the paper's subset: a run has TRAIN_SIZE / batch generations


# ----------------------------------------------------------------------------- one point (subprocess)
def random_parent(width: int, depth: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    dims = [INPUT] + [width] * depth + [CLASSES]
    return [(lin.weight.detach().clone(), lin.bias.detach().clone())
            for lin in (torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:]))]


def forward_flops(widths: list[tuple[int, ...]], batch: int) -> float:
    total = 0
    for w in widths:
        dims = (INPUT, *w, CLASSES)
        total += sum(a * b for a, b in zip(dims, dims[1:]))
    return 2.0 * batch * total


def run_point(population: int, width: int, depth: int, batch: int, warmup: int, gens: int, seed: int,
              threads: int, device: str = "cpu") -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from ecomp.kernels import c_library
    from ecomp.kernels.backend import resolve
    from ecomp.measures.tsne import TSNE
    from ecomp.nets.data import load
    from ecomp.core.evolution import EComp, MutationSpec
    from ecomp.core.fitness import Evaluator, Weights
    from ecomp.core.initialiser import l1_population
    from ecomp.kernels.runtime import keep_freed_memory
    from ecomp.nets.mlp import MLP
    from ecomp.timing import PhaseTimer

    keep_freed_memory()                                      # as run_experiment does
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = torch.Generator().manual_seed(seed)
    n_batches = 1 + warmup + gens
    root = ROOT / "data"
    try:
        train = load(root, train=True)
        idx = torch.randperm(train.x.shape[0], generator=g)[:n_batches * batch]
        x, y = train.x[idx], train.y[idx]
        data = "fashion_mnist"
    except Exception:                                        # no data here: random images (same shapes)
        x = torch.rand(n_batches * batch, INPUT, generator=g)
        y = torch.randint(0, CLASSES, (n_batches * batch,), generator=g)
        data = "random"
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    batches = [(x[s:s + batch].to(dev), y[s:s + batch].to(dev)) for s in range(0, x.shape[0], batch)]
    parent = MLP([(w.to(dev), b.to(dev)) for w, b in random_parent(width, depth, seed)])
    timer = PhaseTimer(resolve(device).synchronize)          # synchronises a GPU at every phase boundary
    ev = Evaluator(parent, batches, TSNE(backend=resolve(device)), timer=timer)
    ecomp = EComp(ev, Weights(1, 2, 1), MutationSpec(), g, timer)
    pop = l1_population(parent, population, 0.9, 0.207)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    rows, last, t_last, f_last = [], dict(timer.seconds), time.perf_counter(), faults()
    for rec in ecomp.run(pop, epochs=1):
        if cuda:
            torch.cuda.synchronize()
        now, sec, f_now = time.perf_counter(), dict(timer.seconds), faults()
        if rec.generation > warmup:
            p = ecomp.population
            rows.append({"total": now - t_last, **{k: sec.get(k, 0.0) - last.get(k, 0.0) for k in PHASES},
                         "faults": f_now - f_last,
                         "flops": forward_flops(p.widths, batch), "params": float(p.sizes("params").sum()),
                         "units": float(p.sizes("units").sum()), "uniform": p.uniform})
        last, t_last, f_last = sec, time.perf_counter(), faults()
    # the final pick: the last population on PICK_GROUP batches at once (one forward pass), per batch
    from ecomp.core.evolution import PICK_GROUP

    ks = list(range(min(PICK_GROUP, len(batches))))
    ev.evaluate_many(ecomp.population, ks)
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    ev.evaluate_many(ecomp.population, ks)
    if cuda:
        torch.cuda.synchronize()
    pick = (time.perf_counter() - t) / len(ks)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("total", *PHASES, "faults", "flops", "params", "units")}
    med["pick"] = pick
    return {**med, "gens": len(rows), "uniform_share": sum(r["uniform"] for r in rows) / len(rows),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "gpu_peak": torch.cuda.max_memory_allocated(dev) if cuda else 0, "device": device,
            "rss_before": rss0 * 1024, "rss_data": rss_data * 1024, "kernels": ev.backend.kernels,
            "isa": c_library.isa() if ev.backend.native_similarity else "", "threads": torch.get_num_threads(), "data": data}


def measure(point: dict, warmup: int, gens: int, seed: int, threads: int, device: str = "cpu") -> dict:
    """One point in a fresh interpreter (its own peak memory)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(
        {**point, "warmup": warmup, "gens": gens, "seed": seed, "threads": threads, "device": device})]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"point {point} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t
    return out


# ----------------------------------------------------------------------------- the sweep
def run_estimate(r: dict) -> dict:
    """A whole run of the paper's subset: generation 0 + n generations + an n-batch pick."""
    n = TRAIN_SIZE // int(r["batch"])
    r["run_est"] = (n + 1) * r["total"] + n * r["pick"]
    return r


def from_csv(path: Path) -> tuple[dict[str, list[dict]], str]:
    """The results of an earlier run of this script, from its CSV (to redraw the table and plot)."""
    results: dict[str, list[dict]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            r = {k: (v if k in ("factor", "date", "rounds", "device") else
                     (v == "True") if k == "uniform" else float(v)) for k, v in row.items() if v != ""}
            for k in ("value", "population", "width", "depth", "batch"):
                r[k] = int(r[k])
            results.setdefault(r["factor"], []).append(run_estimate(r))
    for factor, rows in results.items():
        predicted(rows, factor)
    return results, next(iter(results.values()))[0]["date"]


def predicted(rows: list[dict], factor: str) -> None:
    """Adds ``pred_<phase>`` and ``pred_total`` (seconds) to each row of one factor's sweep."""
    base = rows[0]

    def sim_work(r):
        return r["population"] * r["depth"] * r["batch"] ** 2

    work = {"forward": lambda r: r["flops"], "similarity": sim_work, "operators": lambda r: r["params"]}
    for r in rows:
        r["pred_total"] = 0.0
        for ph in PHASES:
            r[f"pred_{ph}"] = base[ph] * work[ph](r) / work[ph](base)
            r["pred_total"] += r[f"pred_{ph}"]
        r["pred_total"] += base["total"] - sum(base[ph] for ph in PHASES)   # the rest, taken as constant


def slope(xs: list[float], ys: list[float]) -> float:
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two points per factor, fewer generations")
    ap.add_argument("--factors", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    ap.add_argument("--warmup", type=int, default=2, help="generations run before timing")
    ap.add_argument("--gens", type=int, default=None, help="timed generations per point (default 8, quick 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=None,
                    help="passes over all points, interleaved, so that the machine's drift hits every point "
                         "alike; each figure is the median over rounds of the per-round medians (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch (and native kernel) threads per point; 0 = torch's default (all cores). "
                         "Default 1: on a shared 2-core VM, two OpenMP threads beside another busy process "
                         "spin against each other and the times swing by 5-20x")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:<index>")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "scaling")
    ap.add_argument("--from-csv", type=Path, help="redraw the table, exponents and plot from an earlier scaling.csv")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(run_point(**json.loads(a.worker))))
        return
    if a.from_csv:
        a.out.mkdir(parents=True, exist_ok=True)
        results, stamp = from_csv(a.from_csv)
        print(f"from {a.from_csv} ({stamp})")
        report(results, a.out, stamp)
        return
    if a.device != "cpu":
        import torch

        if not a.device.startswith("cuda") or not torch.cuda.is_available():
            raise SystemExit(f"bench_scaling: --device={a.device}: cpu, or cuda where a GPU is present "
                             f"(torch.cuda.is_available() is {torch.cuda.is_available()})")
    gens = a.gens or (4 if a.quick else 8)
    sweeps = QUICK if a.quick else SWEEPS
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"bench_scaling {stamp}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{a.warmup} warm-up + {gens} timed generations per point, medians; a fresh process per point",
          flush=True)
    rounds = a.rounds or (1 if a.quick else 2)
    points = {}
    for factor in a.factors:
        for value in sweeps[factor]:
            point = {**DEFAULTS, factor: value}
            points.setdefault(tuple(point.values()), point)
    runs: dict[tuple, list[dict]] = {k: [] for k in points}
    for r in range(rounds):
        for key, point in points.items():
            m = measure(point, a.warmup, gens, a.seed, a.threads, a.device)
            runs[key].append(m)
            print(f"  round {r + 1}/{rounds}  " + " ".join(f"{k} {v:<5}" for k, v in point.items())
                  + f": {1e3 * m['total']:8.1f} ms/generation  "
                  + "  ".join(f"{ph} {1e3 * m[ph]:7.1f}" for ph in PHASES)
                  + f"  faults {m['faults']:7.0f}  peak {m['peak_rss'] / 2 ** 30:5.2f} GiB"
                  + (f"  GPU peak {m['gpu_peak'] / 2 ** 30:5.2f} GiB" if m["gpu_peak"] else "")
                  + f"  ({m['process_s']:.0f} s)",
                  flush=True)
    cache = {}
    for key, ms in runs.items():
        merged = dict(ms[0])
        for k in ("total", *PHASES, "faults", "flops", "params", "units", "pick"):
            merged[k] = statistics.median(m[k] for m in ms)
        merged["peak_rss"] = max(m["peak_rss"] for m in ms)
        merged["gpu_peak"] = max(m.get("gpu_peak", 0) for m in ms)
        merged["rounds"] = ",".join(f"{1e3 * m['total']:.1f}" for m in ms)
        cache[key] = run_estimate({**points[key], **merged})
    results: dict[str, list[dict]] = {}
    for factor in a.factors:
        rows = [dict(cache[tuple({**DEFAULTS, factor: v}.values())], factor=factor, value=v) for v in sweeps[factor]]
        predicted(rows, factor)
        results[factor] = rows
    first = next(iter(cache.values()))
    print(f"\ndevice {a.device}, kernels {first['kernels']} {first['isa']}, {first['threads']} threads, data {first['data']}; "
          f"random-weight parents; tracking not run (constant, ~1 ms/generation)")
    report(results, a.out, stamp)
    print(f"\nwhole benchmark: {time.perf_counter() - t0:.0f} s; wrote {a.out / 'scaling.csv'} and {a.out / 'scaling.png'}")


def report(results: dict[str, list[dict]], out: Path, stamp: str) -> None:
    cols = ["factor", "value", "population", "width", "depth", "batch", "total", *PHASES, "pred_total",
            *(f"pred_{p}" for p in PHASES), "pick", "run_est", "faults", "flops", "params", "units", "peak_rss", "gpu_peak", "device", "uniform_share", "gens",
            "rounds"]
    with open(out / "scaling.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["date", *cols], extrasaction="ignore")
        w.writeheader()
        for rows in results.values():
            for r in rows:
                w.writerow({"date": stamp, **r})
    print("\nms per generation (medians); x = time / the base point's; pred = what the arithmetic predicts; "
          "faults = minor page faults per generation")
    print(f"{'factor':>10} {'value':>6} {'total':>8} {'forward':>8} {'simil.':>8} {'operat.':>8} "
          f"{'x meas':>7} {'x pred':>7} {'meas/pred':>9} {'dominant':>10} {'faults':>7} {'peak GiB':>9} "
          f"{'pick ms':>8} {'run s':>6} {'x run':>6}")
    for factor, rows in results.items():
        b = rows[0]
        for r in rows:
            dom = max(PHASES, key=lambda p: r[p])
            print(f"{factor:>10} {r['value']:>6} {1e3 * r['total']:8.1f} {1e3 * r['forward']:8.1f} "
                  f"{1e3 * r['similarity']:8.1f} {1e3 * r['operators']:8.1f} {r['total'] / b['total']:7.2f} "
                  f"{r['pred_total'] / b['pred_total']:7.2f} {r['total'] / r['pred_total']:9.2f} {dom:>10} {r['faults']:7.0f} "
                  f"{r['peak_rss'] / 2 ** 30:9.2f} {1e3 * r['pick']:8.1f} {r['run_est']:6.1f} "
                  f"{r['run_est'] / b['run_est']:6.2f}")
    print("\ngrowth exponents (log-log least squares over each factor's points): measured (predicted)")
    print(f"{'factor':>10} {'total':>14} " + " ".join(f"{p:>14}" for p in PHASES))
    for factor, rows in results.items():
        if len(rows) < 2:
            continue
        xs = [r["value"] for r in rows]
        cells = [f"{slope(xs, [r[k] for r in rows]):5.2f} ({slope(xs, [r['pred_' + k] for r in rows]):5.2f})"
                 for k in ("total", *PHASES)]
        print(f"{factor:>10} " + " ".join(f"{c:>14}" for c in cells))
    checks(results)
    plot(results, out / "scaling.png")


def checks(results: dict[str, list[dict]]) -> None:
    """The issue's goals, as far as per-generation times answer them."""
    print("\ngoals:")
    pops = {r["value"]: r for r in results.get("population", [])}
    if 100 in pops and 1000 in pops:
        print(f"  population 1000 / 100, time per generation: {pops[1000]['total'] / pops[100]['total']:.2f}x, "
              f"estimated whole run (generations + final pick): {pops[1000]['run_est'] / pops[100]['run_est']:.2f}x "
              f"(goal for a whole run: <= 12x; forward FLOPs ratio {pops[1000]['flops'] / pops[100]['flops']:.2f}x)")
    ws = {r["value"]: r for r in results.get("width", [])}
    if 256 in ws and 1024 in ws:
        t, f = ws[1024]["total"] / ws[256]["total"], ws[1024]["flops"] / ws[256]["flops"]
        print(f"  width 1024 / 256: {t:.2f}x the time, {f:.2f}x the forward FLOPs: {t / f:.2f} of the FLOP "
              f"prediction (goal <= 1.3); forward phase alone {ws[1024]['forward'] / ws[256]['forward'] / f:.2f}")
    peak = max(r["peak_rss"] for rows in results.values() for r in rows)
    print(f"  peak memory, largest point: {peak / 2 ** 30:.2f} GiB (goal < 8 GiB)")
    gpu = max(r.get("gpu_peak", 0) for rows in results.values() for r in rows)
    if gpu:
        print(f"  peak GPU memory (torch.cuda.max_memory_allocated), largest point: {gpu / 2 ** 30:.2f} GiB")


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, (factor, rows) in zip(axes[0], results.items()):
        xs = [r["value"] for r in rows]
        for k, style in (("total", "k-o"), ("forward", "C0-s"), ("similarity", "C1-^"), ("operators", "C2-v")):
            ax.plot(xs, [1e3 * r[k] for r in rows], style, label=k, ms=4)
        ax.plot(xs, [1e3 * r["pred_total"] for r in rows], "k:", label="total, predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(factor)
        ax.set_title(factor)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ms per generation (median)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
