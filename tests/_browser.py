"""What the browser tests share: finding Debian's Chromium and launching it headless.

Playwright's own browser downloads are never used: the Python client drives the
system Chromium (``apt-get install chromium``; ``.ci/run`` installs it) through
``executable_path``. Set ``DDPM_CHROMIUM`` to use another Chromium binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


def find_chromium() -> str | None:
    candidates = [os.environ.get("DDPM_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def skip_loudly(reason: str):
    banner = "\n" + "!" * 78 + f"\nBROWSER TESTS SKIPPED: {reason}\n" + "!" * 78 + "\n"
    print(banner, file=sys.stderr)
    warnings.warn(f"BROWSER TESTS SKIPPED: {reason}", stacklevel=2)
    pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")


@contextlib.contextmanager
def chromium():
    """A headless system Chromium driven by Playwright (skips loudly where there is none)."""
    executable = find_chromium()
    if executable is None:
        skip_loudly(
            "no Chromium at /usr/bin/chromium (install it with "
            "`apt-get install -y chromium`; .ci/run does), nor $DDPM_CHROMIUM"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - playwright is a test extra
        skip_loudly(f"the playwright package is not installed ({exc}); run `make venv`")

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
