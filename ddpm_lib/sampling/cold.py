"""Cold diffusion's sampler: undo the blur step by step (Bansal et al. 2022, their Algorithm 2).

The forward process, the initial grey level and the loss live with the rest of their kind:
:mod:`ddpm_lib.cold` (D(x_0, t), :class:`~ddpm_lib.cold.GaussianMixture1D`) and
:class:`ddpm_lib.losses.ColdLoss`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cold import BlurDegradation, GaussianMixture1D, initial_state
from ._loop import BatchContext, check_run_options, run_batches


@torch.no_grad()
def cold_sample(model: nn.Module, degradation: BlurDegradation, mixture: GaussianMixture1D, n: int, *,
                seed: int = 0, noise_std: float = 0.0, **run) -> torch.Tensor:
    """Generate n images with the improved sampling of Bansal et al. 2022 (their Algorithm 2).

        x_T = a constant image (its level from ``mixture``)
        for s = T .. 1:   x0_hat = R(x_s, s);   x_{s-1} = x_s - D(x0_hat, s) + D(x0_hat, s - 1)

    The correction D(x0_hat, s) - D(x0_hat, s-1) removes one step of blur whatever the error in
    x0_hat, where the naive x_{s-1} = D(x0_hat, s-1) would compound it. ``seed`` draws the starting
    grey levels (:func:`~ddpm_lib.cold.initial_state`, plus N(0, ``noise_std``^2) per pixel); nothing
    else is random. ``run``: the run options of :func:`~ddpm_lib.sampling.run_batches` (batch_size,
    device, numerics, progress, callback) but ``x_T``, ``generator`` and ``image_shape``, which the
    start fixes. Returns (n, C, H, W) on the CPU.
    """
    check_run_options(run, "cold_sample")
    cfg = model.config
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    generator = torch.Generator().manual_seed(seed)
    x_T = initial_state(mixture, n, shape, generator, noise_std)

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        for i in ctx.countdown(degradation.T, x):
            x0_hat = ctx.output(x, i)                                       # R(x_s, s)
            s = torch.full((b,), i, dtype=torch.long)
            x = x - degradation.degrade(x0_hat, s) + degradation.degrade(x0_hat, s - 1)
            ctx.report(i, x)
        return x

    return run_batches(model, degradation, n, body, x_T=x_T, **run)
