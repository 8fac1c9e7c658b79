"""A checkpoint never runs code: crafted ``.pt2`` and ``.pt`` files are refused and their payload never runs."""

from __future__ import annotations

import io
import pickle
import sqlite3
import zipfile

import pytest
import torch
from torch import nn

from conftest import TINY, run_cli
from ecomp.nets.checkpoint import read_checkpoint
from ecomp.errors import CheckpointError
from ecomp.nets.mlp import layers_of


class Payload:
    """Unpickling this object creates ``marker``: proof that the file ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))


def crafted_pt2(path, marker) -> str:
    """A valid ``torch.export`` archive of an MLP whose sample inputs are a pickle that runs code;
    returns the name of the replaced member."""
    good = io.BytesIO()
    torch.export.save(torch.export.export(mlp().eval(), (torch.rand(2, 1, 28, 28),)), good)
    with zipfile.ZipFile(io.BytesIO(good.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        member = next(n for n in src.namelist() if n.endswith("data/sample_inputs/model.pt"))
        for info in src.infolist():
            data = pickle.dumps(Payload(str(marker))) if info.filename == member else src.read(info.filename)
            dst.writestr(info, data)
    return member


def refused_through_run_py(tmp_path, path) -> list[str]:
    db = tmp_path / "mlflow.db"
    proc = run_cli("run.py", *TINY, "parent=checkpoint", f"parent.path={path}", f"tracking.uri=sqlite:///{db}",
                   f"hydra.run.dir={tmp_path / 'out'}", timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    if db.exists():                                       # refused before any run was created
        con = sqlite3.connect(db)
        if con.execute("select name from sqlite_master where name='runs'").fetchall():
            assert con.execute("select count(*) from runs").fetchone()[0] == 0
    return lines


def test_the_payload_is_real(tmp_path):
    """The test's payload does run when unpickled the unsafe way (so the tests below can fail)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()


def test_a_crafted_pt2_is_refused_naming_the_member_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    member = crafted_pt2(tmp_path / "evil.pt2", marker)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "evil.pt2")
    assert f"member {member!r}" in str(err.value) and "not plain tensors" in str(err.value)
    assert not marker.exists()
    line = refused_through_run_py(tmp_path, tmp_path / "evil.pt2")[0]
    assert f"member {member!r} holds pickled objects that are not plain tensors" in line, line
    assert not marker.exists()


def test_a_crafted_state_dict_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    state = dict(mlp().state_dict())
    state["3.bias"] = Payload(str(marker))
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        read_checkpoint(tmp_path / "evil.pt")
    assert "pickled Python objects" in refused_through_run_py(tmp_path, tmp_path / "evil.pt")[0]
    assert not marker.exists()


def test_a_benign_pt2_loads_with_the_weights_of_its_program(tmp_path):
    model = mlp()
    torch.export.save(torch.export.export(model.eval(), (torch.rand(2, 1, 28, 28),)), tmp_path / "ok.pt2")
    net, sha = read_checkpoint(tmp_path / "ok.pt2")
    expected = layers_of(model)
    assert all(torch.equal(w, we) and torch.equal(b, be) for (w, b), (we, be) in zip(net.layers, expected))
    import hashlib

    assert sha == hashlib.sha256((tmp_path / "ok.pt2").read_bytes()).hexdigest()


def test_archives_that_are_not_programs_are_refused_in_one_line(tmp_path):
    (tmp_path / "zip.pt2").write_bytes(b"not a zip")
    with zipfile.ZipFile(tmp_path / "empty.pt2", "w") as z:
        z.writestr("archive/readme.txt", "nothing here")
    for name, needle in (("zip.pt2", "not a zip file"), ("empty.pt2", "0 models/<name>.json members")):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(tmp_path / name)
        assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["chain", "bias", "not a dict", "unreadable pt2"])
def test_broken_checkpoints_are_refused_through_run_py(tmp_path, case):
    """Each kind of broken file, as a user meets it: one line naming the file and what is wrong,
    exit 2, no run created."""
    path = tmp_path / ("m.pt2" if case == "unreadable pt2" else "m.pt")
    if case == "chain":                                   # layer 1 takes 7 inputs, layer 0 gives 16
        state = {"0.weight": torch.rand(16, 784), "0.bias": torch.rand(16),
                 "1.weight": torch.rand(10, 7), "1.bias": torch.rand(10)}
        torch.save(state, path)
        needle = "layer 1 takes 7 inputs but the layer before gives 16"
    elif case == "bias":
        state = dict(mlp().state_dict())
        state["1.bias"] = torch.rand(3)
        torch.save(state, path)
        needle = "layer 1's bias has shape (3,), expected (16,)"
    elif case == "not a dict":
        torch.save([torch.rand(3)], path)
        needle = "expected a state dict (names -> tensors), found list"
    else:
        good = io.BytesIO()
        torch.export.save(torch.export.export(mlp().eval(), (torch.rand(2, 1, 28, 28),)), good)
        path.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])      # cut in half
        needle = "not a torch.export archive"
    line = refused_through_run_py(tmp_path, path)[0]
    assert line.startswith(f"error: parent.path='{path}'") and needle in line, line
