"""The MLflow Model a run logs: its returned network, as a pyfunc model from code.

This file is the model's code (MLflow's "models from code": the logged model holds a copy of
it, nothing pickled). Its one artifact is the tool's own ``best_network.pt``, a state dict of
``(out, in)`` weights and biases loaded with ``weights_only=True``; the network is run as
``Linear -> ReLU -> ... -> Linear`` on flattened images. It needs only torch and numpy, not
``ecomp``, so ``mlflow models serve`` runs it in a plain environment.
"""

from __future__ import annotations

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class Network(PythonModel):
    """``predict``: flat images ``(n, input)`` -> class scores ``(n, classes)``."""

    def load_context(self, context) -> None:
        state = torch.load(context.artifacts["network"], map_location="cpu", weights_only=True)
        self.layers = [(state[f"{i}.weight"], state[f"{i}.bias"]) for i in range(len(state) // 2)]

    def predict(self, context, model_input, params=None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        h = x.reshape(x.shape[0], -1)
        with torch.no_grad():
            for i, (w, b) in enumerate(self.layers):
                h = torch.addmm(b, h, w.T)
                if i < len(self.layers) - 1:
                    h = h.relu()
        return h.numpy()


set_model(Network())
