"""Training throughput of the book's UNet, variants measured side by side in one run.

    python bench/train_throughput.py [--preset shipped] [--batch-size B] [--seconds 15] [--compile] [--device cuda]
                                     [--profile]

Prints images/s for one training step (Algorithm 1 as ``ddpm_lib.optim.train_step``
takes it: forward, L_simple, backward, clipping, Adam) with fp32 eager as the baseline, bf16 autocast, channels_last, both, and
optionally torch.compile; the ratio to the baseline; and the FLOPs per image
with the achieved GFLOP/s, so the utilisation of the machine can be judged.
Only ratios from the same run are comparable: other load on the machine moves
every row. The last line names the variant that ``auto`` (``ddpm_lib.numerics``,
the default of training) runs on this machine, and how close it is to the
fastest row. Run it under ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` to
see an AVX2-only CPU on any x86 machine.

``--profile`` (CPU only) also splits a step of fp32 and of bf16 eager into the
time spent in convolutions (forward and backward) and everything else, with
``torch.profiler``, and prints the ceiling that follows: the speed-up over fp32
that bf16 would reach if everything but its convolutions cost nothing.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import machine, make_model, parser, print_auto_pick, print_table, rates
from ddpm_lib.losses import DiffusionLoss
from ddpm_lib.numerics import Numerics, choose_numerics, variant_name
from ddpm_lib.optim import train_step
from ddpm_lib.presets import PRESETS
from ddpm_lib.schedule import make_schedule


def train_step_fn(model, schedule, batch_size, bf16, channels_last, device="cpu"):
    """One step of Algorithm 1 exactly as ddpm_lib.training runs it (ddpm_lib.optim.train_step: L_simple under
    the variant's numerics, backward, gradient clipping, Adam), on fixed inputs, as a closure."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    numerics = Numerics("bf16" if bf16 else "fp32", channels_last)
    g = torch.Generator().manual_seed(0)
    fmt = numerics.memory_format
    x0 = (torch.rand(batch_size, 1, 28, 28, generator=g) * 2 - 1).to(device, memory_format=fmt)
    t = torch.randint(0, schedule.T, (batch_size,), generator=g).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device, memory_format=fmt)
    loss = DiffusionLoss(schedule)
    return lambda: train_step(model, loss, optimizer, x0, t, noise, numerics=numerics, grad_clip=1.0)


def conv_split(step, steps: int = 5) -> tuple[float, float]:
    """Seconds per call of ``step()`` spent in convolution ops (forward and backward) and in total,
    summed from torch.profiler's self CPU times over ``steps`` calls after two warm-up calls."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key or "conv2d" in e.key)
    return conv / steps / 1e6, total / steps / 1e6


def print_conv_split(preset: str, schedule, batch_size: int) -> None:
    rows = {}
    for name, bf16 in (("fp32 eager", False), ("bf16 autocast", True)):
        rows[name] = conv_split(train_step_fn(make_model(preset), schedule, batch_size, bf16, False))
    print("\nwhere a training step's time goes (torch.profiler, self CPU time, mean of 5 steps)")
    print(f"{'variant':22s} {'convolutions':>18s} {'everything else':>16s} {'step':>9s}")
    for name, (conv, total) in rows.items():
        print(f"{name:22s} {conv * 1e3:9.1f} ms ({conv / total:4.0%}) {(total - conv) * 1e3:13.1f} ms "
              f"{total * 1e3:6.1f} ms")
    fp32_total, (bf16_conv, bf16_total) = rows["fp32 eager"][1], rows["bf16 autocast"]
    print(f"bf16 / fp32 speed-up of the convolutions alone: {rows['fp32 eager'][0] / bf16_conv:.2f}x; "
          f"of the whole step: {fp32_total / bf16_total:.2f}x")
    print(f"ceiling: even if everything but its convolutions cost nothing, bf16 would train "
          f"{fp32_total / bf16_conv:.2f}x as fast as fp32")


def flops_per_image(preset: str, batch_size: int) -> float:
    model = make_model(preset)
    schedule = make_schedule(PRESETS[preset].schedule, PRESETS[preset].T)
    step = train_step_fn(model, schedule, batch_size, bf16=False, channels_last=False)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch_size


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--profile", action="store_true",
                   help="also split a step's CPU time into convolutions and the rest (fp32 and bf16)")
    args = p.parse_args()
    if args.profile and torch.device(args.device).type != "cpu":
        p.error("--profile splits CPU time; run it without --device")
    recipe = PRESETS[args.preset]
    args.batch_size = args.batch_size or recipe.train.batch_size
    schedule = make_schedule(recipe.schedule, recipe.T)
    variants = [("fp32 eager (baseline)", False, False, False), ("bf16 autocast", True, False, False),
                ("fp32 channels_last", False, True, False), ("bf16 autocast + channels_last", True, True, False)]
    if args.compile:
        variants += [("fp32 torch.compile", False, False, True), ("bf16 autocast + torch.compile", True, False, True)]
    flops = flops_per_image(args.preset, args.batch_size)
    steps = {}
    for name, bf16, cl, compiled in variants:
        model = make_model(args.preset, channels_last=cl, device=args.device)
        if compiled:
            model = torch.compile(model)
        steps[name] = train_step_fn(model, schedule, args.batch_size, bf16, cl, args.device)
    measured = rates(steps, args.batch_size, args.seconds)
    rows = [(name, measured[name]) for name, *_ in variants if name in measured]
    n_params = sum(p.numel() for p in make_model(args.preset).parameters())
    print(f"\nmachine: {machine(args.device)}\nmodel: preset {args.preset!r}, {n_params:,} parameters, batch {args.batch_size}")
    print(f"training FLOPs per image (forward + backward, counted by torch): {flops / 1e9:.3f} GFLOP")
    print_table("training throughput", "images/s", rows, ("GFLOP/s", lambda v: v * flops / 1e9))
    auto = choose_numerics(make_model(args.preset, device=args.device), device=args.device, purpose="train",
                           batch_size=args.batch_size)
    print_auto_pick(rows, {name: variant_name("bf16" if bf16 else "fp32", cl)
                           for name, bf16, cl, compiled in variants if not compiled}, auto)
    if args.profile:
        print_conv_split(args.preset, schedule, args.batch_size)


if __name__ == "__main__":
    main()
