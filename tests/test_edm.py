"""The EDM sampler (Karras et al. 2022): against diffusers' HeunDiscreteScheduler with Karras sigmas, and
against the closed-form probability-flow ODE of Gaussian data, whose exact eps_theta is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.sampling.edm import (edm_default_steps, edm_intervals, edm_max_steps, edm_sample, edm_slope, edm_step,
                                   karras_sigmas, schedule_sigmas, sigma_to_t)
from ddpm_lib.schedule import make_schedule

T = 1000
SCHEDULE = make_schedule("linear", T)
# diffusers' HeunDiscreteScheduler turns its alpha_bar tensor into an array the way numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _sigma_of_t(log_sigmas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sigma at real-valued timesteps t, linear in log sigma between the schedule's sigma_t (the inverse of
    sigma_to_t), shaped (B, 1, 1, 1), float64."""
    t = t.double()
    lo = t.floor().clamp(max=len(log_sigmas) - 2).long()
    w = t - lo
    return torch.exp((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).view(-1, 1, 1, 1)


class GaussianEps(nn.Module):
    """The exact eps_theta of data x_0 ~ N(mu, s^2 I) (s = 0: the single point mu), at any real timestep.

    In EDM's variables x_tilde = x_0 + sigma eps, so D(x_tilde; sigma) = mu + s^2 / (s^2 + sigma^2) (x_tilde - mu)
    and eps = (x_tilde - D) / sigma = sigma / (s^2 + sigma^2) (x_tilde - mu).
    """

    def __init__(self, schedule, mu: float, s: float, size: int = 2):
        super().__init__()
        self.config = ModelConfig(image_size=size, channel_mults=(1,), num_timesteps=schedule.T)
        self.dummy = nn.Parameter(torch.zeros(()))
        self.log_sigmas, self.mu, self.s = schedule_sigmas(schedule).log(), mu, s

    def forward(self, x, t):
        sigma = _sigma_of_t(self.log_sigmas, t)
        x_tilde = x.double() * torch.sqrt(1 + sigma**2)
        return (sigma / (self.s**2 + sigma**2) * (x_tilde - self.mu)).float()


class NoisyGaussianEps(nn.Module):
    """A random UNet on top of the exact eps_theta of N(0, I) data, sqrt(1 - alpha_bar) x_t: the paths bend as
    the network pleases but shrink to images of order one, as a trained network's do (a bare random network's
    grow to hundreds, where float32 cancellations in the peer's (x - D) / sigma swamp the comparison).
    Counts its calls."""

    def __init__(self, schedule, net: nn.Module):
        super().__init__()
        self.net, self.config, self.calls = net, net.config, 0
        self.log_sigmas = schedule_sigmas(schedule).log()

    def forward(self, x, t):
        self.calls += 1
        sqrt_ab = torch.rsqrt(1 + _sigma_of_t(self.log_sigmas, t) ** 2).float()
        return torch.sqrt(1 - sqrt_ab**2) * x + sqrt_ab * self.net(x, t)


def _model(schedule):
    torch.manual_seed(0)
    net = build_model(ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                                  num_timesteps=schedule.T, image_size=8))
    with torch.no_grad():          # a random network predicts ~0; scale its output so the samplers' paths bend
        net.conv_out.weight.mul_(5.0)
    return NoisyGaussianEps(schedule, net).eval()


@pytest.fixture(scope="module")
def model():
    return _model(SCHEDULE)


def _x_T(n=4, seed=1, size=8):
    return torch.randn((n, 1, size, size), generator=torch.Generator().manual_seed(seed))


def _heun(schedule, levels, clip=False, float64_alpha_bar=True):
    """diffusers' HeunDiscreteScheduler with Karras sigmas for our linear schedule, set to ``levels`` noise levels.

    diffusers computes alpha_bar as a float32 cumprod, which at T = 1000 moves its timesteps by up to 0.005;
    ``float64_alpha_bar`` hands it ours, so that the comparison sees the algorithms, not that rounding.
    """
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.HeunDiscreteScheduler(num_train_timesteps=schedule.T, beta_schedule="linear",
                                            beta_start=float(schedule.betas[0]), beta_end=float(schedule.betas[-1]),
                                            prediction_type="epsilon", use_karras_sigmas=True, clip_sample=clip)
    if float64_alpha_bar:
        sched.alphas_cumprod = schedule.alpha_bars.clone()
    sched.set_timesteps(levels)
    return sched


def _peer_loop(sched, model, x_T):
    """diffusers' sampling loop from our x_T: it starts at x_tilde = x_T sqrt(sigma_max^2 + 1), as we do (its own
    init_noise_sigma is sigma_max), and hands the network float timesteps."""
    x = x_T * math.sqrt(float(sched.sigmas[0]) ** 2 + 1)
    for t in sched.timesteps:
        with torch.no_grad():
            eps = model(sched.scale_model_input(x, t), torch.full((x.shape[0],), float(t)))
        x = sched.step(eps, t, x).prev_sample
    return x


def _assert_close(ours, theirs, rel):
    torch.testing.assert_close(ours, theirs, rtol=rel, atol=rel * float(theirs.abs().max()))


# clipped, with a few levels, the Heun correction near sigma_min, (x - clip(D)) / sigma_min, multiplies float32
# rounding by ~1e4 in both samplers: those are compared from 19 calls on
@pytest.mark.parametrize("steps,clip", [(3, False), (5, False), (19, False), (39, False), (19, True), (39, True)])
def test_deterministic_sampler_matches_diffusers_heun_with_karras_sigmas(model, steps, clip):
    levels = steps // 2 + 1
    sched = _heun(SCHEDULE, levels, clip)
    sig = schedule_sigmas(SCHEDULE)
    ours_sigmas = karras_sigmas(float(sig[0]), float(sig[-1]), levels)
    distinct = lambda v: torch.cat([v[:1], v[1::2]]).double()       # diffusers repeats each level but the ends
    torch.testing.assert_close(distinct(sched.sigmas), ours_sigmas, rtol=1e-6, atol=0)
    torch.testing.assert_close(distinct(sched.timesteps), sigma_to_t(ours_sigmas[:-1], SCHEDULE), rtol=0, atol=1e-4)
    x_T = _x_T()
    model.calls = 0
    theirs = _peer_loop(sched, model, x_T)
    assert model.calls == len(sched.timesteps) == steps
    model.calls = 0
    ours = edm_sample(model, SCHEDULE, 4, steps=steps, clip_x0=clip, x_T=x_T)
    assert model.calls == steps
    _assert_close(ours, theirs, 1e-4)


@pytest.mark.parametrize("t_max,steps", [(1000, 19), (100, 9)])
def test_matches_diffusers_configured_as_is(t_max, steps):
    """With diffusers' own float32 alpha_bar: its timesteps move by up to 0.005, the images by a few 1e-4."""
    schedule = make_schedule("linear", t_max)
    m = _model(schedule)
    x_T = _x_T()
    theirs = _peer_loop(_heun(schedule, steps // 2 + 1, float64_alpha_bar=False), m, x_T)
    _assert_close(edm_sample(m, schedule, 4, steps=steps, x_T=x_T), theirs, 1e-3)


def test_every_budget_of_network_calls_is_spent_exactly():
    for steps in range(1, 60):
        heun = edm_intervals(steps)
        assert len(heun) == steps // 2 + 1 and sum(1 + h for h in heun) == steps and not heun[-1]
        assert heun[0] == (steps % 2 == 1 and steps > 1)       # an even budget: Euler on the first interval too
    schedule = make_schedule("cosine", 20)
    m = _model(schedule)
    for steps in (1, 2, 4, 7, edm_max_steps(20)):
        m.calls = 0
        edm_sample(m, schedule, 2, steps=steps, seed=0)
        assert m.calls == steps
    assert (edm_default_steps(1000), edm_max_steps(1000), edm_default_steps(10)) == (35, 1999, 19)


def test_karras_sigmas_follow_eq_5():
    s = karras_sigmas(0.01, 157.0, 18, rho=7.0)
    assert len(s) == 19 and s[-1] == 0
    assert s[0] == 157.0 and s[-2] == 0.01
    assert bool((s[1:] < s[:-1]).all())
    i = 5
    assert math.isclose(s[i], (157.0 ** (1 / 7) + i / 17 * (0.01 ** (1 / 7) - 157.0 ** (1 / 7))) ** 7, rel_tol=1e-12)
    even = karras_sigmas(1.0, 3.0, 3, rho=1.0)                 # rho = 1: evenly spaced
    torch.testing.assert_close(even, torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64))
    gaps = s[:-2] - s[1:-1]
    assert bool((gaps[1:] < gaps[:-1]).all())                  # rho = 7: denser towards sigma_min
    assert karras_sigmas(0.5, 2.0, 1).tolist() == [2.0, 0.0]   # one level: sigma_max, then 0


def test_sigma_to_t_hits_the_schedules_steps_and_interpolates_in_log_sigma():
    for schedule in (SCHEDULE, make_schedule("cosine", 50)):
        sig = schedule_sigmas(schedule)
        assert torch.equal(sigma_to_t(sig, schedule), torch.arange(schedule.T, dtype=torch.float64))
        mid = sigma_to_t((sig[:-1] * sig[1:]).sqrt(), schedule)           # geometric means: half-way
        torch.testing.assert_close(mid, torch.arange(schedule.T - 1, dtype=torch.float64) + 0.5)
        fine = torch.exp(torch.linspace(float(sig[0].log()), float(sig[-1].log()), 5000, dtype=torch.float64))
        t = sigma_to_t(fine, schedule)
        assert bool((t[1:] > t[:-1]).all())
        assert sigma_to_t(float(sig[0]) / 10, schedule) == 0.0 and sigma_to_t(1e9, schedule) == schedule.T - 1
    diffusers = pytest.importorskip("diffusers")
    log_sigmas = schedule_sigmas(SCHEDULE).log().numpy()
    probe = torch.exp(torch.linspace(-5.0, 6.0, 101, dtype=torch.float64))
    theirs = diffusers.HeunDiscreteScheduler._sigma_to_t(None, probe.numpy(), log_sigmas)
    torch.testing.assert_close(sigma_to_t(probe, SCHEDULE), torch.from_numpy(theirs))


def test_pure_steps_match_algorithm_2_by_hand():
    x, eps = torch.tensor([3.0, -0.5]), torch.tensor([0.4, -2.0])
    assert torch.equal(edm_slope(x, eps, 2.0), eps)                        # unclipped: d = (x - D) / sigma = eps
    D = (x - 2.0 * eps).clamp(-1, 1)                                       # [2.2, 3.5] -> [1, 1]
    torch.testing.assert_close(edm_slope(x, eps, 2.0, clip_x0=True), (x - D) / 2.0)
    d, d2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    torch.testing.assert_close(edm_step(x, d, 2.0, 0.5), x - 1.5 * d)                       # Euler, line 8
    torch.testing.assert_close(edm_step(x, d, 2.0, 0.5, d2), x - 1.5 * torch.tensor([2.0, 1.0]))  # Heun, line 11


@pytest.mark.parametrize("churn", [0.0, 40.0])
def test_the_exact_denoiser_of_one_point_lands_on_it(churn):
    """Data = the single point mu: D = mu at every sigma, so any number of steps, with any churn, ends there."""
    m = GaussianEps(SCHEDULE, mu=0.3, s=0.0)
    for steps in (2, 3, 6):
        out = edm_sample(m, SCHEDULE, 8, steps=steps, churn=churn, seed=1)
        torch.testing.assert_close(out, torch.full_like(out, 0.3), rtol=0, atol=1e-6)


def test_heun_converges_at_second_order_to_the_exact_ode_solution():
    """Gaussian data N(mu, s^2): the ODE's solution is x_0 = mu + (x_tilde_max - mu) s / sqrt(s^2 + sigma_max^2)."""
    mu, s = 0.3, 0.5
    m = GaussianEps(SCHEDULE, mu, s)
    sigma_max = float(schedule_sigmas(SCHEDULE)[-1])
    x_T = _x_T(8, size=2)
    exact = mu + (x_T.double() * math.sqrt(sigma_max**2 + 1) - mu) * s / math.sqrt(s**2 + sigma_max**2)
    errors = [float((edm_sample(m, SCHEDULE, 8, steps=2 * levels - 1, x_T=x_T) - exact).abs().max())
              for levels in (10, 20, 40)]
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5      # doubling the levels: error / 4
    assert errors[2] < 0.02


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_samples_of_gaussian_data_have_its_mean_and_spread(churn):
    """With the exact denoiser, the ODE and the churned SDE both carry N(0, I) noise to N(mu, s^2) data."""
    mu, s = 0.3, 0.5
    out = edm_sample(GaussianEps(SCHEDULE, mu, s), SCHEDULE, 4096, steps=79, churn=churn, seed=2, batch_size=4096)
    assert abs(float(out.mean()) - mu) < 0.01 and abs(float(out.std()) - s) < 0.02


def test_seeds_churn_and_the_chain_reported():
    schedule = make_schedule("linear", 50)
    m = _model(schedule)
    a = edm_sample(m, schedule, 3, steps=7, seed=4, churn=5.0)
    assert torch.equal(a, edm_sample(m, schedule, 3, steps=7, seed=4, churn=5.0))
    assert not torch.allclose(a, edm_sample(m, schedule, 3, steps=7, seed=5, churn=5.0))
    x_T = _x_T(3)                                  # the same x_T: only churn's draws depend on the seed
    assert torch.equal(edm_sample(m, schedule, 3, steps=7, seed=4, x_T=x_T),
                       edm_sample(m, schedule, 3, steps=7, seed=5, x_T=x_T))
    assert not torch.allclose(edm_sample(m, schedule, 3, steps=7, seed=4, x_T=x_T, churn=5.0),
                              edm_sample(m, schedule, 3, steps=7, seed=5, x_T=x_T, churn=5.0))
    starts = {}                                    # every batch's x_T is the same for every churn
    for churn in (0.0, 5.0):
        seen = []
        out = edm_sample(m, schedule, 5, steps=7, seed=4, churn=churn, batch_size=2,
                         callback=lambda i, x: seen.append((i, x.clone())))
        assert [i for i, _ in seen] == [4, 3, 2, 1, 0] * 3                    # N = 4 levels, x_T first
        assert torch.equal(seen[-1][1], out[4:]) and torch.equal(seen[4][1], out[:2])
        starts[churn] = [x for i, x in seen if i == 4]
    assert all(torch.equal(a, b) for a, b in zip(starts[0.0], starts[5.0]))


def test_bad_input_says_what_to_do():
    m = GaussianEps(SCHEDULE, 0.0, 0.5)
    for kwargs, message in [(dict(steps=0), r"between 1 and 2T - 1 = 1999.*35 is the default"),
                            (dict(steps=2000), r"between 1 and 2T - 1 = 1999"),
                            (dict(churn=-1.0), r"churn and s_noise must be >= 0 \(churn = 0: the deterministic"),
                            (dict(rho=0.0), r"rho must be positive \(Karras et al. use 7"),
                            (dict(s_tmin=2.0, s_tmax=1.0), r"s_tmin \(2.0\) must not exceed s_tmax")]:
        with pytest.raises(ValueError, match=message):
            edm_sample(m, SCHEDULE, 1, **kwargs)
    with pytest.raises(ValueError, match="rho must be positive"):
        karras_sigmas(0.01, 1.0, 5, rho=-1.0)
    with pytest.raises(TypeError, match="edm_sample.*'eta'.*run options"):
        edm_sample(m, SCHEDULE, 1, eta=0.5)
