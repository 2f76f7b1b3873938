"""A results file that grows one entry at a time, so an experiment resumes where it stopped.

Each entry has a key; an experiment skips the keys the file already holds, and the
file is rewritten atomically after each new entry (a killed run loses at most the
entry it was computing).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpm_lib._io import atomic_write_bytes
from ddpm_lib.data import from_model_range
from ddpm_lib.machine import cpu_detail, cpu_name
from ddpm_lib.sampling import sample


class ResultsFile:
    def __init__(self, path: str | Path, about: str):
        self.path = Path(path)
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
        else:
            self.data = {"about": about, "entries": {}}
        self.data["about"] = about

    def has(self, key: str) -> bool:
        return key in self.data["entries"]

    def get(self, key: str) -> dict:
        return self.data["entries"][key]

    def put(self, key: str, entry: dict) -> None:
        entry = dict(entry)
        entry["measured"] = {"cpu": cpu_name(), "cpu_detail": cpu_detail(), "threads": torch.get_num_threads(),
                             "torch": torch.__version__,
                             "python": platform.python_version(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv])}
        self.data["entries"][key] = entry
        self.save()

    def drop(self, keys) -> list[str]:
        """Remove these entries (those present), save, and return the keys removed."""
        gone = [k for k in keys if self.data["entries"].pop(k, None) is not None]
        if gone:
            self.save()
        return gone

    def save(self) -> None:
        atomic_write_bytes(self.path, (json.dumps(self.data, indent=1) + "\n").encode())


def open_results(doc: str, default_out: str | Path, about: str, argv=None) -> ResultsFile:
    """The command line of an experiment whose only option is ``--out`` (its results file; ``doc``, the
    script's docstring, is its help), and that file opened."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(default_out), help="the results file (default: %(default)s)")
    return ResultsFile(p.parse_args(argv).out, about)


def save_images(path: str | Path, x: np.ndarray) -> None:
    """Save an array atomically: ``.npy`` as is, ``.npz`` compressed (about 300 kB per 1000 MNIST samples, for
    image sets that are committed)."""
    path = Path(path)
    buf = io.BytesIO()
    if path.suffix == ".npz":
        np.savez_compressed(buf, images=x)
    else:
        np.save(buf, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def load_images(path: str | Path) -> np.ndarray:
    """The inverse of :func:`save_images`."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return z["images"]
    return np.load(path)


def kept_images(path: str | Path, draw) -> np.ndarray:
    """Images kept at ``path`` (under runs/, not committed, or a committed ``.npz``), so that a rerun does not
    draw them again: the array saved there if there is one, else ``draw()``, saved there atomically first."""
    path = Path(path)
    if path.exists():
        return load_images(path)
    x = draw()
    save_images(path, x)
    return x


def draw_images(ckpt, numerics, sampler: str, steps: int, seeds, n: int = 1000, batch: int = 1000,
                **options) -> np.ndarray:
    """uint8 images (len(seeds) x n, 28, 28) of a checkpoint, ``n`` per seed, seeds in order."""
    parts = []
    for seed in seeds:
        t0 = time.perf_counter()
        x = sample(ckpt.model, ckpt.schedule, n, sampler, steps, seed=seed, batch_size=batch, numerics=numerics,
                   **options)
        parts.append(from_model_range(x).numpy())
        print(f"drew {sampler} {steps} steps, seed {seed}, n = {n}: {time.perf_counter() - t0:.0f} s", flush=True)
    return np.concatenate(parts)
