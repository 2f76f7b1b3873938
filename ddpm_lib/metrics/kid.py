"""Two measures that need no Gaussian fit: the kernel distance (KID) and precision/recall.

**Kernel inception distance** (KID; Bińkowski et al. 2018, "Demystifying MMD GANs",
ICLR, Sec. 3 and App. D) is the squared maximum mean discrepancy between the
feature distributions of two sets under the cubic polynomial kernel

    k(x, y) = (x . y / D + 1)^3,

estimated without bias:

    MMD^2 = 1/(m(m-1)) sum_{i != j} k(a_i, a_j) + 1/(n(n-1)) sum_{i != j} k(b_i, b_j)
            - 2/(mn) sum_{i, j} k(a_i, b_j).

Unlike the Fréchet distance, whose estimate is biased upwards by an amount that
depends on N (the *floor* of :mod:`ddpm_lib.metrics.frechet`), its expectation
is the same at every sample size, and it is 0 when the two distributions are
the same. Its estimate can be slightly negative. Here the estimate uses all
pairs of points, and its standard error comes from a delete-a-block jackknife
(Efron and Tibshirani 1993, Ch. 11) over ``n_blocks`` random blocks of both
sets, rather than from the spread of overlapping subsets, which is not a
standard error.

**Precision and recall** (Kynkäänniemi et al. 2019, "Improved Precision and
Recall Metric for Assessing Generative Models", NeurIPS, Eq. 1-3) estimate
each distribution's support as the union of balls around its points, each
ball reaching to the point's k-th nearest neighbour in its own set.
*Precision* is the fraction of generated points inside the real support
(fidelity: are the samples realistic?); *recall* the fraction of real points
inside the generated support (diversity: is every kind of real digit
produced?). Both depend on k and on the set sizes: compare them only at the
same N and k.
"""

from __future__ import annotations

import torch

from ._linalg import _as_float64_2d

__all__ = ["kernel_distance", "precision_recall"]


def _block_kernel_sums(x: torch.Tensor, bx: torch.Tensor, y: torch.Tensor, by: torch.Tensor, n_blocks: int,
                       chunk: int = 2000) -> torch.Tensor:
    """(n_blocks, n_blocks) sums of k(x_i, y_j) = (x_i . y_j / D + 1)^3 over block pairs."""
    one_y = torch.nn.functional.one_hot(by, n_blocks).to(torch.float64)
    sums = torch.zeros(n_blocks, n_blocks, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        k = (x[i:i + chunk] @ y.T / x.shape[1] + 1.0) ** 3
        sums.index_add_(0, bx[i:i + chunk], k @ one_y)
    return sums


def _mmd2(s_aa, d_aa, m, s_bb, d_bb, n, s_ab) -> torch.Tensor:
    """Unbiased MMD^2 from kernel sums, kernel diagonals removed (Bińkowski et al. 2018, Eq. 3)."""
    return (s_aa - d_aa) / (m * (m - 1)) + (s_bb - d_bb) / (n * (n - 1)) - 2.0 * s_ab / (m * n)


def kernel_distance(feats_a, feats_b, n_blocks: int = 10, seed: int = 0) -> dict:
    """KID between two feature sets (Bińkowski et al. 2018): unbiased MMD^2, cubic kernel.

    The estimate uses every pair of points. Its standard error is a delete-a-block
    jackknife: both sets are shuffled (``seed``) and cut into ``n_blocks`` blocks,
    the estimate is recomputed with block j of both sets left out, and
    ``se^2 = (K-1)/K sum_j (kid_(j) - mean)^2``. Returns ``{"kid", "kid_se",
    "n_blocks"}``.
    """
    a, b = _as_float64_2d(feats_a, "feats_a", 0), _as_float64_2d(feats_b, "feats_b", 0)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be at least 2 (the jackknife leaves one out), got {n_blocks}")
    if min(len(a), len(b)) < 2 * n_blocks:
        raise ValueError(f"need at least 2 points per block: {len(a)} and {len(b)} points in {n_blocks} blocks; "
                         "pass more points or fewer blocks")
    g = torch.Generator().manual_seed(seed)
    block_a = torch.randperm(len(a), generator=g) % n_blocks
    block_b = torch.randperm(len(b), generator=g) % n_blocks
    s_aa = _block_kernel_sums(a, block_a, a, block_a, n_blocks)
    s_bb = _block_kernel_sums(b, block_b, b, block_b, n_blocks)
    s_ab = _block_kernel_sums(a, block_a, b, block_b, n_blocks)
    d_aa = torch.zeros(n_blocks, dtype=torch.float64).index_add_(0, block_a, ((a * a).sum(1) / a.shape[1] + 1) ** 3)
    d_bb = torch.zeros(n_blocks, dtype=torch.float64).index_add_(0, block_b, ((b * b).sum(1) / b.shape[1] + 1) ** 3)
    m_j = torch.bincount(block_a, minlength=n_blocks).double()
    n_j = torch.bincount(block_b, minlength=n_blocks).double()
    kid = _mmd2(s_aa.sum(), d_aa.sum(), len(a), s_bb.sum(), d_bb.sum(), len(b), s_ab.sum())
    left_out = []
    for j in range(n_blocks):
        keep = torch.arange(n_blocks) != j
        left_out.append(_mmd2(s_aa[keep][:, keep].sum(), d_aa[keep].sum(), m_j[keep].sum(),
                              s_bb[keep][:, keep].sum(), d_bb[keep].sum(), n_j[keep].sum(), s_ab[keep][:, keep].sum()))
    left_out = torch.stack(left_out)
    se = ((n_blocks - 1) / n_blocks * ((left_out - left_out.mean()) ** 2).sum()).sqrt()
    return {"kid": float(kid), "kid_se": float(se), "n_blocks": n_blocks}


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point of x to its k-th nearest other point of x."""
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself, at distance 0
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each point, whether it lies in some ball (centre, radius)."""
    inside = []
    for i in range(0, len(points), chunk):
        inside.append((torch.cdist(points[i:i + chunk], centres) <= radii).any(dim=1))
    return torch.cat(inside)


def precision_recall(real, generated, k: int = 3, chunk: int = 2000) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-3) of features.

    ``precision``: the fraction of ``generated`` inside the real support (the
    union of balls around the real points, each of radius the distance to its
    k-th nearest real neighbour); ``recall``: the fraction of ``real`` inside
    the generated support, built the same way. Returns ``{"precision",
    "recall", "k"}``. Use the same number of points in both sets and the same
    k whenever two results are compared.
    """
    r, f = _as_float64_2d(real, "real", 0).float(), _as_float64_2d(generated, "generated", 0).float()
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature widths differ: {r.shape[1]} vs {f.shape[1]}")
    if not 1 <= k < min(len(r), len(f)):
        raise ValueError(f"k must be at least 1 and smaller than both set sizes ({len(r)}, {len(f)}), got {k}")
    precision = _covered(f, r, _kth_neighbour_radii(r, k, chunk), chunk).double().mean()
    recall = _covered(r, f, _kth_neighbour_radii(f, k, chunk), chunk).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}
