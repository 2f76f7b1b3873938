"""Noise schedules and the forward process of DDPM (Ho et al. 2020, section 2).

Everything the forward process needs is a function of one sequence
``beta_1 .. beta_T``. We store it zero-indexed: ``betas[t]`` for ``t`` in
``[0, T)`` is the paper's ``beta_{t+1}``. Timesteps passed to every method are
integer tensors of shape ``(B,)`` in that zero-indexed range, the same integers
the models receive.

The names follow the paper:

* ``betas``            -- beta_t, the variance added at step t (Eq. 2)
* ``alphas``           -- alpha_t = 1 - beta_t
* ``alpha_bars``       -- alpha_bar_t = prod_{s<=t} alpha_s (the closed form, Eq. 4)
* ``alpha_bars_prev``  -- alpha_bar_{t-1}, with alpha_bar_0 = 1
* ``posterior_variance`` -- beta_tilde_t of Eq. 7
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

SCHEDULE_KINDS = ("linear", "cosine")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The linear schedule of Ho et al. 2020 (section 4): beta from 1e-4 to 0.02.

    The endpoints are the paper's for T=1000. For another T they are rescaled by
    1000/T (as in Nichol & Dhariwal 2021, appendix) so that the total amount of
    noise, and hence alpha_bar_T, stays close to the T=1000 schedule.
    """
    scale = 1000.0 / T
    if scale * beta_end >= 1:
        raise ValueError(
            f"the linear schedule rescaled to T={T} would need beta_T = {scale * beta_end:g} >= 1; "
            f"use T > {int(1000 * beta_end)} or the cosine schedule"
        )
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule of Nichol & Dhariwal 2021 (Eq. 17).

    alpha_bar(t) = f(t)/f(0) with f(t) = cos(((t/T + s)/(1 + s)) * pi/2)^2 and
    beta_t = 1 - alpha_bar(t)/alpha_bar(t-1), clipped to at most 0.999 to avoid
    the singularity at t = T (as in the paper).
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def _extract(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pick ``values[t]`` per batch element and shape it to broadcast over ``x``."""
    out = values[t.cpu()].to(device=x.device, dtype=x.dtype)
    return out.reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True, eq=False)
class DiffusionSchedule:
    """The quantities of the forward process for one beta schedule.

    Build one with :func:`make_schedule`. All tensors are float64 on the CPU
    (exact enough to compare against hand computations); methods cast the
    per-timestep coefficients to the dtype and device of their input.
    """

    kind: str
    betas: torch.Tensor

    def __post_init__(self):
        b = self.betas
        if b.dim() != 1 or len(b) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("every beta_t must lie in (0, 1)")

    # --- derived quantities ------------------------------------------------
    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return len(self.betas)

    @cached_property
    def alphas(self) -> torch.Tensor:
        """alpha_t = 1 - beta_t (notation above Eq. 4)."""
        return 1.0 - self.betas

    @cached_property
    def alpha_bars(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s=1}^{t} alpha_s (Eq. 4)."""
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def alpha_bars_prev(self) -> torch.Tensor:
        """alpha_bar_{t-1}, with alpha_bar_0 = 1 for the first step."""
        return torch.cat([torch.ones(1, dtype=self.betas.dtype), self.alpha_bars[:-1]])

    @cached_property
    def posterior_variance(self) -> torch.Tensor:
        """beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t (Eq. 7)."""
        return (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars) * self.betas

    @cached_property
    def sqrt_alpha_bars(self) -> torch.Tensor:
        return torch.sqrt(self.alpha_bars)

    @cached_property
    def sqrt_one_minus_alpha_bars(self) -> torch.Tensor:
        return torch.sqrt(1.0 - self.alpha_bars)

    @cached_property
    def posterior_mean_coef_x0(self) -> torch.Tensor:
        """sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t), the weight of x_0 in mu_tilde (Eq. 7)."""
        return torch.sqrt(self.alpha_bars_prev) * self.betas / (1.0 - self.alpha_bars)

    @cached_property
    def posterior_mean_coef_xt(self) -> torch.Tensor:
        """sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), the weight of x_t in mu_tilde (Eq. 7)."""
        return torch.sqrt(self.alphas) * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)

    @cached_property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) of q(x_t | x_0)."""
        return self.alpha_bars / (1.0 - self.alpha_bars)

    # --- checks ------------------------------------------------------------
    def check_timesteps(self, t: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Validate integer timesteps: shape (B,), values in [0, T)."""
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"timesteps must have shape (B,), got shape {tuple(t.shape)}")
        if batch is not None and len(t) != batch:
            raise ValueError(f"got {len(t)} timesteps for a batch of {batch} images; pass one per image")
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(
                f"timestep out of range: got values in [{int(t.min())}, {int(t.max())}], "
                f"expected integers in [0, {self.T}) for this T={self.T} schedule"
            )
        return t.long()

    # --- forward process ---------------------------------------------------
    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One forward step, a sample of q(x_t | x_{t-1}) (Eq. 2).

        x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps,  eps ~ N(0, I).
        """
        t = self.check_timesteps(t, batch=x_prev.shape[0])
        if noise is None:
            noise = torch.randn_like(x_prev)
        beta = _extract(self.betas, t, x_prev)
        return torch.sqrt(1.0 - beta) * x_prev + torch.sqrt(beta) * noise

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample x_t from the closed form q(x_t | x_0) (Eq. 4), reparameterised.

        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I).
        Same as diffusers' ``add_noise``.
        """
        t = self.check_timesteps(t, batch=x0.shape[0])
        if noise is None:
            noise = torch.randn_like(x0)
        # coefficients are computed in float64 and only then cast to x's dtype
        return _extract(self.sqrt_alpha_bars, t, x0) * x0 + _extract(self.sqrt_one_minus_alpha_bars, t, x0) * noise

    add_noise = q_sample

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert Eq. 4 for x_0 given the noise: x_0 = (x_t - sqrt(1-alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        t = self.check_timesteps(t, batch=x_t.shape[0])
        return (x_t - _extract(self.sqrt_one_minus_alpha_bars, t, x_t) * eps) / _extract(self.sqrt_alpha_bars, t, x_t)

    # --- what the network predicts -----------------------------------------
    def prediction_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """The regression target of a network that predicts ``prediction`` at x_t = q_sample(x0, t, noise).

        ``"eps"``: the noise (L_simple, Eq. 14); ``"x0"``: the clean image; ``"v"``:
        v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, section 4).
        """
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            t = self.check_timesteps(t, batch=x0.shape[0])
            return _extract(self.sqrt_alpha_bars, t, x0) * noise - _extract(self.sqrt_one_minus_alpha_bars, t, x0) * x0
        raise ValueError(f"unknown prediction {prediction!r}: expected eps, x0 or v")

    def eps_from_prediction(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """The noise eps implied by a network output ``out`` of kind ``prediction`` (inverse of the targets above).

        x0:  eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)   (Eq. 4 solved for eps)
        v:   eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v        (since alpha_bar + (1 - alpha_bar) = 1)
        """
        if prediction == "eps":
            return out
        t = self.check_timesteps(t, batch=x_t.shape[0])
        a, s = _extract(self.sqrt_alpha_bars, t, x_t), _extract(self.sqrt_one_minus_alpha_bars, t, x_t)
        if prediction == "x0":
            return (x_t - a * out) / s
        if prediction == "v":
            return s * x_t + a * out
        raise ValueError(f"unknown prediction {prediction!r}: expected eps, x0 or v")

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and variance of the posterior q(x_{t-1} | x_t, x_0) (Eqs. 6-7).

        mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta_tilde = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
        Returns ``(mean, variance)``, the variance shaped to broadcast over x.
        """
        t = self.check_timesteps(t, batch=x_t.shape[0])
        mean = _extract(self.posterior_mean_coef_x0, t, x_t) * x0 + _extract(self.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, _extract(self.posterior_variance, t, x_t)


def make_schedule(kind: str = "linear", T: int = 1000) -> DiffusionSchedule:
    """Build a :class:`DiffusionSchedule`.

    ``kind``: ``"linear"`` (Ho et al. 2020) or ``"cosine"`` (Nichol & Dhariwal 2021).
    ``T``: number of diffusion steps (the paper uses 1000).
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule {kind!r}: expected one of {', '.join(SCHEDULE_KINDS)}")
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise ValueError(f"T must be an integer >= 2, got {T!r}")
    betas = linear_betas(T) if kind == "linear" else cosine_betas(T)
    return DiffusionSchedule(kind=kind, betas=betas)
