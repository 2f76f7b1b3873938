"""Print how long each chapter took to execute, from the book build's execution cache.

    python book/chapter_times.py          # run by `make book` after the build

The build (jupyter-book with ``execute_notebooks: cache``) records each
executed chapter's run time in ``book/_build/.jupyter_cache``. A chapter whose
code has not changed since an earlier build is not run again; it is listed
with the time of the run whose outputs the site shows, marked "cached".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jupytext
from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "book" / "_build" / ".jupyter_cache"


def main(since: float | None = None) -> int:
    if not CACHE.exists():
        print(f"no execution cache at {CACHE}: nothing was executed", file=sys.stderr)
        return 1
    cache = get_cache(str(CACHE))
    total_now = 0.0
    print(f"{'chapter':32s} {'executed in':>12s}")
    for md in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md")):
        try:
            record = cache.match_cache_notebook(jupytext.read(md))
        except KeyError:
            print(f"{md.stem:32s} {'not executed':>12s}")
            continue
        seconds = record.data.get("execution_seconds")
        fresh = since is None or record.created.timestamp() >= since
        total_now += seconds if fresh and seconds else 0.0
        when = "" if fresh else f"  (cached from {record.created:%Y-%m-%d %H:%M})"
        print(f"{md.stem:32s} {seconds:10.1f} s{when}")
    print(f"{'executed in this build':32s} {total_now:10.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(float(sys.argv[1]) if len(sys.argv) > 1 else None))
