"""Sampling throughput of the book's UNet: network evaluations per second, side by side.

    python bench/sample_throughput.py [--preset shipped] [--batch-size 500] [--seconds 15]

One DDPM reverse step (Algorithm 2) is one network evaluation per image, so
images/s for a full 1000-step sample is this rate divided by T. Variants: fp32
(baseline), bf16 autocast, channels_last, both. Measured in one run; only the
ratios are meant to be compared.
"""

from __future__ import annotations

import torch

from _common import machine, make_model, parser, print_table, rate
from ddpm_lib.presets import PRESETS
from ddpm_lib.sampling import p_sample
from ddpm_lib.schedule import make_schedule


def main():
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(batch_size=500)
    args = p.parse_args()
    recipe = PRESETS[args.preset]
    schedule = make_schedule(recipe.schedule, recipe.T)
    rows = []
    for name, bf16, cl in [("fp32 (baseline)", False, False), ("bf16 autocast", True, False),
                           ("fp32 channels_last", False, True), ("bf16 autocast + channels_last", True, True)]:
        model = make_model(args.preset, channels_last=cl, device=args.device).eval()
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.randn(args.batch_size, 1, 28, 28).to(args.device, memory_format=fmt)
        t = torch.full((args.batch_size,), schedule.T // 2, device=args.device)

        def step():
            with torch.no_grad(), torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=bf16):
                p_sample(model, schedule, x, t)

        rows.append((name, rate(step, args.batch_size, args.seconds)))
        print(f"  measured {name}", flush=True)
    print(f"\nmachine: {machine(args.device)}\nmodel: preset {args.preset!r}, batch {args.batch_size}, T = {schedule.T}")
    print_table("sampling throughput (one reverse step per image)", "evals/s", rows,
                ("images/s", lambda v: v / schedule.T))


if __name__ == "__main__":
    main()
