"""Serving a run's logged model as docs/tracking.md says: ``mlflow models serve`` on loopback, with the
venv's bin on PATH; requests of images ``N x C x H x W`` and of flat rows, answered with the class
probabilities the network itself computes. Real runs (tiny), a real server, stopped whatever happens."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from test_cnn import CNN_TINY
from test_scaleout import BIN, free_port, healthy, start, stop, wait_for

MLP_TINY = ["parent.hidden=[32,32]", "parent.epochs=1", "population.size=6", "data.train_size=300",
            "data.batch_size=100", "data.test_size=200", "progress=false"]
RUNS = {"mlp": (MLP_TINY, "fashion_mnist"), "cnn": (CNN_TINY, "digits")}


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RUNS))
def test_a_served_model_answers_images_and_flat_rows_as_the_network_does(tmp_path, kind):
    import mlflow

    from ecomp.nets.data import dataset, load
    from ecomp.nets.network import load_network
    from ecomp.nets.structure import logits

    overrides, data = RUNS[kind]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli("run.py", *overrides, f"parent.cache_dir={tmp_path / 'parents'}", f"tracking.uri={store}",
                   f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ecomp").experiment_id])
    (output,) = run.outputs.model_outputs

    # the signature: images of the data's shape in, probabilities out; the MLmodel names no file of
    # the machine that logged it (the code file by its name, the artifacts by their place in the model)
    shape = tuple(dataset(data).shape)
    mlflow.set_tracking_uri(store)
    meta = mlflow.pyfunc.load_model(f"models:/{output.model_id}").metadata
    assert [s.shape for s in meta.signature.inputs.inputs] == [(-1, *shape)]
    assert [(s.name, s.shape) for s in meta.signature.outputs.inputs] == [("probabilities", (-1, 10))]
    conf = meta.flavors["python_function"]
    assert conf["model_code_path"] == "network_model.py"
    assert all(set(a) == {"path"} for a in conf["artifacts"].values()), conf["artifacts"]
    assert str(REPO) not in meta.to_yaml() and "/tmp/tmp" not in meta.to_yaml()

    # what the network computes here, from the run's best_network.pt
    folder = tmp_path / "network"
    folder.mkdir()
    for name in ("best_network.pt", "best_network.pt.json"):
        client.download_artifacts(run.info.run_id, name, str(folder))
    net = load_network(folder / "best_network.pt")
    x = load(REPO / "data", train=False, name=data).x[:8]                  # (8, C*H*W) floats
    expected = torch.softmax(logits(net, x), 1).numpy()

    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": store}
    log = tmp_path / "serve.log"
    server = start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{output.model_id}", "--env-manager",
                    "local", "--host", "127.0.0.1", "--port", str(port)], log, env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(f"{url}/ping"), server, log, "mlflow models serve", timeout=180)
        images = {"inputs": x.reshape(-1, *shape).tolist()}
        rows = {"dataframe_split": {"columns": ["image"], "data": [[row] for row in x.tolist()]}}
        for body in (images, rows):
            status, answer = post(f"{url}/invocations", body)
            assert status == 200, answer
            served = np.asarray(answer["predictions"], dtype=np.float32)
            assert served.shape == expected.shape
            assert (served.argmax(1) == expected.argmax(1)).all()
            np.testing.assert_allclose(served, expected, atol=1e-5)
            np.testing.assert_allclose(served.sum(1), 1, atol=1e-5)
        # flat rows as `inputs` are refused: MLflow fixes a tensor's rank (docs/tracking.md, serving)
        status, answer = post(f"{url}/invocations", {"inputs": x.tolist()})
        assert status == 400 and "shape" in answer.get("message", "").lower(), answer
    finally:
        stop(server)
