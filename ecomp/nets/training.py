"""Gradient training of a feed-forward network: the parent's recipe, fine-tuning and distillation.

One loop (:func:`fit`) serves all of them: Adam, shuffled mini-batches drawn with
the caller's generator, and a loss that defaults to cross-entropy. Distillation
passes :func:`distillation_loss` instead. Nothing here knows about EComp.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecomp.nets.structure import Structure

# loss(logits, x_batch, y_batch) -> scalar
Loss = Callable[[Tensor, Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


def fit(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, batch_size: int,
        generator: torch.Generator, loss: Loss = cross_entropy) -> nn.Module:
    """Train ``model`` in place: ``epochs`` passes of Adam(``lr``) over ``x`` (n, in) in shuffled
    batches of ``batch_size`` (the last one may be smaller). Returns ``model``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            opt.zero_grad(set_to_none=True)
            loss(model(x[idx]), x[idx], y[idx]).backward()
            opt.step()
    model.eval()
    return model


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float = 1.0) -> Loss:
    """Knowledge distillation (Hinton et al. 2015): ``alpha`` x T^2 x KL(teacher_T || student_T)
    + (1 - alpha) x cross-entropy on the labels, with ``_T`` the softmax at temperature T."""
    def loss(logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            soft = F.log_softmax(teacher(x) / temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, log_target=True,
                      reduction="batchmean") * temperature ** 2
        return kd if alpha == 1.0 else alpha * kd + (1.0 - alpha) * F.cross_entropy(logits, y)

    return loss


def fine_tune(net: Structure, x: Tensor, y: Tensor, epochs: int, lr: float, batch_size: int,
              generator: torch.Generator, loss: Loss = cross_entropy) -> Structure:
    """A trained copy of ``net`` (the input is not changed); 0 epochs returns a plain copy.
    A convolutional network trains without BatchNorm (it was folded when the network was read)."""
    model = net.to_module()
    if epochs:
        fit(model, x, y, epochs, lr, batch_size, generator, loss)
    return net.from_module(model)
