"""Checkpoints: safetensors only, config inside, clear refusals for corrupt or mismatched files."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from ddpm_lib.checkpoint import (SHIPPED_CHECKPOINT, CheckpointError, load_checkpoint, read_tensors,
                                 save_checkpoint, save_tensors)
from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.schedule import make_schedule

SMALL = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_timesteps=50)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(SMALL)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, make_schedule("cosine", 50), {"note": "test"})
    return path, model


def test_round_trip_is_exact(saved):
    path, model = saved
    ckpt = load_checkpoint(path)
    assert ckpt.config == SMALL
    assert ckpt.schedule.kind == "cosine" and ckpt.schedule.T == 50
    assert ckpt.info == {"note": "test"}
    assert not ckpt.model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), ckpt.model.state_dict().items()):
        assert torch.equal(a, b), k
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 40])
    model.eval()
    assert torch.equal(model(x, t), ckpt.model(x, t))


def test_file_is_safetensors_not_pickle(saved):
    path, _ = saved
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert json.loads(header["__metadata__"]["model_config"]) == SMALL.to_dict()
    assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")  # neither a pickle nor a zip


def test_truncated_file_is_refused(saved, tmp_path):
    path, _ = saved
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a ddpm_lib checkpoint"):
        load_checkpoint(path)


def test_tensors_that_do_not_fit_their_config_are_refused(saved, tmp_path):
    path, _ = saved
    tensors, meta = read_tensors(path)
    meta["model_config"]["base_channels"] = 16  # claims another width
    bad = tmp_path / "mismatch.safetensors"
    save_tensors(bad, tensors, meta)
    with pytest.raises(CheckpointError, match="does not match the model config.*wrong shapes"):
        load_checkpoint(bad)


def test_expected_config_mismatch_is_refused(saved):
    path, _ = saved
    other = ModelConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_timesteps=50)
    with pytest.raises(CheckpointError, match="different config.*base_channels.*16, 8"):
        load_checkpoint(path, expected_config=other)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_save_is_atomic(saved, monkeypatch):
    """A save that fails half-way leaves the previous file intact and no temp file behind."""
    path, model = saved
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("ddpm_lib.checkpoint.os.replace", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, build_model(SMALL), make_schedule("linear", 50))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.exists(), reason="no shipped checkpoint in this checkout")
def test_shipped_checkpoint_loads():
    ckpt = load_checkpoint()
    assert ckpt.schedule.T == ckpt.config.num_timesteps
    assert SHIPPED_CHECKPOINT.stat().st_size < 20e6
    out = ckpt.model(torch.zeros(2, 1, 28, 28), torch.tensor([0, ckpt.schedule.T - 1]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


@pytest.mark.parametrize("where", ["bf16", "channels_last", "cuda"])
def test_a_checkpoint_from_any_device_or_dtype_loads_on_the_cpu(tmp_path, where):
    """Training may keep its weights in another dtype, memory format or device: the file is the same kind."""
    if where == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    cfg = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50)
    model = build_model(cfg)
    moved = {"bf16": lambda m: m.to(torch.bfloat16), "channels_last": lambda m: m.to(memory_format=torch.channels_last),
             "cuda": lambda m: m.to("cuda")}[where](build_model(cfg))
    moved.load_state_dict(model.state_dict())
    save_checkpoint(tmp_path / "m.safetensors", moved, make_schedule("linear", 50), {"where": where})
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    for (k, a), b in zip(loaded.model.state_dict().items(), moved.state_dict().values()):
        assert a.device.type == "cpu" and a.dtype == torch.float32 and a.is_contiguous(), k
        assert torch.equal(a, b.float().cpu()), k     # bf16 weights come back as the fp32 values they hold
