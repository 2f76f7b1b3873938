"""One optimisation step of Algorithm 1 (Ho et al. 2020), lines 2-5, as every training run takes it.

    x_0 ~ q(x_0);  t ~ Uniform({1..T});  eps ~ N(0, I)              (drawn by the caller)
    gradient step on  loss(model, x_0, t, eps)                         (here)

:func:`train_step` is the only training step in the repository: :func:`ddpm_lib.training.train`
loops over it, and the numerics probe (:mod:`ddpm_lib.numerics`), the ablation's speed
calibration and ``bench/train_throughput.py`` time it. The engineering is one line each:
the arithmetic (``numerics.autocast``), gradient accumulation (the batch in parts whose
gradients add up), and, for DistributedDataParallel, one all-reduce of the gradients with
the last part's backward.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from . import distributed


def train_step(net: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
               t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None, *, numerics=None,
               accum_steps: int = 1, grad_clip: float = 0.0,
               ranks: distributed.DistInfo = distributed.DistInfo()) -> float:
    """One gradient step on ``loss_fn(net, x0, t, noise, y)`` (a :mod:`ddpm_lib.losses` object); returns the loss.

    ``x0``, ``t``, ``noise`` (and labels ``y``) are this process's share of the batch, already on
    the network's device. ``numerics`` (a :class:`~ddpm_lib.numerics.Numerics`; None: fp32) sets
    the arithmetic; ``accum_steps`` splits the batch into that many equal parts whose gradients
    add up; ``grad_clip`` > 0 clips the gradient norm; ``ranks``: the processes of a
    DistributedDataParallel ``net``, whose loss is averaged over them. The returned loss is the
    mean over the whole batch, the same on every process. A loss that is not finite raises
    ``FloatingPointError`` before any weight changes.
    """
    optimizer.zero_grad(set_to_none=True)
    part_size = len(x0) // accum_steps
    loss_sum = 0.0
    for k in range(accum_steps):
        part = slice(k * part_size, (k + 1) * part_size)
        last = k == accum_steps - 1
        # DDP all-reduces the gradients during backward: only once, with the last part
        sync = net.no_sync() if ranks.enabled and not last else contextlib.nullcontext()
        with sync:
            with contextlib.nullcontext() if numerics is None else numerics.autocast(x0.device):
                loss = loss_fn(net, x0[part], t[part], noise[part], None if y is None else y[part])
            (loss / accum_steps).backward()
        loss_sum += loss.item() / accum_steps
    step_loss = distributed.all_reduce([loss_sum], ranks)[0] / ranks.world_size   # the mean over the batch
    if not math.isfinite(step_loss):      # the same value on every process: all stop here, nothing updated
        raise FloatingPointError(f"the loss became {step_loss}")
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimizer.step()
    return step_loss
