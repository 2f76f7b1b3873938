"""Draw the site's favicon: a digit the shipped checkpoint generated, half of it still noise.

    .venv/bin/python book/make_favicon.py      # writes book/_static/favicon.png

The left half of the 32 x 32 icon is sample 1 (a clear 0) of the shipped checkpoint's committed
samples (``checkpoints/eval_ddpm_mnist_samples.npy``, 1000-step Algorithm 2, seed 0), padded by two
pixels; the right half is that digit noised to x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
at t = 200 of the linear schedule (``schedule.q_sample``, eps from seed 0): the book in one
picture. The icon is committed, so the build draws nothing; rerun after the samples change.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_lib._io import atomic_write_bytes
from ddpm_lib.data import from_model_range, to_model_range
from ddpm_lib.schedule import make_schedule

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "book" / "_static" / "favicon.png"
SAMPLES = ROOT / "checkpoints" / "eval_ddpm_mnist_samples.npy"
NOISED_T = 200
INDEX = 1


def icon() -> np.ndarray:
    """The favicon as uint8 (32, 32)."""
    x0 = to_model_range(torch.from_numpy(np.load(SAMPLES)[INDEX:INDEX + 1]))          # (1, 1, 28, 28) in [-1, 1]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    schedule = make_schedule("linear", 1000)
    xt = schedule.q_sample(x0, torch.tensor([NOISED_T - 1]), eps)
    clean, noisy = from_model_range(x0)[0].numpy(), from_model_range(xt)[0].numpy()
    digit = np.concatenate([clean[:, :14], noisy[:, 14:]], axis=1)        # left half clean, right half noised
    return np.pad(digit, 2)


def main() -> None:
    buf = io.BytesIO()
    Image.fromarray(icon(), mode="L").save(buf, format="PNG", optimize=True)
    atomic_write_bytes(OUT, buf.getvalue())
    print(f"wrote {OUT} ({len(buf.getvalue())} bytes)")


if __name__ == "__main__":
    main()
