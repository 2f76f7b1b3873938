"""Cold diffusion (Bansal et al. 2022): the blur, its improved sampling, the mixture it starts from, training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib.checkpoint import load_checkpoint, save_checkpoint
from ddpm_lib.cold import BlurDegradation, GaussianMixture1D, initial_state
from ddpm_lib.losses import ColdLoss, make_loss
from ddpm_lib.sampling.cold import cold_sample
from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.training import TrainConfig, train


def _images(n=4, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_blur_keeps_the_mean_and_ends_constant():
    d, x = BlurDegradation(20), _images()
    assert torch.equal(d.degrade(x, torch.full((4,), -1)), x)      # t = -1: no blur
    prev = x.std(dim=(1, 2, 3))
    for t in range(d.T):
        y = d.degrade(x, torch.full((4,), t))
        assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)   # a blur keeps the mean
        std = y.std(dim=(1, 2, 3))
        assert bool((std < prev).all())                                                  # and loses detail
        prev = std
    assert float(prev.max()) < 1e-4          # the last step: a constant image


def test_blur_is_a_gaussian_convolution():
    """In Fourier space with a circular boundary, the same as convolving with a (sampled, normalised) Gaussian."""
    d, x = BlurDegradation(10), _images(2)
    t = 3
    sigma = float(d.sigmas[t])
    r = 13
    k1 = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    kernel = (k1[:, None] * k1[None, :] / k1.sum() ** 2).float()[None, None]
    direct = F.conv2d(F.pad(x, (r, r, r, r), mode="circular"), kernel)
    assert torch.allclose(d.degrade(x, torch.full((2,), t)), direct, atol=2e-3)


def test_timesteps_are_checked():
    d = BlurDegradation(10)
    with pytest.raises(ValueError, match="timesteps must lie"):
        d.degrade(_images(1), torch.tensor([10]))
    with pytest.raises(ValueError, match="T must be"):
        BlurDegradation(1)


def test_mixture_recovers_two_components():
    g = torch.Generator().manual_seed(0)
    values = torch.cat([0.1 * torch.randn(3000, generator=g) - 0.7, 0.05 * torch.randn(1000, generator=g) - 0.2])
    gm = GaussianMixture1D.fit(values, k=2)
    order = sorted(range(2), key=lambda i: gm.means[i])
    assert [gm.means[i] for i in order] == pytest.approx([-0.7, -0.2], abs=0.01)
    assert [gm.stds[i] for i in order] == pytest.approx([0.1, 0.05], abs=0.01)
    assert [gm.weights[i] for i in order] == pytest.approx([0.75, 0.25], abs=0.02)
    draws = gm.sample(20000, torch.Generator().manual_seed(1))
    assert float(draws.mean()) == pytest.approx(0.75 * -0.7 + 0.25 * -0.2, abs=0.01)


class _Restorer(nn.Module):
    """A perfect restoration network for a data set of one image x*."""

    def __init__(self, x_star, T):
        super().__init__()
        self.x_star = x_star
        self.config = ModelConfig(num_timesteps=T, prediction="x0")
        self.weight = nn.Parameter(torch.zeros(()))   # samplers look up the device of a parameter

    def forward(self, x, t, y=None):
        return self.x_star.expand_as(x).to(x.dtype)


def test_improved_sampling_telescopes():
    """With a perfect restorer, x_{s-1} = x_s - D(x*, s) + D(x*, s-1) sums to x_0 = x_T - D(x*, T-1) + x*:
    x* itself, shifted by how far the starting grey level is from x*'s mean."""
    d, x_star = BlurDegradation(12), _images(1, seed=3)
    mixture = GaussianMixture1D((0.5, 0.5), (-0.8, -0.6), (0.02, 0.02))
    out = cold_sample(_Restorer(x_star, d.T), d, mixture, 5, seed=7)
    start = initial_state(mixture, 5, (1, 28, 28), torch.Generator().manual_seed(7))
    offset = start[:, :1, :1, :1] - x_star.mean()
    assert torch.allclose(out, x_star + offset, atol=1e-4)


def test_noisy_start_is_reproducible_and_different():
    mixture = GaussianMixture1D((1.0,), (-0.7,), (0.05,))
    a = initial_state(mixture, 3, (1, 28, 28), torch.Generator().manual_seed(0), noise_std=0.01)
    b = initial_state(mixture, 3, (1, 28, 28), torch.Generator().manual_seed(0), noise_std=0.01)
    assert torch.equal(a, b) and float(a[0].std()) == pytest.approx(0.01, rel=0.2)


def test_cold_training_learns_and_checkpoints(tmp_path):
    """A few steps of train() on the blur lower the restoration loss; the checkpoint records the blur."""
    d = BlurDegradation(10)
    cfg = ModelConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=10,
                      prediction="x0")
    data = _images(4).repeat(64, 1, 1, 1)       # four images to restore, seen over and over
    result = train(cfg, d, TrainConfig(steps=60, batch_size=32, lr=2e-3, warmup_steps=5, log_every=10, seed=0,
                                       precision="fp32", channels_last=False), data, out_dir=tmp_path, progress=False)
    first, last = result.history[0][1], result.history[-1][1]
    assert last < 0.6 * first
    ckpt = load_checkpoint(tmp_path / "model.safetensors")
    assert isinstance(ckpt.schedule, BlurDegradation) and ckpt.schedule.T == 10
    x, t = data[:4], torch.tensor([0, 3, 6, 9])
    with torch.no_grad():
        loss = ColdLoss(d)
        assert math.isclose(float(loss(ckpt.model, x, t)), float(loss(result.ema_model, x, t)), rel_tol=1e-6)


def test_cold_needs_a_restoration_network():
    cfg = ModelConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_timesteps=10)   # eps
    with pytest.raises(ValueError, match="prediction='x0'"):
        train(cfg, BlurDegradation(10), TrainConfig(steps=1, batch_size=4), torch.zeros(8, 1, 28, 28), progress=False)
    with pytest.raises(ValueError, match="prediction='x0'"):
        make_loss(BlurDegradation(10), prediction=cfg.prediction)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        make_loss(BlurDegradation(10), prediction="x0", min_snr_gamma=5.0)
