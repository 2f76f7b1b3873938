"""Classifier-free guidance (Ho & Salimans 2022): one network, two predictions, mixed.

A class-conditional network (``ModelConfig.num_classes`` > 0, trained with labels
dropped to the null label with probability ``p_uncond``) predicts both
eps(x_t, t, y) and the unconditional eps(x_t, t) = eps(x_t, t, null). Guidance
samples with

    eps_guided = (1 + w) * eps(x_t, t, y) - w * eps(x_t, t, null)
               = eps(x_t, t, y) + w * (eps(x_t, t, y) - eps(x_t, t, null))     (Ho & Salimans 2022, Eq. 6)

* ``w = 0`` is the plain conditional model, ``w > 0`` pushes samples further
  towards what makes them "more y" than unconditional samples.
* Convention: this book's ``w`` is the paper's. diffusers and most image
  pipelines call ``guidance_scale = 1 + w`` and write
  eps_null + s * (eps_y - eps_null); ``w = 2`` here is ``guidance_scale = 3``
  there, and ``guidance_scale = 1`` is no guidance.

:func:`drop_labels` is the training side (the paper's Algorithm 1).
:class:`ClassifierFreeGuidance` wraps the network so that every sampler of
:mod:`ddpm_lib.sampling` can use it unchanged: it is called as ``model(x, t)``
and evaluates both predictions in one batched forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def null_label(model: nn.Module) -> int:
    """The label index that means "no class" for a conditional ``model`` (its ``num_classes``)."""
    return model.config.num_classes


def check_class_labels(model: nn.Module, labels) -> torch.Tensor:
    """``labels`` as a long tensor, or a clear error if ``model`` cannot be asked for them."""
    cfg = getattr(model, "config", None)
    k = getattr(cfg, "num_classes", 0)
    if not k:
        raise ValueError("this checkpoint is unconditional (trained without class labels): it cannot be asked "
                         "for a class or guided; train one with `python -m ddpm_lib train --preset conditional`")
    y = torch.as_tensor(labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(f"class labels must be a 1-D sequence of integers, got {y.dtype} of shape {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        bad = [int(v) for v in y if not 0 <= int(v) < k][:3]
        raise ValueError(f"class labels must be between 0 and {k - 1}, got {bad}")
    return y.long()


class ClassifierFreeGuidance(nn.Module):
    """``model`` guided towards ``labels`` with weight ``w``, callable as ``guided(x, t)``.

    ``labels`` holds one class per image of the batch, shape (B,); the samplers
    of :mod:`ddpm_lib.sampling` build one wrapper per batch they draw (their
    ``class_labels`` and ``guidance`` arguments). ``w`` is the guidance weight of
    Ho & Salimans (2022); ``guidance_scale = 1 + w`` in diffusers' convention.
    With ``w = 0`` only the conditional prediction is computed (no second pass).

    It exposes the wrapped network's ``config``, so a sampler reads the image
    shape and T from it as from the network itself.
    """

    def __init__(self, model: nn.Module, labels, w: float = 0.0):
        super().__init__()
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"the guidance weight w must be a number >= 0 (0: no guidance), got {w}")
        self.model = model
        self.labels = check_class_labels(model, labels)
        self.w = w

    @property
    def config(self):
        return self.model.config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.labels):
            raise ValueError(f"a batch of {x.shape[0]} images but {len(self.labels)} labels")
        y = self.labels.to(x.device)
        if self.w == 0.0:
            return self.model(x, t, y)
        null = torch.full_like(y, null_label(self.model))
        # both predictions in one pass: [x; x] with [y; null]
        eps_cond, eps_null = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return eps_cond + self.w * (eps_cond - eps_null)   # = (1 + w) eps_cond - w eps_null (Eq. 6)


def drop_labels(y: torch.Tensor, num_classes: int, p_uncond: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label ``num_classes`` with probability ``p_uncond``.

    Classifier-free guidance trains one network for both tasks (Ho & Salimans
    2022, Algorithm 1): with the label it learns eps(x_t, t, y), without it
    eps(x_t, t); sampling then mixes the two (:class:`ClassifierFreeGuidance`). :func:`ddpm_lib.training.train`
    calls it on every batch of a class-conditional run.
    """
    drop = torch.rand(y.shape, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, num_classes), y)
