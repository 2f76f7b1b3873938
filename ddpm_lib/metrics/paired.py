"""Comparing two generators: a paired bootstrap interval of their FD ratio, and a verdict rule.

Two generators ``a`` and ``b`` are sampled from the *same* starting noises x_T
(row i of one set and row i of the other share x_T), and both sets are scored
against the same reference statistics. The quantity compared is the ratio
``FD_b / FD_a``: below 1, ``b`` is closer to the real digits. (Two scores
against the same floor subset have the same floor, so this is also the ratio
of their ``fd_ratio``.) With several *groups* (training seeds: the pair
"variant trained with seed s, baseline trained with seed s" is one group), the
ratio is the geometric mean of the groups' ratios.

The interval is a percentile bootstrap (Efron and Tibshirani 1993, Ch. 13; each
arm's bootstrap FDs recentred on its estimate, see :func:`_recentred`): each
replicate resamples the groups with replacement and, within each chosen group,
the rows with replacement -- the same rows for ``a`` and ``b``, so the noise
that the two share (a hard x_T is hard for both) cancels in the ratio. The
verdict rule reads the interval:

* ``"better"`` -- the whole interval is below 1 (``b`` has the lower FD);
* ``"worse"`` -- the whole interval is above 1;
* ``"unresolved"`` -- the interval contains 1: the data do not tell the two apart.

How often the rule finds a difference where there is none is *measured*, not
assumed: :func:`null_verdict_rate` compares a generator with itself over
independent draws and counts the verdicts (``experiments/paired_rule.py``
writes the book's figure). With one group, the interval describes these two
trained networks; whether a *recipe* is better needs several training seeds
as groups, because two trainings of one recipe differ too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ._linalg import _as_float64_2d, _psd_sqrt

__all__ = ["PairedComparison", "compare_paired", "null_verdict_rate"]


@dataclass(frozen=True)
class PairedComparison:
    """Result of :func:`compare_paired`; ``str()`` gives a one-line summary."""

    ratio: float                  # FD_b / FD_a (geometric mean over groups)
    low: float                    # bootstrap percentile interval of the ratio
    high: float
    level: float                  # e.g. 0.95
    verdict: str                  # "better", "worse" or "unresolved" (b relative to a)
    ratio_per_group: tuple
    n_per_group: tuple
    n_boot: int
    paired: bool

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio_per_group"], d["n_per_group"] = list(self.ratio_per_group), list(self.n_per_group)
        return d

    def __str__(self) -> str:
        return (f"FD ratio {self.ratio:.3f}, {self.level:.0%} interval [{self.low:.3f}, {self.high:.3f}]"
                f" over {len(self.n_per_group)} group(s): {self.verdict}")


def _as_groups(feats, name: str) -> list[torch.Tensor]:
    groups = list(feats) if isinstance(feats, (list, tuple)) else [feats]
    out = [_as_float64_2d(g, f"{name} (each group)") for g in groups]
    if not out:
        raise ValueError(f"{name}: no groups given")
    return out


class _ReferenceFD:
    """FD of weighted feature sets against fixed reference statistics (mu_r, sigma_r), batched.

    With R = sigma_r^{1/2} fixed, Tr((R S R)^{1/2}) needs one symmetric
    eigenvalue problem per set; ``weights`` (B, N) are bootstrap counts.
    """

    def __init__(self, mu_r, sigma_r):
        self.mu_r = torch.as_tensor(mu_r, dtype=torch.float64)
        sigma_r = torch.as_tensor(sigma_r, dtype=torch.float64)
        self.root_r = _psd_sqrt(sigma_r)
        self.trace_r = torch.trace(sigma_r)

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        n = weights.sum(dim=1, keepdim=True)                     # (B, 1)
        out = []
        for i in range(0, len(weights), chunk):
            w, nn_ = weights[i:i + chunk], n[i:i + chunk]
            mu = w @ x / nn_                                      # (b, D)
            second = (w[:, :, None] * x).transpose(1, 2) @ x          # (b, D, D): sum_n w_n x_n x_n^T
            cov = (second - nn_[:, :, None] * mu[:, :, None] * mu[:, None, :]) / (nn_[:, :, None] - 1)
            middle = self.root_r @ cov @ self.root_r
            middle = 0.5 * (middle + middle.transpose(1, 2))
            tr_covmean = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum(dim=1)
            d = mu - self.mu_r
            trace = cov.diagonal(dim1=1, dim2=2).sum(dim=1)
            out.append((d * d).sum(dim=1) + trace + self.trace_r - 2.0 * tr_covmean)
        return torch.cat(out).clamp(min=1e-12)


def _bootstrap_counts(n: int, reps: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(n, (reps, n), generator=g)
    return torch.zeros(reps, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(reps, n, dtype=torch.float64))


def _recentred(boot: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Shift bootstrap FDs so that their mean is the estimate.

    A resample repeats about a third of the rows, which adds to the FD's upward
    bias (roughly one more floor); left in, that extra term would pull every
    ratio towards 1. Its size barely varies between replicates, so subtracting
    the mean shift keeps the spread (Efron and Tibshirani 1993, Sec. 10.6).
    """
    return (boot - (boot.mean() - estimate)).clamp(min=1e-3 * float(estimate))


def compare_paired(feats_a, feats_b, reference=None, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0, paired: bool = True) -> PairedComparison:
    """Bootstrap interval of FD_b / FD_a and the verdict it supports (module docstring).

    ``feats_a``, ``feats_b``: classifier features (N, D) of the two generators'
    samples, or lists of them, one per group (training seed). With
    ``paired=True`` row i of ``a`` and of ``b`` come from the same x_T and are
    resampled together; ``paired=False`` resamples them independently (sets
    drawn from different noises; sizes may then differ). ``reference``:
    ``(mu, sigma)`` of the real features, default the MNIST test set under the
    shipped classifier.
    """
    a, b = _as_groups(feats_a, "feats_a"), _as_groups(feats_b, "feats_b")
    if len(a) != len(b):
        raise ValueError(f"both generators need the same number of groups, got {len(a)} and {len(b)}")
    for i, (ga, gb) in enumerate(zip(a, b)):
        if ga.shape[1] != gb.shape[1] or (paired and ga.shape != gb.shape):
            raise ValueError(f"group {i}: shapes {tuple(ga.shape)} and {tuple(gb.shape)} cannot be "
                             f"{'paired (rows must share x_T)' if paired else 'compared'}; "
                             "pass paired=False for sets drawn from different noises")
    if not 0.5 < level < 1:
        raise ValueError(f"level must lie between 0.5 and 1, got {level}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100 for a percentile interval, got {n_boot}")
    if reference is None:
        from .frechet import test_set_stats
        reference = test_set_stats()
    fd = _ReferenceFD(*reference)
    g = torch.Generator().manual_seed(seed)
    n_groups = len(a)
    point, boot = [], []
    for ga, gb in zip(a, b):
        ones_a, ones_b = torch.ones(1, len(ga), dtype=torch.float64), torch.ones(1, len(gb), dtype=torch.float64)
        fd_a, fd_b = fd(ga, ones_a), fd(gb, ones_b)
        point.append(float(torch.log(fd_b / fd_a)))
        reps = n_boot * n_groups   # one independent row resample for every (replicate, slot)
        counts_a = _bootstrap_counts(len(ga), reps, g)
        counts_b = counts_a if paired else _bootstrap_counts(len(gb), reps, g)
        boot_a, boot_b = _recentred(fd(ga, counts_a), fd_a), _recentred(fd(gb, counts_b), fd_b)
        boot.append(torch.log(boot_b / boot_a).view(n_boot, n_groups))
    boot = torch.stack(boot)                                     # (group, replicate, slot)
    if n_groups == 1:
        log_ratios = boot[0, :, 0]
    else:
        picks = torch.randint(n_groups, (n_boot, n_groups), generator=g)
        log_ratios = boot[picks, torch.arange(n_boot)[:, None], torch.arange(n_groups)[None, :]].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(log_ratios, torch.tensor([tail, 1 - tail], dtype=torch.float64)).exp().tolist()
    verdict = "better" if high < 1 else "worse" if low > 1 else "unresolved"
    return PairedComparison(ratio=float(np.exp(np.mean(point))), low=low, high=high, level=level, verdict=verdict,
                            ratio_per_group=tuple(float(np.exp(p)) for p in point),
                            n_per_group=tuple(len(ga) for ga in a), n_boot=n_boot, paired=paired)


def null_verdict_rate(pool, n: int, repeats: int, reference=None, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> dict:
    """How often :func:`compare_paired` declares a difference between a generator and itself.

    ``pool``: features of many samples of one generator. Each repeat draws two
    *disjoint* random sets of ``n`` from the pool (independent draws, as two
    evaluations from different noises would be), compares them with
    ``paired=False`` and records the verdict. Returns the counts of each
    verdict, ``false_positive_rate`` (the fraction that is not
    ``"unresolved"``) with its binomial standard error, and the settings.
    """
    pool = _as_groups(pool, "pool")[0]
    if 2 * n > len(pool):
        raise ValueError(f"need 2 x n = {2 * n} pool samples for two disjoint sets, the pool has {len(pool)}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    g = torch.Generator().manual_seed(seed)
    counts = {"better": 0, "worse": 0, "unresolved": 0}
    ratios = []
    for r in range(repeats):
        perm = torch.randperm(len(pool), generator=g)
        c = compare_paired(pool[perm[:n]], pool[perm[n:2 * n]], reference=reference, n_boot=n_boot, level=level,
                           seed=seed * 100_003 + r, paired=False)
        counts[c.verdict] += 1
        ratios.append(c.ratio)
    rate = (counts["better"] + counts["worse"]) / repeats
    return {"false_positive_rate": rate, "false_positive_rate_se": (rate * (1 - rate) / repeats) ** 0.5,
            "verdicts": counts, "repeats": repeats, "n": n, "n_boot": n_boot, "level": level,
            "ratio_sd": float(np.std(ratios, ddof=1)) if repeats > 1 else None}
