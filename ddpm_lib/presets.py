"""Training recipes: :class:`TrainConfig`, the hyper-parameters of a run, and the named presets.

Named presets make every number in the book come from a command anyone can rerun:
``python -m ddpm_lib train --preset NAME`` uses one; any option given on the
command line overrides the preset's value.

Presets are defined in optimizer steps, not minutes: the same command runs the
same training (steps, data order, random draws) on every machine, and only the
time it takes differs (``--max-minutes`` still stops a run on a time budget).
A :class:`TrainConfig` of one's own computes in fp32, contiguous (what the
equations say); every preset asks for ``auto`` instead: precision and memory
format chosen by measurement on the machine that trains (:mod:`ddpm_lib.numerics`),
since the numerics change the speed, not the recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .models import ModelConfig
from .numerics import PRECISIONS


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in every training state)."""

    steps: int = 20_000              # optimizer steps to run (the run also stops at max_minutes)
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 500          # linear LR warm-up, then constant
    ema_decay: float = 0.999          # reached after a warm-up, see ema_decay_at
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "fp32"          # "fp32", "bf16" autocast, or "auto" (measured: ddpm_lib.numerics)
    channels_last: bool | None = False  # True/False, or None: auto (measured)
    checkpoint_every: int = 500      # steps between training-state checkpoints
    log_every: int = 50              # steps between entries of the loss history
    max_minutes: float | None = None  # stop after this much cumulative training time
    snapshot_minutes: tuple = ()     # export the EMA model when cumulative time passes these marks
    snapshot_steps: tuple = ()       # ... and after these optimizer steps (the same on every machine)
    cooldown_minutes: float = 0.0    # LR falls linearly to 0 over the last minutes of max_minutes
    cooldown_steps: int = 0          # ... or over the last steps of ``steps`` (a run defined in steps)
    min_snr_gamma: float = 0.0       # 0: L_simple; > 0: Min-SNR-gamma weights, see diffusion_loss
    accum_steps: int = 1             # split each process's share of a batch into this many accumulated parts
    p_uncond: float = 0.1            # class-conditional models only: probability that a label is replaced by
                                     # the null label (classifier-free guidance, Ho & Salimans 2022)

    def __post_init__(self):
        self.snapshot_minutes = tuple(float(m) for m in self.snapshot_minutes)
        self.snapshot_steps = tuple(int(s) for s in self.snapshot_steps)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a number above 0 (e.g. 1e-3), got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be at least 0 (0 turns clipping off), got {self.grad_clip}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ValueError(f"max_minutes must be above 0 (or unset: no time limit), got {self.max_minutes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be at least 0 (0 turns the weighting off), got {self.min_snr_gamma}")
        if self.cooldown_minutes < 0:
            raise ValueError(f"cooldown_minutes must be at least 0, got {self.cooldown_minutes}")
        if not 0 <= self.cooldown_steps <= self.steps:
            raise ValueError(f"cooldown_steps must be between 0 and steps ({self.steps}), got {self.cooldown_steps}")
        if self.cooldown_steps and self.cooldown_minutes:
            raise ValueError("set cooldown_steps or cooldown_minutes, not both: the LR ends at 0 once")
        if self.cooldown_minutes and (self.max_minutes is None or self.cooldown_minutes > self.max_minutes):
            raise ValueError(
                f"cooldown_minutes={self.cooldown_minutes} needs a time budget at least as long: set max_minutes "
                f"(now {self.max_minutes}) to the length of the run, or cooldown_minutes to 0"
            )

    def micro_batch(self, world_size: int = 1) -> int:
        """Images one process takes per accumulated part of a step: the batch over processes x ``accum_steps``."""
        parts = world_size * self.accum_steps
        if self.batch_size % parts:
            raise ValueError(f"batch_size {self.batch_size} must divide into {world_size} processes x accum_steps "
                             f"{self.accum_steps} equal parts: use a multiple of {parts}")
        return self.batch_size // parts

    def lr_at(self, step: int, seconds: float) -> float:
        """Learning rate of optimizer step ``step`` (0-based) after ``seconds`` of training.

        Linear warm-up over ``warmup_steps``, then constant; with ``cooldown_minutes``,
        a linear decay to zero over the last ``cooldown_minutes`` of ``max_minutes``;
        with ``cooldown_steps``, over the last ``cooldown_steps`` of ``steps`` (the last
        step runs at lr / cooldown_steps). The decay is measured like the budget it ends,
        so a run stopped before the cool-down (a snapshot, or a shorter budget) is the
        same run up to there.
        """
        factor = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.cooldown_steps:
            factor *= min(1.0, (self.steps - step) / self.cooldown_steps)
        if self.cooldown_minutes:
            factor *= min(1.0, max(0.0, (60 * self.max_minutes - seconds) / (60 * self.cooldown_minutes)))
        return self.lr * factor

    def out_of_time(self, seconds: float) -> bool:
        """Whether a run that has trained for ``seconds`` has used up ``max_minutes``."""
        return self.max_minutes is not None and seconds >= 60 * self.max_minutes

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config as :func:`dataclasses.asdict` wrote it; an unknown key is an error, as for every config.

        One legacy key is mapped explicitly: ``bf16`` (a bool, from states written before the
        precision was chosen by measurement) becomes ``precision``. A key missing from ``d``
        (a field added since the file was written) takes its default.
        """
        d = dict(d)
        if "bf16" in d:
            bf16 = d.pop("bf16")
            d.setdefault("precision", "bf16" if bf16 else "fp32")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {sorted(unknown)}; known keys: {sorted(f.name for f in fields(cls))}")
        return cls(**d)


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
SHIPPED_STEPS, TEN_MINUTE_STEPS = 10_646, 1_964
# The same recipe with a network of half the width (16 base channels, a quarter of the parameters): the
# ablation (experiments/ablation.py) measured its steps 2.413 times as fast as the book's UNet's on that CPU,
# so the same 55 and 10 minutes buy these many steps. At 10 minutes it beat every other variant there.
HALF_WIDTH_STEPS, HALF_WIDTH_TEN_MINUTE_STEPS = 25_688, 4_739
# The class-conditional recipe (classifier-free guidance): the shipped one, shorter, so that it and the
# book's other measurements fit one sitting on a 2-core CPU.
CONDITIONAL_STEPS = 7_000
_AUTO = dict(precision="auto", channels_last=None)     # the fastest numerics of the machine that trains
_SHIPPED_TRAIN = TrainConfig(steps=SHIPPED_STEPS, batch_size=64, lr=1e-3, warmup_steps=500, ema_decay=0.999,
                             grad_clip=1.0, seed=0, checkpoint_every=1000, log_every=50,
                             snapshot_steps=(TEN_MINUTE_STEPS,), **_AUTO)

PRESETS: dict[str, Recipe] = {
    "shipped": Recipe(
        _UNET, "linear", 1000, _SHIPPED_TRAIN,
        f"the shipped checkpoint: a 1.1M-parameter DDPM UNet, linear schedule T=1000, constant LR after "
        f"warm-up, {SHIPPED_STEPS:,} steps of batch 64 (EMA snapshot at step {TEN_MINUTE_STEPS:,}); "
        "55 minutes on a 2-core AVX-512 CPU, see the model card for other machines",
    ),
    "ten_minutes": Recipe(
        _UNET, "linear", 1000, replace(_SHIPPED_TRAIN, steps=TEN_MINUTE_STEPS, snapshot_steps=()),
        f"the shipped recipe stopped at step {TEN_MINUTE_STEPS:,}: its 10-minute point, the first checkpoint "
        "(10 minutes on a 2-core AVX-512 CPU)",
    ),
    "half_width": Recipe(
        replace(_UNET, base_channels=16), "linear", 1000,
        replace(_SHIPPED_TRAIN, steps=HALF_WIDTH_STEPS, snapshot_steps=(HALF_WIDTH_TEN_MINUTE_STEPS,)),
        f"the shipped recipe with half the width (16 base channels, 267k parameters): {HALF_WIDTH_STEPS:,} steps "
        f"(EMA snapshot at step {HALF_WIDTH_TEN_MINUTE_STEPS:,}), the steps it reaches in the shipped run's 55 (and 10) "
        "minutes on the 2-core Zen 4 CPU; see the model card for other machines",
    ),
    "origin": Recipe(
        ModelConfig(arch="simple", base_channels=32, channel_mults=(1, 2, 2), num_timesteps=300),
        "linear", 300, replace(_SHIPPED_TRAIN, steps=TEN_MINUTE_STEPS, snapshot_steps=()),
        "the design this book grew from: SimpleUNet (time added once at the input, BatchNorm), T=300, "
        f"the shipped recipe's first {TEN_MINUTE_STEPS:,} steps",
    ),
    "conditional": Recipe(
        replace(_UNET, num_classes=10), "linear", 1000,
        replace(_SHIPPED_TRAIN, steps=CONDITIONAL_STEPS, snapshot_steps=(), p_uncond=0.1),
        f"the shipped recipe with a class embedding for classifier-free guidance (labels dropped with probability "
        f"0.1), {CONDITIONAL_STEPS:,} steps: about 36 minutes on a 2-core AVX-512 CPU, see the model card",
    ),
    "flow": Recipe(
        replace(_UNET, prediction="velocity"), "flow", 1000, _SHIPPED_TRAIN,
        f"the shipped recipe with the flow-matching objective (the linear path x_t = (1 - t) x_0 + t eps, the "
        f"network predicts the velocity eps - x_0): the same network, batch and {SHIPPED_STEPS:,} steps, so the "
        "same CPU budget as the shipped checkpoint",
    ),
    "tiny": Recipe(
        ModelConfig(arch="unet", base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                    num_timesteps=100),
        "linear", 100,
        TrainConfig(steps=200, batch_size=64, lr=2e-3, warmup_steps=20, ema_decay=0.99, seed=0,
                    checkpoint_every=100, log_every=10, **_AUTO),
        "a seconds-long run for tests and demonstrations; it learns little",
    ),
}
