"""``train-classifier``: (re)train the MNIST classifier that scores samples (:mod:`ddpm_lib.classifier`)."""

from __future__ import annotations

import sys
from pathlib import Path

from .._io import Output
from ._common import add_force_arg, check_outputs, check_seed


def cmd_train_classifier(args) -> int:
    from ..classifier import save_classifier, shipped_classifier_path, train_classifier

    out = args.out if args.out is not None else shipped_classifier_path()
    check_seed("--seed", args.seed)
    # the shipped classifier too is replaced only on request: evaluate's figures depend on it
    check_outputs([Output("--out" if args.out is not None else "the shipped classifier", out)], force=args.force)
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


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="(re)train the MNIST classifier of the quality figures and save it "
                                                "as safetensors")
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: the shipped classifier, checkpoints/mnist_classifier.safetensors, "
                        "which evaluate uses)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order (default 0)")
    add_force_arg(p)
    p.set_defaults(func=cmd_train_classifier)
