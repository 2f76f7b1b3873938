"""The Fréchet distance on the book's classifier features, its real-data floor, and the evaluation.

The Fréchet Inception Distance (FID; Heusel et al. 2017, "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS) fits a
Gaussian to the features of real images and another to the features of
generated images, and reports the Fréchet (2-Wasserstein) distance between the
two Gaussians:

    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

FID takes its features from the pool3 layer of an ImageNet Inception-v3. Here
the features come instead from the 128-d penultimate layer of a *small MNIST
classifier* (:class:`ddpm_lib.classifier.MNISTClassifier`, the book's judge,
trained and shipped by :mod:`ddpm_lib.classifier`). The formula is the same, but
the feature space is not, so **the numbers are not comparable to published
FIDs** (not even to published "MNIST FIDs", which use Inception or other
networks). They are only comparable with each other: same classifier, same
reference set, same sample size.

The reference set is the whole MNIST **test** split (10,000 images). The
Fréchet distance estimated from N samples is biased upwards, more so for small
N, so a number on its own says little. :func:`evaluate_samples` therefore always
reports the *real-data floor* next to it: the same distance for N real
**training** digits (a fixed, seeded random subset) against the test set. A
perfect generator would score about the floor; ``fd_ratio = fd / fd_floor``
says how far above it a model is. :func:`summarize_seeds` combines the reports
of several seeds.

Two cheaper diagnostics use the same classifier: the mean confidence (mean
max-softmax probability; blurry or ambiguous digits score lower) and the
histogram of predicted digits (a mode-collapsed model over-represents some
digits; real MNIST is roughly 10% each). Neither is a quality score on its own:
like most classifiers, this one is over-confident far from its training data
(pure Gaussian noise gets a mean confidence of about 1.0, all "one digit"), which
the Fréchet distance does catch.

Orders of magnitude with the shipped classifier, N = 1000: the floor is about 4
(3.8 to 4.9 over subset seeds 0-4), blurred test digits (5x5 box blur) about
950, pure noise about 2900. The floor falls with N (about 32 at N = 100, 1.2 at
N = 10,000), so only compare figures computed at the same N -- and differences
of ~20% at N = 1000 are within the noise of which subset was drawn.

Every function taking ``classifier=None`` uses :func:`ddpm_lib.classifier.load_classifier`'s
shipped classifier.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..classifier import NUM_CLASSES, MNISTClassifier, _mnist, load_classifier
from ..data import to_model_range
from ._linalg import _as_float64_2d, _psd_sqrt
from .kid import kernel_distance, precision_recall

__all__ = [
    "features", "class_probabilities", "mean_confidence", "digit_histogram",
    "gaussian_stats", "frechet_distance_from_stats", "frechet_distance",
    "test_set_features", "test_set_stats", "real_data_floor", "evaluate_samples", "summarize_seeds",
]


# --------------------------------------------------------------------------------------
# Features, confidence, digit histogram
# --------------------------------------------------------------------------------------


def _as_input(x) -> torch.Tensor:
    """uint8 (N, 28, 28) / (N, 1, 28, 28) in {0..255}, or float in [-1, 1] -> float32 (N, 1, 28, 28)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    x = torch.as_tensor(x).detach()
    if x.dtype == torch.uint8:
        x = to_model_range(x)
    else:
        if not x.is_floating_point():
            raise TypeError(f"images must be uint8 in 0..255 or float in [-1, 1], got {x.dtype}")
        x = x.float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        # generated samples overshoot [-1, 1] a little; clip like saving them as images would
        x = x.clamp(-1.0, 1.0)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected MNIST-shaped images (N, 1, 28, 28) or (N, 28, 28), got {tuple(x.shape)}")
    return x


@torch.no_grad()
def _forward(x, classifier: MNISTClassifier | None = None, batch_size: int = 1000):
    """Features (N, D) float32 and class probabilities (N, 10), in batches."""
    classifier = classifier if classifier is not None else load_classifier()
    x = _as_input(x)
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, probs = [], []
    for i in range(0, len(x), batch_size):
        f = classifier.features(x[i : i + batch_size].to(device)).float()
        feats.append(f.cpu())
        probs.append(F.softmax(classifier.head(f), dim=1).cpu())
    classifier.train(was_training)
    if not feats:
        return torch.zeros(0, classifier.config.feature_dim), torch.zeros(0, NUM_CLASSES)
    return torch.cat(feats), torch.cat(probs)


def features(x, classifier: MNISTClassifier | None = None, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate-layer features, float32 (N, feature_dim), of images given as float
    (N, 1, 28, 28) in [-1, 1] (clipped to that range) or uint8 (N, 28, 28)."""
    return _forward(x, classifier, batch_size)[0]


def class_probabilities(x, classifier: MNISTClassifier | None = None, batch_size: int = 1000) -> torch.Tensor:
    """Softmax class probabilities (N, 10) of the classifier."""
    return _forward(x, classifier, batch_size)[1]


def _confidence(probs: torch.Tensor) -> float:
    return float(probs.max(dim=1).values.double().mean()) if len(probs) else float("nan")


def _histogram(probs: torch.Tensor) -> dict:
    counts = torch.bincount(probs.argmax(dim=1), minlength=NUM_CLASSES).tolist()
    n = sum(counts)
    fractions = [c / n if n else float("nan") for c in counts]
    return {"counts": counts, "fractions": fractions}


def mean_confidence(x, classifier: MNISTClassifier | None = None) -> float:
    """Mean over images of the classifier's max softmax probability (1.0 = always sure)."""
    return _confidence(class_probabilities(x, classifier))


def digit_histogram(x, classifier: MNISTClassifier | None = None) -> dict:
    """Histogram of predicted digits: ``{"counts": [10 ints], "fractions": [10 floats]}`` for 0..9."""
    return _histogram(class_probabilities(x, classifier))


# --------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------


def gaussian_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), in float64, of features (N, D)."""
    f = _as_float64_2d(feats)
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (len(f) - 1)
    return mu, sigma


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (Heusel et al. 2017):

        |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

    in float64. Both square roots are of symmetric PSD matrices and are taken
    with ``torch.linalg.eigh``, which is stable where scipy's general ``sqrtm``
    of the non-symmetric ``S_a S_b`` (used by the reference FID code) can return
    complex round-off.
    """
    mu_a, mu_b = (torch.as_tensor(m, dtype=torch.float64) for m in (mu_a, mu_b))
    sigma_a, sigma_b = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma_a, sigma_b))
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != (len(mu_a), len(mu_a)):
        raise ValueError(
            f"shape mismatch: mu {tuple(mu_a.shape)} vs {tuple(mu_b.shape)}, "
            f"sigma {tuple(sigma_a.shape)} vs {tuple(sigma_b.shape)}"
        )
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    middle = 0.5 * (middle + middle.T)
    tr_covmean = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    diff = mu_a - mu_b
    fd = diff @ diff + torch.trace(sigma_a) + torch.trace(sigma_b) - 2.0 * tr_covmean
    return max(float(fd), 0.0)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (N_a, D) and (N_b, D).

    This is the statistic of FID (Heusel et al. 2017), but on whatever features
    are passed in; see :func:`evaluate_samples` for the MNIST-classifier version.
    """
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# --------------------------------------------------------------------------------------
# Reference statistics and the evaluation
# --------------------------------------------------------------------------------------

# classifier -> test-set features; -> (mu, sigma) of them; -> {(n, seed): fd_floor}
_TEST_FEATURES: "weakref.WeakKeyDictionary[nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()
_TEST_STATS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_FLOORS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def test_set_features(classifier: MNISTClassifier | None = None) -> torch.Tensor:
    """Classifier features (10000, D) of the MNIST test images (cached in memory per classifier)."""
    classifier = classifier if classifier is not None else load_classifier()
    if classifier not in _TEST_FEATURES:
        _TEST_FEATURES[classifier] = features(_mnist("test").images, classifier)
    return _TEST_FEATURES[classifier]


def test_set_stats(classifier: MNISTClassifier | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the classifier features of all 10,000 MNIST test images
    (cached in memory per classifier)."""
    classifier = classifier if classifier is not None else load_classifier()
    if classifier not in _TEST_STATS:
        _TEST_STATS[classifier] = gaussian_stats(test_set_features(classifier))
    return _TEST_STATS[classifier]


def real_data_floor(n: int, seed: int = 0, classifier: MNISTClassifier | None = None) -> float:
    """FD of ``n`` real training digits (a random subset fixed by ``seed``) vs the test set.

    This is what a perfect generator would score with ``n`` samples: the
    Fréchet distance estimated from finite samples is biased upwards, the more
    the smaller ``n``. Cached in memory per (classifier, n, seed).
    """
    classifier = classifier if classifier is not None else load_classifier()
    floors = _FLOORS.setdefault(classifier, {})
    if (n, seed) not in floors:
        train = _mnist("train")
        if not 2 <= n <= len(train):
            raise ValueError(f"n_floor must be between 2 and {len(train)}, got {n}")
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
        mu, sigma = gaussian_stats(features(train.images[idx], classifier))
        floors[(n, seed)] = frechet_distance_from_stats(mu, sigma, *test_set_stats(classifier))
    return floors[(n, seed)]


def evaluate_samples(samples, n_floor: int | None = None, seed: int = 0,
                     classifier: MNISTClassifier | None = None) -> dict:
    """Score MNIST-like samples with the classifier; returns a JSON-serialisable dict.

    ``samples``: float (N, 1, 28, 28) in [-1, 1] (as :func:`ddpm_lib.sampling.ddpm_sample`
    returns them; clipped to [-1, 1]) or uint8 (N, 28, 28).

    * ``fd`` -- Fréchet distance between Gaussian fits of the samples' classifier
      features and those of the 10,000 MNIST test images: an MNIST analogue of
      FID (Heusel et al. 2017), **not comparable to published FIDs**;
    * ``fd_floor`` -- the same for ``n_floor`` (default: N) real training
      digits, a subset fixed by ``seed``: the score of a perfect generator at
      this sample size; ``fd_ratio = fd / fd_floor``;
    * ``kid``, ``kid_se`` -- the kernel distance to the test set and its standard
      error (:func:`ddpm_lib.metrics.kid.kernel_distance`; unbiased, so it needs no floor);
    * ``knn_precision``, ``knn_recall`` -- Kynkäänniemi et al. (2019) against N test digits
      (a subset fixed by ``seed``; k = 3), :func:`ddpm_lib.metrics.kid.precision_recall`;
    * ``mean_confidence`` -- mean max-softmax probability;
    * ``digit_counts`` / ``digit_fractions`` (for 0..9), ``min_fraction``, ``max_fraction``;
    * ``classifier_test_accuracy`` -- as stored when the classifier was trained.
    """
    classifier = classifier if classifier is not None else load_classifier()
    feats, probs = _forward(samples, classifier)
    n = len(feats)
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    n_floor = n if n_floor is None else int(n_floor)
    mu, sigma = gaussian_stats(feats)
    fd = frechet_distance_from_stats(mu, sigma, *test_set_stats(classifier))
    floor = real_data_floor(n_floor, seed=seed, classifier=classifier)
    test = test_set_features(classifier)
    kid, pr = {"kid": None, "kid_se": None}, {"precision": None, "recall": None}
    if n >= 4:  # two blocks of two points at least; k = 3 neighbours need 4 points
        kid = kernel_distance(feats, test, n_blocks=min(10, n // 2), seed=seed)
        subset = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:min(n, len(test))]
        pr = precision_recall(test[subset], feats, k=3)
    hist = _histogram(probs)
    return {
        "n": n,
        "n_floor": n_floor,
        "fd": fd,
        "fd_floor": floor,
        "fd_ratio": fd / floor if floor > 0 else None,
        "kid": kid["kid"],
        "kid_se": kid["kid_se"],
        "knn_precision": pr["precision"],
        "knn_recall": pr["recall"],
        "mean_confidence": _confidence(probs),
        "digit_counts": hist["counts"],
        "digit_fractions": hist["fractions"],
        "min_fraction": min(hist["fractions"]),
        "max_fraction": max(hist["fractions"]),
        "classifier_test_accuracy": classifier.test_accuracy,
        "seed": seed,
    }


def summarize_seeds(reports: list[dict]) -> dict:
    """Combine :func:`evaluate_samples` reports of the same model under several seeds.

    Each seed draws other samples *and* another real-data subset for the floor,
    and at N = 1000 both move the FD by several percent, so one seed's ratio
    is a noisy estimate. The summary's ``fd_ratio`` is the ratio of the means,
    ``mean(fd) / mean(fd_floor)``; ``fd_ratio_per_seed`` and ``fd_ratio_sd``
    (sample standard deviation) show the spread. ``digit_counts`` pools the
    samples of all seeds, so ``digit_fractions``, ``min_fraction`` and
    ``max_fraction`` describe the model's digit distribution from all of them;
    ``min_fraction_per_seed`` and ``max_fraction_per_seed`` keep each seed's
    extremes (at N = 1000 one digit's share varies by about one percentage
    point from seed to seed by chance alone). ``per_seed`` keeps every report.
    """
    if len(reports) < 2:
        raise ValueError(f"need reports of at least 2 seeds to summarize, got {len(reports)}")
    seeds = [r["seed"] for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"each seed must appear once, got {seeds}")

    def mean_sd(key):
        v = torch.tensor([float(r[key]) for r in reports], dtype=torch.float64)
        return float(v.mean()), float(v.std())

    counts = [sum(c) for c in zip(*(r["digit_counts"] for r in reports))]
    fractions = [c / sum(counts) for c in counts]
    extra = {}
    if all(r.get("kid") is not None for r in reports):  # reports written before KID was added lack it
        extra = {"kid": mean_sd("kid")[0],
                 "kid_se": float(sum(r["kid_se"] ** 2 for r in reports) ** 0.5 / len(reports)),
                 "knn_precision": mean_sd("knn_precision")[0], "knn_recall": mean_sd("knn_recall")[0]}
    fd, fd_sd = mean_sd("fd")
    floor, floor_sd = mean_sd("fd_floor")
    ratio_sd = mean_sd("fd_ratio")[1]
    return {
        "n": reports[0]["n"],
        "seeds": seeds,
        "fd": fd,
        "fd_sd": fd_sd,
        "fd_floor": floor,
        "fd_floor_sd": floor_sd,
        "fd_ratio": fd / floor,
        "fd_ratio_sd": ratio_sd,
        "fd_ratio_per_seed": [r["fd_ratio"] for r in reports],
        **extra,
        "mean_confidence": mean_sd("mean_confidence")[0],
        "digit_counts": counts,
        "digit_fractions": fractions,
        "min_fraction": min(fractions),
        "max_fraction": max(fractions),
        "min_fraction_per_seed": [r["min_fraction"] for r in reports],
        "max_fraction_per_seed": [r["max_fraction"] for r in reports],
        "classifier_test_accuracy": reports[0]["classifier_test_accuracy"],
        "per_seed": reports,
    }
