"""Bad configuration fails at start: one line naming key, value and what is allowed; no run created."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, run_cli
from ecomp.errors import DataError

CASES = [
    (["fitness=999"], "fitness='999'"),
    (["fitness.w_acc=-1"], "fitness.w_acc=-1"),
    (["fitness.w_sim=nan"], "fitness.w_sim=nan"),
    (["population.size=1"], "population.size=1"),
    (["population.size=7"], "population.size=7"),
    (["operators.mutation.rate=1.5"], "operators.mutation.rate=1.5"),
    (["operators.mutation.rate=-0.1"], "operators.mutation.rate=-0.1"),
    (["operators.mutation.low=1.2"], "operators.mutation"),
    (["population.keep_ratio.high=1.5"], "population.keep_ratio.high=1.5"),
    (["population.keep_ratio.low=0"], "population.keep_ratio.low=0"),
    (["population.keep_ratio.low=0.8", "population.keep_ratio.high=0.5"], "population.keep_ratio"),
    (["data.batch_size=1000"], "data.batch_size=1000"),
    (["data.batch_size=300"], "data.batch_size=300"),
    (["similarity.perplexity=100"], "similarity.perplexity=100"),
    (["similarity.layers=[5]"], "similarity.layers=[5]"),
    (["similarity.kernels=fast"], "similarity.kernels='fast'"),
    (["fitness.compression=bytes"], "fitness.compression='bytes': one of units, params"),
    (["data=digits", "data.train_size=1300"],
     "data.train_size=1300: an integer in [1, 1297] (data=digits has 1297 training images)"),
    (["parent=checkpoint", "parent.path=/nonexistent/model.pt"], "parent.path='/nonexistent/model.pt': no such file"),
    (["parent=checkpoint"], "parent.path=None: missing: parent=checkpoint reads your network from parent.path="),
    (["evolution.epochs=0"], "evolution.epochs=0"),
    (["device=cuda"], "device='cuda'"),
    (["device=tpu"], "device='tpu'"),
    (["tracking.uri=http://127.0.0.1:9"], "tracking.uri='http://127.0.0.1:9'"),
    (["tracking.uri=./mlruns"], "tracking.uri='./mlruns'"),
    (["method=pruning"], "method='pruning'"),
    (["method=l1_prune", "method.keep=0"], "method.keep=0.0: a fraction in (0, 1]"),
    (["method=l1_finetune", "method.keep=1.5"], "method.keep=1.5: a fraction in (0, 1]"),
    (["method=l1_finetune", "method.epochs=-1"], "method.epochs=-1: an integer >= 0"),
    (["method=distill", "method.temperature=0"], "method.temperature=0.0: a number > 0"),
    (["method=distill", "method.alpha=2"], "method.alpha=2.0: a weight in [0, 1]"),
    (["method=l1_prune", "method.importance=l3"], "method.importance='l3': one of l1, l2, group_l1, taylor"),
    (["method=l1_prune", "method.finetune_epochs=1"],
     "method.finetune_epochs=1: not a setting of method=l1_prune (its settings: keep, importance); "
     "fine-tuning after pruning is method=l1_finetune"),
    (["method=scratch", "method.epochs=2"], "method.epochs=2: not a setting of method=scratch"),
    (["method.finetune_epochs=-2"], "method.finetune_epochs=-2: an integer >= 0"),
    (["method.keep=0.5"], "method.keep=0.5: not a setting of method=ecomp"),
    (["method=l1_finetune", "method.lr=null"], "method.lr=None: method=l1_finetune needs a value"),
    (["method._target_=os.getcwd"], "method._target_='os.getcwd'"),
    (["method._target_=ecomp.methods.base.Method"], "is not a concrete ecomp.methods.base.Method"),
    (["operators.selection.temperature=0"], "operators.selection.temperature=0.0: a number > 0"),
    (["operators.selection.kind=rank"], "operators.selection.kind='rank': one of roulette, tournament"),
    (["operators.selection.kind=tournament", "operators.selection.tournament_size=11"],
     "operators.selection.tournament_size=11: an integer in [1, population.size = 10]"),
    (["operators.selection.elite=3"], "operators.selection.elite=3: an even integer in [0, population.size = 10)"),
    (["operators.selection.elite=10"], "operators.selection.elite=10"),
    (["similarity=umap"], "similarity='umap'"),
    (["similarity=cka", "similarity.perplexity=5"], "similarity.perplexity=5.0: similarity=cka has no such setting"),
    (["similarity._target_=ecomp.measures.base.SimilarityMeasure"], "is not a concrete"),
    (["data.val_size=59501"], "data.val_size=59501: an integer in [0, 60000 - data.train_size = 59500]"),
    (["evolution.precision=float16"], "evolution.precision='float16': one of float32, bfloat16"),
    (["evolution.precision=bfloat16"], "evolution.precision='bfloat16': float32 on an MLP parent"),
    (["evolution.precision=bfloat16", "evolution.evaluator=reference"],
     "evolution.precision='bfloat16': float32 with evolution.evaluator=reference"),
]


# The refusals each checked end to end through run.py as well (one per kind of check: the range
# checks, a method's own keys at composition, the checkpoint reader, the store's reachability).
THROUGH_RUN_PY = ("population.size=7", "method=l1_prune method.finetune_epochs=1",
                  "parent=checkpoint parent.path=/nonexistent/model.pt", "tracking.uri=http://127.0.0.1:9")


def refusal(argv: list[str], capsys) -> list[str]:
    """What run.py prints to stderr for ``argv`` before its run starts, computed in this process by
    the same calls in the same order: the overrides' options, the composition, the run
    specification (:func:`ecomp.app.spec.build`), the store's reachability."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from ecomp.app.cli import CONF_DIR, check_composition, check_overrides, check_parent_choice, fail
    from ecomp.app.config import register_configs
    from ecomp.app.reachable import check_reachable
    from ecomp.app.spec import build
    from ecomp.errors import EcompError

    register_configs()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        argv = check_overrides(argv)
        check_composition(argv)
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=argv, return_hydra_config=True)
        choice = cfg.hydra.runtime.choices.get("parent")
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            check_parent_choice(choice, cfg)
            spec = build(cfg)
            if spec.store.enabled:
                check_reachable(spec.store.uri, spec.store.timeout_s)
        except EcompError as exc:
            fail(str(exc))
    assert exit_.value.code == 2
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("overrides,needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_config_fails_in_one_line_before_any_run(overrides, needle, tmp_path, parent_cache, capsys):
    import torch

    if overrides == ["device=cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present: device=cuda is valid here")
    db = tmp_path / "mlflow.db"
    lines = refusal([*TINY, f"parent.cache_dir={parent_cache}", f"tracking.uri=sqlite:///{db}", *overrides], capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    # nothing was created: no store (so no run, RUNNING or otherwise), no parent trained
    if "tracking.uri" not in " ".join(overrides):
        assert not db.exists()
    if " ".join(overrides) in THROUGH_RUN_PY:               # and as a user meets it
        proc = run_cli("run.py", *TINY, f"parent.cache_dir={parent_cache}", f"tracking.uri=sqlite:///{db}",
                       f"hydra.run.dir={tmp_path / 'out'}", *overrides)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == lines, proc.stderr
        assert "tracking.uri" in " ".join(overrides) or not db.exists()


def test_every_run_py_case_is_a_case():
    assert set(THROUGH_RUN_PY) <= {" ".join(c[0]) for c in CASES}


def test_typo_in_key_fails_at_composition(tmp_path):
    proc = run_cli("run.py", "population.sizee=10", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: invalid config: population.sizee: Key 'sizee' not in 'PopulationConf'"]


def test_wrong_type_fails_at_composition(tmp_path):
    proc = run_cli("run.py", "population.size=many", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid config: population.size: ")


def test_a_refused_run_leaves_no_tracking_helper_holding_its_output(tmp_path):
    """The helper prestarted to import MLflow shares run.py's stdout and stderr: a refusal stops
    it, so the streams end when run.py does (else a caller reading them waits out the import)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "fitness=999", f"hydra.run.dir={tmp_path}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.wait(timeout=600)
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        while chunk := stream.read():          # what run.py wrote; then b"" at the end, or None if held open
            pass
        assert chunk == b"", "the stream is still held open by another process"
        stream.close()
    assert proc.returncode == 2


def test_missing_dataset_names_both_remedies(tmp_path, monkeypatch, parent_cache):
    from ecomp.nets import data, datasets

    with pytest.raises(DataError) as err:
        datasets.prepare(tmp_path / "nowhere", download=False, debian_dir=tmp_path / "no-debian")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.download=true" in msg


def test_truncated_dataset_file_is_named(tmp_path):
    from ecomp.nets import data, datasets

    raw = datasets.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    src = datasets.raw_dir(Path(__file__).resolve().parents[1] / "data")
    for name in datasets.RAW_FILES:
        (raw / name).write_bytes((src / name).read_bytes())
    with open(raw / "train-labels-idx1-ubyte", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is truncated"):
        data.load(tmp_path, train=True)


def test_corrupt_or_mismatched_parent_is_retrained(tmp_path):
    import torch

    from ecomp.nets.data import Split
    from ecomp.nets.mlp import Architecture
    from ecomp.nets.network import load_network
    from ecomp.nets.parent import TrainSpec, cached_parent

    g = torch.Generator().manual_seed(0)
    split = Split(torch.rand(200, 784, generator=g), torch.randint(0, 10, (200,), generator=g))
    spec = TrainSpec(Architecture(784, (8, 8), 10), epochs=1)
    layers, trained = cached_parent(spec, tmp_path, split)
    assert trained
    path = tmp_path / f"parent-{spec.key()}.pt"
    assert not cached_parent(spec, tmp_path, split)[1]          # read from the cache
    path.write_bytes(b"not a checkpoint")                       # corrupt
    assert cached_parent(spec, tmp_path, split)[1]              # retrained, not used
    with pytest.raises(ValueError, match=str(path.name)):
        load_network(path, expected=Architecture(784, (16, 16), 10))


def test_dataset_is_read_once_per_process_until_its_files_change(tmp_path):
    import os
    import shutil

    import torch

    from ecomp.app.caches import Caches
    from ecomp.nets import datasets
    src = datasets.raw_dir(Path(__file__).resolve().parents[1] / "data")
    raw = datasets.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in datasets.RAW_FILES:
        shutil.copy(src / name, raw / name)
    caches = Caches()
    a, b = caches.split("fashion_mnist", tmp_path, False, False), caches.split("fashion_mnist", tmp_path, False, False)
    assert a is b                                              # the same tensors, not read twice
    assert Caches().split("fashion_mnist", tmp_path, False, False) is not a     # nothing shared between caches
    f = raw / "t10k-labels-idx1-ubyte"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    c = caches.split("fashion_mnist", tmp_path, False, False)
    assert c is not a and torch.equal(c.y, a.y)                # re-read after the file changed
    with open(f, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is truncated"):
        caches.split("fashion_mnist", tmp_path, False, False)


def test_config_hash_of_existing_runs_is_unchanged():
    """A run's identity (tag config_hash, used to skip finished runs of a sweep) must not change
    when keys are added: these are the hashes the paper's default run and a default baseline were
    recorded with before the checkpoint, dataset and compression keys existed."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from ecomp.app.cli import CONF_DIR, check_overrides
    from ecomp.app.config import register_configs
    from ecomp.app.spec import build

    register_configs()
    for overrides, expected in (([], "8fb7431dfe84981b"), (["method=l1_finetune"], "48b4fb9af578787a"),
                                (["fitness=020", "seed=3"], "9759e09e75f4a302")):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=check_overrides(overrides))
        assert build(cfg).config_hash == expected
