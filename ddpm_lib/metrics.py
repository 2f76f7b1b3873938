"""Sample-quality metrics for MNIST: an MNIST-specific analogue of FID.

The Fréchet Inception Distance (FID; Heusel et al. 2017, "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS) fits a
Gaussian to the features of real images and another to the features of
generated images, and reports the Fréchet (2-Wasserstein) distance between the
two Gaussians:

    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

FID takes its features from the pool3 layer of an ImageNet Inception-v3. Here
the features come instead from the 128-d penultimate layer of a *small MNIST
classifier trained by this module* (:class:`MNISTClassifier`). The formula is
the same, but the feature space is not, so **the numbers are not comparable to
published FIDs** (not even to published "MNIST FIDs", which use Inception or
other networks). They are only comparable with each other: same classifier,
same reference set, same sample size.

The reference set is the whole MNIST **test** split (10,000 images). The
Fréchet distance estimated from N samples is biased upwards, more so for small
N, so a number on its own says little. :func:`evaluate_samples` therefore always
reports the *real-data floor* next to it: the same distance for N real
**training** digits (a fixed, seeded random subset) against the test set. A
perfect generator would score about the floor; ``fd_ratio = fd / fd_floor``
says how far above it a model is.

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

The classifier is trained deterministically (seeded initialisation, a seeded
data order and deterministic algorithms; bit-identical reruns on the same
machine, torch version and thread count) in under a minute on two CPU cores
(3 epochs; the shipped one in bf16 autocast, 99.23% test accuracy with seed 0), and
shipped as ``checkpoints/mnist_classifier.safetensors`` so evaluation is
reproducible without retraining. Retrain it with::

    python -m ddpm_lib.metrics train-classifier [--out PATH] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ._config import JSONConfig
from .data import MNIST, load_mnist, to_model_range
from .numerics import choose_numerics

#: The value of the ``format`` metadata key of a classifier checkpoint.
CHECKPOINT_FORMAT = "ddpm_lib.mnist_classifier/1"
CHECKPOINT_NAME = "mnist_classifier.safetensors"
NUM_CLASSES = 10


@functools.lru_cache(maxsize=2)
def _mnist(split: str) -> MNIST:
    """``load_mnist(split)``, memoised: it reads and checksums the files on every call."""
    return load_mnist(split)


class ClassifierCheckpointError(RuntimeError):
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

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        d = dict(d)
        if "autocast_bf16" in d:       # written before precision was chosen by measurement
            d.setdefault("precision", "bf16" if d.pop("autocast_bf16") else "fp32")
        return super().from_dict(d)

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
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x)


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
    x, y = train.as_model_input(), train.labels
    x_test, y_test = test.as_model_input(), test.labels
    n = len(x)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs

    # fork_rng: seeding here must not change the caller's global random stream
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = MNISTClassifier(config)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

        def lr_at(step: int) -> float:
            if step < config.warmup_steps:
                return (step + 1) / config.warmup_steps
            progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        numerics = choose_numerics(model, purpose="train", batch_size=config.batch_size, precision=config.precision,
                                   channels_last=False, image_shape=(1, 28, 28))
        if verbose:
            print(f"classifier numerics: {numerics.describe()}", flush=True)
        start, start_cpu = time.perf_counter(), time.process_time()
        model.train()
        step = 0
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
                step += 1
            if verbose:
                print(
                    f"classifier epoch {epoch + 1}/{config.epochs}: mean train loss "
                    f"{running / steps_per_epoch:.4f} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
        train_seconds = time.perf_counter() - start
        train_cpu_seconds = time.process_time() - start_cpu
        model.eval()
        acc = _accuracy(model, x_test, y_test)
    for p in model.parameters():
        p.requires_grad_(False)
    info = {
        "test_accuracy": acc,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),  # summed over threads
        "seed": seed,
        "config": config.to_dict(),
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
    }
    model.metadata = {k: v for k, v in info.items()}
    if verbose:
        print(f"classifier test accuracy {acc:.4f} after {train_seconds:.0f} s of training", flush=True)
    return model, info


# --------------------------------------------------------------------------------------
# Checkpoint: safetensors with config, accuracy and seed in the metadata
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
    """Write ``model`` to ``path`` as safetensors, atomically (temporary file + ``os.replace``).

    ``info`` must hold ``test_accuracy`` and ``seed`` (as :func:`train_classifier`
    returns it); it goes into the safetensors metadata with the config and a
    SHA-256 of the weights, which :func:`load_classifier` checks.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "test_accuracy": repr(float(info["test_accuracy"])),
        "seed": str(int(info["seed"])),
        "weights_sha256": _weights_digest(state),
    }
    for key in ("train_seconds", "train_cpu_seconds", "torch_version", "num_threads"):
        if key in info:
            metadata[key] = str(info[key])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _corrupt(path: Path, why: str) -> ClassifierCheckpointError:
    return ClassifierCheckpointError(
        f"The classifier checkpoint {path} is corrupt or not an MNIST classifier checkpoint ({why}). "
        f"Delete it and retrain: `python -m ddpm_lib.metrics train-classifier --out {path}` "
        f"(or just delete it; load_classifier() retrains and caches it when the file is missing)."
    )


def _read_checkpoint(path: Path) -> MNISTClassifier:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ... : a truncated or garbled file
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise _corrupt(path, f"metadata 'format' is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        config = ClassifierConfig.from_dict(json.loads(meta["config"]))
        acc, seed = float(meta["test_accuracy"]), int(meta["seed"])
        model = MNISTClassifier(config)
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    if _weights_digest(state) != meta.get("weights_sha256"):
        raise _corrupt(path, "the weights do not match the SHA-256 stored in its metadata")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.metadata = {
        "test_accuracy": acc,
        "seed": seed,
        "config": config.to_dict(),
        "path": str(path),
        **{k: meta[k] for k in ("train_seconds", "train_cpu_seconds", "torch_version", "num_threads") if k in meta},
    }
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


def _writable(directory: Path) -> bool:
    d = directory
    while not d.exists() and d != d.parent:
        d = d.parent
    return os.access(d, os.W_OK)


_LOADED: dict[tuple, MNISTClassifier] = {}


def load_classifier(path: str | os.PathLike | None = None, *, train_if_missing: bool = True,
                    seed: int = 0) -> MNISTClassifier:
    """Load the MNIST classifier (in eval mode, CPU, frozen); memoised per file.

    With ``path=None`` this is the shipped ``checkpoints/mnist_classifier.safetensors``
    (see :func:`shipped_classifier_path`), else a previously cached copy in
    :func:`cache_classifier_path`. If neither exists (or the given ``path`` does
    not), the classifier is trained (about a minute) and saved there -- or, with
    ``path=None`` and a read-only repository, in the cache directory.

    Raises :class:`ClassifierCheckpointError` for a corrupt file, with
    instructions to delete it and retrain.
    """
    if path is None:
        candidates = [shipped_classifier_path(), cache_classifier_path()]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            in_repo = (candidates[0].parent.parent / "pyproject.toml").exists()  # not a site-packages install
            target = candidates[0] if in_repo and _writable(candidates[0].parent) else candidates[1]
        else:
            target = found
    else:
        target = Path(path).expanduser()
    target = target.resolve()
    if not target.exists():
        if not train_if_missing:
            raise FileNotFoundError(f"no classifier checkpoint at {target}")
        print(
            f"MNIST classifier checkpoint {target} not found: training it now "
            f"(seed {seed}, about a minute on 2 CPU cores) and caching it there.",
            flush=True,
        )
        model, info = train_classifier(seed=seed)
        save_classifier(model, target, info)
        print(f"Saved the classifier (test accuracy {info['test_accuracy']:.4f}) to {target}", flush=True)
    stat = target.stat()
    key = (str(target), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        _LOADED[key] = _read_checkpoint(target)
    return _LOADED[key]


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


@torch.no_grad()
def classifier_test_accuracy(classifier: MNISTClassifier | None = None) -> float:
    """Recompute the classifier's accuracy on all 10,000 MNIST test images."""
    classifier = classifier if classifier is not None else load_classifier()
    test = _mnist("test")
    probs = class_probabilities(test.images, classifier)
    return float((probs.argmax(1) == test.labels).double().mean())


# --------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------


def _as_float64_2d(feats) -> torch.Tensor:
    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(feats)
    f = torch.as_tensor(feats).detach().cpu().to(torch.float64)
    if f.dim() != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(f.shape)}")
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors to fit a Gaussian, got {len(f)}")
    return f


def gaussian_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), in float64, of features (N, D)."""
    f = _as_float64_2d(feats)
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (len(f) - 1)
    return mu, sigma


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative round-off clipped)."""
    m = 0.5 * (m + m.T)
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp(min=0).sqrt()) @ v.T


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

# classifier -> (mu, sigma) of the test-set features; classifier -> {(n, seed): fd_floor}
_TEST_STATS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_FLOORS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def test_set_stats(classifier: MNISTClassifier | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the classifier features of all 10,000 MNIST test images
    (cached in memory per classifier)."""
    classifier = classifier if classifier is not None else load_classifier()
    if classifier not in _TEST_STATS:
        _TEST_STATS[classifier] = gaussian_stats(features(_mnist("test").images, classifier))
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
    hist = _histogram(probs)
    return {
        "n": n,
        "n_floor": n_floor,
        "fd": fd,
        "fd_floor": floor,
        "fd_ratio": fd / floor if floor > 0 else None,
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


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lib.metrics", description="MNIST classifier for the FD (FID-analogue) metrics."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train-classifier", help="(re)train the classifier and save it as safetensors")
    tr.add_argument("--out", type=Path, default=None,
                    help=f"output file (default: {shipped_classifier_path()})")
    tr.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train-classifier":
        out = args.out if args.out is not None else shipped_classifier_path()
        model, info = train_classifier(seed=args.seed)
        save_classifier(model, out, info)
        print(f"test accuracy: {info['test_accuracy']:.4f}")
        if "train_seconds" in info:
            print(f"training time: {info['train_seconds']:.1f} s wall clock, "
                  f"{info.get('train_cpu_seconds', float('nan')):.1f} s CPU, {info.get('num_threads', '?')} threads")
        print(f"saved to {Path(out).resolve()}")
        if info["test_accuracy"] < 0.99:
            print("warning: test accuracy is below 0.99", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
