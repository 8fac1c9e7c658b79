"""``python -m ecomp.app.prepare [overrides...]``: unpack the data and train (or find) the parent.

Used by ``make run``/``make test`` and by sweeps before jobs start, so that the
parent is trained once, never once per job.
"""

from __future__ import annotations

import sys
import time

from hydra import compose, initialize_config_dir

from ecomp.app.cli import CONF_DIR, check_overrides, fail
from ecomp.app.config import register_configs
from ecomp.errors import EcompError


def main(argv: list[str]) -> None:
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=check_overrides(argv))
    from ecomp.app.parents import load_split, prepare_parent
    from ecomp.app.spec import build
    from ecomp.nets.structure import accuracy

    try:
        spec = build(cfg)
        t = time.perf_counter()
        _, parent = prepare_parent(spec.parent, spec.data)
        test = load_split(spec.data, train=False)
        print(f"parent ready ({time.perf_counter() - t:.1f} s): test accuracy "
              f"{accuracy(parent, test.x, test.y):.4f}")
    except EcompError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main(sys.argv[1:])
