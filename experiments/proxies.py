"""Which cheap score predicts a width candidate's accuracy after fine-tuning?

For ``n`` candidates drawn at one MACs budget (``random_search``'s draw: ``U(keep_low, 1)`` per
group, repaired into the budget), each score of :mod:`ecomp.widths.scores` and the accuracy after
the same short fine-tuning (``epochs`` of Adam at ``lr`` on the run's subset, every candidate with
the same batch order) on the validation images the scores do not read. Then Spearman's and
Kendall's rank correlation of each score with it (scipy.stats), each with a percentile bootstrap
95 % interval over candidates (numpy resampling, 2,000 resamples, fixed seed), and one scatter
panel per score.

    python experiments/proxies.py parent=cnn --n 100 --out reports/proxies
    python experiments/proxies.py parent=resnet --n 30 --out reports/proxies_resnet

The positional arguments are run.py's overrides (the parent, the data, ``seed``); the candidates'
rows are written to ``<out>/candidates.csv`` as they are measured, and a rerun with the same
``--out`` continues from them.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # noqa: E402  (run as a script from anywhere)

SCORES = ("accuracy", "adaptive_bn", "similarity", "cka")
RESAMPLES = 2_000


def correlations(table: pd.DataFrame, target: str = "tuned", seed: int = 0) -> pd.DataFrame:
    """Per score: Spearman and Kendall of the score with ``target``, each with a bootstrap 95 % interval."""
    rng = np.random.default_rng(seed)
    y = table[target].to_numpy(float)
    draws = rng.integers(0, len(y), size=(RESAMPLES, len(y)))
    rows = []
    for score in [s for s in SCORES if s in table]:
        x = table[score].to_numpy(float)
        row = {"score": score, "n": len(x)}
        for name, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
            row[name] = float(fn(x, y)[0])
            boot = np.array([fn(x[d], y[d])[0] for d in draws])
            boot = boot[np.isfinite(boot)]
            row[f"{name}_low"], row[f"{name}_high"] = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
        rows.append(row)
    return pd.DataFrame(rows).sort_values("spearman", ascending=False, ignore_index=True)


def markdown(corr: pd.DataFrame, n: int, budget: float, parent: str, cost: dict[str, float]) -> str:
    lines = ["| score | Spearman (95 % CI) | Kendall (95 % CI) | seconds per candidate |", "|---|---|---|---|"]
    for r in corr.itertuples(index=False):
        lines.append(f"| {r.score} | {r.spearman:.3f} ({r.spearman_low:.3f} to {r.spearman_high:.3f}) | "
                     f"{r.kendall:.3f} ({r.kendall_low:.3f} to {r.kendall_high:.3f}) | {cost.get(r.score, math.nan):.2f} |")
    best = corr.iloc[0]
    lines += ["", f"{n} candidates of {parent} at {budget:g} of the parent's MACs. Best ranking score: "
              f"**{best.score}** (Spearman {best.spearman:.3f})."]
    return "\n".join(lines) + "\n"


def figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [s for s in SCORES if s in table]
    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.4), sharey=True)
    for ax, s in zip(np.atleast_1d(axes), scores):
        rho = stats.spearmanr(table[s], table.tuned)[0]
        ax.scatter(table[s], table.tuned, s=10, alpha=0.7)
        ax.set(xlabel=f"{s} score", title=f"{s}: Spearman {rho:.2f}")
    np.atleast_1d(axes)[0].set_ylabel("accuracy after fine-tuning")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def setup(overrides: list[str]):
    """The parent, the run's data and the backend of ``run.py <overrides>`` (its seed's subsets)."""
    from hydra import compose, initialize_config_dir

    from ecomp.app.cli import CONF_DIR
    from ecomp.app.config import register_configs
    from ecomp.app.parents import prepare_parent
    from ecomp.app.spec import build
    from ecomp.nets import data as data_mod

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["method=random_search", *overrides])
    spec = build(cfg)
    train, parent = prepare_parent(spec.parent, spec.data)
    gen = torch.Generator().manual_seed(spec.seed)
    run_data = data_mod.draw_run_data(train, spec.data.train_size, spec.data.val_size, gen)
    return spec, parent, run_data, gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "proxies")
    args = ap.parse_args()

    from ecomp.methods.width_search import score_data
    from ecomp.nets.structure import accuracy
    from ecomp.nets.training import fine_tune
    from ecomp.widths.scores import score_class
    from ecomp.widths.space import WidthSpace

    spec, parent, run_data, gen = setup(args.overrides)
    m = spec.method
    data, pick = score_data(run_data, m.score_size, m.bn_batches, spec.data.batch_size, "cpu")
    space = WidthSpace(parent, args.macs, m.tolerance)
    scorers = {s: score_class(s)(parent, data, spec.backend) for s in SCORES}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "candidates.csv"
    done = pd.read_csv(path) if path.exists() else pd.DataFrame()
    draw = torch.Generator().manual_seed(1000 + spec.seed)
    keeps = [space.sample(draw, m.keep_low) for _ in range(args.n)]      # the same draws on a rerun
    rows = done.to_dict("records")
    t = run_data.train
    for i, keep in enumerate(keeps[len(rows):], start=len(rows)):
        widths = space.widths(keep)
        net, kept = space.network(widths), space.kept_units(widths)
        row = {"candidate": i, **{f"width_{g}": w for g, w in enumerate(widths)}, "macs_ratio": space.macs_ratio(widths)}
        for s, scorer in scorers.items():
            t0 = time.perf_counter()
            row[s] = scorer(net, kept)
            row[f"{s}_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tuned = fine_tune(net, t.x, t.y, args.epochs, m.lr, spec.data.batch_size, torch.Generator().manual_seed(spec.seed))
        row["tuned"], row["finetune_seconds"] = accuracy(tuned, pick.x, pick.y), time.perf_counter() - t0
        rows.append(row)
        pd.DataFrame(rows).to_csv(path, index=False)
        print(f"{i + 1}/{args.n} {widths} tuned {row['tuned']:.4f}", flush=True)
    table = pd.DataFrame(rows)
    corr = correlations(table)
    cost = {s: float(table[f"{s}_seconds"].mean()) for s in SCORES}
    corr.to_csv(args.out / "correlations.csv", index=False)
    parent_name = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("parent=")), "mlp")
    (args.out / "correlations.md").write_text(markdown(corr, len(table), args.macs, parent_name, cost))
    figure(table, args.out / "proxies.png")
    print((args.out / "correlations.md").read_text())


if __name__ == "__main__":
    main()
