"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): a second-order multistep solver of the probability-flow ODE in data
prediction, and its SDE variant.

The book's notation (chapter 9): sqrt(alpha_bar_t), the noise level of the marginal
sigma_bar_t = sqrt(1 - alpha_bar_t), and the half log-SNR lambda_t = log(sqrt(alpha_bar_t) / sigma_bar_t).
The network's noise prediction gives a data prediction
x0_theta(x_t, t) = (x_t - sigma_bar_t eps_theta) / sqrt(alpha_bar_t). A step goes from timestep t
to the next, earlier one, s < t; with h = lambda_s - lambda_t > 0, the exact solution of the ODE is

    x_s = (sigma_bar_s / sigma_bar_t) x_t + sigma_bar_s * integral_{lambda_t}^{lambda_s} e^{lambda} x0_theta dlambda.

* First order (x0_theta constant over the step; this is DDIM with eta = 0):
      x_s = (sigma_bar_s / sigma_bar_t) x_t - sqrt(alpha_bar_s) (e^{-h} - 1) D0,     D0 = x0_theta(x_t, t).
* Second order, multistep ("2M", Lu et al. 2022 Algorithm 2): the slope of x0_theta in lambda
  comes from the previous step's prediction, at the timestep r > t the step before started from,
  no extra network call:
      D1 = (D0 - x0_theta(x_r, r)) / r0,   r0 = (lambda_t - lambda_r) / h,
      x_s = (sigma_bar_s / sigma_bar_t) x_t - sqrt(alpha_bar_s) (e^{-h} - 1) D0 - 0.5 sqrt(alpha_bar_s) (e^{-h} - 1) D1.
* SDE variant (``stochastic=True``, Lu et al. 2022, appendix; diffusers' "sde-dpmsolver++"):
      x_s = (sigma_bar_s / sigma_bar_t) e^{-h} x_t + sqrt(alpha_bar_s) (1 - e^{-2h}) (D0 + 0.5 D1)
            + sigma_bar_s sqrt(1 - e^{-2h}) z.

The first step is first order (no history), and so is the last, which goes to sigma_bar = 0
(the clean image, lambda = +inf): it returns D0.

In the code a timestep is carried as the triple (sqrt(alpha_bar), sigma_bar, lambda). The
arguments of :func:`dpm_solver_pp_step` keep Lu et al.'s names, in which a step goes from ``s``
to ``t``: its ``s`` is the book's t (where the step starts), its ``t`` the book's s (where it
ends); ``r`` is the previous timestep in both. Timesteps follow diffusers'
``DPMSolverMultistepScheduler`` defaults (linspace spacing, the last step to sigma = 0), so
the two agree step for step (``tests/test_sampling_peers.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..schedule import DiffusionSchedule
from ._loop import BatchContext, check_run_options, run_batches


def dpm_solver_max_steps(T: int) -> int:
    """The most steps the solver takes on a schedule of T: T / 2 (so that its timesteps stay distinct)."""
    return T // 2


def dpm_solver_default_steps(T: int) -> int:
    """The number of steps the solver takes unless told: 20 (Lu et al. 2022: 15 to 20 for guided sampling), or
    :func:`dpm_solver_max_steps` if that is fewer."""
    return min(20, dpm_solver_max_steps(T))


#: how the solver's timesteps are spread over [0, T): diffusers' ``timestep_spacing`` choices and Lu et al.'s
#: uniform log-SNR (diffusers' ``use_lu_lambdas``)
SPACINGS = ("linspace", "leading", "trailing", "logsnr")


def dpm_solver_timesteps(T: int, steps: int, spacing: str = "linspace",
                         schedule: DiffusionSchedule | None = None) -> list[int]:
    """The ``steps`` 0-based timesteps the solver evaluates the network at, decreasing.

    ``spacing`` (diffusers' ``DPMSolverMultistepScheduler`` names, step for step; Lin et al. 2024 compare
    the first three):

    * ``"linspace"`` (the default): ``linspace(0, T - 1, steps + 1)`` rounded, the last (0) dropped, so the
      first step starts at T - 1 and the final one goes from the smallest straight to the clean image;
    * ``"leading"``: multiples of ``T // (steps + 1)`` from 0, the last dropped (the first step starts below T - 1);
    * ``"trailing"``: ``T - 1 - k T / steps`` rounded, k = 0 .. steps - 1 (T - 1 first, the smallest about T / steps);
    * ``"logsnr"``: uniform in lambda = log(sqrt(alpha_bar) / sigma_bar), from t = T - 1 to t = 0, each
      rounded to the nearest timestep in log sigma (Lu et al. 2022, section 3.4; needs ``schedule``).
      diffusers (``use_lu_lambdas``) picks the same timesteps, but takes each step's coefficients from the
      unrounded lambda; :func:`dpm_solver_sample` takes them from the timestep the network sees.
    """
    if not 1 <= steps <= dpm_solver_max_steps(T):
        raise ValueError(f"steps must be between 1 and T/2={T // 2} for DPM-Solver++, got {steps}")
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, steps + 1) * (T // (steps + 1))).round()[::-1][:-1]
    elif spacing == "trailing":
        ts = (np.arange(T, 0, -T / steps).round() - 1)[:steps]
    elif spacing == "logsnr":
        if schedule is None or schedule.T != T:
            raise ValueError("spacing 'logsnr' needs the schedule (schedule=...) of the same T")
        log_sigmas = (0.5 * (1 - schedule.alpha_bars).log() - 0.5 * schedule.alpha_bars.log()).numpy()
        wanted = np.linspace(log_sigmas[-1], log_sigmas[0], steps)            # uniform in lambda = -log sigma
        ts = np.interp(wanted, log_sigmas, np.arange(T)).round()
    else:
        raise ValueError(f"unknown spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")
    ts = [int(t) for t in ts]
    if len(set(ts)) != len(ts):
        raise ValueError(f"{steps} steps with spacing {spacing!r} repeat a timestep on this schedule: use fewer steps")
    return ts


def _alpha_sigma_lambda(schedule: DiffusionSchedule, t: int | None) -> tuple[float, float, float]:
    """(sqrt(alpha_bar_t), sigma_bar_t, lambda_t) of timestep t; ``None``: the clean image, (1, 0, +inf)."""
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
    """One DPM-Solver++ step (see the module docstring), with Lu et al.'s names: from ``s`` to ``t``.

    In the book's notation the step goes from t to s < t: the argument ``s`` describes the
    timestep the step starts from (the book's t), ``t`` the one it ends at (the book's s).
    ``x_s``: the sample where the step starts; ``x0_s`` = x0_theta(x_s, s); ``x0_prev`` = the
    data prediction at the previous timestep r (``None``: a first-order step). ``s``, ``t``,
    ``r``: (sqrt(alpha_bar), sigma_bar, lambda) of the three timesteps. ``noise``: z for the SDE
    variant (``None``: the ODE).
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
    steps: int | None = None,
    *,
    order: int = 2,
    stochastic: bool = False,
    timesteps=None,
    spacing: str = "linspace",
    clip_x0: bool = False,
    **run,
) -> torch.Tensor:
    """DPM-Solver++(2M) with ``steps`` network evaluations (``order=1``: DDIM; ``stochastic``: the SDE variant).

    ``steps`` defaults to :func:`dpm_solver_default_steps` (20). ``timesteps``: the
    decreasing 0-based timesteps to evaluate at (default :func:`dpm_solver_timesteps` with ``spacing``).
    ``clip_x0``: clip each data prediction x0_theta to [-1, 1] before the step uses it (the
    simplest of the thresholding methods that a data-prediction solver admits, Lu et al.
    2022b, section 4). ``run``: the run options (seed, batch_size, numerics, class labels,
    x_T, progress, callback, ...), documented once in :func:`~ddpm_lib.sampling.run_batches`.
    Random draws per batch: x_T, then (SDE only) one z per step.
    """
    check_run_options(run, "dpm_solver_sample")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if timesteps is not None:
        ts = [int(t) for t in timesteps]
    else:
        ts = dpm_solver_timesteps(schedule.T, dpm_solver_default_steps(schedule.T) if steps is None else steps,
                                  spacing, schedule)
    if any(b >= a for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] >= schedule.T:
        raise ValueError(f"timesteps must decrease, within [0, {schedule.T})")
    coefs = [_alpha_sigma_lambda(schedule, t) for t in ts] + [_alpha_sigma_lambda(schedule, None)]

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        x0_prev = None
        for left in ctx.countdown(len(ts), x):
            i = len(ts) - 1 - left                                   # the i-th evaluation, at ts[i]
            alpha_s, sigma_s, _ = coefs[i]
            x0 = (x - sigma_s * ctx.eps(x, ts[i])) / alpha_s          # data prediction
            if clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            second = order == 2 and i > 0          # the first step has no previous prediction
            z = ctx.randn() if stochastic else None
            x = dpm_solver_pp_step(x, x0, x0_prev if second else None, coefs[i], coefs[i + 1],
                                   coefs[i - 1] if i > 0 else None, z)
            x0_prev = x0
            ctx.report(left, x)
        return x

    return run_batches(model, schedule, n, body, **run)
