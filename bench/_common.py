"""Shared pieces of the benchmarks: the model under test and a small timing loop."""

from __future__ import annotations

import argparse
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
    from ddpm_lib import machine as m

    cap = m.isa_cap()
    return (f"{m.cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, ATen "
            f"{torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 {'native' if m.bf16_native() else 'emulated'}"
            + (f", capped by {' '.join(f'{k}={v}' for k, v in cap.items())}" if cap else ""))


def make_model(preset: str, channels_last: bool = False, device: str = "cpu"):
    torch.manual_seed(0)
    model = build_model(PRESETS[preset].model).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock


def rates(steps: dict, items_per_call: int, seconds: float, warmup: int = 1) -> dict[str, float]:
    """Items per second of each ``steps[name]()``, measured in interleaved rounds.

    After ``warmup`` untimed calls of each, every round calls each variant once in
    turn, so that drifting background load (a virtual machine's neighbours) touches
    all of them alike; a variant leaves the rounds once it has had ``seconds`` of
    calls and at least 3 of them. A variant that fails (torch.compile without a C++
    toolchain, say) is reported and left out.
    """
    live = {}
    for name, step in steps.items():
        try:
            for _ in range(warmup):
                step()
            _sync()
            live[name] = step
        except Exception as e:  # report instead of crashing
            print(f"{name}: failed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    spent, calls = dict.fromkeys(live, 0.0), dict.fromkeys(live, 0)
    while live:
        for name, step in list(live.items()):
            t0 = time.perf_counter()
            step()
            _sync()
            spent[name] += time.perf_counter() - t0
            calls[name] += 1
            if spent[name] >= seconds and calls[name] >= 3:
                del live[name]
                print(f"  measured {name}", flush=True)
    return {name: calls[name] * items_per_call / spent[name] for name in spent}


def print_auto_pick(rows: list[tuple[str, float]], variants: dict[str, str], numerics) -> float:
    """Say which variant ``auto`` (ddpm_lib.numerics) runs on this machine and how it compares with the
    fastest row measured in this run; returns that fraction. ``variants`` maps row names to numerics names."""
    rates = dict(rows)
    picked = next((row for row, name in variants.items() if name == numerics.name), None)
    fastest = max(rows, key=lambda r: r[1])
    if picked is None or picked not in rates:
        print(f"\nauto picks {numerics.describe()}: not among the rows measured here")
        return float("nan")
    share = rates[picked] / fastest[1]
    print(f"\nauto picks: {picked} ({numerics.source}); {share:.0%} of the fastest variant measured in this run "
          f"({fastest[0]}, {fastest[1]:.1f}/s){'' if share >= 0.9 else '  <-- more than 10% slower'}")
    return share


def print_table(title: str, unit: str, rows: list[tuple[str, float]], extra=None) -> None:
    base = rows[0][1]
    print(f"\n{title}\n{'variant':34s} {unit:>12s} {'vs baseline':>12s}" + (f" {extra[0]:>12s}" if extra else ""))
    for i, (name, value) in enumerate(rows):
        line = f"{name:34s} {value:12.1f} {value / base:11.2f}x"
        if extra:
            line += f" {extra[1](value):12.1f}"
        print(line)
