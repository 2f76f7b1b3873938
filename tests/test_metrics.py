"""Tests for ddpm_lib.metrics: the Fréchet distance, features and evaluate_samples (an MNIST
analogue of FID, Heusel et al. 2017) and summarize_seeds. The classifier itself is tested in
test_classifier.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ddpm_lib import classifier as clf_lib
from ddpm_lib import metrics
from ddpm_lib.data import load_mnist
from ddpm_lib.metrics import frechet_distance, frechet_distance_from_stats, gaussian_stats


# ---------------------------------------------------------------- Fréchet distance


def _gaussian(n, mu, std, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mu), generator=g, dtype=torch.float64) * torch.as_tensor(std) + torch.as_tensor(mu)


def test_fd_closed_form_diagonal():
    # For diagonal covariances FD = |mu_a - mu_b|^2 + sum_i (s_a,i - s_b,i)^2 (s = std devs)
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, -0.5])
    s_a, s_b = torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([2.0, 0.5, 0.5, 1.0])
    expected = float(((mu_a - mu_b) ** 2).sum() + ((s_a - s_b) ** 2).sum())
    got = frechet_distance_from_stats(mu_a, torch.diag(s_a**2), mu_b, torch.diag(s_b**2))
    assert got == pytest.approx(expected, rel=1e-10)
    # and estimated from samples
    a, b = _gaussian(100_000, mu_a, s_a, 0), _gaussian(100_000, mu_b, s_b, 1)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_fd_closed_form_general_covariances():
    # Tr((S_a^1/2 S_b S_a^1/2)^1/2) = sum sqrt(eig(S_a S_b)); check against that independent route
    g = torch.Generator().manual_seed(0)
    d = 6
    A, B = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, d, generator=g, dtype=torch.float64)
    sa, sb = A @ A.T + 0.1 * torch.eye(d, dtype=torch.float64), B @ B.T
    mu_a, mu_b = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    tr_sqrt = torch.linalg.eigvals(sa @ sb).real.clamp(min=0).sqrt().sum()
    expected = float(((mu_a - mu_b) ** 2).sum() + torch.trace(sa) + torch.trace(sb) - 2 * tr_sqrt)
    assert frechet_distance_from_stats(mu_a, sa, mu_b, sb) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_from_stats(mu_b, sb, mu_a, sa) == pytest.approx(expected, rel=1e-8)


def test_fd_properties():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 16, generator=g)
    b = torch.randn(700, 16, generator=g) * 1.3 + 0.2
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    assert frechet_distance(a, a + 1.0) == pytest.approx(16.0, rel=1e-8)  # pure shift: |mu diff|^2
    assert frechet_distance(a, b) > 0.5
    # rank-deficient covariances (fewer samples than dimensions, dead ReLU features) are fine
    c = torch.cat([torch.randn(10, 8, generator=g), torch.zeros(10, 8)], 1)
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-8)
    assert math.isfinite(frechet_distance(c, torch.randn(10, 16, generator=g)))


def test_gaussian_stats_unbiased():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 7.0]])
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == torch.float64
    torch.testing.assert_close(sigma, torch.cov(x.T).double())
    with pytest.raises(ValueError):
        gaussian_stats(torch.zeros(1, 3))


# ---------------------------------------------------------------- measures with the shipped classifier


@pytest.fixture(scope="module")
def classifier():
    path = clf_lib.shipped_classifier_path()
    assert path.exists(), f"the shipped classifier {path} is missing"
    return clf_lib.load_classifier(path, train_if_missing=False)


@pytest.fixture(scope="module")
def test_set():
    return load_mnist("test")


def test_features_and_histogram(classifier, test_set):
    x8 = test_set.images[:64]
    f = metrics.features(x8, classifier)
    assert f.shape == (64, 128) and f.dtype == torch.float32
    # uint8 and [-1, 1] float inputs give the same features
    torch.testing.assert_close(metrics.features(test_set.as_model_input()[:64], classifier), f)
    hist = metrics.digit_histogram(x8, classifier)
    assert len(hist["counts"]) == 10 and sum(hist["counts"]) == 64
    assert sum(hist["fractions"]) == pytest.approx(1.0)
    assert 0.9 < metrics.mean_confidence(x8, classifier) <= 1.0
    with pytest.raises(ValueError):
        metrics.features(torch.zeros(4, 1, 32, 32), classifier)


def _blur(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def test_evaluate_samples(classifier, test_set):
    n = 1000
    idx = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(1))[:n]
    real = test_set.as_model_input()[idx]
    res = metrics.evaluate_samples(real, classifier=classifier)
    json.dumps(res)  # JSON-serialisable
    assert res["n"] == n and res["n_floor"] == n
    assert sum(res["digit_counts"]) == n
    assert res["fd_floor"] > 0
    assert res["fd_ratio"] < 1.5
    assert res["mean_confidence"] > 0.97
    assert 0.05 < res["min_fraction"] <= res["max_fraction"] < 0.15
    assert res["classifier_test_accuracy"] >= 0.99

    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    res_noise = metrics.evaluate_samples(noise, classifier=classifier)
    assert res_noise["fd_floor"] == pytest.approx(res["fd_floor"])  # same n and seed: same floor
    assert res_noise["fd"] > 20 * res["fd_floor"]

    res_blur = metrics.evaluate_samples(_blur(real), classifier=classifier)
    assert res_blur["fd"] > 5 * res["fd_floor"]
    assert res_blur["fd"] > 3 * res["fd"]

    # uint8 input and a different floor sample size
    res8 = metrics.evaluate_samples(test_set.images[idx[:200]], n_floor=n, classifier=classifier)
    assert res8["n"] == 200 and res8["fd_floor"] == pytest.approx(res["fd_floor"])


# ---------------------------------------------------------------- seed summaries


def _report(seed, fd, floor, counts):
    n = sum(counts)
    return {"n": n, "fd": fd, "fd_floor": floor, "fd_ratio": fd / floor, "mean_confidence": 0.9,
            "digit_counts": counts, "min_fraction": min(counts) / n, "max_fraction": max(counts) / n,
            "classifier_test_accuracy": 0.99, "seed": seed}


def test_summarize_seeds_hand_computed():
    a = _report(0, 8.0, 4.0, [10, 10, 10, 10, 10, 10, 10, 10, 10, 10])
    b = _report(1, 6.0, 5.0, [6, 14, 10, 10, 10, 10, 10, 10, 10, 10])
    s = metrics.summarize_seeds([a, b])
    assert s["seeds"] == [0, 1] and s["per_seed"] == [a, b]
    assert s["fd"] == pytest.approx(7.0) and s["fd_floor"] == pytest.approx(4.5)
    assert s["fd_ratio"] == pytest.approx(7.0 / 4.5)          # ratio of the means, not mean of the ratios
    assert s["fd_ratio_sd"] == pytest.approx(abs(2.0 - 1.2) / math.sqrt(2))   # sample sd of 2.0 and 1.2
    assert s["fd_sd"] == pytest.approx(math.sqrt(2))
    assert s["digit_counts"] == [16, 24] + [20] * 8             # pooled: 200 samples
    assert s["min_fraction"] == pytest.approx(0.08) and s["max_fraction"] == pytest.approx(0.12)
    assert s["min_fraction_per_seed"] == [0.1, 0.06] and s["max_fraction_per_seed"] == [0.1, 0.14]


def test_summarize_seeds_refuses_too_few_or_repeated_seeds():
    a = _report(0, 8.0, 4.0, [10] * 10)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.summarize_seeds([a])
    with pytest.raises(ValueError, match="once"):
        metrics.summarize_seeds([a, dict(a)])


def test_metrics_holds_only_the_measures():
    # the classifier, its training, its checkpoint and the retrain command live in ddpm_lib.classifier / cli
    for name in metrics.__all__:
        assert callable(getattr(metrics, name)), name
    for gone in ("main", "train_classifier", "save_classifier", "ClassifierConfig", "CHECKPOINT_FORMAT"):
        assert not hasattr(metrics, gone), gone
