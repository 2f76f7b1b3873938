"""The small statistics the experiment scripts compute beside the library's: Wilson's interval of an
accuracy (experiments/guidance_sweep.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from guidance_sweep import wilson_interval  # noqa: E402


def test_wilson_interval_known_values():
    # Wilson (1927) score interval, z = 1.96: 990 of 1000 -> [0.9817, 0.9946]; 96 of 100 -> [0.9016, 0.9843]
    assert wilson_interval(990, 1000) == pytest.approx([0.98168, 0.99457], abs=5e-5)
    assert wilson_interval(96, 100) == pytest.approx([0.90161, 0.98434], abs=5e-5)


def test_wilson_interval_stays_inside_0_1_at_the_edges():
    low, high = wilson_interval(100, 100)
    assert 0.96 < low < 1 and high == pytest.approx(1.0)
    low, high = wilson_interval(0, 100)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 0.04
