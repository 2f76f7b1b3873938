"""The machine: which device to run on, what the CPU is, and whether it has fast bf16.

:func:`resolve_device` turns ``auto``/``cpu``/``cuda``/``mps`` into a torch device (or a clear
error); :func:`bf16_native` is oneDNN's own answer to whether bf16 runs natively (it honours
``ONEDNN_MAX_CPU_ISA``, so an AVX2 cap makes any x86 machine answer as a laptop would);
:func:`machine_key` is what identifies this machine for the cache of :mod:`ddpm_lib.numerics`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): the best device present, CUDA, then Apple's MPS, then the CPU.

    Any other name is checked: asking for a device this machine lacks raises a
    ``ValueError`` that says what to do.
    """
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"{name!r} is not a device name ({e}); use one of {', '.join(DEVICES)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA GPU that torch can use; use auto or cpu")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r}: this machine has no Apple GPU (MPS) that torch can use; use auto or cpu")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def sync(device: torch.device) -> None:
    """GPU work is asynchronous: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def isa_cap() -> dict:
    """The instruction-set caps in force for oneDNN and ATen (empty where none is set)."""
    return {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA")
            if os.environ.get(k)}


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` can run bf16 fast enough to be worth timing.

    On a CPU this is oneDNN's own answer, which honours ``ONEDNN_MAX_CPU_ISA``:
    False on AVX2-only CPUs (and under the AVX2 cap), where bf16 would be
    emulated, about ten times slower than fp32. True does not mean bf16 wins;
    the probe decides that.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return True        # the probe decides whether it pays
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _cpuinfo(prefixes: tuple[str, ...]) -> str | None:
    """The value of the first /proc/cpuinfo line that starts with one of ``prefixes`` (read once per process)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(prefixes):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo(("flags", "Features")) or "").split())


def cpu_name() -> str:
    return _cpuinfo(("model name",)) or platform.processor() or platform.machine()


def cpu_detail() -> str:
    """The CPU as a measurement should record it: a virtual machine's model name is often only the brand ("AMD
    EPYC"), so also its family and model numbers and the instruction set torch uses, e.g.
    ``AMD EPYC (family 26, model 2), torch capability AVX512``."""
    family, model = _cpuinfo(("cpu family",)), _cpuinfo(("model\t", "model :"))
    numbers = f" (family {family}, model {model})" if family and model else ""
    return f"{cpu_name()}{numbers}, torch capability {torch.backends.cpu.get_cpu_capability()}"


def machine_key(device: torch.device) -> dict:
    """What identifies this machine for the cache: a decision is valid only where all of it matches."""
    key = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        key["gpu"] = torch.cuda.get_device_name(device)
    else:
        key.update(cpu=cpu_name(), machine=platform.machine(), threads=torch.get_num_threads(),
                   capability=torch.backends.cpu.get_cpu_capability(), cap=isa_cap(),
                   flags=hashlib.sha256(" ".join(sorted(_cpu_flags())).encode()).hexdigest()[:12])
    return key
