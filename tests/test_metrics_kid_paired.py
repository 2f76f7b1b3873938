"""Tests for ddpm_lib.metrics.kid (KID, Bińkowski et al. 2018; precision/recall,
Kynkäänniemi et al. 2019) and ddpm_lib.metrics.paired (the paired bootstrap comparison),
on constructed cases whose answer is known."""

from __future__ import annotations

import pytest
import torch

from ddpm_lib import metrics
from ddpm_lib.metrics.kid import _mmd2, _block_kernel_sums


def _mixture(n, seed, modes=range(10), noise=1.0, dim=16):
    """Points around 10 fixed centres (seed 0 fixes the centres), from the given modes only."""
    centres = torch.randn(10, dim, generator=torch.Generator().manual_seed(0)) * 4
    g = torch.Generator().manual_seed(seed)
    modes = torch.as_tensor(list(modes))
    labels = modes[torch.randint(len(modes), (n,), generator=g)]
    return centres[labels] + noise * torch.randn(n, dim, generator=g)


# ---------------------------------------------------------------- KID


def test_kid_uses_every_pair_and_matches_the_direct_formula():
    a, b = _mixture(60, 1).double(), _mixture(50, 2).double()
    k = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    direct = ((k(a, a).sum() - k(a, a).trace()) / (m * (m - 1)) + (k(b, b).sum() - k(b, b).trace()) / (n * (n - 1))
              - 2 * k(a, b).mean())
    assert metrics.kernel_distance(a, b, n_blocks=5)["kid"] == pytest.approx(float(direct), rel=1e-10)


def test_kid_of_one_distribution_is_zero_within_its_standard_error():
    inside = 0
    for seed in range(20):
        r = metrics.kernel_distance(_mixture(1000, 2 * seed + 1), _mixture(1000, 2 * seed + 2), seed=seed)
        inside += abs(r["kid"]) < 2 * r["kid_se"]
    # |z| < 2 has probability 0.95 for an unbiased estimate with an honest standard error;
    # 15 or fewer of 20 would happen with probability below 0.003
    assert inside >= 16


def test_kid_sees_a_shift_its_standard_error_cannot_explain():
    r = metrics.kernel_distance(_mixture(1000, 1), _mixture(1000, 2) + 1.0)
    assert r["kid"] > 4 * r["kid_se"] > 0


def test_kid_jackknife_leaves_out_the_right_pairs():
    a = torch.arange(12.0).view(6, 2).double()
    block = torch.tensor([0, 1, 2, 0, 1, 2])
    sums = _block_kernel_sums(a, block, a, block, 3)
    assert float(sums.sum()) == pytest.approx(float(((a @ a.T / 2 + 1) ** 3).sum()))
    keep = block != 0
    kept = a[keep]
    k = (kept @ kept.T / 2 + 1) ** 3
    assert float(sums[1:, 1:].sum()) == pytest.approx(float(k.sum()))
    assert float(_mmd2(k.sum(), k.trace(), 4, k.sum(), k.trace(), 4, k.sum())) == pytest.approx(
        float(2 * (k.sum() - k.trace()) / 12 - 2 * k.sum() / 16))


def test_kid_refuses_too_few_points():
    with pytest.raises(ValueError, match="per block"):
        metrics.kernel_distance(torch.randn(5, 3), torch.randn(100, 3), n_blocks=10)
    with pytest.raises(ValueError, match="widths"):
        metrics.kernel_distance(torch.randn(50, 3), torch.randn(50, 4))


# ---------------------------------------------------------------- precision and recall


def test_precision_recall_of_one_distribution_are_high_and_similar():
    r = metrics.precision_recall(_mixture(2000, 1), _mixture(2000, 2))
    assert 0.7 < r["precision"] < 1 and 0.7 < r["recall"] < 1
    assert abs(r["precision"] - r["recall"]) < 0.05


def test_dropping_modes_lowers_recall_not_precision():
    real = _mixture(2000, 1)
    full = metrics.precision_recall(real, _mixture(2000, 2))
    half = metrics.precision_recall(real, _mixture(2000, 3, modes=range(5)))
    assert half["recall"] < full["recall"] - 0.3          # half the real modes are never produced
    assert half["precision"] == pytest.approx(full["precision"], abs=0.05)


def test_adding_noise_lowers_precision_not_recall():
    real = _mixture(2000, 1)
    full = metrics.precision_recall(real, _mixture(2000, 2))
    noisy = metrics.precision_recall(real, _mixture(2000, 2, noise=2.0))
    assert noisy["precision"] < full["precision"] - 0.3  # samples leave the real support
    assert noisy["recall"] >= full["recall"] - 0.02       # wider balls still cover the real points


# ---------------------------------------------------------------- the paired comparison


def _reference(n=20_000):
    real = _mixture(n, 99, dim=8).double()
    return real.mean(0), torch.cov(real.T)


def test_paired_comparison_finds_a_real_difference_and_its_direction():
    ref = _reference()
    good = _mixture(1000, 5, dim=8)
    bad = good * 1.3            # the same x_T through a worse generator: every sample scaled
    c = metrics.compare_paired(good, bad, reference=ref, n_boot=300)
    assert c.verdict == "worse" and c.low > 1 and c.ratio > 1
    assert metrics.compare_paired(bad, good, reference=ref, n_boot=300).verdict == "better"
    assert c.low <= c.ratio <= c.high
    assert "worse" in str(c) and c.as_dict()["ratio_per_group"] == [c.ratio]


def test_paired_comparison_of_identical_samples_is_exactly_one():
    ref = _reference()
    x = _mixture(500, 5, dim=8)
    c = metrics.compare_paired(x, x.clone(), reference=ref, n_boot=200)
    assert c.ratio == pytest.approx(1.0, abs=1e-12) and c.low == pytest.approx(1.0) and c.high == pytest.approx(1.0)
    assert c.verdict == "unresolved"


def test_pairing_narrows_the_interval_when_the_noise_is_shared():
    ref = _reference()
    base = _mixture(1000, 5, dim=8)
    better = 0.9 * base + 0.1 * ref[0].float()     # each sample moved a little towards the real mean
    paired = metrics.compare_paired(base, better, reference=ref, n_boot=400)
    unpaired = metrics.compare_paired(base, better, reference=ref, n_boot=400, paired=False)
    assert paired.ratio == pytest.approx(unpaired.ratio)
    assert (paired.high - paired.low) < (unpaired.high - unpaired.low)


def test_groups_combine_as_a_geometric_mean():
    ref = _reference()
    a = [_mixture(400, 5, dim=8), _mixture(400, 6, dim=8)]
    b = [a[0] * 1.2, a[1] * 1.5]
    c = metrics.compare_paired(a, b, reference=ref, n_boot=200)
    assert c.ratio == pytest.approx((c.ratio_per_group[0] * c.ratio_per_group[1]) ** 0.5)
    assert c.n_per_group == (400, 400)


def test_paired_comparison_is_deterministic_given_its_seed():
    ref = _reference()
    a, b = _mixture(300, 1, dim=8), _mixture(300, 2, dim=8)
    one = metrics.compare_paired(a, b, reference=ref, n_boot=200, paired=False, seed=3)
    assert one == metrics.compare_paired(a, b, reference=ref, n_boot=200, paired=False, seed=3)


def test_paired_comparison_refuses_what_cannot_be_paired():
    ref = _reference()
    with pytest.raises(ValueError, match="paired=False"):
        metrics.compare_paired(torch.randn(10, 8), torch.randn(12, 8), reference=ref)
    with pytest.raises(ValueError, match="groups"):
        metrics.compare_paired([torch.randn(10, 8)], [torch.randn(10, 8)] * 2, reference=ref)
    with pytest.raises(ValueError, match="n_boot"):
        metrics.compare_paired(torch.randn(10, 8), torch.randn(10, 8), reference=ref, n_boot=10)


def test_the_rule_rarely_separates_a_generator_from_itself():
    # the false-positive rate of the verdict rule, measured as experiments/paired_rule.py does for the book
    ref = _reference()
    pool = _mixture(4000, 7, dim=8)
    r = metrics.null_verdict_rate(pool, 500, repeats=30, reference=ref, n_boot=200)
    assert sum(r["verdicts"].values()) == 30
    # at a nominal 5%, 6 or more false verdicts in 30 has probability below 0.02
    assert r["false_positive_rate"] <= 5 / 30
    with pytest.raises(ValueError, match="disjoint"):
        metrics.null_verdict_rate(pool, 3000, repeats=1, reference=ref)
