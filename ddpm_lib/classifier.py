"""The book's MNIST judge: a small classifier, its training, and its checkpoint.

Sample quality in this book is measured like FID (Heusel et al. 2017, "GANs
Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
NeurIPS), but FID's ImageNet Inception-v3 is replaced by the compact CNN here
(:class:`MNISTClassifier`): its 128-d penultimate layer provides the features
whose Gaussian fits :mod:`ddpm_lib.metrics` compares, and its softmax the
confidence and digit histogram. This module only builds, trains, saves and
loads the classifier; the measures themselves live in :mod:`ddpm_lib.metrics`.

The classifier is trained deterministically (seeded initialisation, a seeded
data order and deterministic algorithms; bit-identical reruns on the same
machine, torch version and thread count) in under a minute on two CPU cores
(3 epochs; the shipped one in bf16 autocast, 99.23% test accuracy with seed 0),
and shipped as ``checkpoints/mnist_classifier.safetensors`` so evaluation is
reproducible without retraining. The file is an ordinary ddpm_lib checkpoint
(:func:`ddpm_lib.checkpoint.save_tensors`, written atomically) of kind
``"classifier"``, whose metadata holds the config, the test accuracy, the seed,
the training facts and a SHA-256 of the weights that :func:`load_classifier`
checks. Retrain it with::

    python -m ddpm_lib train-classifier --out PATH [--seed S]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from ._config import JSONConfig
from .checkpoint import CheckpointError, read_tensors, save_tensors
from .data import MNIST, load_mnist
from .numerics import choose_numerics

#: The ``kind`` metadata value of a classifier checkpoint.
CHECKPOINT_KIND = "classifier"
CHECKPOINT_NAME = "mnist_classifier.safetensors"
NUM_CLASSES = 10
#: Facts about the training run that travel with the weights (all optional).
_TRAINING_FACTS = ("train_seconds", "train_cpu_seconds", "torch_version", "num_threads")


@functools.lru_cache(maxsize=2)
def _mnist(split: str) -> MNIST:
    """``load_mnist(split)``, memoised: it reads and checksums the files on every call."""
    return load_mnist(split)


class ClassifierCheckpointError(CheckpointError):
    """A classifier checkpoint is corrupt, truncated or not a classifier checkpoint."""


# --------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig(JSONConfig):
    """Architecture and training recipe of :class:`MNISTClassifier`; stored in the checkpoint."""

    channels: tuple = (32, 64)   # two conv blocks: conv3x3-BN-ReLU-maxpool2, 28 -> 14 -> 7
    final_pool: bool = True       # one more 2x2 max-pool, 7 -> 4 (ceil mode): 4x smaller linear layer
    feature_dim: int = 128        # the penultimate layer, whose activations are the features
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3              # Adam peak learning rate, cosine-decayed to 0 after a short warm-up
    warmup_steps: int = 100
    weight_decay: float = 0.0
    precision: str = "auto"       # training only ("auto": measured, see ddpm_lib.numerics); evaluation is fp32

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 2:
            raise ValueError(f"channels must have two entries (one per conv block), got {self.channels}")


class MNISTClassifier(nn.Module):
    """A compact CNN for MNIST: two conv blocks, a ``feature_dim``-d hidden layer, 10 logits.

    Input: float (N, 1, 28, 28) in [-1, 1]. ``forward`` returns logits;
    :meth:`features` returns the penultimate-layer activations (after ReLU),
    the analogue of Inception's pool3 features in FID.
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config if config is not None else ClassifierConfig()
        c1, c2 = self.config.channels
        side = 4 if self.config.final_pool else 7
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),   # 14x14
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            *([nn.MaxPool2d(2, ceil_mode=True)] if self.config.final_pool else []),            # 4x4
            nn.Flatten(),
            nn.Linear(c2 * side * side, self.config.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.config.feature_dim, NUM_CLASSES)
        #: what the checkpoint's metadata said (test accuracy, seed, ...); empty if untrained
        self.metadata: dict = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @property
    def test_accuracy(self) -> float | None:
        """The test accuracy measured when the classifier was trained (from its checkpoint)."""
        acc = self.metadata.get("test_accuracy")
        return None if acc is None else float(acc)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic():
    """Turn on ``torch.use_deterministic_algorithms`` for a block and restore the previous state."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` (float, in [-1, 1]) that ``model`` labels ``y``, in eval mode and fp32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device)).float().cpu()
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x)


def _warmup_cosine(config: ClassifierConfig, total_steps: int):
    """Learning-rate factor per step: linear warm-up, then cosine decay to 0."""

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return lr_at


def _fit(model: MNISTClassifier, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
         verbose: bool) -> tuple[float, float]:
    """Train ``model`` on (x, y) with Adam, warm-up + cosine decay and the measured numerics.

    Returns the wall-clock and CPU seconds (summed over threads) of the training loop.
    """
    config = model.config
    n = len(x)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(config, steps_per_epoch * config.epochs))
    numerics = choose_numerics(model, purpose="train", batch_size=config.batch_size, precision=config.precision,
                               channels_last=False, image_shape=(1, 28, 28))
    if verbose:
        print(f"classifier numerics: {numerics.describe()}", flush=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    model.train()
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        running = 0.0
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            with numerics.autocast("cpu"):
                logits = model(x[idx])
            loss = F.cross_entropy(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        if verbose:
            print(f"classifier epoch {epoch + 1}/{config.epochs}: mean train loss {running / steps_per_epoch:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    return time.perf_counter() - start, time.process_time() - start_cpu


def train_classifier(
    seed: int = 0, config: ClassifierConfig | None = None, verbose: bool = True
) -> tuple[MNISTClassifier, dict]:
    """Train :class:`MNISTClassifier` on the MNIST training split and measure its test accuracy.

    Deterministic for a given seed, torch version and thread count: the
    initialisation comes from ``torch.manual_seed(seed)``, the data order from
    a ``torch.Generator`` seeded with ``seed``, and deterministic algorithms are
    on. Returns ``(model, info)`` with ``info`` holding ``test_accuracy``,
    ``train_seconds``, ``seed`` and the config; the model is in eval mode.
    """
    config = config if config is not None else ClassifierConfig()
    train, test = _mnist("train"), _mnist("test")

    # fork_rng: seeding here must not change the caller's global random stream
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = MNISTClassifier(config)
        train_seconds, train_cpu_seconds = _fit(model, train.as_model_input(), train.labels, gen, verbose)
        acc = _accuracy(model, test.as_model_input(), test.labels)
    model.requires_grad_(False)
    info = {
        "test_accuracy": acc,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),  # summed over threads
        "seed": seed,
        "config": config.to_dict(),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
    }
    model.metadata = dict(info)
    if verbose:
        print(f"classifier test accuracy {acc:.4f} after {train_seconds:.0f} s of training", flush=True)
    return model, info


@torch.no_grad()
def classifier_test_accuracy(classifier: MNISTClassifier | None = None) -> float:
    """Recompute the classifier's accuracy on all 10,000 MNIST test images (fp32, eval mode)."""
    classifier = classifier if classifier is not None else load_classifier()
    test = _mnist("test")
    return _accuracy(classifier, test.as_model_input(), test.labels)


# --------------------------------------------------------------------------------------
# Checkpoint: a ddpm_lib checkpoint of kind "classifier", with a digest of the weights
# --------------------------------------------------------------------------------------


def _weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_classifier(model: MNISTClassifier, path: str | os.PathLike, info: dict) -> Path:
    """Write ``model`` to ``path`` as a ddpm_lib checkpoint of kind ``"classifier"``, atomically.

    ``info`` must hold ``test_accuracy`` and ``seed`` (as :func:`train_classifier`
    returns it); they go into the metadata with the config, the training facts
    present in ``info`` and a SHA-256 of the weights, which :func:`load_classifier`
    checks.
    """
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "kind": CHECKPOINT_KIND,
        "config": model.config.to_dict(),
        "test_accuracy": float(info["test_accuracy"]),
        "seed": int(info["seed"]),
        "weights_sha256": _weights_digest(state),
        **{k: info[k] for k in _TRAINING_FACTS if k in info},
    }
    save_tensors(path, state, metadata)
    return path


def _corrupt(path: Path, why: str) -> ClassifierCheckpointError:
    return ClassifierCheckpointError(
        f"The classifier checkpoint {path} is corrupt or not an MNIST classifier checkpoint ({why}). "
        f"Delete it and retrain: `python -m ddpm_lib train-classifier --out {path}` "
        f"(or just delete it; load_classifier() retrains and caches it when the file is missing)."
    )


def _read_checkpoint(path: Path) -> MNISTClassifier:
    try:
        state, meta = read_tensors(path)
    except CheckpointError as e:
        raise _corrupt(path, str(e)) from e
    if meta.get("kind") != CHECKPOINT_KIND:
        raise _corrupt(path, f"metadata 'kind' is {meta.get('kind')!r}, expected {CHECKPOINT_KIND!r}")
    try:
        config = ClassifierConfig.from_dict(meta["config"])
        acc, seed = float(meta["test_accuracy"]), int(meta["seed"])
        model = MNISTClassifier(config)
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    if _weights_digest(state) != meta.get("weights_sha256"):
        raise _corrupt(path, "the weights do not match the SHA-256 stored in its metadata")
    model.eval().requires_grad_(False)
    model.metadata = {"test_accuracy": acc, "seed": seed, "config": config.to_dict(), "path": str(path),
                      **{k: meta[k] for k in _TRAINING_FACTS if k in meta}}
    return model


def shipped_classifier_path() -> Path:
    """``<repo>/checkpoints/mnist_classifier.safetensors``, next to the ``ddpm_lib`` package."""
    return Path(__file__).resolve().parent.parent / "checkpoints" / CHECKPOINT_NAME


def cache_classifier_path() -> Path:
    """Where a retrained classifier goes if the repository is not writable:
    ``$DDPM_CACHE_DIR`` or ``~/.cache/ddpm_lib``."""
    env = os.environ.get("DDPM_CACHE_DIR")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "ddpm_lib"
    return root / CHECKPOINT_NAME


def _default_path() -> Path:
    """The shipped file, else a cached copy; if neither exists, where a new one should go:
    the shipped location in a writable source checkout, else the cache."""
    shipped, cached = shipped_classifier_path(), cache_classifier_path()
    found = next((p for p in (shipped, cached) if p.exists()), None)
    if found is not None:
        return found
    existing = shipped.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    in_repo = (shipped.parent.parent / "pyproject.toml").exists()  # not a site-packages install
    return shipped if in_repo and os.access(existing, os.W_OK) else cached


_LOADED: dict[tuple, MNISTClassifier] = {}


def load_classifier(path: str | os.PathLike | None = None, *, train_if_missing: bool = True,
                    seed: int = 0) -> MNISTClassifier:
    """Load the MNIST classifier (in eval mode, CPU, frozen); memoised per file.

    With ``path=None`` this is the shipped ``checkpoints/mnist_classifier.safetensors``
    (see :func:`shipped_classifier_path`), else a previously cached copy in
    :func:`cache_classifier_path`. If neither exists (or the given ``path`` does
    not), the classifier is trained (about a minute) and saved there -- or, with
    ``path=None`` and a read-only repository, in the cache directory.

    Raises :class:`ClassifierCheckpointError` (a
    :class:`~ddpm_lib.checkpoint.CheckpointError`) for a corrupt file, with
    instructions to delete it and retrain.
    """
    target = (_default_path() if path is None else Path(path).expanduser()).resolve()
    if not target.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"no classifier checkpoint at {target}")
        print(f"MNIST classifier checkpoint {target} not found: training it now "
              f"(seed {seed}, about a minute on 2 CPU cores) and caching it there.", flush=True)
        model, info = train_classifier(seed=seed)
        save_classifier(model, target, info)
        print(f"Saved the classifier (test accuracy {info['test_accuracy']:.4f}) to {target}", flush=True)
    stat = target.stat()
    key = (str(target), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        _LOADED[key] = _read_checkpoint(target)
    return _LOADED[key]
