"""How the network's arithmetic runs on this machine, chosen by measurement.

Two choices decide how fast the UNet trains and samples, and the best pair
differs from machine to machine:

* **precision**: ``"fp32"``, or ``"bf16"`` autocast (convolutions and matrix
  products in bfloat16, the rest in float32). CPUs with native bf16
  instructions (AVX-512 BF16, AMX) run it up to 3x faster than fp32; CPUs
  without them (AVX2: most laptops and desktops) *emulate* it, about ten times
  slower than fp32. On a GPU this small network is limited by kernel launches,
  and bf16 has measured slower there too.
* **memory format**: contiguous (NCHW) or ``channels_last`` (NHWC). On AVX2
  CPUs fp32 channels_last is the fastest variant; elsewhere it may not be.

A :class:`Numerics` names one pair. The library's functions take one as an
argument and default to ``Numerics()``, fp32 and contiguous: the arithmetic the
equations describe, the same on every machine. The edges choose the fast pair:
every command (``--precision auto``, the default), every preset (``precision="auto"``)
and each chapter's setup cell call :func:`choose_numerics` once and pass its answer
on. It does not assume: it times the candidates on the actual model, at
the actual batch size, on the actual device (a probe of a few seconds), keeps
the fastest, and caches the answer per machine, torch version, device, model
config, purpose (training or sampling) and batch size in
``$DDPM_CACHE_DIR/numerics.json`` (default ``~/.cache/ddpm_lib``);
:func:`clear_cache` (``python -m ddpm_lib info --clear-numerics-cache``) forgets
it. Candidates that cannot win are not timed: bf16 on a CPU without native bf16
support (a feature check, :func:`ddpm_lib.machine.bf16_native`). ``python -m ddpm_lib info`` prints what was
chosen and the probe's figures.

Any machine can be made to behave like an AVX2-only CPU by capping oneDNN and
ATen: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``. The cap is part of
the cache key, so capped and uncapped runs never share a decision.

Explicit choices (``precision="fp32"``, ``channels_last=False``; on the command
line ``--precision fp32 --no-channels-last``) skip the probe.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._io import atomic_write_bytes
from .machine import bf16_native, cpu_name, isa_cap, machine_key, sync
from .optim import train_step

PRECISIONS = ("auto", "fp32", "bf16")
PURPOSES = ("train", "sample")
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Numerics:
    """A precision and a memory format for the network, and how they were chosen."""

    precision: str = "fp32"          # "fp32" or "bf16" (autocast)
    channels_last: bool = False
    source: str = field(default="explicit", compare=False)  # "explicit", "feature check", "probe", "cache"
    rates: dict = field(default_factory=dict, compare=False)   # variant name -> items/s, when probed

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16' here, got {self.precision!r}")

    @property
    def name(self) -> str:
        return variant_name(self.precision, self.channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to bf16 where chosen, a no-op context otherwise."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module):
        """Within the block ``model`` has this memory format; afterwards it is contiguous again."""
        if not self.channels_last:
            yield model
            return
        model.to(memory_format=torch.channels_last)
        try:
            yield model
        finally:
            model.to(memory_format=torch.contiguous_format)

    def describe(self) -> str:
        text = f"{self.name} ({self.source})"
        if self.rates:
            best = max(self.rates.values())
            text += "; probe: " + ", ".join(f"{k} {v:.0f}/s" + (" *" if k == self.name else "")
                                            for k, v in sorted(self.rates.items(), key=lambda kv: -kv[1]))
            text += f" (* chosen, {self.rates.get(self.name, best) / best:.0%} of the fastest)"
        return text


def variant_name(precision: str, channels_last: bool) -> str:
    return f"{precision} {'channels_last' if channels_last else 'contiguous'}"


# --------------------------------------------------------------------------- the probe

def _model_signature(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        return config.to_dict()
    return {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "repr": hashlib.sha256(repr(model).encode()).hexdigest()[:12]}


def _input_shape(model: nn.Module, image_shape: tuple | None) -> tuple:
    if image_shape is not None:
        return tuple(image_shape)
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError("pass image_shape=(C, H, W): the model has no config to read it from")
    return (cfg.image_channels, cfg.image_size, cfg.image_size)


def _num_timesteps(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "num_timesteps", 1000)


def _step_fn(model: nn.Module, numerics: Numerics, device: torch.device, purpose: str, batch_size: int,
             image_shape: tuple):
    """One unit of work as training or sampling does it: :func:`ddpm_lib.optim.train_step` (forward, an MSE,
    backward, Adam) or a forward pass."""
    model = copy.deepcopy(model).to(device=device, memory_format=numerics.memory_format)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *image_shape), generator=gen).to(device).contiguous(memory_format=numerics.memory_format)
    inputs = (x,)
    if len(inspect.signature(model.forward).parameters) > 1:      # a noise predictor: eps_theta(x_t, t)
        inputs = (x, torch.randint(0, _num_timesteps(model), (batch_size,), generator=gen).to(device))
    if purpose == "sample":
        model.eval()

        def step():
            with torch.no_grad(), numerics.autocast(device):
                model(*inputs)
        return step
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    with torch.no_grad():
        target = torch.randn_like(model(*inputs).float())      # same shape and memory format as the output

    def regression(net, x0, t, noise, y):   # L_simple's regression, for a noise predictor or any other network
        return F.mse_loss(net(*inputs).float(), target)

    return lambda: train_step(model, regression, optimizer, x, inputs[-1], target, numerics=numerics)


def probe(model: nn.Module, candidates: list[Numerics], *, device: torch.device | str = "cpu",
          purpose: str = "sample", batch_size: int = 64, image_shape: tuple | None = None,
          seconds: float = 0.4, rounds: int = 3, clock=time.perf_counter) -> dict[str, float]:
    """Items per second of each candidate on a copy of ``model``, measured in interleaved rounds.

    Each candidate is warmed up once; then every round times one call of each
    candidate in turn, for at least ``rounds`` rounds and about ``seconds`` per
    candidate. A candidate's rate is ``batch_size`` over its fastest call:
    interleaving exposes all candidates to the same background load, and the
    minimum is the estimate that such load disturbs least. A candidate at less
    than half the best rate after two rounds (a fifth after one) is dropped from
    later rounds (it cannot win); one that fails (an op without bf16 support on this device, or a
    model that refuses the probe's stand-in inputs) is left out of the answer.

    ``clock`` (seconds, like :func:`time.perf_counter`, the default) is what the
    calls are timed with; the tests pass a fake one, so that they check the
    probe's decisions without depending on how fast or busy the machine is.
    """
    device = torch.device(device)
    shape = _input_shape(model, image_shape)
    # the probe must not move the caller's random streams (dropout draws from them): a run that
    # probes and a run that reads the cache must be the same computation
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        steps, best_call = {}, {}
        for cand in candidates:
            try:
                step = _step_fn(model, cand, device, purpose, batch_size, shape)
                best_call[cand.name] = _timed(step, device, clock)   # warm-up: kernel selection, allocations
                steps[cand.name] = step
            except Exception:  # noqa: BLE001 - an op this variant lacks here, or inputs this model refuses
                continue
        spent, done = 0.0, 0
        while steps and (done < rounds or spent < seconds * len(steps)):
            for name, step in list(steps.items()):
                call = _timed(step, device, clock)
                spent += call
                best_call[name] = min(best_call[name], call)
            done += 1
            fastest = min(best_call[n] for n in steps)
            # hopeless: stop spending time on it (after one round only when far behind: one call can meet a
            # burst of load)
            limit = (2 if done >= 2 else 5) * fastest
            for name in [n for n in steps if best_call[n] > limit]:
                del steps[name]
    return {name: batch_size / call for name, call in best_call.items()}


def _timed(step, device: torch.device, clock=time.perf_counter) -> float:
    """Seconds ``clock`` says one call of ``step`` took, the device's queued work included."""
    t0 = clock()
    step()
    sync(device)
    return clock() - t0


# --------------------------------------------------------------------------- the cache

def default_cache_dir() -> Path:
    """``$DDPM_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ddpm_lib`` (``~/.cache/ddpm_lib``)."""
    env = os.environ.get("DDPM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "ddpm_lib"


def cache_path() -> Path:
    return default_cache_dir() / "numerics.json"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not (isinstance(data, dict) and data.get("version") == _CACHE_VERSION and isinstance(data.get("entries"), dict)):
        return {}
    # a file edited by hand, or written by another program, is treated as no cache at all, never as an error
    good = {k: v for k, v in data["entries"].items() if isinstance(v, dict) and v.get("precision") in ("fp32", "bf16")
            and isinstance(v.get("channels_last"), bool) and isinstance(v.get("rates", {}), dict)}
    return {"version": _CACHE_VERSION, "entries": good}


def _write_cache(entries: dict) -> None:
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_path(), json.dumps({"version": _CACHE_VERSION, "entries": entries},
                                                    indent=1, sort_keys=True).encode())
    except OSError:
        pass    # a read-only home only costs a probe next time


def cached_decisions() -> list[dict]:
    """Every decision in the cache: its key and what was chosen, with the probe's figures."""
    return [dict(value, key=json.loads(k)) for k, value in _read_cache().get("entries", {}).items()]


def clear_cache() -> int:
    """Forget every cached decision; returns how many there were."""
    n = len(_read_cache().get("entries", {}))
    cache_path().unlink(missing_ok=True)
    return n


# --------------------------------------------------------------------------- the decision

def candidates_for(device: torch.device | str, precision: str = "auto",
                   channels_last: bool | None = None) -> tuple[list[Numerics], str]:
    """The variants worth timing on ``device`` under the given constraints, and why others were dropped."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    precisions = ["fp32", "bf16"] if precision == "auto" else [precision]
    note = ""
    if precision == "auto" and not bf16_native(device):
        precisions = ["fp32"]
        note = "no native bf16 on this device (emulated bf16 is ~10x slower)"
    layouts = [False, True] if channels_last is None else [bool(channels_last)]
    return [Numerics(p, cl) for p in precisions for cl in layouts], note


def choose_numerics(
    model: nn.Module,
    *,
    device: torch.device | str = "cpu",
    purpose: str = "sample",
    batch_size: int = 64,
    precision: str = "auto",
    channels_last: bool | None = None,
    image_shape: tuple | None = None,
    use_cache: bool = True,
) -> Numerics:
    """The fastest numerics for ``model`` on ``device`` at ``batch_size``, for ``purpose`` ("train" or "sample").

    ``precision`` ("auto", "fp32", "bf16") and ``channels_last`` (None for auto,
    or a bool) constrain the choice; with both fixed nothing is measured.
    Otherwise the remaining candidates are probed (see :func:`probe`) and the
    answer is cached (see the module docstring).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    candidates, note = candidates_for(device, precision, channels_last)
    if len(candidates) == 1:
        only = candidates[0]
        return Numerics(only.precision, only.channels_last, "feature check" if note else "explicit")
    key = json.dumps({"machine": machine_key(device), "model": _model_signature(model), "purpose": purpose,
                      "batch_size": batch_size, "candidates": [c.name for c in candidates]}, sort_keys=True)
    entries = _read_cache().get("entries", {}) if use_cache else {}
    if key in entries:
        hit = entries[key]
        return Numerics(hit["precision"], hit["channels_last"], "cache", hit.get("rates", {}))
    rates = probe(model, candidates, device=device, purpose=purpose, batch_size=batch_size, image_shape=image_shape)
    if not rates:
        # the probe's stand-in inputs did not run (a model of one's own with other inputs, say): fall back to
        # the arithmetic every device has, and leave any real error to the caller's own call of the model
        return Numerics("fp32", bool(channels_last), "fallback: the probe could not run this model")
    best = max(candidates, key=lambda c: rates.get(c.name, 0.0))
    chosen = Numerics(best.precision, best.channels_last, "probe", {k: round(v, 1) for k, v in rates.items()})
    if use_cache:
        entries = _read_cache().get("entries", {})     # re-read: another process may have added some
        entries[key] = {"precision": chosen.precision, "channels_last": chosen.channels_last, "rates": chosen.rates,
                        "note": note, "probed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_cache(entries)
    return chosen


def summary(device: torch.device | str = "cpu") -> dict:
    """What this machine is and offers, for ``python -m ddpm_lib info``."""
    device = torch.device(device)
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cpu":
        out.update(cpu=cpu_name(), capability=torch.backends.cpu.get_cpu_capability(), isa_cap=isa_cap())
    elif device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    out["bf16_native"] = bf16_native(device)
    out["cache"] = str(cache_path())
    return out
