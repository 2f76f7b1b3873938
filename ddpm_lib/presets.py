"""Named training recipes, so every number in the book comes from a command anyone can rerun.

``python -m ddpm_lib train --preset NAME`` uses one; any option given on the
command line overrides the preset's value.

Presets are defined in optimizer steps, not minutes: the same command runs the
same training (steps, data order, random draws) on every machine, and only the
time it takes differs (``--max-minutes`` still stops a run on a time budget).
None of them fixes the numerics: precision and memory format are ``auto``,
chosen by measurement on the machine that trains (:mod:`ddpm_lib.numerics`).
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
# The shipped run was first defined by time: 55 minutes of training on a 2-core Zen 4 CPU, which
# reached step 10,646 (step 1,964 at the 10-minute mark). Those step counts now define the recipe.
SHIPPED_STEPS, COFFEE_STEPS = 10_646, 1_964
# The same recipe with a network of half the width (16 base channels, a quarter of the parameters): the
# ablation (experiments/ablation.py) measured its steps 2.413 times as fast as the book's UNet's on that CPU,
# so the same 55 and 10 minutes buy these many steps. At 10 minutes it beat every other variant there.
HALF_WIDTH_STEPS, HALF_WIDTH_COFFEE_STEPS = 25_688, 4_739
# The class-conditional recipe (classifier-free guidance): the shipped one, shorter, so that it and the
# book's other measurements fit one sitting on a 2-core CPU.
CONDITIONAL_STEPS = 7_000
_SHIPPED_TRAIN = TrainConfig(steps=SHIPPED_STEPS, batch_size=64, lr=1e-3, warmup_steps=500, ema_decay=0.999,
                             grad_clip=1.0, seed=0, checkpoint_every=1000, log_every=50,
                             snapshot_steps=(COFFEE_STEPS,))

PRESETS: dict[str, Recipe] = {
    "shipped": Recipe(
        _UNET, "linear", 1000, _SHIPPED_TRAIN,
        f"the shipped checkpoint: a 1.1M-parameter DDPM UNet, linear schedule T=1000, constant LR after "
        f"warm-up, {SHIPPED_STEPS:,} steps of batch 64 (EMA snapshot at step {COFFEE_STEPS:,}); "
        "55 minutes on a 2-core AVX-512 CPU, see the model card for other machines",
    ),
    "coffee": Recipe(
        _UNET, "linear", 1000, replace(_SHIPPED_TRAIN, steps=COFFEE_STEPS, snapshot_steps=()),
        f"the shipped recipe stopped at step {COFFEE_STEPS:,}: the coffee-break point of the quality curve "
        "(10 minutes on a 2-core AVX-512 CPU)",
    ),
    "half_width": Recipe(
        replace(_UNET, base_channels=16), "linear", 1000,
        replace(_SHIPPED_TRAIN, steps=HALF_WIDTH_STEPS, snapshot_steps=(HALF_WIDTH_COFFEE_STEPS,)),
        f"the shipped recipe with half the width (16 base channels, 267k parameters): {HALF_WIDTH_STEPS:,} steps "
        f"(EMA snapshot at step {HALF_WIDTH_COFFEE_STEPS:,}), the steps it reaches in the shipped run's 55 (and 10) "
        "minutes on the 2-core Zen 4 CPU; see the model card for other machines",
    ),
    "origin": Recipe(
        ModelConfig(arch="simple", base_channels=32, channel_mults=(1, 2, 2), num_timesteps=300),
        "linear", 300, replace(_SHIPPED_TRAIN, steps=COFFEE_STEPS, snapshot_steps=()),
        "the origin project's design: SimpleUNet (time added once at the input, BatchNorm), T=300",
    ),
    "conditional": Recipe(
        replace(_UNET, num_classes=10), "linear", 1000,
        replace(_SHIPPED_TRAIN, steps=CONDITIONAL_STEPS, snapshot_steps=(), p_uncond=0.1),
        f"the shipped recipe with a class embedding for classifier-free guidance (labels dropped with probability "
        f"0.1), {CONDITIONAL_STEPS:,} steps: about 36 minutes on a 2-core AVX-512 CPU, see the model card",
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
