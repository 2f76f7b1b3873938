"""The training benchmark runs end to end and its profile adds up (seconds, on the tiny preset)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_train_throughput_profile_splits_the_step():
    out = subprocess.run([sys.executable, str(BENCH / "train_throughput.py"), "--preset", "tiny", "--seconds", "0.2",
                          "--profile"], capture_output=True, text=True, timeout=300, check=True).stdout
    assert re.search(r"bf16 autocast\s+[\d.]+\s+[\d.]+x", out), out
    rows = {m[0]: [float(v) for v in m[1:]] for m in
            re.findall(r"^(fp32 eager|bf16 autocast)\s+([\d.]+) ms \(\s*\d+%\)\s+([\d.]+) ms\s+([\d.]+) ms$", out, re.M)}
    assert set(rows) == {"fp32 eager", "bf16 autocast"}, out
    for conv, rest, step in rows.values():
        assert conv > 0 and rest > 0 and abs(conv + rest - step) <= 0.2, out   # the split adds up to the step
    ceiling = float(re.search(r"bf16 would train ([\d.]+)x as fast as fp32", out)[1])
    # the ceiling is the fp32 step over bf16's convolutions alone
    # (printed with two decimals: under the AVX2 cap bf16 is so slow that the ceiling is about 0.1)
    assert ceiling == pytest.approx(rows["fp32 eager"][2] / rows["bf16 autocast"][0], rel=0.01, abs=0.006)


@pytest.mark.parametrize("script, extra", [("train_throughput.py", []), ("sample_throughput.py", ["--batch-size", "8"])])
def test_benches_name_the_variant_auto_picks(script, extra):
    out = subprocess.run([sys.executable, str(BENCH / script), "--preset", "tiny", "--seconds", "0.1", *extra],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = dict(re.findall(r"^((?:fp32|bf16)[\w +()]*?)\s{2,}([\d.]+)\s+[\d.]+x", out, re.M))
    assert {"fp32 (baseline)", "fp32 eager (baseline)"} & set(rows) and len(rows) == 4, out
    picked = re.search(r"^auto picks: (.+?) \((probe|cache|feature check)\); (\d+)% of the fastest", out, re.M)
    assert picked and picked[1] in rows, out
    # the share printed is the picked row's rate over the fastest row's
    assert int(picked[3]) == pytest.approx(100 * float(rows[picked[1]]) / max(map(float, rows.values())), abs=1)
    assert "oneDNN bf16" in out     # the machine line says whether bf16 is native here
