"""Command line: ``python -m ddpm_lib {sample,evaluate,train,export,info,nll,train-classifier}``.

One module per command (:mod:`.sample`, :mod:`.evaluate`, :mod:`.train` with ``export``, :mod:`.info`,
:mod:`.nll`, :mod:`.classifier`), each adding its subparser; their choices, defaults and limits come from
the library (the sampler registry :data:`ddpm_lib.sampling.SAMPLERS`, :data:`ddpm_lib.presets.PRESETS`,
the constants of :mod:`ddpm_lib.models`, :mod:`ddpm_lib.schedule` and :mod:`ddpm_lib.numerics`).

Every command decides every error before it starts work, in one order: parse the options, check their
ranges, check the output paths (:func:`ddpm_lib._io.check_output_paths`: writable, not a folder, not
another input or output of the run, not an existing file without ``--force``), load, then work. As a
program it answers in one line and an exit status:

* 0 done; 2 bad input (``error: ...``, before any work); 1 a failure during the work (a corrupt file,
  samples that are not finite, a full disk: the line names the file, and nothing partial is left);
* 130 Ctrl-C, 143 SIGTERM: one line, no traceback (``train`` saves its state first and resumes on rerun).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import classifier, evaluate, info, nll, sample, train
from ._common import UsageError, signals_seen


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage block) and exit status 2."""

    def error(self, message: str):
        print(f"error: {' '.join(message.split())} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ddpm_lib", description="Train, sample and evaluate DDPMs on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (sample.add_parser, evaluate.add_parser, train.add_train_parser, train.add_export_parser,
                info.add_parser, nll.add_parser, classifier.add_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status.

    ``main()`` with no arguments is the program (``python -m ddpm_lib``, the ``ddpm`` script): see
    :func:`run`. Called with ``argv`` (tests, notebooks), a refusal of bad input raises
    :class:`SystemExit` whose text is the one-line message (status 2), and Ctrl-C raises
    :class:`KeyboardInterrupt`, so the caller sees them; failures during the work print their line
    and return 1, as in the program.
    """
    if argv is None:
        return run(sys.argv[1:])
    from ..checkpoint import CheckpointError
    from .._io import RunLockedError
    from ..data import DataUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, DataUnavailableError, RunLockedError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:        # a missing file, a full disk, a folder one may not write in: name it
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}" + ("; the file there before, if any, is intact"
                                                    if e.filename else ""), file=sys.stderr)
        return 1


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops like Ctrl-C (writes in progress are undone)."""


def _raise_terminated(signum, frame):
    raise _Terminated


def run(argv: list[str]) -> int:
    """The program: run one command, and answer every outcome with at most one line on stderr and an exit status
    (0 done, 1 failed during the work, 2 bad input, 130 Ctrl-C, 143 SIGTERM); never a traceback for any of them."""
    previous = signal.getsignal(signal.SIGTERM)
    ours = previous == signal.SIG_DFL and threading.current_thread() is threading.main_thread()
    if ours:        # SIGTERM stops the program like Ctrl-C: writes in progress are undone, one line is printed
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with signals_seen() as seen:
            try:
                status = main(argv)
            finally:
                got = seen()
        if status == 130 and signal.SIGTERM in got:   # train stopped cleanly on SIGTERM
            return 128 + signal.SIGTERM
        return status
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:         # argparse (its line is printed), --help, or a refusal of bad input
        if isinstance(e.code, str):
            print(e.code if e.code.startswith("error:") else f"error: {e.code}", file=sys.stderr)
            return 2
        return 0 if e.code is None else e.code
    except KeyboardInterrupt as e:
        terminated = isinstance(e, _Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
        done = ("train stopped at once, without saving: the run folder keeps its last saved state, if any; rerun "
                "the same command to resume" if argv and argv[0] == "train" else "stopped; nothing partial was written")
        print(f"{what}: {done}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        if ours:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["build_parser", "main", "run"]
