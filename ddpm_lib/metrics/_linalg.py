"""What the metrics share: the check that turns features into a float64 (N, D) tensor, and the square
root of a covariance matrix."""

from __future__ import annotations

import numpy as np
import torch


def _as_float64_2d(feats, name: str = "features", min_rows: int = 2) -> torch.Tensor:
    """Features (N, D) as a float64 CPU tensor (the metrics' common input check); ``name`` is the argument
    named in the error, ``min_rows`` the fewest rows the caller can use."""
    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(feats)
    f = torch.as_tensor(feats).detach().cpu().to(torch.float64)
    if f.dim() != 2:
        raise ValueError(f"{name} must be 2-D features (N, D), got shape {tuple(f.shape)}")
    if len(f) < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} feature vectors (a mean and a covariance), "
                         f"got {len(f)}")
    return f


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative round-off clipped)."""
    m = 0.5 * (m + m.T)
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T
