"""The similarity's Gram matrices by the C kernel against torch's batched GEMM, per feature width.

    python benchmarks/bench_grams.py              # 100 sets of 100 points at each width, 5 repeats
    python benchmarks/bench_grams.py --repeats 9 --widths 1024,2048,12544

Why: the t-SNE measure's native path makes each point set's Gram in C, fused with its perplexity
search while the set sits in cache (the MLP's sets and LeNet-5's later ones: 84 to 400 features).
LeNet-5's first stage (1,176 features) and a residual network's feature maps (3,136 to 12,544)
are wide enough for a GEMM library's blocking to win: sets from
``ecomp.kernels.native.BLAS_GRAM_WIDTH`` features on take that path (``native.is_wide``).
Prints medians, the ratio C / BLAS measured in the same process, and the largest relative
difference of the two Grams.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from bench_conv import median_seconds  # noqa: E402  (this folder is the script's: sys.path[0])
from ecomp.kernels import native  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,768,1024,1176,2048,3136,6272,12544")
    ap.add_argument("--sets", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.sets} sets of 100 points; "
          f"BLAS_GRAM_WIDTH = {native.BLAS_GRAM_WIDTH}")
    print(f"{'width':>7}{'C ms':>9}{'BLAS ms':>9}{'C/BLAS':>8}{'rel diff':>10}  path")
    for w in (int(v) for v in args.widths.split(",")):
        acts = [torch.rand(100, w) for _ in range(args.sets)]
        c = median_seconds(lambda: native.grams_acts(acts, 100), args.repeats)
        blas = median_seconds(lambda: native.blas_grams(acts, 100), args.repeats)
        g1, g2 = native.grams_acts(acts[:3], 100), native.blas_grams(acts[:3], 100)
        diff = float((g1 - g2).abs().max() / g1.abs().max())
        print(f"{w:>7}{c * 1e3:>9.1f}{blas * 1e3:>9.1f}{c / blas:>8.2f}{diff:>10.1e}  "
              f"{'BLAS' if native.is_wide(acts[0]) else 'C'}")


if __name__ == "__main__":
    main()
