"""What a smaller network buys in wall time: speed-up over the parent at batch 1 and 256, against
its MAC ratio, on this machine's CPU.

    python benchmarks/bench_speedup.py                                    # LeNet-5, L1-pruned at 8 keeps
    python benchmarks/bench_speedup.py --store sqlite:////path/mlflow.db  # + every CNN run's returned network

The networks: the parent (LeNet-5 of ``parent=cnn``, random weights: speed does not depend on
them) pruned by EComp's L1 rule at keeps 0.2 ... 0.9 (the shapes EComp's population holds),
and with ``--store`` the returned networks (``best_network.pt``) of the store's FINISHED CNN
runs. Each is timed as its ``nn.Sequential`` module, median of ``--repeats`` calls after a
warm-up, in the same process as the parent it is compared with.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from ecomp.core.initialiser import l1_population  # noqa: E402
from ecomp.nets import convnet  # noqa: E402
from ecomp.methods.metrics import latency_ms  # noqa: E402
from ecomp.nets.network import load_network  # noqa: E402
from ecomp.nets.convnet import plan_size  # noqa: E402

KEEPS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def median_ms(net, batch: int, repeats: int) -> float:
    """The logged latency's measurement (:func:`ecomp.methods.metrics.latency_ms`) at ``batch`` random images."""
    c, h, w = net.plan.in_shape
    return latency_ms(net, torch.rand(batch, c * h * w), warmup=5, repeats=repeats)


def store_networks(uri: str) -> list[tuple[str, convnet.ConvNet]]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    out = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and params.`parent.kind` = 'cnn'"):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = client.download_artifacts(run.info.run_id, "best_network.pt", tmp)
                    client.download_artifacts(run.info.run_id, "best_network.pt.json", tmp)
                except Exception:  # noqa: BLE001 - a run without its network file is skipped
                    continue
                out.append((run.info.run_name, load_network(Path(path))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--store", help="an MLflow tracking URI whose CNN runs' returned networks to time as well")
    args = ap.parse_args()
    torch.manual_seed(0)
    plan = convnet.lenet5((1, 28, 28), 10)
    parent = convnet.from_module(convnet.build_module(plan), plan)
    nets = [(f"l1 keep {k:g}", l1_population(parent, 1, k, k).network(0)) for k in KEEPS]
    if args.store:
        nets += store_networks(args.store)
    base = {b: median_ms(parent, b, args.repeats) for b in (1, 256)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats}")
    print(f"parent LeNet-5: {plan_size(plan, 'macs')} MACs, batch 1 {base[1]:.3f} ms, batch 256 {base[256]:.2f} ms")
    print(f"{'network':<28} {'MAC ratio':>9} {'speed-up b1':>11} {'speed-up b256':>13}")
    for name, net in nets:
        ratio = plan_size(net.plan, "macs") / plan_size(plan, "macs")
        b1, b256 = median_ms(net, 1, args.repeats), median_ms(net, 256, args.repeats)
        print(f"{name:<28} {ratio:>9.3f} {base[1] / b1:>10.2f}x {base[256] / b256:>12.2f}x")


if __name__ == "__main__":
    main()
