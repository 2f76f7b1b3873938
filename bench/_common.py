"""Shared pieces of the benchmarks: the model under test and a small timing loop."""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ddpm_lib.models import build_model
from ddpm_lib.presets import PRESETS


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", default="shipped", choices=sorted(PRESETS), help="model to benchmark")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's training batch size")
    p.add_argument("--seconds", type=float, default=15.0, help="time to measure each variant")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to warm up on a CPU)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    return p


def machine(device: str = "cpu") -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def make_model(preset: str, channels_last: bool = False, device: str = "cpu"):
    torch.manual_seed(0)
    model = build_model(PRESETS[preset].model).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock


def rate(step, items_per_call: int, seconds: float, warmup: int = 2) -> float:
    """Items per second of ``step()``, after ``warmup`` untimed calls, timed for about ``seconds``."""
    for _ in range(warmup):
        step()
    _sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        _sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and calls >= 3:
            return calls * items_per_call / elapsed


def print_table(title: str, unit: str, rows: list[tuple[str, float]], extra=None) -> None:
    base = rows[0][1]
    print(f"\n{title}\n{'variant':34s} {unit:>12s} {'vs baseline':>12s}" + (f" {extra[0]:>12s}" if extra else ""))
    for i, (name, value) in enumerate(rows):
        line = f"{name:34s} {value:12.1f} {value / base:11.2f}x"
        if extra:
            line += f" {extra[1](value):12.1f}"
        print(line)
