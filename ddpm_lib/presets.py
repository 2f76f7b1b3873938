"""Named training recipes, so every number in the book comes from a command anyone can rerun.

``python -m ddpm_lib train --preset NAME`` uses one; any option given on the
command line overrides the preset's value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .models import ModelConfig
from .training import TrainConfig


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig
    schedule: str
    T: int
    train: TrainConfig
    about: str


_UNET = ModelConfig(arch="unet", base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                    attention=True, dropout=0.0, norm_groups=8, num_timesteps=1000)
_SHIPPED_TRAIN = TrainConfig(steps=1_000_000, batch_size=64, lr=1e-3, warmup_steps=500, ema_decay=0.999,
                             grad_clip=1.0, seed=0, bf16=True, checkpoint_every=1000, log_every=50,
                             max_minutes=55.0, snapshot_minutes=(10.0,))

PRESETS: dict[str, Recipe] = {
    "shipped": Recipe(
        _UNET, "linear", 1000, _SHIPPED_TRAIN,
        "the shipped checkpoint: a 1.1M-parameter DDPM UNet, linear schedule T=1000, bf16 autocast, "
        "constant LR after warm-up, 55 minutes of training on 2 CPU cores (EMA snapshot at 10 minutes)",
    ),
    "coffee": Recipe(
        _UNET, "linear", 1000, replace(_SHIPPED_TRAIN, max_minutes=10.0, snapshot_minutes=()),
        "the shipped recipe stopped after 10 minutes: the coffee-break point of the quality curve",
    ),
    "origin": Recipe(
        ModelConfig(arch="simple", base_channels=32, channel_mults=(1, 2, 2), num_timesteps=300),
        "linear", 300, replace(_SHIPPED_TRAIN, bf16=False, max_minutes=10.0, snapshot_minutes=()),
        "the origin project's design: SimpleUNet (time added once at the input, BatchNorm), T=300",
    ),
    "tiny": Recipe(
        ModelConfig(arch="unet", base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                    num_timesteps=100),
        "linear", 100,
        TrainConfig(steps=200, batch_size=64, lr=2e-3, warmup_steps=20, ema_decay=0.99, seed=0,
                    checkpoint_every=100, log_every=10),
        "a seconds-long run for tests and demonstrations; it learns little",
    ),
}
