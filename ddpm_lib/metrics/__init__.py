"""Measuring samples: how close generated digits are to real ones, and whether one generator beats another.

Every measure works on the features of the book's MNIST classifier
(:class:`ddpm_lib.classifier.MNISTClassifier`, the judge of chapter 8), never
on Inception features, so **no number here is comparable to a published FID**;
they are comparable with each other (same classifier, same reference set, same
sample size).

* :mod:`~ddpm_lib.metrics.frechet` -- features, the Fréchet distance (FD, the
  statistic of FID, Heusel et al. 2017), its real-data floor, and
  :func:`evaluate_samples`, the book's evaluation of a set of samples
  (FD, floor, KID, precision/recall, confidence, digit histogram);
* :mod:`~ddpm_lib.metrics.kid` -- the kernel distance (KID, Bińkowski et al.
  2018), unbiased and with its standard error, and improved precision and
  recall (Kynkäänniemi et al. 2019);
* :mod:`~ddpm_lib.metrics.paired` -- comparing two generators from the same
  noises: a bootstrap interval of their FD ratio, the verdict it supports, and
  the measured false-positive rate of that rule.
"""

from .frechet import (class_probabilities, digit_histogram, evaluate_samples, features,
                      frechet_distance, frechet_distance_from_stats, gaussian_stats, mean_confidence,
                      real_data_floor, summarize_seeds, test_set_features, test_set_stats)
from .kid import kernel_distance, precision_recall
from .paired import PairedComparison, compare_paired, null_verdict_rate

__all__ = [
    "features", "class_probabilities", "mean_confidence", "digit_histogram",
    "gaussian_stats", "frechet_distance_from_stats", "frechet_distance",
    "test_set_features", "test_set_stats", "real_data_floor", "evaluate_samples", "summarize_seeds",
    "kernel_distance", "precision_recall",
    "PairedComparison", "compare_paired", "null_verdict_rate",
]
