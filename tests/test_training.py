"""Training (Algorithm 1): exact resume after an interruption, atomic checkpoints, NaN stops."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddpm_lib.checkpoint import load_checkpoint, read_tensors, save_tensors
from ddpm_lib.models import ModelConfig
from ddpm_lib.schedule import make_schedule
from ddpm_lib.losses import DiffusionLoss
from ddpm_lib.training import STATE_FILE, TrainConfig, ema_decay_at, train

TINY = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50)
SCHEDULE = make_schedule("linear", 50)


def tiny_data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1


def config(steps, **kw):
    return TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=3, checkpoint_every=2, log_every=1, **kw)


def assert_same_weights(a, b):
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_loss_is_l_simple():
    torch.manual_seed(0)
    from ddpm_lib.models import build_model

    m = build_model(TINY)
    x0, noise, t = tiny_data(4), torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 49])
    x_t = SCHEDULE.q_sample(x0, t, noise)
    assert torch.allclose(DiffusionLoss(SCHEDULE)(m, x0, t, noise), ((m(x_t, t) - noise) ** 2).mean())


def test_min_snr_weighting():
    """Min-SNR-gamma: each sample's squared error times min(SNR_t, gamma) / SNR_t; a gamma above every
    SNR_t (or 0) is L_simple itself."""
    torch.manual_seed(0)
    from ddpm_lib.models import build_model

    m = build_model(TINY)
    x0, noise, t = tiny_data(4), torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 25, 49])
    per_sample = ((m(SCHEDULE.q_sample(x0, t, noise), t) - noise) ** 2).mean(dim=(1, 2, 3))
    snr = SCHEDULE.snr[t].float()
    assert snr[0] > 5 > snr[3]                                      # the weighting bites at t=0, not at t=49
    expected = (per_sample * torch.minimum(snr, torch.tensor(5.0)) / snr).mean()
    assert torch.allclose(DiffusionLoss(SCHEDULE, min_snr_gamma=5.0)(m, x0, t, noise), expected)
    simple = DiffusionLoss(SCHEDULE)(m, x0, t, noise)
    assert torch.allclose(DiffusionLoss(SCHEDULE, min_snr_gamma=float(snr.max()) + 1)(m, x0, t, noise), simple)
    with pytest.raises(ValueError, match="min_snr_gamma must be at least 0"):
        TrainConfig(min_snr_gamma=-1.0)


def test_ema_warmup():
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_learning_rate_schedule():
    c = TrainConfig(lr=1e-3, warmup_steps=10, max_minutes=10.0, cooldown_minutes=2.0)
    assert c.lr_at(0, 0.0) == pytest.approx(1e-4)                  # warm-up: (step + 1) / warmup_steps
    assert c.lr_at(9, 5.0) == c.lr_at(5000, 8 * 60.0) == 1e-3     # constant until the cool-down starts
    assert c.lr_at(5000, 9 * 60.0) == pytest.approx(5e-4)          # halfway through the last 2 minutes
    assert c.lr_at(5000, 10 * 60.0) == c.lr_at(5000, 11 * 60.0) == 0.0
    constant = TrainConfig(lr=1e-3, warmup_steps=10, max_minutes=10.0)
    assert constant.lr_at(5000, 9.99 * 60) == 1e-3


def test_step_cooldown():
    """The LR falls linearly to 0 over the last cooldown_steps of steps: step s runs at lr (steps - s) / cooldown."""
    c = TrainConfig(steps=1000, lr=1e-3, warmup_steps=10, cooldown_steps=400)
    assert c.lr_at(599, 0.0) == c.lr_at(600, 0.0) == 1e-3
    assert c.lr_at(800, 0.0) == pytest.approx(5e-4)
    assert c.lr_at(999, 0.0) == pytest.approx(1e-3 / 400)
    whole = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, cooldown_steps=100)   # warm-up and decay multiply
    assert whole.lr_at(4, 0.0) == pytest.approx(1e-3 * 0.5 * 0.96)
    with pytest.raises(ValueError, match="cooldown_steps must be between 0 and steps"):
        TrainConfig(steps=100, cooldown_steps=101)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(steps=100, cooldown_steps=10, max_minutes=5.0, cooldown_minutes=1.0)


def test_cooldown_needs_a_budget():
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(cooldown_minutes=5.0)
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=4.0, cooldown_minutes=5.0)


def test_a_timed_run_ends_its_cooldown_near_zero(tmp_path, monkeypatch):
    """With the cool-down as long as the whole 3-second budget, the run stops at the first step that
    reaches the budget, and the LR of its last step is lr x (one step's time) / (3 s).

    On a fake clock (``ddpm_lib.training.clock``) that moves 1/4 s at each reading, so that a step
    takes a fixed, exactly representable time (1/4 s: 12 steps): what is tested is the budget's
    logic, not how fast or how busy this machine is."""
    import itertools
    import math

    from ddpm_lib import training

    readings = itertools.count()
    monkeypatch.setattr(training, "clock", lambda: next(readings) / 4)
    c = TrainConfig(steps=10**6, batch_size=32, lr=1e-3, warmup_steps=3, checkpoint_every=10**6, log_every=1,
                    max_minutes=0.05, cooldown_minutes=0.05, precision="fp32", channels_last=False)
    seen = []
    result = train(TINY, SCHEDULE, c, tiny_data(), tmp_path, progress=False,
                   callback=lambda step, loss, r: seen.append(r.seconds))
    dt = seen[0]                                      # one step on the fake clock
    assert dt > 0 and all(b - a == dt for a, b in zip(seen, seen[1:])), seen
    assert result.step == len(seen) == math.ceil(3.0 / dt) and result.seconds == result.step * dt
    _, meta = read_tensors(tmp_path / STATE_FILE)
    last_lr = meta["param_groups"][0]["lr"]
    assert last_lr == pytest.approx(c.lr_at(result.step - 1, 3.0 - dt)) == pytest.approx(c.lr * dt / 3.0)


def test_training_lowers_the_loss(tmp_path):
    result = train(TINY, SCHEDULE, config(60, seed=1), tiny_data(256), tmp_path, progress=False)
    first = sum(l for _, l, _ in result.history[:5]) / 5
    last = sum(l for _, l, _ in result.history[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    ckpt = load_checkpoint(tmp_path / "model.safetensors")  # the exported EMA model
    assert_same_weights(ckpt.model, result.ema_model)
    assert ckpt.info["step"] == 60


def test_resume_gives_the_same_model(tmp_path):
    data = tiny_data()
    full = train(TINY, SCHEDULE, config(10), data, tmp_path / "a", progress=False)
    train(TINY, SCHEDULE, config(6), data, tmp_path / "b", progress=False)      # "interrupted" after 6 steps
    resumed = train(TINY, SCHEDULE, config(10), data, tmp_path / "b", progress=False)
    assert resumed.step == 10
    assert_same_weights(full.model, resumed.model)
    assert_same_weights(full.ema_model, resumed.ema_model)


def test_resume_refuses_a_different_recipe(tmp_path):
    train(TINY, SCHEDULE, config(2), tiny_data(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="belongs to a run with another seed;"):    # names what differs
        train(TINY, SCHEDULE, config(4, seed=5), tiny_data(), tmp_path, progress=False)


def test_resume_reads_a_state_from_before_a_recipe_field_existed(tmp_path):
    """A state whose stored recipe lacks a field added later (min_snr_gamma) resumes as that field's default."""
    data = tiny_data()
    full = train(TINY, SCHEDULE, config(6), data, tmp_path / "a", progress=False)
    train(TINY, SCHEDULE, config(4), data, tmp_path / "b", progress=False)
    tensors, meta = read_tensors(tmp_path / "b" / STATE_FILE)
    del meta["train_config"]["min_snr_gamma"]
    save_tensors(tmp_path / "b" / STATE_FILE, tensors, meta)
    resumed = train(TINY, SCHEDULE, config(6), data, tmp_path / "b", progress=False)
    assert_same_weights(full.model, resumed.model)
    with pytest.raises(ValueError, match="belongs to a run with another min_snr_gamma;"):
        train(TINY, SCHEDULE, config(8, min_snr_gamma=5.0), data, tmp_path / "b", progress=False)


SCRIPT = """
import os, sys, time, torch
from ddpm_lib.models import ModelConfig
from ddpm_lib.schedule import make_schedule
from ddpm_lib.training import TrainConfig, train
out, steps, hold_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def hold(step, loss, result):
    # at step hold_at, wait for the test to let the run go on: it cannot finish before it is killed
    while step == hold_at and not os.path.exists(os.path.join(out, "go")):
        time.sleep(0.05)

g = torch.Generator().manual_seed(0)
data = torch.rand(128, 1, 28, 28, generator=g) * 2 - 1
cfg = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50)
train(cfg, make_schedule("linear", 50), TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=3,
      checkpoint_every=2, log_every=1, precision="fp32", channels_last=False), data, out, progress=False,
      callback=hold)
print("done", flush=True)
"""


def _start(out, steps, hold_at=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), str(steps), str(hold_at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_state(out, proc, timeout=300):
    deadline = time.time() + timeout         # only against a hung run: no speed is asked for
    while not (out / STATE_FILE).exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no training state appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_model(tmp_path, sig):
    """Kill a training process mid-run (gracefully or with SIGKILL): the checkpoint on disk is
    always readable, and resuming reaches the same weights as a run that was never interrupted.

    The run is killed at whatever step it has reached 0.3 s after its first checkpoint (maybe
    during a save), and it is held at step 30 of 40 until then, so that it is killed mid-run
    however fast or slow the machine is."""
    steps = 40
    proc = _start(tmp_path / "killed", steps, hold_at=30)
    _wait_for_state(tmp_path / "killed", proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    (tmp_path / "killed" / "go").touch()          # a held run goes on, and stops at its next step boundary
    proc.wait(timeout=300)
    _, meta = read_tensors(tmp_path / "killed" / STATE_FILE)  # never corrupt
    assert meta["step"] < steps, "the run finished before it was killed; nothing was tested"
    if sig == signal.SIGTERM:
        assert proc.returncode == 0  # a graceful stop that saved its state
        assert not list((tmp_path / "killed").glob(".*.tmp")), "a temporary file was left behind"
    # (SIGKILL during a save can leave the save's temporary file; the resumed run removes it)

    for out in ("killed", "clean"):
        p = _start(tmp_path / out, steps)
        assert p.wait(timeout=300) == 0, p.stdout.read()
    assert not list((tmp_path / "killed").glob(".*.tmp")), "a temporary file outlived the resume"
    a = load_checkpoint(tmp_path / "killed" / "model.safetensors").model
    b = load_checkpoint(tmp_path / "clean" / "model.safetensors").model
    assert_same_weights(a, b)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path):
    data = tiny_data()
    train(TINY, SCHEDULE, config(4), data, tmp_path, progress=False)
    good = (tmp_path / STATE_FILE).read_bytes()
    bad = data.clone()
    bad[:] = float("nan")
    with pytest.raises(FloatingPointError, match="at step 5; training stopped"):
        train(TINY, SCHEDULE, config(8), bad, tmp_path, progress=False)
    assert (tmp_path / STATE_FILE).read_bytes() == good


def test_bad_training_data_shape(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(N, 1, 28, 28\)"):
        train(TINY, SCHEDULE, config(2), torch.zeros(64, 28, 28), tmp_path, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_draws_the_same_batches_as_the_cpu(tmp_path):
    # The random draws come from the seeded CPU generator, so only the arithmetic differs between devices.
    cpu = train(TINY, SCHEDULE, config(10), tiny_data(), tmp_path / "cpu", progress=False)
    gpu = train(TINY, SCHEDULE, config(10), tiny_data(), tmp_path / "gpu", progress=False, device="cuda")
    # same initial weights and first batch: the same first loss up to TF32 convolutions on the GPU
    assert gpu.history[0][1] == pytest.approx(cpu.history[0][1], rel=1e-2)
    for (k, x), (_, y) in zip(cpu.model.state_dict().items(), gpu.model.state_dict().items()):
        assert torch.allclose(x, y.cpu(), atol=2e-2), k  # 10 Adam steps of at most lr = 1e-3 each
    resumed = train(TINY, SCHEDULE, config(12), tiny_data(), tmp_path / "gpu", progress=False, device="cuda")
    assert resumed.step == 12 and next(resumed.model.parameters()).is_cuda


def test_numerics_may_change_on_resume(tmp_path):
    """How the arithmetic is done is not part of the recipe: a run can move to a machine that does it otherwise."""
    data = tiny_data()
    train(TINY, SCHEDULE, config(4, precision="fp32", channels_last=False), data, tmp_path, progress=False)
    resumed = train(TINY, SCHEDULE, config(6, precision="fp32", channels_last=True), data, tmp_path, progress=False)
    assert resumed.step == 6
    info = load_checkpoint(tmp_path / "model.safetensors").info
    assert info["numerics"] == {"precision": "fp32", "channels_last": True, "device": "cpu"}


def test_train_config_reads_the_bf16_flag_of_older_states():
    old = {**config(4).__dict__, "bf16": True}
    del old["precision"], old["channels_last"]
    assert TrainConfig.from_dict(old).precision == "bf16"
    assert TrainConfig.from_dict({**old, "bf16": False}).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        config(4, precision="fp16")


def test_snapshot_steps_export_the_ema_model(tmp_path):
    result = train(TINY, SCHEDULE, config(6, snapshot_steps=(3,)), tiny_data(), tmp_path, progress=False)
    snap = load_checkpoint(tmp_path / "model_step3.safetensors")
    assert snap.info["step"] == 3 and result.step == 6


def test_reflow_pairs_and_a_warm_start_are_the_loop_written_out():
    """train(noise=..., init=...): each image trains with its own eps and the run starts from the given weights;
    the same steps written out by hand (the epoch's order, t from the run's generator, train_step, Adam with the
    warm-up) give the same weights exactly (fp32)."""
    from ddpm_lib.flow import LinearPath
    from ddpm_lib.losses import FlowMatchingLoss
    from ddpm_lib.models import build_model
    from ddpm_lib.numerics import Numerics
    from ddpm_lib.optim import train_step
    from ddpm_lib.training import _epoch_permutation

    path, flow = LinearPath(50), ModelConfig(**{**TINY.to_dict(), "prediction": "velocity"})
    data, pairs = tiny_data(64), torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    teacher = build_model(flow)
    cfg = config(3, precision="fp32", channels_last=False)
    result = train(flow, path, cfg, data, progress=False, noise=pairs, init=teacher)

    by_hand = build_model(flow)
    by_hand.load_state_dict(teacher.state_dict())
    optimizer, loss, g = torch.optim.Adam(by_hand.parameters(), lr=cfg.lr), FlowMatchingLoss(path), \
        torch.Generator().manual_seed(cfg.seed)
    by_hand.train()
    for step in range(3):
        idx = _epoch_permutation(64, cfg.seed, step // 2)[(step % 2) * 32:(step % 2 + 1) * 32]
        t = loss.sample_t(32, g)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step, 0.0)
        train_step(by_hand, loss, optimizer, data[idx], t, pairs[idx], numerics=Numerics("fp32"),
                   grad_clip=cfg.grad_clip)
    assert_same_weights(result.model, by_hand)
    with pytest.raises(ValueError, match="noise pairs one eps with each image"):
        train(flow, path, cfg, data, progress=False, noise=pairs[:10])
