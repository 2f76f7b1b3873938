"""A whole diffusion loop in the plane: data whose every quantity is known exactly, a network that trains in seconds.

Images hide what a diffusion model does behind 784 dimensions and an hour of training. In two
dimensions the same loop, Algorithm 1 then Algorithm 2, runs in seconds on a CPU, every state
can be plotted, and the network can be compared with the exact answer it is trained towards:

* :class:`GaussianMixture2D` -- the data: a mixture of isotropic Gaussians in the plane. Its noisy
  marginals are mixtures too, so the best noise prediction E[eps | x_t] (:meth:`~GaussianMixture2D.eps_star`),
  the score, and a flow's marginal velocity (:meth:`~GaussianMixture2D.velocity_star`) have closed forms;
  :meth:`~GaussianMixture2D.exact_model` wraps them as a network the samplers call, and
  :meth:`~GaussianMixture2D.quality` scores a sample against the mixture.
* :class:`MLPDenoiser` -- eps_theta(x_t, t) (or a velocity, or x0, ...) for points in the plane: the UNet's
  sinusoidal time embedding, then a small MLP. It takes the same timesteps as the book's networks (integers
  in [0, T), or real numbers in [0, T - 1]), and carries a ``config``, so every sampler of
  :mod:`ddpm_lib.sampling` draws from it unchanged (with ``image_shape=(2,)``).
* :func:`train_toy` -- Algorithm 1 with fresh data at every step (or on fixed (x_0, eps) pairs, as reflow
  trains), one :func:`ddpm_lib.optim.train_step` per step on a loss of :mod:`ddpm_lib.losses` (L_simple, or
  flow matching).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .flow import LinearPath
from .guidance import drop_labels
from .losses import make_loss
from .models import PREDICTIONS, sinusoidal_embedding
from .optim import train_step

#: four points in the plane and their probabilities, as chapter 4 checks the score on (there with zero spread)
FOUR_POINTS = ((-0.6, -0.5), (0.7, -0.4), (0.0, 0.75), (0.55, 0.45))
FOUR_WEIGHTS = (0.4, 0.3, 0.2, 0.1)


class GaussianMixture2D:
    """sum_k w_k N(mu_k, s^2 I) in the plane (s = ``std`` >= 0; s = 0: weighted points), in float64.

    Under the forward process x_t = a x_0 + sigma eps (a = sqrt(alpha_bar_t), sigma = sqrt(1 - alpha_bar_t)),
    component k becomes N(a mu_k, v I) with v = a^2 s^2 + sigma^2, so with r_k(x_t) the probability that x_t
    came from component k (Bayes' rule),

        E[eps | x_t] = sigma / v (x_t - a sum_k r_k mu_k)                      (the best eps-prediction)

    and on the linear path x_t = (1 - t) x_0 + t eps (:mod:`ddpm_lib.flow`), the same with a = 1 - t, sigma = t.
    """

    def __init__(self, means=FOUR_POINTS, weights=FOUR_WEIGHTS, std: float = 0.05):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.means.dim() != 2 or self.means.shape[1] != 2 or len(self.weights) != len(self.means):
            raise ValueError(f"need means of shape (K, 2) and K weights, got {tuple(self.means.shape)} and "
                             f"{len(self.weights)}")
        if bool((self.weights <= 0).any()) or not math.isclose(float(self.weights.sum()), 1.0, abs_tol=1e-9):
            raise ValueError(f"weights must be positive and sum to 1, got {self.weights.tolist()}")
        if std < 0:
            raise ValueError(f"std must be >= 0 (0: the data are the points themselves), got {std}")
        self.std = float(std)

    @property
    def num_classes(self) -> int:
        """K: the components are the classes of a class-conditional model (labels 0..K-1)."""
        return len(self.means)

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """n points (n, 2), float32: a component by its weight, then its Gaussian; with ``return_labels``, also
        each point's component (n,), its class."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = (self.means[k] + self.std * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()
        return (x, k) if return_labels else x

    def _posterior(self, x: torch.Tensor, a, sigma, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """r_k(x) (n, K) and v (n, 1) for x = a x_0 + sigma eps; ``a``, ``sigma``: numbers or (n,) tensors.
        Given ``labels`` (n,), a point's component is known where its label k < K: r is one-hot there (the
        class-conditional case); the null label K leaves it unknown (the mixture's posterior)."""
        x = x.double().reshape(-1, 2)
        a = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
        v = a**2 * self.std**2 + sigma**2
        d2 = ((x[:, None, :] - a[:, :, None] * self.means[None]) ** 2).sum(-1)        # (n, K)
        r = torch.softmax(self.weights.log() - d2 / (2 * v), dim=1)
        if labels is not None:
            labels = torch.as_tensor(labels).long().reshape(-1, 1)
            known = nn.functional.one_hot(labels.clamp(max=self.num_classes - 1).flatten(), self.num_classes)
            r = torch.where(labels < self.num_classes, known.double(), r)
        return r, v

    def eps_star(self, x_t: torch.Tensor, alpha_bar, labels=None) -> torch.Tensor:
        """E[eps | x_t] (or E[eps | x_t, class] given ``labels``; the null label K: the mixture's) under DDPM's
        forward process at ``alpha_bar`` (a number, or one per point), float64."""
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64)
        a, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        r, v = self._posterior(x_t, a, sigma, labels)
        return sigma.reshape(-1, 1) / v * (x_t.double().reshape(-1, 2) - a.reshape(-1, 1) * (r @ self.means))

    def velocity_star(self, x_t: torch.Tensor, t, labels=None) -> torch.Tensor:
        """u_t(x) = E[eps - x_0 | x_t] on the linear path x_t = (1 - t) x_0 + t eps (``t`` in (0, 1]), float64;
        given ``labels``, u_t(x | class): the velocity of the data of that class alone (the null label K: u_t(x))."""
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        r, v = self._posterior(x_t, 1 - t, t, labels)
        x = x_t.double().reshape(-1, 2)
        resid = x[:, None, :] - (1 - t)[:, :, None] * self.means[None]               # x - (1 - t) mu_k
        e_eps = t[:, :, None] / v[:, :, None] * resid
        e_x0 = self.means[None] + ((1 - t) * self.std**2 / v)[:, :, None] * resid
        return ((e_eps - e_x0) * r[:, :, None]).sum(1)

    def reverse_step(self, x_t: torch.Tensor, alpha_bar_t: float, alpha_bar_s: float) -> "GaussianMixture2D":
        """The true reverse step q(x_s | x_t) of DDPM's forward process, from one point x_t (2,) at ``alpha_bar_t``
        to the earlier level ``alpha_bar_s`` > alpha_bar_t (s = t - 1 for one step of the chain), exactly.

        x_t | x_s ~ N(c x_s, d I) with c^2 = alpha_bar_t / alpha_bar_s, d = 1 - c^2 (Ho et al. 2020, Eq. 2 over
        the steps between), and q(x_s) is this mixture noised to ``alpha_bar_s``: component k is
        N(a_s mu_k, v_s I). Bayes' rule, component by component, gives a mixture again: weights r_k(x_t),
        means m_k = (a_s mu_k / v_s + c x_t / d) / P and one variance 1 / P, P = 1 / v_s + c^2 / d. Small steps
        (d small) put every m_k near x_t / c: nearly one Gaussian, which is why Algorithm 2's Gaussian step can
        be exact in the limit (Sohl-Dickstein et al. 2015); large steps leave K separate modes.
        """
        if not 0 < alpha_bar_t < alpha_bar_s <= 1:
            raise ValueError(f"need 0 < alpha_bar_t < alpha_bar_s <= 1 (s earlier than t), got {alpha_bar_t}, "
                             f"{alpha_bar_s}")
        x = x_t.double().reshape(2)
        c2 = alpha_bar_t / alpha_bar_s
        d, a_s = 1 - c2, math.sqrt(alpha_bar_s)
        v_s = alpha_bar_s * self.std**2 + 1 - alpha_bar_s
        precision = 1 / v_s + c2 / d
        means = (a_s * self.means / v_s + math.sqrt(c2) * x / d) / precision
        r, _ = self._posterior(x[None], math.sqrt(alpha_bar_t), math.sqrt(1 - alpha_bar_t))
        weights = r[0].clamp_min(1e-300)                          # a component may underflow; it stays negligible
        return GaussianMixture2D(means, weights / weights.sum(), std=math.sqrt(1 / precision))

    def exact_model(self, forward_process) -> "ExactModel":
        """The best network there can be, as one the samplers call: eps*(x_t, t) for a DDPM
        :class:`~ddpm_lib.schedule.DiffusionSchedule` (integer timesteps), the marginal velocity u_t for a
        flow's :class:`~ddpm_lib.flow.LinearPath` (network time t (T - 1))."""
        return ExactModel(self, forward_process)

    def quality(self, x: torch.Tensor) -> tuple[float, float]:
        """How far points ``x`` (n, 2) are from the mixture: the largest error of the components' proportions
        (each point counted for its nearest centre), and the mean distance from a point to its nearest centre."""
        x = x.double().reshape(-1, 2)
        nearest = torch.cdist(x, self.means).argmin(1)
        share = torch.bincount(nearest, minlength=len(self.means)) / len(x)
        return (share - self.weights).abs().max().item(), (x - self.means[nearest]).norm(dim=1).mean().item()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of the data (std > 0), float64."""
        if self.std == 0:
            raise ValueError("the data are points (std = 0): they have no density")
        x = x.double().reshape(-1, 2)
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        return torch.logsumexp(self.weights.log() - d2 / (2 * self.std**2), 1) - math.log(2 * math.pi * self.std**2)


@dataclass
class ToyConfig:
    """What the samplers and losses read from a network's ``config``."""

    num_timesteps: int = 1000
    prediction: str = "eps"
    num_classes: int = 0


class ExactModel(nn.Module):
    """A :class:`GaussianMixture2D`'s exact eps* (DDPM) or marginal velocity (a flow) as a network: what a trained
    :class:`MLPDenoiser` approximates, so a sampler's error can be told from the network's. It is class-conditional
    as the trained one can be: label k (a component) gives that component's own field, the null label K (or no
    label) the mixture's, so classifier-free guidance (:mod:`ddpm_lib.guidance`) applies to it unchanged."""

    def __init__(self, data: GaussianMixture2D, forward_process):
        super().__init__()
        self.data, self.process = data, forward_process
        self.flow = isinstance(forward_process, LinearPath)
        self.config = ToyConfig(forward_process.T, "velocity" if self.flow else "eps", data.num_classes)
        self.anchor = nn.Parameter(torch.zeros(()))             # a parameter, so the samplers find the device

    def _field(self, x: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
        if self.flow:
            return self.data.velocity_star(x, t.double() / (self.process.T - 1), labels)
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise ValueError("the exact eps* is defined at integer timesteps only: sample it with ddpm or ddim")
        return self.data.eps_star(x, self.process.alpha_bars[t.long()], labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self._field(x, t, y).to(x.dtype)                # the null label K: the mixture's own field


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for points in the plane: [x_t, MLP(sinusoidal(t))] -> MLP -> 2 numbers.

    ``prediction`` says what the two numbers are ("eps", "x0", "v", or a flow's "velocity"), as
    :attr:`ddpm_lib.models.ModelConfig.prediction` does for the UNet. With ``num_classes`` = K > 0 it is
    class-conditional as the UNet is: an embedding of the label (K + 1 rows, the last the null label "no
    class", also used when no label is given) added to the time embedding.
    """

    def __init__(self, num_timesteps: int = 1000, hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 prediction: str = "eps", num_classes: int = 0):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if depth < 1 or hidden < 1 or time_dim < 2 or time_dim % 2:
            raise ValueError(f"need depth >= 1, hidden >= 1 and an even time_dim >= 2, got {depth}, {hidden}, "
                             f"{time_dim}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes}")
        self.config = ToyConfig(num_timesteps, prediction, num_classes)
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU())
        layers: list[nn.Module] = [nn.Linear(2 + hidden, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 2))
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None   # after the rest: an
        # unconditional network draws the same initial weights as before this option existed

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"expected points of shape (B, 2), got {tuple(x.shape)}")
        if y is not None and self.class_emb is None:
            raise ValueError("this network is unconditional: it takes no class labels")
        if t.shape != (len(x),):
            raise ValueError(f"expected timesteps of shape ({len(x)},), got {tuple(t.shape)}")
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x.dtype))
        if self.class_emb is not None:
            y = torch.full((len(x),), self.config.num_classes, device=x.device) if y is None else y
            temb = temb + self.class_emb(y)
        return self.net(torch.cat([x, temb], dim=1))


def train_toy(model: nn.Module, forward_process, data, steps: int = 3000, batch_size: int = 512,
              lr: float = 2e-3, seed: int = 0, log_every: int = 100,
              p_uncond: float = 0.1) -> list[tuple[int, float]]:
    """Algorithm 1 in the plane; returns the history [(step, mean loss of the last ``log_every`` steps)].

    ``data``: a :class:`GaussianMixture2D` (fresh x_0 and eps at every step), or a pair of tensors
    ``(x_0, eps)`` of shape (n, 2) already coupled row by row (reflow's pairs: each step trains on a random
    batch of rows, the path from each x_0 to its own eps). ``forward_process``: a DDPM
    :class:`~ddpm_lib.schedule.DiffusionSchedule` (L_simple, or the loss of ``model.config.prediction``) or a
    flow's :class:`~ddpm_lib.flow.LinearPath` (flow matching); the loss is :func:`ddpm_lib.losses.make_loss`'s
    for it. Adam at a constant ``lr``; every draw from one generator seeded with ``seed``. A class-conditional
    ``model`` trains on each point's component as its label, dropped to the null label with probability
    ``p_uncond`` (:func:`ddpm_lib.guidance.drop_labels`, drawn after t and eps, as :func:`ddpm_lib.training.train`
    does), so that one network learns both fields classifier-free guidance mixes.
    """
    if steps < 1 or batch_size < 1 or log_every < 1:
        raise ValueError(f"steps, batch_size and log_every must be at least 1, got {steps}, {batch_size}, {log_every}")
    if not isinstance(data, GaussianMixture2D):
        if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(d) for d in data)
                and data[0].shape == data[1].shape and data[0].dim() == 2 and data[0].shape[1] == 2):
            raise ValueError("data must be a GaussianMixture2D or a pair of tensors (x_0, eps) of one shape (n, 2)")
    k = model.config.num_classes
    if k and (not isinstance(data, GaussianMixture2D) or data.num_classes != k):
        raise ValueError(f"a class-conditional network (num_classes={k}) trains on a GaussianMixture2D with {k} "
                         "components, its classes")
    loss_fn = make_loss(forward_process, model.config.prediction)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history, total = [], 0.0
    for step in range(1, steps + 1):
        y = None
        if isinstance(data, GaussianMixture2D):
            x0, labels = data.sample(batch_size, g, return_labels=True)     # line 2: x_0 ~ q(x_0)
            t = loss_fn.sample_t(batch_size, g)                  # line 3: t ~ Uniform
            noise = torch.randn(x0.shape, generator=g)           # line 4: eps ~ N(0, I)
            y = drop_labels(labels, k, p_uncond, g) if k else None
        else:
            rows = torch.randint(0, len(data[0]), (batch_size,), generator=g)
            t = loss_fn.sample_t(batch_size, g)
            x0, noise = data[0][rows], data[1][rows]             # a coupled pair: x_0 and its own eps
        total += train_step(model, loss_fn, optimizer, x0, t, noise, y)    # line 5: a gradient step on the loss
        if step % log_every == 0 or step == steps:
            history.append((step, total / (log_every if step % log_every == 0 else step % log_every)))
            total = 0.0
    model.eval()
    return history
