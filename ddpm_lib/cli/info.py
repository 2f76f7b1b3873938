"""``info``: a checkpoint's config and training info, and the numerics this machine runs it with."""

from __future__ import annotations

import json
import sys

from ..sampling import RUN_DEFAULTS
from ._common import MAX_COUNT, add_device_arg, check_number, device


def cmd_info(args) -> int:
    from .. import numerics as num
    from ..checkpoint import SHIPPED_CHECKPOINT, load_checkpoint

    check_number("--train-batch-size", args.train_batch_size, 1, MAX_COUNT)
    check_number("--sample-batch-size", args.sample_batch_size, 1, MAX_COUNT)
    if not args.no_numerics:
        device(args.device)
    if args.clear_numerics_cache:
        print(f"forgot {num.clear_cache()} numerics decisions ({num.cache_path()})")
        return 0
    ckpt = load_checkpoint(args.checkpoint or SHIPPED_CHECKPOINT)
    report = {"model_config": ckpt.config.to_dict(), "parameters": ckpt.model.num_parameters(),
              "schedule": {"kind": ckpt.schedule.kind, "T": ckpt.schedule.T}, "info": ckpt.info}
    if not args.no_numerics:
        dev = device(args.device)
        ckpt.model.to(dev)
        train_batch = args.train_batch_size if args.train_batch_size is not None else \
            ckpt.info.get("train_config", {}).get("batch_size", 64)
        print(f"measuring the numerics of this model on {dev} (once; cached in {num.cache_path()}) ...",
              file=sys.stderr, flush=True)
        report["numerics"] = num.summary(dev)
        for purpose, batch in (("train", train_batch), ("sample", args.sample_batch_size)):
            choice = num.choose_numerics(ckpt.model, device=dev, purpose=purpose, batch_size=batch)
            report["numerics"][purpose] = {"batch_size": batch, "chosen": choice.name, "how": choice.source,
                                           "probe_items_per_s": choice.rates}
    print(json.dumps(report, indent=2))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config and training info, and the numerics this "
                                    "machine runs it with")
    p.add_argument("--checkpoint", default=None)
    add_device_arg(p, "to measure the numerics")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="batch of the training probe (default: the checkpoint's training batch)")
    p.add_argument("--sample-batch-size", type=int, default=RUN_DEFAULTS["batch_size"],
                   help=f"batch of the sampling probe (default {RUN_DEFAULTS['batch_size']}, the samplers' batch)")
    p.add_argument("--no-numerics", action="store_true", help="do not measure or show the numerics")
    p.add_argument("--clear-numerics-cache", action="store_true",
                   help="forget every cached numerics decision (they are measured again when next needed)")
    p.set_defaults(func=cmd_info)
