"""The variational bound on the negative log-likelihood (Ho et al. 2020, Eq. 5 and section 3.3).

For 8-bit images scaled to [-1, 1] the bound of Eq. (5) is, in nats per image,

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I))                          (the prior term; no parameters)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  (Eq. 5, with x_t ~ q(x_t | x_0))
    L_0     = -log p_theta(x_0 | x_1)                              (the discretised decoder, section 3.3)

and -log p_theta(x_0) <= E_q[L]. Both distributions in L_{t-1} are Gaussians with
diagonal covariance: the posterior of Eqs. (6)-(7) (``schedule.q_posterior``) and
the reverse step N(mu_theta(x_t, t), sigma_t^2 I) with mu_theta of Eq. (11)
(``sampling.p_mean``), so each KL has a closed form (:func:`normal_kl`). With
the noise-prediction parameterisation it equals Eq. (12),

    L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) ||eps - eps_theta(x_t, t)||^2 + C_t,

where C_t = KL between two Gaussians of the same mean and variances beta_tilde_t and
sigma_t^2 (zero for sigma_t^2 = beta_tilde_t). Divided by D ln 2 (D = C*H*W) the
bound is in bits per dimension, the unit of Table 1 of Ho et al. 2020.

Indexing. The library is zero-based (see :mod:`ddpm_lib.schedule`): the network
is called with timestep index i = 0..T-1, the paper's t = i + 1. The per-timestep
terms are stored the same way, one column per index: column 0 is L_0 (the decoder
at the paper's t = 1), column i >= 1 is the paper's L_{t-1} with t = i + 1 (the KL
of the step x_{i+1} -> x_i in the paper's numbering). One network call per
(image, column).

Each column is an expectation over x_t ~ q(x_t | x_0); :func:`variational_bound`
estimates it with one draw of x_t per (image, t) (seeded), which is what the
total's standard error over images then includes. ``t_stride = k > 1`` evaluates
only every k-th KL column, starting at a random offset per image, and multiplies
their sum by k: every column i >= 1 is then included with probability exactly 1/k,
so the estimate of the sum is unbiased. Its variance grows with k, and it is large when a
few columns dominate the sum, as the first timesteps do for image models (chapter
"Why L_simple: the variational bound" shows it for MNIST): report bounds with
``t_stride = 1``. L_0 and L_T are always computed.

Precision. Everything outside the network is float64. The network runs in float32:
bf16 autocast (8 bits of mantissa) perturbs eps_theta, Eq. (12) adds the perturbation
squared, with the largest weights at the small t that dominate the bound, and the
result is a bias, not noise: measured with the shipped checkpoint on the first 4 MNIST
test digits, bf16 raised every digit's bound, by 0.019 to 0.025 bits/dim (about 1%),
as much as the standard error over digits of the committed 70-digit estimate
(``checkpoints/nll_ddpm_mnist.json``). The memory format (contiguous
or channels_last; ``python -m ddpm_lib nll`` takes the measured faster one) does not matter:
both are float32, and on the same digits they agree to within 1e-6 bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .numerics import Numerics
from .sampling import as_eps_model, p_mean
from .schedule import DiffusionSchedule

#: The reverse-process variances sigma_t^2 that the bound can be evaluated with (section 3.2).
VLB_VARIANCES = ("beta", "beta_tilde")
#: Half the width of one 8-bit bin on the [-1, 1] scale: bins are 2/255 wide (section 3.3).
HALF_BIN = 1.0 / 255.0


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats, elementwise (diagonal Gaussians).

    KL = 1/2 [ log(s2^2 / s1^2) + s1^2 / s2^2 + (m1 - m2)^2 / s2^2 - 1 ], with the
    variances given as logs. Arguments broadcast against each other; sum over
    dimensions for the KL of the whole vector.
    """
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v, dtype=torch.float64) if not isinstance(v, torch.Tensor) else v
                                      for v in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_normal_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for standard-normal limits lo <= hi (either may be infinite), without cancellation.

    Where the interval lies above 0 it is mirrored, Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), so both
    limits sit in the lower tail, where ``log_ndtr`` is accurate; then
    log(Phi(b) - Phi(a)) = log Phi(b) + log(-expm1(log Phi(a) - log Phi(b))).
    """
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of the discretised Gaussian decoder of Ho et al. 2020, section 3.3 (Eq. 13), elementwise, nats.

    ``x`` holds 8-bit data scaled to [-1, 1] (values -1 + 2k/255, k = 0..255); each
    value owns the bin [x - 1/255, x + 1/255], and the edge bins extend to -inf
    (x = -1) and +inf (x = +1), so the 256 probabilities of a pixel sum to 1. The
    probability of a bin is the mass of N(mean, exp(log_scale)^2) over it (log_scale
    is the log of the standard deviation), computed as a difference of normal CDFs in
    log space (:func:`_log_normal_mass`), which stays accurate far in the tails where
    the direct difference of CDFs would round to 0.
    """
    x, mean, log_scale = (v.double() if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float64)
                          for v in (x, mean, log_scale))
    inv_std = torch.exp(-log_scale)
    lo = torch.where(x < -1.0 + HALF_BIN, torch.full_like(x, -math.inf), x - HALF_BIN)
    hi = torch.where(x > 1.0 - HALF_BIN, torch.full_like(x, math.inf), x + HALF_BIN)
    return _log_normal_mass((lo - mean) * inv_std, (hi - mean) * inv_std)


def reverse_log_variance(schedule: DiffusionSchedule, variance: str = "beta") -> torch.Tensor:
    """log sigma_t^2 of p_theta(x_{t-1} | x_t) for every timestep index, float64 of shape (T,).

    ``"beta"``: sigma_t^2 = beta_t (section 3.2), also at t = 1, where it is the variance of
    the decoder L_0. ``"beta_tilde"``: sigma_t^2 = beta_tilde_t (Eq. 7); at t = 1
    beta_tilde_1 = 0 would make the decoder a point mass, so index 0 takes beta_tilde_2
    instead, as Ho et al.'s released code does (``posterior_log_variance_clipped``). For
    t >= 2 both equal the sampler's sigma_t^2 (:func:`ddpm_lib.sampling.p_sample`; the
    sampler adds no noise at t = 1, so it never uses sigma_1).

    Ho et al.'s released code (``diffusion_utils_2.py``, "fixedlarge") also gives the
    beta_t choice the decoder variance beta_tilde_2, "to get a better decoder log
    likelihood"; we keep the paper's sigma_1^2 = beta_1, which is larger, so our L_0 for
    ``"beta"`` is somewhat higher than that code would report.
    """
    if variance == "beta":
        var = schedule.betas
    elif variance == "beta_tilde":
        var = schedule.posterior_variance.clone()
        var[0] = schedule.posterior_variance[1]
    else:
        raise ValueError(f"unknown variance {variance!r}: expected one of {', '.join(VLB_VARIANCES)}")
    return torch.log(var.double())


def prior_kl(schedule: DiffusionSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image in nats (Eq. 5), shape (N,).

    q(x_T | x_0) = N(sqrt(alpha_bar_T) x_0, (1 - alpha_bar_T) I) (Eq. 4), so this is
    :func:`normal_kl` summed over pixels; it has no parameters to learn.
    """
    x0 = x0.double()
    ab_T = schedule.alpha_bars[-1].double()
    zero = torch.zeros((), dtype=torch.float64)
    kl = normal_kl(torch.sqrt(ab_T) * x0, torch.log1p(-ab_T), zero, zero)
    return kl.flatten(1).sum(1)


@dataclass(frozen=True)
class VariationalBound:
    """What :func:`variational_bound` returns; all tensors float64, in nats unless named otherwise.

    ``terms`` (N, T): column 0 = L_0 (the decoder), column i >= 1 = the paper's L_{t-1}
    for t = i + 1; NaN where a column was not evaluated (``t_stride > 1``).
    ``prior`` (N,): L_T. ``total`` (N,): the estimate of the bound, L_T + L_0 +
    t_stride * (sum of the evaluated KL columns). ``dims``: D = C*H*W.
    """

    terms: torch.Tensor
    prior: torch.Tensor
    total: torch.Tensor
    dims: int
    variance: str
    t_stride: int = 1
    t_offsets: torch.Tensor | None = None
    numerics: str = "fp32 contiguous"   # how the network ran (always float32; the memory format may vary)

    @property
    def nats_to_bits_per_dim(self) -> float:
        """Multiply nats per image by this to get bits per dimension: 1 / (D ln 2)."""
        return 1.0 / (self.dims * math.log(2.0))

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """The bound of each image in bits/dim, shape (N,)."""
        return self.total * self.nats_to_bits_per_dim

    @property
    def decoder_nll(self) -> torch.Tensor:
        """L_0 = -log p_theta(x_0 | x_1) per image, nats, shape (N,)."""
        return self.terms[:, 0]

    def mean_bits_per_dim(self) -> tuple[float, float]:
        """(mean, standard error of the mean) of the bits/dim over the images (the SE is NaN for one image)."""
        bpd = self.bits_per_dim
        sem = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else math.nan
        return float(bpd.mean()), sem

    def per_t_bits_per_dim(self) -> torch.Tensor:
        """The mean over images of each column of ``terms``, in bits/dim, shape (T,) (NaN: never evaluated).

        With ``t_stride = 1`` these T values plus the prior's add up to the mean bound.
        """
        return self.terms.nanmean(0) * self.nats_to_bits_per_dim


class _Float32Network:
    """eps_theta evaluated in float32 (and the chosen memory format) for float64 inputs; see the module docstring."""

    def __init__(self, model: nn.Module, memory_format: torch.memory_format, device: torch.device):
        self.model, self.memory_format, self.device = model, memory_format, device

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x_t.to(device=self.device, dtype=torch.float32).contiguous(memory_format=self.memory_format)
        return self.model(x, t.to(self.device)).cpu()


def _check_data(x0: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor) or not x0.dtype.is_floating_point:
        raise TypeError("x0 must be a float tensor of images in [-1, 1] (to_model_range converts uint8 images)")
    if x0.dim() != 4 or len(x0) == 0:
        raise ValueError(f"x0 must have shape (N, C, H, W) with N >= 1, got {tuple(x0.shape)}")
    levels = (x0.double() + 1.0) * 127.5
    if bool((levels < -1e-3).any() | (levels > 255 + 1e-3).any()):
        raise ValueError("x0 must lie in [-1, 1]: the bound is defined for 8-bit data scaled to that range")
    if bool(((levels - levels.round()).abs() > 1e-3).any()):
        raise ValueError("x0 must be 8-bit data scaled to [-1, 1] (values -1 + 2k/255): the decoder L_0 is "
                         "discrete (section 3.3), so the bound is defined only there")


def _check_arguments(model: nn.Module, schedule: DiffusionSchedule, x0: torch.Tensor, variance: str, t_stride,
                     batch_size: int, numerics: Numerics | None) -> None:
    if numerics is not None and numerics.precision != "fp32":
        raise ValueError(f"the bound is computed in float32 (see the module docstring), not {numerics.precision}: "
                         "pass numerics with precision='fp32'")
    if variance not in VLB_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}: expected one of {', '.join(VLB_VARIANCES)}")
    if not isinstance(t_stride, int) or isinstance(t_stride, bool) or t_stride < 1:
        raise ValueError(f"t_stride must be a positive integer, got {t_stride!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_data(x0)
    cfg = getattr(model, "config", None)
    if cfg is not None and cfg.num_timesteps != schedule.T:
        raise ValueError(f"the model was built for T={cfg.num_timesteps} timesteps but the schedule has "
                         f"T={schedule.T}; use the schedule the model was trained with (load_checkpoint returns it)")
    if cfg is not None and tuple(x0.shape[1:]) != (cfg.image_channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"the model takes images of shape {(cfg.image_channels, cfg.image_size, cfg.image_size)}, "
                         f"got x0 of shape {tuple(x0.shape)}")


def _terms(network, schedule: DiffusionSchedule, log_var: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor,
           x_t: torch.Tensor) -> torch.Tensor:
    """The bound's term at each (x_0, t, x_t) of a batch: L_0 where t = 0, L_{t-1} elsewhere (nats, float64)."""
    mean = p_mean(network, schedule, x_t, t)                             # mu_theta(x_t, t), Eq. (11), float64
    lv = log_var[t].reshape(-1, *([1] * (x_t.dim() - 1)))
    out = torch.empty(len(t), dtype=torch.float64)
    dec = t == 0
    if bool(dec.any()):                                                  # L_0, section 3.3
        ll = discretized_gaussian_log_likelihood(x_start[dec], mean[dec], 0.5 * lv[dec])
        out[dec] = -ll.flatten(1).sum(1)
    kl = ~dec
    if bool(kl.any()):                                                   # L_{t-1}, Eq. (5)
        mu_tilde, var_tilde = schedule.q_posterior(x_start[kl], x_t[kl], t[kl])
        out[kl] = normal_kl(mu_tilde, torch.log(var_tilde), mean[kl], lv[kl]).flatten(1).sum(1)
    return out


def _fill_terms(terms: torch.Tensor, network, schedule: DiffusionSchedule, log_var: torch.Tensor, x0: torch.Tensor,
                columns, generator: torch.Generator, batch_size: int, bar) -> None:
    """Evaluate the terms of every image at its ``columns(n)``, ``batch_size`` network calls at a time."""
    N, T = len(x0), schedule.T
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    count = 0
    for n in range(N):
        noise = torch.randn((T, *x0.shape[1:]), generator=generator, dtype=torch.float64)   # all T, whatever is used
        cols = columns(n)
        x_start = x0[n].expand(len(cols), *x0.shape[1:])
        x_t = schedule.q_sample(x_start, cols, noise=noise[cols])     # x_t ~ q(x_t | x_0), Eq. (4)
        pending.append((torch.full((len(cols),), n), cols, x_start, x_t))
        count += len(cols)
        while count >= batch_size or (n == N - 1 and count > 0):
            rows, t, xs, xt = (torch.cat(parts) for parts in zip(*pending))
            take = min(batch_size, count)
            terms[rows[:take], t[:take]] = _terms(network, schedule, log_var, t[:take], xs[:take], xt[:take])
            if bar is not None:
                bar.update(take)
            pending = [(rows[take:], t[take:], xs[take:], xt[take:])] if take < count else []
            count -= take


@torch.no_grad()
def variational_bound(
    model: nn.Module,
    schedule: DiffusionSchedule,
    x0: torch.Tensor,
    *,
    variance: str = "beta",
    seed: int = 0,
    t_stride: int = 1,
    t_offsets: torch.Tensor | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    numerics: Numerics | None = None,
    progress: bool = False,
) -> VariationalBound:
    """Every term of the bound of Eq. (5) for each image of ``x0`` (Ho et al. 2020, sections 3.2-3.3).

    ``x0``: float (N, C, H, W), 8-bit data in [-1, 1]. For each image and each
    timestep index i (one network call each, batched over images and t):

    * i = 0: x_1 ~ q(x_1 | x_0) and L_0 = -log p_theta(x_0 | x_1), the discretised
      Gaussian of :func:`discretized_gaussian_log_likelihood` with mean mu_theta(x_1, 1)
      and variance sigma_1^2 (:func:`reverse_log_variance`), summed over pixels;
    * i >= 1: x_t ~ q(x_t | x_0) (t = i + 1, ``schedule.q_sample``) and
      L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mu_theta(x_t, t), sigma_t^2 I)) by
      :func:`normal_kl`, with the posterior from ``schedule.q_posterior`` (Eqs. 6-7)
      and mu_theta from ``sampling.p_mean`` (Eq. 11), summed over pixels;

    plus L_T (:func:`prior_kl`). ``variance``: "beta" (sigma_t^2 = beta_t, what the
    shipped model samples with) or "beta_tilde". The noise of image n comes from a
    generator seeded with ``seed``: all T draws of image n are made (in index order,
    images in order) whatever ``t_stride`` is, so a column's x_t does not depend on
    which other columns are evaluated. ``t_stride`` and ``t_offsets`` (one offset in
    [0, t_stride) per image; drawn from ``seed + 1`` if not given): see the module
    docstring. ``numerics``: the network's memory format (default contiguous; the faster one
    for a machine comes from :func:`ddpm_lib.numerics.choose_numerics` with ``precision="fp32"``);
    the arithmetic is always float32, and a bf16 ``numerics`` is an error
    (why: see the module docstring).
    """
    _check_arguments(model, schedule, x0, variance, t_stride, batch_size, numerics)
    N, T = len(x0), schedule.T
    if t_offsets is None:
        t_offsets = torch.randint(0, t_stride, (N,), generator=torch.Generator().manual_seed(seed + 1))
    t_offsets = torch.as_tensor(t_offsets, dtype=torch.long)
    if t_offsets.shape != (N,) or bool((t_offsets < 0).any() | (t_offsets >= t_stride).any()):
        raise ValueError(f"t_offsets must hold one integer in [0, {t_stride}) per image, got {t_offsets.tolist()}")

    if device is None:
        params = next(iter(model.parameters()), None)
        device = params.device if params is not None else torch.device("cpu")
    device = torch.device(device)
    numerics = numerics if numerics is not None else Numerics()
    log_var = reverse_log_variance(schedule, variance)
    x0 = ((x0.detach().cpu().double() + 1.0) * 127.5).round() / 127.5 - 1.0    # exactly on the 8-bit grid, float64
    terms = torch.full((N, T), math.nan, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)

    def columns(n: int) -> torch.Tensor:    # the timestep indices evaluated for image n: 0, then every t_stride-th
        return torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1 + int(t_offsets[n]), T, t_stride)])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(columns(n)) for n in range(N)), desc="variational bound", leave=False)
    was_training = model.training
    model.eval()
    try:
        with numerics.applied_to(model):
            network = _Float32Network(as_eps_model(model, schedule), numerics.memory_format, device)
            _fill_terms(terms, network, schedule, log_var, x0, columns, generator, batch_size, bar)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    prior = prior_kl(schedule, x0)
    total = prior + terms[:, 0] + t_stride * terms[:, 1:].nansum(1)
    return VariationalBound(terms=terms, prior=prior, total=total, dims=int(x0[0].numel()), variance=variance,
                            t_stride=t_stride, t_offsets=t_offsets, numerics=numerics.name)

