"""Cold diffusion: generation by undoing a deterministic blur, with no noise anywhere (Bansal et al. 2022).

DDPM's forward process adds Gaussian noise. Cold diffusion asks whether the noise is needed at
all: take any degradation D(x_0, t) that destroys more of the image as t grows, train a
restoration network R(x_t, t) ~ x_0 on pairs (D(x_0, t), x_0), and generate by undoing the
degradation step by step. Here D is a Gaussian blur whose width sigma_t grows geometrically with
t; at the last step the image is a constant (its mean), so generation can start from a constant
image, its grey level drawn from a Gaussian mixture fitted to the training images' means (the
paper's recipe for the blur).

* :class:`BlurDegradation` -- D(x_0, t), exact in Fourier space with a circular boundary. It
  plays the part a :class:`~ddpm_lib.schedule.DiffusionSchedule` plays for DDPM: ``T``, and the
  forward process; :func:`ddpm_lib.training.train` trains on it with
  :class:`ddpm_lib.losses.ColdLoss`, || R(D(x_0, t), t) - x_0 ||_1 (the paper's loss, section 3.1).
* :class:`GaussianMixture1D` and :func:`initial_state` -- the initial grey level.
* :func:`ddpm_lib.sampling.cold.cold_sample` -- the paper's improved sampling (its Algorithm 2).

Timesteps are zero-indexed like the rest of the library: t in [0, T) is the paper's t + 1, and
"D(x, -1)" is x itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch



@lru_cache(maxsize=8)
def _squared_frequencies(h: int, w: int) -> torch.Tensor:
    """|f|^2 on the grid of torch.fft.rfft2 for an h x w image (float64, (h, w // 2 + 1))."""
    return torch.fft.fftfreq(h, dtype=torch.float64)[:, None] ** 2 + torch.fft.rfftfreq(w, dtype=torch.float64)[None, :] ** 2


@dataclass(frozen=True, eq=False)
class BlurDegradation:
    """D(x_0, t): a Gaussian blur of width sigma_t, sigma_t geometric from SIGMA_MIN to SIGMA_MAX pixels.

    The blur multiplies each spatial frequency f (cycles per pixel) by exp(-2 pi^2 sigma^2 |f|^2),
    the Fourier transform of a Gaussian kernel, on the image's periodic extension. At sigma = 20 every
    frequency but f = 0 of a 28x28 image is scaled by at most exp(-10): the image is its mean.
    """

    T: int = 50
    SIGMA_MIN = 0.5
    SIGMA_MAX = 20.0
    kind = "blur"          # what a checkpoint records, with T (ddpm_lib.checkpoint.forward_process_from_dict)

    def __post_init__(self):
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 2:
            raise ValueError(f"T must be an integer >= 2, got {self.T!r}")

    @cached_property
    def sigmas(self) -> torch.Tensor:
        """sigma_t for t = 0 .. T-1 (float64)."""
        return self.SIGMA_MIN * (self.SIGMA_MAX / self.SIGMA_MIN) ** (torch.arange(self.T, dtype=torch.float64) / (self.T - 1))

    def check_timesteps(self, t: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point:
            raise TypeError("timesteps must be an integer tensor of shape (B,)")
        if batch is not None and t.shape != (batch,):
            raise ValueError(f"expected timesteps of shape ({batch},), got {tuple(t.shape)}")
        if len(t) and (int(t.min()) < -1 or int(t.max()) >= self.T):
            raise ValueError(f"timesteps must lie in [-1, {self.T}) (-1: no blur), got {int(t.min())}..{int(t.max())}")
        return t

    def degrade(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D(x_0, t) for a batch (B, C, H, W) and timesteps t (B,); t = -1 returns x_0 unchanged."""
        t = self.check_timesteps(t, batch=x0.shape[0])
        h, w = x0.shape[-2:]
        f2 = _squared_frequencies(h, w)
        sigma = torch.where(t.cpu() >= 0, self.sigmas[t.cpu().clamp(min=0)], torch.zeros((), dtype=torch.float64))
        gain = torch.exp(-2 * math.pi ** 2 * sigma[:, None, None, None] ** 2 * f2)      # (B, 1, H, W//2+1)
        spectrum = torch.fft.rfft2(x0.float()) * gain.to(device=x0.device, dtype=torch.float32)
        blurred = torch.fft.irfft2(spectrum, s=(h, w)).to(x0.dtype)
        return torch.where((t >= 0).to(x0.device).view(-1, 1, 1, 1), blurred, x0)   # exact at t = -1

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0), as :meth:`DiffusionSchedule.q_sample` gives one: here q is a point
        mass at D(x_0, t), so ``noise`` is accepted and unused (code that corrupts training inputs runs
        either forward process unchanged)."""
        return self.degrade(x0, t)


@dataclass(frozen=True)
class GaussianMixture1D:
    """A mixture of K one-dimensional Gaussians, fitted by expectation-maximisation."""

    weights: tuple
    means: tuple
    stds: tuple

    @classmethod
    def fit(cls, values: torch.Tensor, k: int = 5, iters: int = 200) -> "GaussianMixture1D":
        """Fit K components to ``values`` (1-D); deterministic: components start at the quantiles."""
        x = values.double().flatten()
        if len(x) < k:
            raise ValueError(f"need at least k={k} values to fit {k} components, got {len(x)}")
        mu = torch.quantile(x, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
        var = torch.full((k,), float(x.var()) / k)
        pi = torch.full((k,), 1.0 / k, dtype=torch.float64)
        for _ in range(iters):
            log_p = torch.log(pi) - 0.5 * torch.log(2 * math.pi * var) - 0.5 * (x[:, None] - mu) ** 2 / var
            r = torch.softmax(log_p, dim=1)                       # E step: responsibilities (N, K)
            nk = r.sum(0) + 1e-12                                 # M step
            pi, mu = nk / len(x), (r * x[:, None]).sum(0) / nk
            var = ((r * (x[:, None] - mu) ** 2).sum(0) / nk).clamp(min=1e-8)
        return cls(tuple(pi.tolist()), tuple(mu.tolist()), tuple(var.sqrt().tolist()))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.multinomial(torch.tensor(self.weights), n, replacement=True, generator=generator)
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (torch.tensor(self.means)[comp] + torch.tensor(self.stds)[comp] * z).float()


def initial_state(mixture: GaussianMixture1D, n: int, shape: tuple, generator: torch.Generator,
                  noise_std: float = 0.0) -> torch.Tensor:
    """n fully blurred images: constants drawn from ``mixture``, plus N(0, noise_std^2) per pixel if asked.

    ``noise_std`` > 0 breaks the symmetry of a constant start (every start is then a different
    image); 0 is the plain deterministic method, whose only randomness is one grey level per image.
    """
    level = mixture.sample(n, generator)
    x = level[:, None, None, None].expand(n, *shape).clone()
    if noise_std:
        x += noise_std * torch.randn(x.shape, generator=generator)
    return x
