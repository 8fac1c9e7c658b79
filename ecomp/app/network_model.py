"""The MLflow Model a run logs: its returned network, as a pyfunc model from code.

This file is the model's code (MLflow's "models from code": the logged model holds a copy of
it, nothing pickled). Its artifacts are the tool's own ``best_network.pt``, a state dict of
weights and biases loaded with ``weights_only=True``, and its ``.json`` architecture. An MLP is
run as ``Linear -> ReLU -> ... -> Linear`` on flattened images; a CNN by the plan in the JSON
(:mod:`ecomp.nets.convnet`'s layout: each stage, then ReLU and its pooling, a Flatten before the
first linear stage); a residual network by its plan too (:mod:`ecomp.nets.resnet`'s layout: the
stem, then per basic block ``conv1, conv2[, projection]``, then the classifier on the average). It returns each row's class probabilities (the softmax of the network's
outputs), as the logged signature says. It needs only torch and numpy, not ``ecomp``, so
``mlflow models serve`` runs it in a plain environment.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext


class Network(PythonModel):
    """``predict``: images ``(n, C, H, W)`` or flat rows ``(n, C*H*W)`` -> class probabilities ``(n, classes)``."""

    # torch is imported where it is used: MLflow runs this file when the model is logged, and the
    # process that logs it (ecomp.app.tracker_process) has no use for torch otherwise.
    def load_context(self, context: PythonModelContext) -> None:
        import torch

        state = torch.load(context.artifacts["network"], map_location="cpu", weights_only=True)
        self.layers = [(state[f"{i}.weight"], state[f"{i}.bias"]) for i in range(len(state) // 2)]
        meta = json.loads(open(context.artifacts["architecture"]).read()) if "architecture" in context.artifacts else {}
        self.plan = meta.get("plan")
        self.residual = meta.get("kind") == "resnet"

    # Type hints, as MLflow 3 asks of a PythonModel (it warns at the class's definition without
    # them): an ``np.ndarray`` input is one MLflow infers no schema from, so the signature logged
    # with the model stays the one that describes it, and inputs are not converted.
    def predict(self, context: PythonModelContext, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        h = x.reshape(x.shape[0], -1)
        if self.plan is not None:
            h = h.view(x.shape[0], *self.plan["in_shape"])
        if self.residual:
            return self._residual(h).softmax(1).numpy()
        stages = self.plan["stages"] if self.plan is not None else [{"kind": "linear"}] * len(self.layers)
        with torch.no_grad():
            for i, ((w, b), s) in enumerate(zip(self.layers, stages)):
                if s["kind"] == "conv":
                    h = F.conv2d(h, w, b, s["stride"], s["padding"])
                else:
                    h = torch.addmm(b, h.flatten(1), w.T)
                if i < len(self.layers) - 1:
                    h = h.relu()
                    if s.get("pool") == "max":
                        h = F.max_pool2d(h, s["pool_size"])
                    elif s.get("pool") == "avg":
                        h = F.avg_pool2d(h, s["pool_size"])
        return h.softmax(1).numpy()

    def _residual(self, h):
        """Logits of a residual network (BatchNorm folded into its convolutions)."""
        import torch
        import torch.nn.functional as F

        p, layers = self.plan, iter(self.layers)
        with torch.no_grad():
            h = F.conv2d(h, *next(layers), p["stem_stride"], p["stem_padding"]).relu()
            if p["stem_pool"]:
                h = F.max_pool2d(h, 3, 2, 1)
            for n, stride, projection in zip(p["blocks"], p["strides"], p["projections"]):
                for b in range(n):
                    s = stride if b == 0 else 1
                    inner = F.conv2d(h, *next(layers), s, 1).relu()
                    out = F.conv2d(inner, *next(layers), 1, 1)
                    h = (out + (F.conv2d(h, *next(layers), s, 0) if b == 0 and projection else h)).relu()
            return F.linear(h.mean((2, 3)), *next(layers))


set_model(Network())
