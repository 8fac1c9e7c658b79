"""How far the golden histories move across the compute paths one machine can reach.

Runs the golden records (``test_golden.RECORDS``, through ``test_golden.run``) in a fresh process for every combination
of ATen's vector width (``ATEN_CPU_CAPABILITY``), MKL's code path (``MKL_ENABLE_INSTRUCTIONS``),
the similarity kernels (the C library's AVX2 or baseline copy, or PyTorch) and, for a few, one
thread instead of two; compares each with the recorded golden and prints, per path, whether it
is bit-identical, whether every count matches, and the largest deviation of the floats
(similarity, fitness): relative where the recorded value is at least ``SMALL`` in size,
absolute below it (a relative error means little near 0). ``test_golden.RTOL``/``ATOL`` are set from this table.

    python tests/golden_spread.py [--out spread.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL = 1e-2

CHILD = """
import json, sys
import test_golden as g
from ecomp.kernels.arithmetic import fingerprint
kernels = sys.argv[1]
out = {}
for name in g.RECORDS:
    history, metrics, used = g.run(name, kernels)
    out[name] = {"history": history, "metrics": metrics}
print(json.dumps({"fingerprint": fingerprint(used == "native"), "runs": out}))
"""


def paths() -> list[dict[str, str]]:
    out = []
    for cap, mkl, sim in itertools.product(("default", "avx2", "avx512"), ("", "AVX2", "SSE4_2"),
                                           ("native", "native-baseline", "torch")):
        env = {"ATEN_CPU_CAPABILITY": cap, "kernels": "torch" if sim == "torch" else "native"}
        if mkl:
            env["MKL_ENABLE_INSTRUCTIONS"] = mkl
        if sim == "native-baseline":
            env["ECOMP_KERNEL_ISA"] = "baseline"
        out.append(env)
    for sim in ("native", "torch"):
        out.append({"ATEN_CPU_CAPABILITY": "avx512", "kernels": sim, "OMP_NUM_THREADS": "1"})
    return out


def deviations(runs: dict, golden: dict) -> dict[str, float | bool]:
    import test_golden as g

    rel = abs_ = 0.0
    counts_equal, identical = True, True
    for scenario, rec in golden["scenarios"].items():
        got = runs[scenario]
        identical &= got["history"] == rec["history"] and all(got["metrics"][k] == v for k, v in rec["metrics"].items())
        pairs = [(k, r[k], w) for r, want in zip(got["history"], rec["history"]) for k, w in want.items()]
        pairs += [(k, got["metrics"][k], w) for k, w in rec["metrics"].items()]
        for key, value, want in pairs:
            if g.is_count(key):
                counts_equal &= value == want
            elif abs(want) < SMALL:
                abs_ = max(abs_, abs(value - want))
            else:
                rel = max(rel, abs(value - want) / abs(want))
    return {"identical": identical, "counts_equal": counts_equal, "max_rel": rel, "max_abs": abs_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table and every run as JSON here")
    args = parser.parse_args()
    golden = json.loads((HERE / "data" / "golden_histories.json").read_text())
    rows = []
    for path in paths():
        env = {k: v for k, v in os.environ.items()
               if k not in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ECOMP_KERNEL_ISA", "OMP_NUM_THREADS")}
        env.update({k: v for k, v in path.items() if k != "kernels"})
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run([sys.executable, "-c", CHILD, path["kernels"]], env=env, cwd=tmp,
                                 capture_output=True, text=True, check=True)
        got = json.loads(res.stdout.strip().splitlines()[-1])
        row = {"path": path, "fingerprint": got["fingerprint"], **deviations(got["runs"], golden), "runs": got["runs"]}
        rows.append(row)
        print(f"{' '.join(f'{k}={v}' for k, v in path.items()):75s} aten={got['fingerprint']['aten_capability']:7s} "
              f"sim={got['fingerprint']['similarity']:16s} identical={row['identical']!s:5s} "
              f"counts={row['counts_equal']!s:5s} rel={row['max_rel']:.2e} abs(<{SMALL})={row['max_abs']:.2e}", flush=True)
    print(f"largest: rel {max(r['max_rel'] for r in rows):.3e}, abs {max(r['max_abs'] for r in rows):.3e}; "
          f"counts equal on every path: {all(r['counts_equal'] for r in rows)}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
