"""How long each chapter took to execute, from the book build's execution cache.

    python book/chapter_times.py          # run by `make book` after the build

The build (jupyter-book with ``execute_notebooks: cache``) records each
executed chapter's run time in ``book/_build/.jupyter_cache``. This script
prints those times, and writes them to ``book/chapter_times.json`` (committed),
with the name of the CPU that ran them: the intro page reads its table of run
times from that file, so the numbers a reader sees are measured, never typed.

A chapter whose code has not changed since an earlier build is not run again;
it is listed with the time of the run whose outputs the site shows, marked
"cached". A chapter with no executed version in the cache (its code changed
since the last build) is printed as "not executed" and stored with
``"seconds": null``; after a complete `make book` every chapter has a time.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

import jupytext
from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "book" / "_build" / ".jupyter_cache"
TIMES_JSON = ROOT / "book" / "chapter_times.json"

_LABEL = re.compile(r"^\((?P<label>[A-Za-z0-9_-]+)\)=\s*$")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def chapter_heading(md: Path) -> tuple[str | None, str]:
    """The label ``(ch-x)=`` right above the chapter's ``# Title``, and the title (Markdown, may hold maths)."""
    label = None
    for line in md.read_text(encoding="utf8").splitlines():
        m = _LABEL.match(line)
        if m:
            label = m["label"]
        elif line.startswith("# "):
            return label, line[2:].strip()
    return label, md.stem


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically (same folder, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf8")
    os.replace(tmp, path)


def main(since: float | None = None) -> int:
    if not CACHE.exists():
        print(f"no execution cache at {CACHE}: nothing was executed", file=sys.stderr)
        return 1
    cache = get_cache(str(CACHE))
    total_now = 0.0
    chapters = []
    print(f"{'chapter':32s} {'executed in':>12s}")
    for md in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md")):
        label, title = chapter_heading(md)
        entry = {"chapter": md.stem, "label": label, "title": title, "seconds": None, "executed": None}
        chapters.append(entry)
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
        entry.update(seconds=round(seconds, 1) if seconds is not None else None,
                     executed=f"{record.created:%Y-%m-%d %H:%M}")
    print(f"{'executed in this build':32s} {total_now:10.1f} s")

    _write_json(TIMES_JSON, {
        "about": "Run time of each chapter in the book build (jupyter-cache's execution_seconds), "
                 "written by book/chapter_times.py after `make book`; the intro page shows it.",
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "chapters": chapters,
    })
    print(f"wrote {TIMES_JSON.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(float(sys.argv[1]) if len(sys.argv) > 1 else None))
