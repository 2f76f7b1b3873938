"""Flow matching on the straight path of rectified flow (Lipman et al. 2023; Liu et al. 2022).

The probability path joins each image x_0 to a noise draw eps ~ N(0, I) by a straight line,

    x_t = (1 - t) x_0 + t eps,        t in [0, 1]                          (the linear path)

so t = 0 is the data and t = 1 pure noise, the direction of DDPM's time. Along one line the
velocity is constant, d x_t / dt = eps - x_0 (the *conditional* velocity). The *marginal*
velocity u_t(x) = E[eps - x_0 | x_t = x] moves the whole distribution: integrating
dx/dt = u_t(x) from t = 1 (a draw of N(0, I)) down to t = 0 ends on a draw of the data. The
network never sees u_t: it regresses the conditional velocity,

    L_FM = E_{t, x_0, eps} || v_theta(x_t, t) - (eps - x_0) ||^2,

whose minimiser over functions of (x_t, t) is the conditional mean, which is u_t (Lipman et
al. 2023, Theorem 2). :class:`~ddpm_lib.losses.FlowMatchingLoss` is that loss; the samplers
in :mod:`ddpm_lib.sampling.flow` integrate the ODE.

A velocity is a prediction of eps and x_0 at once: from x_t = (1 - t) x_0 + t eps and
v = eps - x_0,

    x0_hat = x_t - t v,      eps_hat = x_t + (1 - t) v,      score = -eps_hat / t   (t > 0),

and a DDPM state lies on the same kind of path after a rescaling: with a = sqrt(alpha_bar),
s = sqrt(1 - alpha_bar), x / (a + s) = (1 - tau) x_0 + tau eps at tau = s / (a + s)
(:func:`from_diffusion`). So a noise-predicting network is a velocity field too
(:func:`velocity_from_eps`).

The network takes the time as t (T - 1), a real number in [0, T - 1] (:meth:`LinearPath.network_time`),
so the book's UNet and its sinusoidal embedding serve unchanged.
"""

from __future__ import annotations

import torch


class LinearPath:
    """The straight probability path x_t = (1 - t) x_0 + t eps, t in [0, 1] (rectified flow).

    ``T`` sets only how time is shown to the network: t (T - 1), the range of the integer timesteps
    of a DDPM network with T steps (the model's ``num_timesteps`` must equal it). A checkpoint
    records ``{"kind": "flow", "T": T}``.
    """

    kind = "flow"

    def __init__(self, T: int = 1000):
        if int(T) < 2:
            raise ValueError(f"T must be at least 2 (it scales the network's time input), got {T}")
        self.T = int(T)

    def __repr__(self) -> str:
        return f"LinearPath(T={self.T})"

    def __eq__(self, other) -> bool:
        return isinstance(other, LinearPath) and other.T == self.T

    def __hash__(self) -> int:
        return hash((self.kind, self.T))

    @staticmethod
    def _times(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``t`` of shape (B,) or a number, shaped to broadcast over ``x``, in x's dtype."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t

    def check_times(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            raise TypeError("flow times must be a float tensor of shape (B,) with values in [0, 1]")
        if len(t) and (not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1):
            raise ValueError(f"flow times must lie in [0, 1], got values in [{float(t.min()):g}, {float(t.max()):g}]")
        return t

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t eps: a point on each image's line at its time t (shape (B,))."""
        t = self._times(self.check_times(t), x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The conditional velocity d x_t / dt = eps - x_0, what the network regresses."""
        return noise - x0

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time the network is given: t (T - 1), float32, in [0, T - 1]."""
        return t.float() * (self.T - 1)

    @staticmethod
    def sample_t(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Uniform[0, 1) for a batch (Lipman et al. 2023), float32 on the CPU."""
        return torch.rand(batch, generator=generator)

    def x0_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
        """x0_hat = x_t - t v."""
        return x_t - self._times(t, x_t) * v

    def eps_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
        """eps_hat = x_t + (1 - t) v."""
        return x_t + (1 - self._times(t, x_t)) * v

    def score_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
        """grad log p_t(x_t) = -eps_hat / t (the marginal of the path is x_0 (1 - t) plus noise of std t); t > 0."""
        tt = self._times(t, x_t)
        if bool((tt <= 0).any()):
            raise ValueError("the score of the path is defined for t > 0 only (at t = 0 it is the data's own)")
        return -self.eps_from_velocity(x_t, v, t) / tt


def from_diffusion(x_t: torch.Tensor, alpha_bar_t: float) -> tuple[torch.Tensor, float]:
    """A DDPM state x_t = a x_0 + s eps (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t)) as a point of the
    linear path: (x_t / (a + s), tau = s / (a + s)), since x_t / (a + s) = (1 - tau) x_0 + tau eps."""
    a, s = alpha_bar_t ** 0.5, (1 - alpha_bar_t) ** 0.5
    return x_t / (a + s), s / (a + s)


def to_diffusion(y: torch.Tensor, tau: float) -> tuple[torch.Tensor, float]:
    """The inverse of :func:`from_diffusion`: a point y of the linear path at time tau as the DDPM state
    x = y (a + s) with alpha_bar = a^2 = (1 - tau)^2 / ((1 - tau)^2 + tau^2); returns (x, alpha_bar)."""
    if not 0 <= tau <= 1:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    norm = ((1 - tau) ** 2 + tau ** 2) ** 0.5          # a + s once a = (1 - tau) / norm, s = tau / norm
    return y * (1 / norm), (1 - tau) ** 2 / norm ** 2


def velocity_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float) -> torch.Tensor:
    """The linear path's velocity eps - x0_hat implied by a noise prediction eps at the DDPM state x_t
    (x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), Ho et al. 2020, Eq. 15)."""
    x0 = (x_t - (1 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t ** 0.5
    return eps - x0


def straightness(states: torch.Tensor, times: torch.Tensor) -> float:
    """Liu et al. (2022)'s straightness of ODE paths, S = E int_0^1 |dx/dt - (x(1) - x(0))|^2 dt: zero for straight
    lines walked at constant speed. ``states`` (K + 1, n, ...) are the paths at the decreasing ``times`` (K + 1,)
    from 1 to 0 (a sampler's callback gives them); on each interval dx/dt is the chord of that interval, the
    integral a sum over intervals weighted by their lengths, and |.|^2 is per coordinate (a mean over the
    coordinates and the n paths), so images and points of the plane read on one scale."""
    if states.dim() < 3 or len(states) != len(times) or len(times) < 2:
        raise ValueError(f"states must be (K + 1, n, ...) with K + 1 = len(times) >= 2 steps of the path; got states "
                         f"of shape {tuple(states.shape)} and {len(times)} times")
    times = torch.as_tensor(times, dtype=states.dtype)
    dt = times[:-1] - times[1:]
    if bool((dt <= 0).any()):
        raise ValueError("times must decrease (the path runs from t = 1, noise, to t = 0, data)")
    velocity = (states[:-1] - states[1:]) / dt.reshape(-1, *[1] * (states.dim() - 1))   # dx/dt on each interval
    chord = states[0] - states[-1]                                                     # x(1) - x(0)
    per_interval = ((velocity - chord) ** 2).flatten(2).mean(2).mean(1)                # (K,)
    return float((per_interval * dt).sum() / dt.sum())
