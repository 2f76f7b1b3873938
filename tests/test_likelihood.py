"""The variational bound (ddpm_lib.likelihood): its pieces against closed forms and sampling, the whole bound
against a toy model whose bound is known by hand, and the `nll` command on a tiny checkpoint."""

import json
import math

import pytest
import torch
from torch import nn

from ddpm_lib.cli import main
from ddpm_lib.likelihood import (discretized_gaussian_log_likelihood, normal_kl, reverse_log_variance,
                                 variational_bound)
from ddpm_lib.schedule import make_schedule

GRID = -1.0 + 2.0 * torch.arange(256, dtype=torch.float64) / 255.0     # the 256 values of 8-bit data in [-1, 1]


def _phi(z: float) -> float:
    """The standard normal CDF, from math.erf (independent of torch's)."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# --------------------------------------------------------------------------- the pieces

@pytest.mark.parametrize("m1, v1, m2, v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 1e-2, 0.9, 4e-2),
                                            (-2.0, 3.0, 0.0, 1.0)])
def test_normal_kl_matches_monte_carlo(m1, v1, m2, v2):
    """KL(p1 || p2) = E_{x ~ p1}[log p1(x) - log p2(x)]: the closed form against 400,000 samples, within 5 SE."""
    kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, math.log(v1), m2, math.log(v2))))
    g = torch.Generator().manual_seed(0)
    x = m1 + math.sqrt(v1) * torch.randn(400_000, generator=g, dtype=torch.float64)
    p1 = torch.distributions.Normal(m1, math.sqrt(v1))
    p2 = torch.distributions.Normal(m2, math.sqrt(v2))
    log_ratio = p1.log_prob(x) - p2.log_prob(x)
    se = log_ratio.std().item() / math.sqrt(len(x))
    assert abs(kl.item() - log_ratio.mean().item()) <= 5 * se + 1e-12
    # and against the textbook formula written out
    by_hand = math.log(math.sqrt(v2 / v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    assert kl.item() == pytest.approx(by_hand, rel=1e-12, abs=1e-15)


def test_normal_kl_is_elementwise_and_zero_for_equal_gaussians():
    m = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lv = torch.full((3, 4), -2.0, dtype=torch.float64)
    assert normal_kl(m, lv, m, lv).shape == (3, 4)
    assert torch.equal(normal_kl(m, lv, m, lv), torch.zeros(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("mean, std", [(0.0, 0.01), (0.3, 1.0), (-1.2, 1e-4), (5.0, 1e-3), (0.999, 50.0),
                                       (GRID[37].item(), 1e-6), (-1.0, 0.004)])
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, std):
    ll = discretized_gaussian_log_likelihood(GRID, torch.tensor(mean), torch.tensor(math.log(std)))
    assert ll.shape == (256,) and ll.dtype == torch.float64
    assert bool(torch.isfinite(ll).all()), "the stable form must not give -inf or NaN, even far in the tails"
    assert torch.logsumexp(ll, 0).item() == pytest.approx(0.0, abs=1e-12)


def test_discretized_likelihood_is_the_mass_of_each_bin():
    """Against the CDF differences written out with math.erf, where they do not underflow."""
    mean, std, h = 0.1, 0.3, 1 / 255
    ll = discretized_gaussian_log_likelihood(GRID, torch.tensor(mean, dtype=torch.float64),
                                             torch.tensor(math.log(std), dtype=torch.float64))
    for k in (0, 1, 100, 127, 128, 200, 254, 255):
        x = GRID[k].item()
        upper = 1.0 if k == 255 else _phi((x + h - mean) / std)
        lower = 0.0 if k == 0 else _phi((x - h - mean) / std)
        assert math.exp(ll[k].item()) == pytest.approx(upper - lower, rel=1e-9)


def test_discretized_likelihood_far_tail_is_accurate():
    """50 standard deviations out, the direct difference of CDFs is 0 in float64; the log form keeps the value."""
    std, x = 1e-3, GRID[134].item()                   # a bin that starts 47 std above the mean 0.0
    ll = discretized_gaussian_log_likelihood(torch.tensor([x]), torch.tensor(0.0), torch.tensor(math.log(std)))
    a, b = (x - 1 / 255) / std, (x + 1 / 255) / std
    assert a > 45
    # log(Phi(b) - Phi(a)) ~ log phi(a)/a for large a (Mills ratio), up to O(1/a^2)
    approx = -0.5 * a * a - math.log(a * math.sqrt(2 * math.pi))
    assert _phi(b) - _phi(a) == 0.0
    assert ll.item() == pytest.approx(approx, rel=1e-6)


def test_reverse_variances():
    s = make_schedule("linear", 1000)
    assert torch.allclose(reverse_log_variance(s, "beta").exp(), s.betas, rtol=1e-12)
    small = reverse_log_variance(s, "beta_tilde").exp()
    assert torch.allclose(small[1:], s.posterior_variance[1:], rtol=1e-12)
    assert small[0] == pytest.approx(s.posterior_variance[1].item(), rel=1e-12)   # beta_tilde_1 = 0 is clipped
    with pytest.raises(ValueError, match="unknown variance"):
        reverse_log_variance(s, "none")


# --------------------------------------------------------------------------- the whole bound, known by hand

class Oracle(nn.Module):
    """The exact noise predictor for data that is one fixed image x*, plus a constant error ``delta``.

    If every x_0 is x*, then x_t = sqrt(alpha_bar_t) x* + sqrt(1 - alpha_bar_t) eps determines eps:
    eps = (x_t - sqrt(alpha_bar_t) x*) / sqrt(1 - alpha_bar_t). ``alpha_bars`` are computed by the test.
    """

    def __init__(self, x_star: torch.Tensor, alpha_bars: list[float], delta: float = 0.0):
        super().__init__()
        self.register_buffer("x_star", x_star.double())
        self.register_buffer("alpha_bars", torch.tensor(alpha_bars, dtype=torch.float64))
        self.delta = delta
        self.dummy = nn.Parameter(torch.zeros(()))     # so that the model has a device

    def forward(self, x, t):
        ab = self.alpha_bars[t].reshape(-1, 1, 1, 1)
        return ((x.double() - ab.sqrt() * self.x_star) / (1 - ab).sqrt() + self.delta).float()


def _bound_by_hand(levels: list[int], betas: list[float], variance: str, delta: float) -> float:
    """Bits/dim of the bound for the Oracle, from Eqs. 4-13 of Ho et al. worked out by hand, in plain Python.

    With eps_theta = eps + delta every term is deterministic:
    * L_{t-1} (t >= 2): mu_theta - mu_tilde = -beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar_t)) delta per pixel (Eq. 10
      vs Eq. 11), so KL = 1/2 [log(sigma_t^2 / beta_tilde_t) + beta_tilde_t / sigma_t^2 + d^2 / sigma_t^2 - 1];
    * L_0: the decoder's mean is x* - sqrt((1 - alpha_bar_1) / alpha_bar_1) delta, its std sigma_1;
    * L_T: KL(N(sqrt(alpha_bar_T) x*, 1 - alpha_bar_T) || N(0, 1)) per pixel.
    """
    T, h = len(betas), 1 / 255
    alpha_bar, running = [], 1.0
    for b in betas:
        running *= 1.0 - b
        alpha_bar.append(running)
    beta_tilde = [0.0] + [(1 - alpha_bar[i - 1]) / (1 - alpha_bar[i]) * betas[i] for i in range(1, T)]
    if variance == "beta":
        sigma2 = list(betas)
    else:
        sigma2 = [beta_tilde[1]] + beta_tilde[1:]
    xs = [-1 + 2 * k / 255 for k in levels]
    D = len(xs)
    nats = 0.0
    for i in range(1, T):                                   # L_{t-1}, t = i + 1
        d = betas[i] / (math.sqrt(1 - betas[i]) * math.sqrt(1 - alpha_bar[i])) * delta
        r = beta_tilde[i] / sigma2[i]
        nats += D * 0.5 * (-math.log(r) + r + d * d / sigma2[i] - 1)
    s = math.sqrt(sigma2[0])                                # L_0
    shift = math.sqrt((1 - alpha_bar[0]) / alpha_bar[0]) * delta
    for k, x in zip(levels, xs):
        m = x - shift
        upper = 1.0 if k == 255 else _phi((x + h - m) / s)
        lower = 0.0 if k == 0 else _phi((x - h - m) / s)
        nats -= math.log(upper - lower)
    ab_T = alpha_bar[-1]                                    # L_T
    for x in xs:
        nats += 0.5 * (-math.log(1 - ab_T) + (1 - ab_T) + ab_T * x * x - 1)
    return nats / (D * math.log(2))


@pytest.mark.parametrize("variance, delta", [("beta", 0.0), ("beta_tilde", 0.0), ("beta", 0.3), ("beta_tilde", -0.2)])
def test_bound_of_an_oracle_matches_the_hand_computation(variance, delta):
    schedule = make_schedule("linear", 1000)
    betas = schedule.betas.tolist()
    levels = [0, 255, 128, 1, 254, 37, 200, 90, 0, 0, 255, 17]      # black, white and grey pixels
    x_star = (torch.tensor(levels, dtype=torch.float64) / 127.5 - 1).reshape(1, 1, 3, 4)
    ab = []
    for b in betas:
        ab.append((ab[-1] if ab else 1.0) * (1 - b))
    model = Oracle(x_star, ab, delta)
    x0 = x_star.float().expand(3, 1, 3, 4).clone()                   # three copies, each with its own noise
    result = variational_bound(model, schedule, x0, variance=variance, seed=0)
    expected = _bound_by_hand(levels, betas, variance, delta)
    assert result.terms.shape == (3, 1000) and result.bits_per_dim.shape == (3,)
    assert torch.allclose(result.bits_per_dim, torch.full((3,), expected, dtype=torch.float64), rtol=1e-6, atol=0)
    if variance == "beta_tilde" and delta == 0.0:
        # the reverse step is the true posterior: every KL term vanishes, only L_T and L_0 remain
        assert result.terms[:, 1:].abs().max().item() < 1e-6
    # the parts add up to the whole
    per_t = result.per_t_bits_per_dim()
    mean, _ = result.mean_bits_per_dim()
    assert per_t.sum().item() + (result.prior.mean() * result.nats_to_bits_per_dim).item() == pytest.approx(mean, rel=1e-12)


def test_eq12_weight_for_beta():
    """For sigma_t^2 = beta_t, the KL term grows with a constant eps error delta as Eq. 12's weight says."""
    schedule = make_schedule("linear", 100)
    ab = schedule.alpha_bars.tolist()
    x_star = torch.full((1, 1, 2, 2), GRID[128].item())               # a mid-grey image (on the 8-bit grid)
    run = {d: variational_bound(Oracle(x_star, ab, d), schedule, x_star.float()).terms[0]
           for d in (0.0, 0.5)}
    i = torch.arange(1, 100)
    beta, alpha, abar = schedule.betas[i], schedule.alphas[i], schedule.alpha_bars[i]
    weight = beta ** 2 / (2 * beta * alpha * (1 - abar))            # Eq. 12 with sigma_t^2 = beta_t
    assert torch.allclose(run[0.5][1:] - run[0.0][1:], weight * 4 * 0.5 ** 2, rtol=1e-5)


def test_t_stride_is_unbiased_over_offsets():
    """Averaged over the k offsets, the strided estimate equals the full sum (each column has probability 1/k)."""
    schedule = make_schedule("linear", 100)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1))               # any eps-model will do
    wrapped = _TimeFree(model)
    x0 = (torch.randint(0, 256, (2, 1, 4, 4)).double() / 127.5 - 1).float()
    full = variational_bound(wrapped, schedule, x0, seed=3)
    k = 7                                                              # 99 KL columns: not a multiple of 7
    estimates = []
    for o in range(k):
        r = variational_bound(wrapped, schedule, x0, seed=3, t_stride=k, t_offsets=torch.tensor([o, o]))
        seen = ~torch.isnan(r.terms)
        assert torch.allclose(r.terms[seen], full.terms[seen], rtol=1e-12), "a column's x_t must not depend on k"
        assert seen[:, 0].all() and seen[:, 1:].sum(1).tolist() == [len(range(1 + o, 100, k))] * 2
        estimates.append(r.total)
    assert torch.allclose(torch.stack(estimates).mean(0), full.total, rtol=1e-12)


class _TimeFree(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x)


def test_bad_input_is_refused():
    schedule = make_schedule("linear", 100)
    model = _TimeFree(nn.Conv2d(1, 1, 1))
    good = torch.full((1, 1, 2, 2), -1.0)
    with pytest.raises(ValueError, match="8-bit data"):
        variational_bound(model, schedule, good + 0.001)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        variational_bound(model, schedule, good * 2)
    with pytest.raises(ValueError, match="unknown variance"):
        variational_bound(model, schedule, good, variance="none")
    with pytest.raises(ValueError, match="t_stride"):
        variational_bound(model, schedule, good, t_stride=0)


# --------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained network of the `tiny` preset (T = 100): the bound does not care whether it was trained."""
    from ddpm_lib.checkpoint import save_checkpoint
    from ddpm_lib.models import build_model
    from ddpm_lib.presets import PRESETS

    recipe = PRESETS["tiny"]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "tiny.safetensors"
    save_checkpoint(path, build_model(recipe.model), make_schedule(recipe.schedule, recipe.T), {"step": 0})
    return path


def test_nll_command_writes_a_consistent_report(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "nll.json"
    assert main(["nll", "--checkpoint", str(tiny_checkpoint), "--n", "3", "--seed", "1", "--batch-size", "64",
                 "--out", str(out)]) == 0
    assert "bits/dim" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["T"] == 100 and report["dims"] == 784 and report["variance"] == "beta"
    assert len(report["per_t_bits_per_dim"]) == 100 and len(report["per_image_bits_per_dim"]) == 3
    assert report["bits_per_dim"] == pytest.approx(sum(report["per_image_bits_per_dim"]) / 3, abs=1e-5)
    assert report["bits_per_dim"] == pytest.approx(report["prior_bits_per_dim"] + sum(report["per_t_bits_per_dim"]),
                                                   rel=1e-6)
    assert report["l0_bits_per_dim"] == pytest.approx(report["per_t_bits_per_dim"][0], rel=1e-6)
    assert 0 < report["bits_per_dim"] < 50 and report["bits_per_dim_sem"] > 0
    assert report["command"].startswith("python -m ddpm_lib nll --checkpoint ") and "--n 3 --seed 1" in report["command"]
    assert report["network_calls"] == 300 and report["wall_seconds"] > 0 and report["cpu"]

    # the library computes the same numbers from the same digits and seed
    from ddpm_lib.checkpoint import load_checkpoint
    from ddpm_lib.data import load_mnist

    ckpt = load_checkpoint(tiny_checkpoint)
    lib = variational_bound(ckpt.model, ckpt.schedule, load_mnist("test").as_model_input()[:3], seed=1, batch_size=64)
    assert lib.mean_bits_per_dim()[0] == pytest.approx(report["bits_per_dim"], abs=1e-5)


def test_nll_command_refuses_bad_requests(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--n must be between 1 and 10000"):
        main(["nll", "--checkpoint", str(tiny_checkpoint), "--n", "0"])
    with pytest.raises(SystemExit, match="--out must end in .json"):
        main(["nll", "--checkpoint", str(tiny_checkpoint), "--n", "1", "--out", str(tmp_path / "x.txt")])
    with pytest.raises(SystemExit):
        main(["nll", "--checkpoint", str(tiny_checkpoint), "--n", "1", "--variance", "none"])
    assert main(["nll", "--checkpoint", str(tmp_path / "missing.safetensors"), "--n", "1"]) == 1
    assert "error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- the committed result

def test_committed_result_is_consistent_and_the_model_card_quotes_it():
    """checkpoints/nll_ddpm_mnist.json (written by the nll command) adds up, and the model card says what it says."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    report = json.loads((root / "checkpoints" / "nll_ddpm_mnist.json").read_text())
    n, T = report["n"], report["T"]
    assert len(report["per_t_bits_per_dim"]) == T == 1000 and len(report["per_image_bits_per_dim"]) == n
    assert report["bits_per_dim"] == pytest.approx(report["prior_bits_per_dim"] + sum(report["per_t_bits_per_dim"]),
                                                   abs=1e-5)
    assert report["bits_per_dim"] == pytest.approx(sum(report["per_image_bits_per_dim"]) / n, abs=1e-5)
    assert report["command"].startswith("python -m ddpm_lib nll --checkpoint checkpoints/ddpm_mnist.safetensors")
    assert f"--n {n} " in report["command"] and report["command"].endswith("--out checkpoints/nll_ddpm_mnist.json")

    card = (root / "checkpoints" / "README.md").read_text()
    section = card.split("## Likelihood (bits/dim)", 1)[1].split("\n## ", 1)[0]
    text = " ".join(section.split())
    assert report["command"] in text
    assert f"first {n} MNIST test digits" in text
    assert f"**{report['bits_per_dim']:.3f} bits/dim**, standard error {report['bits_per_dim_sem']:.3f}" in text
    assert f"$L_0$ {report['l0_bits_per_dim']:.3f}" in text and f"KL terms {report['kl_bits_per_dim']:.3f}" in text
    assert f"{report['wall_seconds']:.0f} s of wall clock" in text and report["cpu"] in text
