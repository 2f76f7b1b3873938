"""The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models"): Heun's method on the probability-flow ODE, at noise levels spaced by Eq. 5, with optional
stochastic churn (Algorithm 2), for the book's DDPM networks.

Karras et al. write a VP model in the variables x_tilde = x / sqrt(alpha_bar) and
sigma = sqrt((1 - alpha_bar) / alpha_bar) = 1 / sqrt(SNR) (chapter 9 writes them x_bar and rho_t; here
they keep the paper's names, because rho below is Eq. 5's exponent). There x_tilde = x_0 + sigma eps,
and the ODE (Eq. 1 with s(t) = 1, sigma(t) = t) is

    d x_tilde / d sigma = (x_tilde - D(x_tilde; sigma)) / sigma = eps_theta,
    D(x_tilde; sigma) = x_tilde - sigma eps_theta(x_tilde / sqrt(sigma^2 + 1), t(sigma)),

the VP preconditioning of their Table 1 (c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1)):
D is the data prediction, and the network sees the VP state x at the real-valued timestep t(sigma)
of :func:`sigma_to_t`. Algorithm 2 takes, for each noise level sigma_i (i = 0 .. N - 1, sigma_N = 0):

    sigma_hat = (1 + gamma_i) sigma_i,   x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z   (churn)
    d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat,   x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d   (Euler)
    d' = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1},
    x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2                   (Heun, if sigma_{i+1} > 0)

with gamma_i = min(S_churn / N, sqrt(2) - 1) on sigma_i in [S_tmin, S_tmax], else 0 (churn = 0:
Algorithm 1, deterministic). The last interval, to sigma = 0, is an Euler step; it returns D.
The noise levels and the map sigma -> t follow diffusers' ``HeunDiscreteScheduler`` with
``use_karras_sigmas=True``, and the two agree step for step (``tests/test_edm.py``): sigma runs over
the schedule's whole range, [sigma_0, sigma_{T-1}] (Karras et al. take [0.002, 80], clamped to the
network's range), and the network is asked at fractional timesteps (Karras et al.'s code for a
discrete DDPM network, their iDDPM preconditioning, rounds each sigma to the nearest sigma_t instead).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..schedule import DiffusionSchedule
from ._loop import BatchContext, check_run_options, run_batches


def edm_max_steps(T: int) -> int:
    """The most network calls the sampler makes on a schedule of T: 2T - 1 (T noise levels, :func:`edm_intervals`)."""
    return 2 * T - 1


def edm_default_steps(T: int) -> int:
    """The calls the sampler makes unless told: 35 (18 noise levels, Karras et al. 2022's choice for
    CIFAR-10, section 3), or :func:`edm_max_steps` if that is fewer."""
    return min(35, edm_max_steps(T))


def edm_intervals(steps: int) -> list[bool]:
    """For a budget of ``steps`` network calls, whether each of the N = steps // 2 + 1 intervals is a Heun step.

    A Heun interval costs two calls, an Euler interval one; the last, to sigma = 0, is always Euler
    (Algorithm 1), so an odd ``steps`` = 2N - 1 is Algorithm 1 exactly. An even ``steps`` = 2N - 2 also
    takes the first interval, from sigma_max, with Euler: there D is (nearly) the data mean whatever
    x_tilde, so the path x_tilde = D + sigma eps is (nearly) a straight line, which Euler follows exactly.
    """
    if steps < 1:
        raise ValueError(f"steps (network calls) must be at least 1, got {steps}")
    N, euler_first = steps // 2 + 1, steps % 2 == 0
    return [i < N - 1 and not (i == 0 and euler_first) for i in range(N)]


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """The n noise levels of Karras et al. 2022, Eq. 5, then sigma_n = 0: a float64 tensor of n + 1 values.

    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < n,
    from sigma_max down to sigma_min; a larger rho puts more of them near sigma_min (paper: rho = 7).
    """
    if rho <= 0:
        raise ValueError(f"rho must be positive (Karras et al. use 7; 1 spaces the sigmas evenly), got {rho}")
    if not 0 < sigma_min <= sigma_max or n < 1:
        raise ValueError(f"need 0 < sigma_min <= sigma_max and n >= 1, got {sigma_min}, {sigma_max}, {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])
    sigmas[n - 1], sigmas[0] = sigma_min, sigma_max            # exactly, not as rounded powers (n = 1: sigma_max)
    return sigmas


def schedule_sigmas(schedule: DiffusionSchedule) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) = 1 / sqrt(SNR(t)) of the T timesteps (increasing, float64)."""
    return schedule.snr.rsqrt()


def sigma_to_t(sigma, schedule: DiffusionSchedule):
    """The network's real-valued timestep t(sigma) in [0, T - 1]: linear in log sigma between the schedule's
    discrete sigmas (so the schedule's own sigma_t give t exactly), clamped to the ends; as diffusers'
    ``_sigma_to_t``. A float gives a float, anything else a float64 tensor."""
    log_sigmas = schedule_sigmas(schedule).log().numpy()
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    t = np.interp(log_sigma, log_sigmas, np.arange(schedule.T, dtype=np.float64))
    return float(t) if t.ndim == 0 else torch.from_numpy(t)


def edm_slope(x_tilde: torch.Tensor, eps: torch.Tensor, sigma: float, clip_x0: bool = False) -> torch.Tensor:
    """The ODE's slope d = (x_tilde - D(x_tilde; sigma)) / sigma (Algorithm 2, line 7), D = x_tilde - sigma eps_theta.

    That is eps_theta itself, returned as such (no cancellation of two nearly equal terms at small sigma).
    With ``clip_x0``, D is clipped to [-1, 1] first and d is the slope towards the clipped D.
    """
    if not clip_x0:
        return eps
    return (x_tilde - (x_tilde - sigma * eps).clamp(-1.0, 1.0)) / sigma


def edm_step(x_hat: torch.Tensor, d: torch.Tensor, sigma_hat: float, sigma_next: float,
             d_next: torch.Tensor | None = None) -> torch.Tensor:
    """One step of Algorithm 2 from (x_hat, sigma_hat) to sigma_next, given the slope d = (x_hat - D) / sigma_hat.

    Euler (line 8) without ``d_next``; with ``d_next``, the slope at the Euler point (x_{i+1}, sigma_next),
    Heun's correction (line 11): the mean of the two slopes. Same role as diffusers'
    ``HeunDiscreteScheduler.step``, which takes the two halves in two calls.
    """
    slope = d if d_next is None else 0.5 * (d + d_next)
    return x_hat + (sigma_next - sigma_hat) * slope


def _check(steps: int, T: int, rho: float, churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    if not 1 <= steps <= edm_max_steps(T):
        raise ValueError(f"steps (network calls) must be between 1 and 2T - 1 = {edm_max_steps(T)} for the EDM "
                         f"sampler (T={T}), got {steps}; {edm_default_steps(T)} is the default")
    if rho <= 0:
        raise ValueError(f"rho must be positive (Karras et al. use 7; 1 spaces the sigmas evenly), got {rho}")
    if churn < 0 or s_noise < 0:
        raise ValueError(f"churn and s_noise must be >= 0 (churn = 0: the deterministic sampler), got {churn}, "
                         f"{s_noise}")
    if s_tmin > s_tmax:
        raise ValueError(f"s_tmin ({s_tmin}) must not exceed s_tmax ({s_tmax}): churn acts on sigma in "
                         "[s_tmin, s_tmax]")


@torch.no_grad()
def edm_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    n: int,
    steps: int | None = None,
    *,
    rho: float = 7.0,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    clip_x0: bool = False,
    **run,
) -> torch.Tensor:
    """Karras et al. 2022's sampler (Algorithm 2; Algorithm 1 with ``churn=0``) in ``steps`` network calls.

    ``steps`` (default :func:`edm_default_steps`, 35) buys N = steps // 2 + 1 noise levels
    (:func:`edm_intervals`), spaced by Eq. 5 (:func:`karras_sigmas`, exponent ``rho``) from the schedule's
    largest sigma, at t = T - 1, down to its smallest, at t = 0, then 0. ``churn``, ``s_tmin``, ``s_tmax``,
    ``s_noise``: the paper's S_churn, S_tmin, S_tmax, S_noise; the network knows no noise level above
    sigma_max, so sigma_hat is capped there (churn does nothing at the first level). ``clip_x0``: clip D
    to [-1, 1] (diffusers' ``clip_sample``). ``run``: the run options (seed, batch_size, numerics, class
    labels, x_T, progress, callback, ...) of :func:`~ddpm_lib.sampling.run_batches`.

    x_T ~ N(0, I) is, as for every sampler of the book, the VP state at t = T - 1, so the chain starts at
    x_tilde = x_T sqrt(sigma_max^2 + 1), and the same seed starts the first batch from the same x_T as the
    book's other samplers; Karras et al. and diffusers start at sigma_max N(0, I), smaller by
    sqrt(1 + 1 / sigma_max^2). Random draws per
    batch: x_T, then one z per noise level (drawn even when churn = 0, so every batch's x_T is the same
    for every churn). The callback sees x_T as state N, then the VP state x = x_tilde / sqrt(sigma^2 + 1)
    after each interval, down to the image, state 0.
    """
    check_run_options(run, "edm_sample")
    T = schedule.T
    steps = edm_default_steps(T) if steps is None else steps
    _check(steps, T, rho, churn, s_tmin, s_tmax, s_noise)
    heun = edm_intervals(steps)
    N = len(heun)
    sig = schedule_sigmas(schedule)
    sigmas = karras_sigmas(float(sig[0]), float(sig[-1]), N, rho).tolist()
    gamma = min(churn / N, math.sqrt(2.0) - 1.0)                                      # Algorithm 2, line 4
    sigma_hats = [min((1 + gamma) * s, sigmas[0]) if s_tmin <= s <= s_tmax else s for s in sigmas[:-1]]

    def slope(ctx: BatchContext, x_tilde: torch.Tensor, sigma: float) -> torch.Tensor:
        eps = ctx.eps(x_tilde / math.sqrt(sigma**2 + 1), sigma_to_t(sigma, schedule))   # float t: between steps
        return edm_slope(x_tilde, eps, sigma, clip_x0)

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        x_tilde = x * math.sqrt(sigmas[0] ** 2 + 1)
        for left in ctx.countdown(N, x):
            i = N - 1 - left
            sigma, sigma_hat, sigma_next = sigmas[i], sigma_hats[i], sigmas[i + 1]
            z = ctx.randn()
            x_hat = x_tilde + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * z if sigma_hat > sigma else x_tilde
            d = slope(ctx, x_hat, sigma_hat)
            x_tilde = edm_step(x_hat, d, sigma_hat, sigma_next)                            # Euler
            if heun[i]:
                x_tilde = edm_step(x_hat, d, sigma_hat, sigma_next, slope(ctx, x_tilde, sigma_next))
            ctx.report(left, x_tilde / math.sqrt(sigma_next**2 + 1))
        return x_tilde

    return run_batches(model, schedule, n, body, **run)
