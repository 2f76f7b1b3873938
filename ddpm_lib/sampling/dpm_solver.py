"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): a second-order multistep solver of the probability-flow ODE in data
prediction, and its SDE variant.

Write alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and the half log-SNR
lambda_t = log(alpha_t / sigma_t). The network's noise prediction gives a data prediction
x0_theta(x_t, t) = (x_t - sigma_t eps_theta) / alpha_t. From timestep s to the next, t, with
h = lambda_t - lambda_s > 0, the exact solution of the ODE is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^{lambda} x0_theta dlambda.

* First order (x0_theta constant over the step; this is DDIM with eta = 0):
      x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0,          D0 = x0_theta(x_s, s).
* Second order, multistep ("2M", Lu et al. 2022 Algorithm 2): the slope of x0_theta in lambda
  comes from the previous step's prediction, no extra network call:
      D1 = (D0 - x0_theta(x_r, r)) / r0,   r0 = (lambda_s - lambda_r) / h,
      x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0 - 0.5 alpha_t (e^{-h} - 1) D1.
* SDE variant (``stochastic=True``, Lu et al. 2022, appendix; diffusers' "sde-dpmsolver++"):
      x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) (D0 + 0.5 D1) + sigma_t sqrt(1 - e^{-2h}) z.

The first step is first order (no history), and so is the last, which goes to sigma = 0
(the clean image, lambda = +inf): it returns D0. Timesteps follow diffusers'
``DPMSolverMultistepScheduler`` defaults (linspace spacing, the last step to sigma = 0), so
the two agree step for step (``tests/test_sampling_peers.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..schedule import DiffusionSchedule
from ._loop import BatchContext, run_batches


def dpm_solver_timesteps(T: int, steps: int) -> list[int]:
    """The ``steps`` 0-based timesteps the solver evaluates the network at, decreasing from T - 1.

    ``linspace(0, T - 1, steps + 1)`` rounded, the last (0) dropped: the final step goes from
    the smallest of them straight to the clean image.
    """
    if not 1 <= steps <= T // 2:
        raise ValueError(f"steps must be between 1 and T/2={T // 2} for DPM-Solver++, got {steps}")
    return [int(t) for t in np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]]


def _alpha_sigma_lambda(schedule: DiffusionSchedule, t: int | None) -> tuple[float, float, float]:
    if t is None:                       # the clean image
        return 1.0, 0.0, math.inf
    ab = float(schedule.alpha_bars[t])
    alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def dpm_solver_pp_step(
    x_s: torch.Tensor,
    x0_s: torch.Tensor,
    x0_prev: torch.Tensor | None,
    s: tuple[float, float, float],
    t: tuple[float, float, float],
    r: tuple[float, float, float] | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DPM-Solver++ step from s to t (see the module docstring).

    ``x0_s`` = x0_theta(x_s, s); ``x0_prev`` = the data prediction at the previous timestep r
    (``None``: a first-order step). ``s``, ``t``, ``r``: (alpha, sigma, lambda) of the three
    timesteps. ``noise``: z for the SDE variant (``None``: the ODE).
    """
    alpha_s, sigma_s, lam_s = s
    alpha_t, sigma_t, lam_t = t
    if sigma_t == 0.0:                  # the last step, to the clean image: first order returns D0
        return x0_s
    h = lam_t - lam_s
    d = x0_s
    if x0_prev is not None:
        r0 = (lam_s - r[2]) / h
        d = x0_s + 0.5 * (x0_s - x0_prev) / r0          # D0 + 0.5 D1
    if noise is None:
        return (sigma_t / sigma_s) * x_s - alpha_t * math.expm1(-h) * d
    return ((sigma_t / sigma_s) * math.exp(-h)) * x_s - alpha_t * math.expm1(-2.0 * h) * d \
        + sigma_t * math.sqrt(-math.expm1(-2.0 * h)) * noise


@torch.no_grad()
def dpm_solver_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    n: int,
    steps: int = 20,
    *,
    order: int = 2,
    stochastic: bool = False,
    timesteps=None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    precision: str = "auto",
    channels_last: bool | None = None,
    image_shape: tuple | None = None,
    class_labels=None,
    guidance: float = 0.0,
    x_T: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) with ``steps`` network evaluations (``order=1``: DDIM; ``stochastic``: the SDE variant).

    ``timesteps``: the decreasing 0-based timesteps to evaluate at (default
    :func:`dpm_solver_timesteps`). Random draws: x_T, then (SDE only) one z per
    step. ``clip_x0``: clip each data prediction x0_theta to [-1, 1] before the
    step uses it (the simplest of the thresholding methods that a data-prediction
    solver admits, Lu et al. 2022b, section 4). ``class_labels``, ``guidance``,
    ``precision``, ``channels_last``: as in :func:`ddpm_lib.sampling.ddpm_sample`.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    ts = [int(t) for t in timesteps] if timesteps is not None else dpm_solver_timesteps(schedule.T, steps)
    if any(b >= a for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] >= schedule.T:
        raise ValueError(f"timesteps must decrease, within [0, {schedule.T})")
    coefs = [_alpha_sigma_lambda(schedule, t) for t in ts] + [_alpha_sigma_lambda(schedule, None)]

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        x0_prev = None
        for i, t in enumerate(ts):
            alpha_s, sigma_s, _ = coefs[i]
            x0 = (x - sigma_s * ctx.eps(x, t)) / alpha_s            # data prediction
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            second = order == 2 and i > 0          # the first step has no previous prediction
            z = ctx.randn() if stochastic else None
            x = dpm_solver_pp_step(x, x0, x0_prev if second else None, coefs[i], coefs[i + 1],
                                   coefs[i - 1] if i > 0 else None, z)
            x0_prev = x0
        return x

    return run_batches(model, schedule, n, body, generator=generator, seed=seed, image_shape=image_shape,
                       device=device, batch_size=batch_size, precision=precision, channels_last=channels_last,
                       class_labels=class_labels, guidance=guidance, x_T=x_T)
