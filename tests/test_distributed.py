"""Data-parallel training with torchrun and the gloo backend: 2 CPU processes on a tiny configuration.

Every test launches real processes with ``python -m torch.distributed.run`` (torchrun), on
this machine's loopback interface only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_lib.checkpoint import load_checkpoint, read_tensors
from ddpm_lib.distributed import DEFAULT_TIMEOUT_S
from ddpm_lib.training import STATE_FILE

SCRIPT = """
import os, sys, torch
from ddpm_lib.models import ModelConfig
from ddpm_lib.schedule import make_schedule
from ddpm_lib.training import TrainConfig, train
out, steps, accum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"pid_rank{os.environ.get('RANK', 0)}"), "w") as f:
    f.write(str(os.getpid()))
g = torch.Generator().manual_seed(0)
data = torch.rand(256, 1, 28, 28, generator=g) * 2 - 1
cfg = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50)
train(cfg, make_schedule("linear", 50),
      TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=3, checkpoint_every=2, log_every=1,
                  accum_steps=accum, precision="fp32", channels_last=False),
      data, out, progress=False, dist_timeout_s=float(os.environ.get("DIST_TIMEOUT", "60")))
print("done", os.environ.get("RANK", 0), flush=True)
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "train_tiny.py"
    path.write_text(SCRIPT)
    return path


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run(script: Path, out: Path, steps: int, nproc: int = 1, accum: int = 1, timeout: float = 300, **env):
    """Train to ``steps`` in ``out`` with ``nproc`` processes (torchrun when more than one); returns the process."""
    args = [str(script), str(out), str(steps), str(accum)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
           if nproc > 1 else [sys.executable, *args])
    proc = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def ema(out: Path):
    return load_checkpoint(out / "model.safetensors").model.state_dict()


def assert_close(a: dict, b: dict, atol: float):
    worst = max((x - y).abs().max().item() for x, y in zip(a.values(), b.values()))
    assert worst <= atol, f"largest weight difference {worst:.2e} > {atol:.0e}"


def assert_same(a: dict, b: dict):
    for (k, x), y in zip(a.items(), b.values()):
        assert torch.equal(x, y), k


def test_two_processes_train_the_same_model_as_one(script, tmp_path):
    """2 processes x 16 images = 1 process x 2 accumulated parts of 16, bit for bit; = 1 process x 32, to rounding."""
    two = run(script, tmp_path / "two", 6, nproc=2)
    assert two.stdout.count("done") == 2
    run(script, tmp_path / "accum", 6, accum=2)
    run(script, tmp_path / "one", 6)
    # DDP averages the two halves' gradients as g0/2 + g1/2; accumulation adds the same two terms
    assert_same(ema(tmp_path / "two"), ema(tmp_path / "accum"))
    # one batch of 32 sums the same terms in another order: the gradients differ by rounding, which
    # Adam's first steps (updates of about lr * sign(gradient)) can turn into up to 2 * lr per step
    assert_close(ema(tmp_path / "two"), ema(tmp_path / "one"), atol=2e-3)
    meta, one_meta = (read_tensors(tmp_path / d / STATE_FILE)[1] for d in ("two", "one"))
    assert meta["step"] == 6
    # rank 0 logged the loss averaged over both processes: the single process's loss, to rounding
    for (s2, l2, _), (s1, l1, _) in zip(meta["history"], one_meta["history"], strict=True):
        assert s2 == s1 and l2 == pytest.approx(l1, rel=1e-3)
    assert load_checkpoint(tmp_path / "two" / "model.safetensors").info["processes"] == 2


def test_a_two_process_run_resumes_on_one(script, tmp_path):
    run(script, tmp_path / "moved", 4, nproc=2)
    run(script, tmp_path / "moved", 8, accum=2)             # the same run, continued by a single process
    run(script, tmp_path / "straight", 8, accum=2)
    assert_same(ema(tmp_path / "moved"), ema(tmp_path / "straight"))


def _start(script: Path, out: Path, steps: int, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(out), str(steps), "1"]
    return subprocess.Popen(cmd, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout         # only against a hung job: no speed is asked for
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(proc.stdout.read())
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """The job's output once it has ended; a job still running after ``timeout`` is killed, with all its ranks."""
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_on_one_rank_stops_every_rank_with_the_state_intact(script, tmp_path):
    out = tmp_path / "stopped"
    proc = _start(script, out, 100_000)
    _wait_for(out / STATE_FILE, proc)
    os.kill(int((out / "pid_rank1").read_text()), signal.SIGTERM)
    output = _finish(proc, timeout=300)
    assert proc.returncode == 0, output
    assert output.count("done") == 2, output            # both ranks left the loop cleanly
    _, meta = read_tensors(out / STATE_FILE)             # readable, and saved at the step where they stopped
    assert 0 < meta["step"] < 100_000
    assert load_checkpoint(out / "model.safetensors").info["step"] == meta["step"]


def test_a_killed_rank_fails_the_job_within_the_timeout_and_is_named(script, tmp_path):
    out = tmp_path / "killed"
    proc = _start(script, out, 100_000, DIST_TIMEOUT="10")
    _wait_for(out / STATE_FILE, proc)
    killed_at = time.time()
    os.kill(int((out / "pid_rank1").read_text()), signal.SIGKILL)
    output = _finish(proc, timeout=DEFAULT_TIMEOUT_S / 2)
    assert proc.returncode != 0
    # ended by itself (in seconds, here), not after rank 0 had waited out the default timeout for the dead
    # rank: the bound is that, with room for any load, not a speed
    assert time.time() - killed_at < DEFAULT_TIMEOUT_S / 2, "the job waited as if it had no --dist-timeout"
    # torchrun's report names the rank that died and how
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", output) and "SIGKILL" in output, output[-3000:]
    _, meta = read_tensors(out / STATE_FILE)             # the last checkpoint is intact
    assert meta["step"] > 0

