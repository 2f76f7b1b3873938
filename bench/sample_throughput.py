"""Sampling throughput of the book's UNet: network evaluations per second, side by side.

    python bench/sample_throughput.py [--preset shipped] [--batch-size 500] [--seconds 15]
                                      [--agreement 32]

One DDPM reverse step (Algorithm 2) is one network evaluation per image, so
images/s for a full 1000-step sample is this rate divided by T. Variants: fp32
(baseline), bf16 autocast, channels_last, both. Measured in one run; only the
ratios are meant to be compared. The last line names the variant that ``auto``
(the samplers' default, ``ddpm_lib.numerics``) runs on this machine at this
batch size, and how close it is to the fastest row.

bf16 is only worth its speed if it draws the same images. ``--agreement N``
also samples N images from the shipped checkpoint with 1000-step Algorithm 2,
once in fp32 and once with bf16 autocast, from the same seed (so the same x_T
and the same noise z), and prints how far apart the two sets of images are.
"""

from __future__ import annotations

import time

import torch

from _common import machine, make_model, parser, print_auto_pick, print_table, rates
from ddpm_lib import metrics
from ddpm_lib.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
from ddpm_lib.data import from_model_range
from ddpm_lib.presets import PRESETS
from ddpm_lib.numerics import Numerics, choose_numerics, variant_name
from ddpm_lib.sampling import ddpm_sample, p_sample
from ddpm_lib.schedule import make_schedule


def agreement(n: int, device: str) -> None:
    """Sample n images in fp32 and in bf16 from one seed; print how much they differ."""
    ckpt = load_checkpoint(SHIPPED_CHECKPOINT, device=device)
    images, seconds = {}, {}
    for bf16 in (False, True):
        t0 = time.perf_counter()
        x = ddpm_sample(ckpt.model, ckpt.schedule, n, seed=0, batch_size=n, device=device,
                        numerics=Numerics("bf16" if bf16 else "fp32"))
        seconds[bf16] = time.perf_counter() - t0
        images[bf16] = from_model_range(x)  # 8-bit, as evaluate scores them
    diff = (images[True].float() - images[False].float()).abs() / 255.0
    digits = {bf16: metrics.class_probabilities(images[bf16]).argmax(1) for bf16 in images}
    same = (digits[True] == digits[False]).float().mean()
    print(f"\nbf16 vs fp32 sampling: {n} images of the shipped checkpoint, seed 0, 1000 steps\n"
          f"  time: fp32 {seconds[False]:.0f} s, bf16 {seconds[True]:.0f} s ({seconds[False] / seconds[True]:.2f}x)\n"
          f"  mean |pixel difference| (pixels in [0, 1]): {diff.mean():.4f}; largest: {diff.max():.3f}\n"
          f"  pixels that differ by more than 0.1: {(diff > 0.1).float().mean():.2%}\n"
          f"  same predicted digit: {same:.1%}")


def reverse_step_fn(preset, schedule, batch_size, bf16, channels_last, device="cpu"):
    """One reverse step of Algorithm 2 for a batch, in the given precision and memory format."""
    model = make_model(preset, channels_last=channels_last, device=device).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 1, 28, 28).to(device, memory_format=fmt)
    t = torch.full((batch_size,), schedule.T // 2, device=device)

    def step():
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            p_sample(model, schedule, x, t)

    return step


def main():
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(batch_size=500)
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also compare N samples of the shipped checkpoint drawn in fp32 and in bf16")
    args = p.parse_args()
    recipe = PRESETS[args.preset]
    schedule = make_schedule(recipe.schedule, recipe.T)
    variants = [("fp32 (baseline)", False, False), ("bf16 autocast", True, False),
                ("fp32 channels_last", False, True), ("bf16 autocast + channels_last", True, True)]
    steps = {name: reverse_step_fn(args.preset, schedule, args.batch_size, bf16, cl, args.device)
             for name, bf16, cl in variants}
    measured = rates(steps, args.batch_size, args.seconds)
    rows = [(name, measured[name]) for name, *_ in variants if name in measured]
    print(f"\nmachine: {machine(args.device)}\nmodel: preset {args.preset!r}, batch {args.batch_size}, T = {schedule.T}")
    print_table("sampling throughput (one reverse step per image)", "evals/s", rows,
                ("images/s", lambda v: v / schedule.T))
    auto = choose_numerics(make_model(args.preset, device=args.device), device=args.device, purpose="sample",
                           batch_size=args.batch_size)
    print_auto_pick(rows, {name: variant_name("bf16" if bf16 else "fp32", cl) for name, bf16, cl in variants}, auto)
    if args.agreement:
        agreement(args.agreement, args.device)


if __name__ == "__main__":
    main()
