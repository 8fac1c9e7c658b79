"""The user's own images (``data=folder``, ``data=tensors``): read as built-in data is, split the
same way for every run seed, and every bad input refused in one line before any run exists.
Every file here is made by the test (nothing downloaded)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from ecomp.errors import DataError
from ecomp.nets.user_data import UserData, _read, describe, identity

CLASSES, SIDE = 3, 12


def images(n: int = 240, seed: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``N x C x 12 x 12`` (uint8) whose class is a bright band of rows, and labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    y[:CLASSES] = np.arange(CLASSES)                          # every class present
    x = (rng.random((n, channels, SIDE, SIDE)) * 60).astype(np.uint8)
    for c in range(CLASSES):
        x[y == c, :, 4 * c:4 * (c + 1), :] += 180
    return x, y


def image_folder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    for i, (img, label) in enumerate(zip(x, y)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(root / f"class{label}" / f"{i}.png")
    return root


def tensors(path: Path, **arrays) -> Path:
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, path)
    return path


# -- reading ------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_tensors_read_as_a_builtin_dataset_with_one_test_split_for_every_run(tmp_path, suffix):
    x, y = images()
    path = tensors(tmp_path / f"data{suffix}", x=x, y=y)
    ds = describe(UserData("tensors", str(path)))
    assert (ds.shape, ds.input_dim, ds.classes) == ((1, SIDE, SIDE), SIDE * SIDE, CLASSES)
    assert (ds.n_train, ds.n_test) == (192, 48)                          # test_fraction 0.2
    train, test = ds.read(tmp_path, True, False), ds.read(tmp_path, False, False)
    assert train.x.dtype == torch.float32 and float(train.x.max()) <= 1.0 and train.x.shape == (192, SIDE * SIDE)
    # train and test are disjoint and together all the images, flattened as ToTensor orders them
    every = torch.cat([train.x, test.x])
    assert torch.equal(every.sort(0).values, torch.from_numpy(x).reshape(240, -1).float().div(255).sort(0).values)
    _read.cache_clear()                                                  # read anew, the global RNG elsewhere
    torch.manual_seed(12345)
    again = describe(UserData("tensors", str(path))).read(tmp_path, False, False)
    assert torch.equal(again.x, test.x)                                  # the split depends on split_seed alone
    other = describe(UserData("tensors", str(path), split_seed=1)).read(tmp_path, False, False)
    assert not torch.equal(other.x, test.x)


def test_tensors_with_their_own_test_split_and_normalisation(tmp_path):
    x, y = images(channels=3)
    tx, ty = images(30, seed=1, channels=3)
    path = tensors(tmp_path / "data.npz", x=x, y=y, x_test=tx, y_test=ty)
    ds = describe(UserData("tensors", str(path), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert (ds.n_train, ds.n_test, ds.shape) == (240, 30, (3, SIDE, SIDE))
    test = ds.read(tmp_path, False, False)
    want = (torch.from_numpy(tx).float().div(255) - 0.5) / 0.25
    torch.testing.assert_close(test.x, want.reshape(30, -1))
    assert torch.equal(test.y, torch.from_numpy(ty))


def test_a_folder_reads_as_imagefolder_resized_and_its_own_split_when_it_has_one(tmp_path):
    x, y = images(60)
    flat = image_folder(tmp_path / "flat", x, y)
    ds = describe(UserData("folder", str(flat), size=(8, 8), channels=3))
    assert (ds.shape, ds.classes, ds.n_train + ds.n_test) == ((3, 8, 8), CLASSES, 60)
    split = image_folder(tmp_path / "split" / "train", x, y).parent
    image_folder(split / "test", x[:12], y[:12])
    ds = describe(UserData("folder", str(split), size=(SIDE, SIDE), channels=1))
    assert (ds.n_train, ds.n_test) == (60, 12)
    test = ds.read(tmp_path, False, False)
    # ImageFolder's order: classes sorted, files sorted within each; PNG is lossless, no resize here
    order = sorted(range(12), key=lambda i: (y[i], str(i)))
    assert torch.equal(test.y, torch.from_numpy(y[order]))
    assert torch.equal(test.x, torch.from_numpy(x[order]).reshape(12, -1).float().div(255))


def test_the_parent_cache_key_names_the_data(tmp_path):
    x, y = images()
    path = tensors(tmp_path / "data.npz", x=x, y=y)
    before = identity(UserData("tensors", str(path)))
    assert identity(UserData("tensors", str(path), split_seed=1)) != before
    os.utime(path, ns=(1, 1))                                            # the file changed
    assert identity(UserData("tensors", str(path))) != before


# -- refusals -----------------------------------------------------------------------------------

class Payload:
    """A pickle that, if ever unpickled, writes a file."""
    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def bad_inputs(tmp_path: Path) -> list[tuple[str, str]]:
    x, y = images()
    Payload.marker = str(tmp_path / "payload-ran")
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps({"x": Payload(), "y": torch.as_tensor(y)}))
    np.save(tmp_path / "obj.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "objects.npz", x=np.array([Payload()] * 3, dtype=object), y=y[:3])
    (tmp_path / "fake.npz").write_text("not a zip")
    broken = image_folder(tmp_path / "broken", x[:9], y[:9])
    (broken / "class0" / "zz.png").write_text("not a png")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    return [
        (str(tensors(tmp_path / "labels.npz", x=x, y=y + 1)), "class 0 has no training images"),
        (str(tensors(tmp_path / "negative.npz", x=x, y=y - 1)), "is negative"),
        (str(tensors(tmp_path / "count.npz", x=x, y=y[:10])), "240 images in x but 10 labels in y"),
        (str(tensors(tmp_path / "dims.npz", x=x[:, 0, 0], y=y)), "expected images N x C x H x W"),
        (str(tensors(tmp_path / "float_labels.npz", x=x, y=y.astype(float))), "one integer label per image"),
        (str(tensors(tmp_path / "nokey.npz", images=x, y=y)), "has no 'x'"),
        (str(tensors(tmp_path / "oddtest.npz", x=x, y=y, x_test=x[:, :, :8], y_test=y)), "x_test images are"),
        (str(tmp_path / "pickled.pt"), "weights_only=True"),
        (str(tmp_path / "objects.npz"), "without unpickling"),
        (str(tmp_path / "fake.npz"), "is not an .npz archive"),
        (str(tmp_path / "missing.npz"), "no such file"),
        (str(tmp_path / "obj.npy"), "a .pt or .pth or .npz file"),
    ], [
        (str(broken), "zz.png is not an image"),
        (str(tmp_path / "empty"), "Found no valid file"),
    ]


def test_bad_files_are_refused_in_one_line_and_no_pickle_ever_runs(tmp_path):
    as_tensors, as_folders = bad_inputs(tmp_path)
    for kind, cases in (("tensors", as_tensors), ("folder", as_folders)):
        for path, needle in cases:
            with pytest.raises(DataError) as info:
                describe(UserData(kind, path, size=(8, 8)))
            message = str(info.value)
            assert needle in message and "\n" not in message and f"data.path={path!r}" in message, (path, message)
    assert not (tmp_path / "payload-ran").exists()


@pytest.mark.parametrize("overrides,needle", [
    (["data=tensors"], "data.path=None: the .pt or .npz file"),
    (["data=folder", "data.path={dir}", "data.size=[8]"], "data.size=[8]: [height, width]"),
    (["data=folder", "data.path={dir}", "data.channels=2"], "data.channels=2: 1 (grey) or 3 (RGB)"),
    (["data=tensors", "data.path={npz}", "data.mean=[0.5]"], "data.std=None: given together"),
    (["data=tensors", "data.path={npz}", "data.test_fraction=1.5"], "data.test_fraction=1.5"),
    (["data.path={npz}"], "null: data=fashion_mnist is a built-in dataset"),
    (["data=tensors", "data.path={npz}", "data.mean=[0.5,0.5]", "data.std=[1,1]"], "data.mean=[0.5, 0.5]: 1 numbers"),
    (["data=tensors", "data.path={npz}", "data.train_size=5000"], "data.train_size=5000: an integer in [1, 192]"),
])
def test_run_py_refuses_bad_settings_before_any_run(tmp_path, overrides, needle):
    x, y = images()
    npz = tensors(tmp_path / "data.npz", x=x, y=y)
    store = tmp_path / "store" / "mlflow.db"
    args = [o.format(npz=npz, dir=tmp_path) for o in overrides]
    proc = run_cli("run.py", *args, f"tracking.uri=sqlite:///{store}", "progress=false")
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert not store.exists()                                           # nothing was created


# -- end to end -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_ecomp_and_a_baseline_run_on_the_users_tensors_and_folder(tmp_path):
    x, y = images(600)
    path = tensors(tmp_path / "data.npz", x=x, y=y)
    folder = image_folder(tmp_path / "imgs", x, y)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["parent=cnn", "parent.epochs=3", f"parent.cache_dir={tmp_path / 'parents'}", "population.size=10",
              "data.train_size=300", "data.val_size=40", "data.test_size=100", f"tracking.uri={store}",
              "progress=false"]
    for args in ([f"data=tensors", f"data.path={path}"],
                 ["data=folder", f"data.path={folder}", "data.size=[12,12]", "data.channels=3",
                  "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"],
                 [f"data=tensors", f"data.path={path}", "method=l1_prune", "method.keep=0.5"]):
        proc = run_cli("run.py", *common, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    import mlflow

    runs = mlflow.MlflowClient(store).search_runs([mlflow.MlflowClient(store).get_experiment_by_name("ecomp")
                                                   .experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    for r in runs:
        assert r.data.params["data.name"] in ("tensors", "folder")
        assert 0.34 < r.data.metrics["best_test_accuracy"] <= 1.0          # above chance (1/3): it learned
