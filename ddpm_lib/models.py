"""Noise-prediction networks eps_theta(x_t, t) (Ho et al. 2020, section 3.3 and appendix B).

Two models, both called as ``model(x, t)`` with images ``x`` of shape
(B, C, H, W) scaled to [-1, 1] and timesteps ``t`` of shape (B,), and
both returning a tensor shaped like ``x``: the predicted noise eps (or, with
``ModelConfig.prediction``, the clean image x0, v, or a flow's velocity; the samplers convert).

Timesteps are integers in [0, T) or, as a float tensor, real numbers in [0, T - 1]: the
sinusoidal embedding is a smooth function of t, so a network can be asked about a noise
level between two of its schedule's steps (the EDM sampler does, :mod:`ddpm_lib.sampling.edm`)
or trained on continuous time (flow matching, :mod:`ddpm_lib.flow`, feeds t in [0, 1] as
t (T - 1)).

* :class:`SimpleUNet` -- the design of the small CPU MNIST DDPM this book grew from
  (chapter 11 calls it "the origin"), kept as an exhibit: the
  sinusoidal time embedding is added *once*, to the first feature map, with no
  MLP; BatchNorm; no attention.
* :class:`UNet` -- the standard DDPM design: sinusoidal embedding followed by an
  MLP, injected into *every* residual block; GroupNorm; optional self-attention
  at the lowest resolution.

Build either from a :class:`ModelConfig` with :func:`build_model`; the config is
what a checkpoint stores, so a checkpoint can rebuild its model exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from ._config import JSONConfig

ARCHITECTURES = ("unet", "simple")
PREDICTIONS = ("eps", "x0", "v", "velocity")   # what the network outputs: see DiffusionSchedule.eps_from_prediction;
                                               # "velocity" is a flow's dx_t/dt (ddpm_lib.flow)
TIME_EMBEDDINGS = ("every_block", "input")
NORMS = ("group", "batch")


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal position embedding of timesteps (Ho et al. 2020, appendix B;
    Vaswani et al. 2017, section 3.5).

    With half = dim // 2 and frequencies omega_i = max_period^(-i/half), i = 0 .. half-1:

    emb[:, i]          = sin(omega_i t)    for i < half
    emb[:, half + i]   = cos(omega_i t)

    These are exactly Vaswani's frequencies, 1 / 10000^(2i/d_model) with 2i/d_model = i/half;
    Vaswani interleaves them (sin in dimension 2i, cos in 2i+1), here all sines come first,
    then all cosines: the same numbers in permuted dimensions. (Ho et al.'s released code,
    like tensor2tensor, divides by half - 1 instead of half, so its slowest frequency is
    exactly 1/max_period.) Returns a float tensor of shape (B, dim); ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


@dataclass
class ModelConfig(JSONConfig):
    """Everything needed to rebuild a model; stored inside every checkpoint."""

    arch: str = "unet"               # "unet" (standard DDPM) or "simple" (SimpleUNet)
    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple = (1, 2, 2)   # one entry per resolution; 28 -> 14 -> 7
    num_res_blocks: int = 2           # UNet only
    attention: bool = True            # UNet only: self-attention at the lowest resolution
    dropout: float = 0.0              # UNet only
    norm_groups: int = 8              # UNet only: GroupNorm groups
    num_timesteps: int = 1000         # valid timesteps are [0, num_timesteps)
    num_classes: int = 0              # UNet only: > 0 adds a class embedding (labels 0..num_classes-1, and
                                      # num_classes = "no label", for classifier-free guidance); 0: unconditional
    prediction: str = "eps"           # the network's output: the noise eps, the clean image x0, or v (Salimans &
                                      # Ho 2022), which samplers convert to eps (DiffusionSchedule.eps_from_prediction);
                                      # or "velocity", a flow-matching network's dx_t/dt (ddpm_lib.flow)
    time_embedding: str = "every_block"  # UNet only: "every_block" (DDPM) or "input" (added once, as SimpleUNet does)
    norm: str = "group"               # UNet only: "group" (GroupNorm, DDPM) or "batch" (BatchNorm, as SimpleUNet)

    def __post_init__(self):
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}: expected one of {', '.join(ARCHITECTURES)}")
        for name, allowed in (("prediction", PREDICTIONS), ("time_embedding", TIME_EMBEDDINGS), ("norm", NORMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be at least 0 (0: unconditional), got {self.num_classes}")
        if self.num_classes and self.arch != "unet":
            raise ValueError(f"class conditioning (num_classes={self.num_classes}) needs arch 'unet', got {self.arch!r}")
        groups = self.norm_groups if self.arch == "unet" and self.norm == "group" else 2
        if self.base_channels < 2 or self.base_channels % groups:
            why = (f"each GroupNorm has {groups} groups" if groups != 2 else
                   "the sinusoidal time embedding has as many dimensions, in sine-cosine pairs")
            raise ValueError(f"base_channels must be a positive multiple of {groups} ({why}), got {self.base_channels}")
        down = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % down:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by {down}, which "
                f"{len(self.channel_mults)} resolutions need; use fewer channel_mults"
            )


class _Base(nn.Module):
    """Input checks shared by both models."""

    config: ModelConfig

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> None:
        c = self.config
        expected = (c.image_channels, c.image_size, c.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            hint = "; add the channel axis with x.unsqueeze(1)" if x.dim() == 3 else ""
            raise ValueError(
                f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}{hint}"
            )
        if not isinstance(t, torch.Tensor) or t.dtype == torch.bool or t.is_complex():
            raise TypeError("timesteps must be a tensor of shape (B,): integers, or real numbers (a float tensor)")
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected timesteps of shape ({x.shape[0]},), got {tuple(t.shape)}")
        if not len(t):
            pass
        elif not t.dtype.is_floating_point:
            if int(t.min()) < 0 or int(t.max()) >= c.num_timesteps:
                raise ValueError(f"timestep out of range: got values in [{int(t.min())}, {int(t.max())}], "
                                 f"expected integers in [0, {c.num_timesteps})")
        elif not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > c.num_timesteps - 1:
            raise ValueError(f"timestep out of range: got real values in [{float(t.min()):g}, {float(t.max()):g}], "
                             f"expected finite numbers in [0, {c.num_timesteps - 1}] (between the first and the "
                             f"last of the {c.num_timesteps} steps)")
        if y is None:
            return
        if not c.num_classes:
            raise ValueError("this model is unconditional (num_classes=0): it takes no class labels; "
                             "train a model with num_classes > 0 (e.g. --preset conditional) to condition on a class")
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError("class labels must be an integer tensor of shape (B,)")
        if y.shape != (x.shape[0],):
            raise ValueError(f"expected class labels of shape ({x.shape[0]},), got {tuple(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) > c.num_classes):
            raise ValueError(
                f"class label out of range: got values in [{int(y.min())}, {int(y.max())}], expected 0..{c.num_classes - 1} "
                f"(or {c.num_classes}: no label)"
            )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------
# SimpleUNet: time added once, BatchNorm
# ---------------------------------------------------------------------------
class _ConvBNBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        )


class SimpleUNet(_Base):
    """A simpler UNet: time enters once, at the input (the first design this book grew from).

    conv_in -> (+ sinusoidal embedding of t, broadcast over pixels) -> a plain
    conv/BatchNorm/ReLU encoder-decoder with skip connections. There is no MLP
    on the embedding and no other place where the network sees t.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        chans = [config.base_channels * m for m in config.channel_mults]
        self.conv_in = nn.Conv2d(config.image_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        cin = chans[0]
        for c in chans:
            self.down.append(_ConvBNBlock(cin, c))
            cin = c
        self.mid = _ConvBNBlock(cin, cin)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            self.up.append(_ConvBNBlock(cin + c, c))
            if i > 0:
                self.upsample.append(nn.ConvTranspose2d(c, c, 2, stride=2))
            cin = c
        self.conv_out = nn.Conv2d(chans[0], config.image_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x, t, y)
        h = self.conv_in(x)
        h = h + sinusoidal_embedding(t, h.shape[1]).to(h.dtype)[:, :, None, None]  # the only use of t
        skips = []
        for i, block in enumerate(self.down):
            h = block(h)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.max_pool2d(h, 2)
        h = self.mid(h)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1))
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.conv_out(h)


# ---------------------------------------------------------------------------
# The standard DDPM UNet
# ---------------------------------------------------------------------------
def _norm(kind: str, groups: int, channels: int) -> nn.Module:
    """GroupNorm (the DDPM UNet's) or BatchNorm (SimpleUNet's, kept for the ablation)."""
    return nn.GroupNorm(groups, channels) if kind == "group" else nn.BatchNorm2d(channels)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus a projection of the time embedding, twice,
    with a residual connection (the block of Ho et al. 2020, appendix B).

    ``temb_dim=0`` builds the block without its time projection (for a network
    that sees t only at its input); ``norm="batch"`` uses BatchNorm instead of
    GroupNorm.
    """

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, dropout: float, norm: str = "group"):
        super().__init__()
        self.norm1 = _norm(norm, groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2 = _norm(norm, groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb is not None:
            h = h + self.temb(F.silu(temb))[:, :, None, None]  # time enters every block
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels with a residual connection."""

    def __init__(self, channels: int, groups: int, norm: str = "group"):
        super().__init__()
        self.norm = _norm(norm, groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, hgt * wid).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # (b, hw, c)
        return x + self.proj(h.transpose(-1, -2).reshape(b, c, hgt, wid))


class UNet(_Base):
    """The standard DDPM UNet (Ho et al. 2020, appendix B), sized for 28x28 digits.

    Sinusoidal embedding -> MLP -> added to every :class:`ResBlock`; GroupNorm;
    ``num_res_blocks`` residual blocks per resolution; strided-conv downsampling
    and nearest-neighbour upsampling; optional self-attention at the lowest
    resolution (7x7 for MNIST).

    With ``config.num_classes`` = K > 0 the network is class-conditional, as in
    classifier-free guidance (Ho & Salimans 2022): an embedding of the label
    y in {0..K-1}, or K for "no label" (the null class), is added to the time
    embedding, so it reaches every block by the same path as t. Called without
    ``y``, a conditional network gets the null class: an unconditional
    prediction.

    Two switches exist for the ablation chapter: ``time_embedding="input"``
    adds the time embedding once, to the first feature map (projected to its
    channels), instead of to every block; ``norm="batch"`` swaps every
    GroupNorm for BatchNorm.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        ch = config.base_channels
        temb_dim = 4 * ch
        g, p = config.norm_groups, config.dropout
        chans = [ch * m for m in config.channel_mults]
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        at_input = config.time_embedding == "input"
        self.temb_in = nn.Linear(temb_dim, ch) if at_input else None
        block_temb = 0 if at_input else temb_dim
        # num_classes + 1 rows: the last one is the null label ("no class"), learned like the others
        self.class_emb = nn.Embedding(config.num_classes + 1, temb_dim) if config.num_classes else None
        self.conv_in = nn.Conv2d(config.image_channels, ch, 3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_chans = [ch]
        cin = ch
        for level, c in enumerate(chans):
            for _ in range(config.num_res_blocks):
                self.down_blocks.append(ResBlock(cin, c, block_temb, g, p, config.norm))
                cin = c
                skip_chans.append(c)
            if level < len(chans) - 1:
                self.downsamples.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_chans.append(c)

        self.mid1 = ResBlock(cin, cin, block_temb, g, p, config.norm)
        self.mid_attn = SelfAttention(cin, g, config.norm) if config.attention else nn.Identity()
        self.mid2 = ResBlock(cin, cin, block_temb, g, p, config.norm)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level, c in reversed(list(enumerate(chans))):
            for _ in range(config.num_res_blocks + 1):
                self.up_blocks.append(ResBlock(cin + skip_chans.pop(), c, block_temb, g, p, config.norm))
                cin = c
            if level > 0:
                self.upsamples.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out = _norm(config.norm, g, cin)
        self.conv_out = nn.Conv2d(cin, config.image_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t) or, for a conditional network, eps_theta(x_t, t, y); ``y`` (B,) holds class labels
        (``num_classes`` = the null label; ``None`` = null label for all)."""
        self.check_inputs(x, t, y)
        c = self.config
        temb = self.time_mlp(sinusoidal_embedding(t, c.base_channels).to(x.dtype))
        if self.class_emb is not None:
            if y is None:
                y = torch.full(t.shape, c.num_classes, dtype=torch.long, device=t.device)
            temb = temb + self.class_emb(y.to(t.device)).to(temb.dtype)
        h = self.conv_in(x)
        if self.temb_in is not None:      # time at the input only: added once, like SimpleUNet
            h = h + self.temb_in(F.silu(temb))[:, :, None, None]
        skips = [h]
        blocks = iter(self.down_blocks)
        for level in range(len(c.channel_mults)):
            for _ in range(c.num_res_blocks):
                h = next(blocks)(h, temb)
                skips.append(h)
            if level < len(c.channel_mults) - 1:
                h = self.downsamples[level](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        blocks = iter(self.up_blocks)
        for level in range(len(c.channel_mults)):
            for _ in range(c.num_res_blocks + 1):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), temb)
            if level < len(c.channel_mults) - 1:
                h = self.upsamples[level](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def build_model(config: ModelConfig | dict | None = None, **overrides) -> nn.Module:
    """Build :class:`UNet` or :class:`SimpleUNet` from a config (or keyword overrides)."""
    if config is None:
        config = ModelConfig(**overrides)
    elif isinstance(config, dict):
        config = ModelConfig.from_dict({**config, **overrides})
    elif overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    return UNet(config) if config.arch == "unet" else SimpleUNet(config)
