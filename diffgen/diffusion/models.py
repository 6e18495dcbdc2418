"""Trainable noise predictors eps_theta(x_t, t), with the denoiser interface of diffgen.diffusion.optimum.

Every model maps x_t [B, D] (flat, any float dtype) and integer time steps t ([B] or a scalar, 1..T) to
eps_hat [B, D] in x_t's dtype: the input is cast to the parameters' dtype inside (samplers call with float64).
Time enters through a sinusoidal embedding of t (as a float) followed by an MLP, added inside every block.
The last layer is zero-initialised, so an untrained model predicts eps_hat = 0.

Precision is explicit: a model runs its body under bfloat16 autocast on the device types in its `autocast` (U-Nets:
CUDA by default, weights and output stay float32) and with autocast switched off elsewhere, whatever autocast the
caller has on. Attention always runs in float32 with autocast off (see _Attention), so members trained together
under torch.func.vmap, which decomposes scaled_dot_product_attention before autocast sees it, compute it as one
member alone does.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..base.util import check_positive

AUTOCAST_DEVICES = ("cpu", "cuda")  # device types a model's `autocast` may name


def time_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B, dim] = [sin(t f_k), cos(t f_k)], f_k = max_period^(-k / (dim/2)), k = 0..dim/2-1 (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def _times(t, batch: int, device) -> torch.Tensor:
    """t as a long tensor [B] on `device` (a scalar is broadcast); float times are a TypeError."""
    t = torch.as_tensor(t, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"t must hold integer time steps; got dtype {t.dtype}")
    t = t.expand(batch) if t.ndim == 0 else t
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},); got {tuple(t.shape)}")
    return t


class _TimeMLP(nn.Module):
    """sinusoid(t) [B, time_dim] -> Linear -> SiLU -> Linear -> [B, out]."""

    def __init__(self, time_dim: int, out: int):
        super().__init__()
        self.time_dim = time_dim
        self.net = nn.Sequential(nn.Linear(time_dim, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(time_embedding(t, self.time_dim))


def _autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on `device` when enabled, autocast switched off there when not (nothing on devices
    without autocast, such as meta)."""
    if device.type not in AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class _Denoiser(nn.Module):
    """Shared edge of every model: check x [B, D], cast to the parameters' dtype and back."""

    dim: int
    autocast: tuple[str, ...] = ()  # device types whose forward runs under bfloat16 autocast

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """eps_hat(x_t, t): x [B, D] any float dtype, t [B] or scalar integer -> [B, D] in x's dtype."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}]; got {tuple(x.shape)}")
        t = _times(t, len(x), x.device)
        param = next(self.parameters())
        with _autocast(x.device, x.device.type in self.autocast):
            eps = self._eps(x.to(param.dtype), t)
        return eps.to(x.dtype)

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------- MLP

class _MLPBlock(nn.Module):
    """h + W2 SiLU(W1 LayerNorm(h) + W_e SiLU(emb)): pre-norm residual block with the time added inside."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.emb(F.silu(emb))))


class MLPDenoiser(_Denoiser):
    """eps_theta(x, t) = W_out SiLU(LN(h_depth)), h_{k+1} = block_k(h_k, emb(t)), h_0 = W_in x; for [B, D] data."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 64):
        super().__init__()
        check_positive(dim=dim, hidden=hidden, depth=depth)
        _check_time_dim(time_dim)
        self.dim = dim
        self.time = _TimeMLP(time_dim, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        _zero(self.out)

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(t)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


class PlainMLP(_Denoiser):
    """eps_theta(x, t) = W_out h_depth + b_out, h_{k+1} = SiLU(W_k h_k + b_k), h_0 = [x, sinusoid(t)]: the small net of
    the 2-D experiments (cheap enough to train hundreds at once); W_out = 0 at initialisation."""

    def __init__(self, dim: int, hidden: int = 64, depth: int = 3, time_dim: int = 32):
        super().__init__()
        check_positive(dim=dim, hidden=hidden, depth=depth)
        _check_time_dim(time_dim)
        self.dim, self.time_dim = dim, time_dim
        sizes = [dim + time_dim] + [hidden] * depth + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        _zero(self.layers[-1])

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, time_embedding(t, self.time_dim).to(x.dtype)], dim=1)
        for layer in self.layers[:-1]:
            h = F.silu(layer(h))
        return self.layers[-1](h)


# ---------------------------------------------------------------------------------------------------- U-Net

def _groups(channels: int) -> int:
    """GroupNorm groups: DDPM's 32 from 128 channels up (4 or more channels per group), else the largest of 8, 4,
    2, 1 dividing `channels`."""
    if channels >= 128 and channels % 32 == 0:
        return 32
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class _ResBlock(nn.Module):
    """h + conv(Dropout(SiLU(GN(conv(SiLU(GN(h))) + W_e SiLU(emb))))), with a 1x1 conv on the skip when channels
    change (DDPM's residual block: dropout between the two convolutions)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # p = 0 draws no masks at all
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.silu(self.norm1(h))) + self.emb(F.silu(emb))[:, :, None, None]
        r = self.conv2(self.dropout(F.silu(self.norm2(r))))
        return self.skip(h) + r


class _Attention(nn.Module):
    """h + proj(softmax(q k^T / sqrt(C)) v) over the H W positions, q, k, v = 1x1 convs of GN(h): the single-head
    self-attention block of the DDPM U-Net (Ho et al. 2020), through torch's fused attention.

    q, k, v and the attention are float32 with autocast off, on every device: under bfloat16 autocast and
    torch.func.vmap (members trained together), vmap decomposes scaled_dot_product_attention into matmuls and a
    softmax before autocast sees it, and CUDA's softmax backward then refuses a bfloat16 input with a float32 result.
    In float32 the decomposed and the fused attention agree, and the cost is small (attention runs at 16x16 only;
    its products are about 3 % of DDPM's U-Net FLOPs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, C, H, W = h.shape
        qkv = self.qkv(self.norm(h))
        with _autocast(h.device, False):
            q, k, v = qkv.float().reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # [B, HW, C] each
            out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return h + self.proj(out.transpose(1, 2).reshape(B, C, H, W))


class _Up(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(h, scale_factor=2, mode="nearest"))


class UNetDenoiser(_Denoiser):
    """DDPM's U-Net (Ho et al. 2020, their diffusion_tf/models/unet.py) on x reshaped to [B, C, H, W]: a 3x3 conv in;
    per level k (channels base * mults[k]) `blocks` residual blocks, then a stride-2 conv down (but the last level);
    two middle blocks; per level on the way up `blocks` + 1 residual blocks, each taking the concatenated output of
    the matching step down (the input conv, every block, every downsampling), then nearest-up + conv; GN, SiLU,
    3x3 conv out, flattened to [B, D]. Self-attention follows each block at the resolutions in `attention` (and the
    first middle block when `attention` is set); `dropout` sits inside every residual block."""

    def __init__(self, shape: tuple[int, int, int] = (1, 8, 8), base: int = 32, mults: tuple[int, ...] = (1, 2),
                 time_dim: int = 64, blocks: int = 1, attention: tuple[int, ...] = (),
                 autocast: tuple[str, ...] = (), dropout: float = 0.0):
        super().__init__()
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"shape must be (C, H, W) of positive integers; got {shape!r}")
        check_positive(base=base, blocks=blocks)
        if len(mults) == 0 or not all(isinstance(m, int) and m >= 1 for m in mults):
            raise ValueError(f"mults must be a non-empty tuple of positive integers; got {mults!r}")
        _check_time_dim(time_dim)
        c, h, w = shape
        factor = 2 ** (len(mults) - 1)
        if h % factor or w % factor:
            raise ValueError(f"H and W must be divisible by 2^(len(mults) - 1) = {factor}; got shape {shape}")
        self.shape, self.dim, self.autocast, self.blocks = tuple(shape), c * h * w, tuple(autocast), blocks
        emb_dim = 4 * base
        chans = [base * m for m in mults]
        attend = lambda k: h // 2 ** k in attention  # noqa: E731  (level k works at resolution H / 2^k)
        block = lambda cin, cout: _ResBlock(cin, cout, emb_dim, dropout)  # noqa: E731
        self.time = _TimeMLP(time_dim, emb_dim)
        self.inp = nn.Conv2d(c, base, 3, padding=1)
        self.down = nn.ModuleList()  # (block, attention or identity) pairs, level by level
        self.downsample = nn.ModuleList()
        prev, skip_chans = base, [base]  # the channels of every output the way up concatenates, in order
        for k, ch in enumerate(chans):
            for _ in range(blocks):
                self.down.append(_Stage(block(prev, ch), ch, attend(k)))
                prev = ch
                skip_chans.append(ch)
            if k < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chans.append(ch)
        self.mid = nn.ModuleList([_Stage(block(prev, prev), prev, bool(attention)),
                                  _Stage(block(prev, prev), prev, False)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for k in reversed(range(len(chans))):
            for _ in range(blocks + 1):  # input: h concatenated with the output of the matching step down
                self.up.append(_Stage(block(prev + skip_chans.pop(), chans[k]), chans[k], attend(k)))
                prev = chans[k]
            if k > 0:
                self.upsample.append(_Up(prev))
        self.out_norm = nn.GroupNorm(_groups(prev), prev)
        self.out = nn.Conv2d(prev, c, 3, padding=1)
        _zero(self.out)

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(t)
        h = self.inp(x.reshape(len(x), *self.shape))
        levels, down, up, skips = len(self.downsample) + 1, iter(self.down), iter(self.up), [h]
        for k in range(levels):
            for _ in range(self.blocks):
                h = next(down)(h, emb)
                skips.append(h)
            if k < levels - 1:
                h = self.downsample[k](h)
                skips.append(h)
        for stage in self.mid:
            h = stage(h, emb)
        for k in range(levels):
            for _ in range(self.blocks + 1):
                h = next(up)(torch.cat([h, skips.pop()], dim=1), emb)
            if k < levels - 1:
                h = self.upsample[k](h)
        return self.out(F.silu(self.out_norm(h))).reshape(len(x), self.dim)


class _Stage(nn.Module):
    """A residual block, followed by self-attention when `attend`."""

    def __init__(self, block: _ResBlock, channels: int, attend: bool):
        super().__init__()
        self.block = block
        self.attn = _Attention(channels) if attend else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.block(h, emb))


# --------------------------------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class MLPConfig:
    """An MLPDenoiser on prod(shape) inputs (2-D toys, or images flattened)."""

    hidden: int = 256  # width of every residual block
    depth: int = 3  # number of residual blocks
    time_dim: int = 64  # size of the sinusoidal embedding of t (even)

    def __post_init__(self):
        check_positive(hidden=self.hidden, depth=self.depth)
        _check_time_dim(self.time_dim)

    def build(self, shape: tuple[int, ...]) -> MLPDenoiser:
        """A fresh model for per-sample data shape `shape` (D = prod(shape)); init from torch's global RNG."""
        if len(shape) == 0 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"shape must be a non-empty tuple of positive integers; got {shape!r}")
        return MLPDenoiser(math.prod(shape), self.hidden, self.depth, self.time_dim)


@dataclass(frozen=True)
class PlainMLPConfig:
    """A PlainMLP on prod(shape) inputs."""

    hidden: int = 64  # width of every hidden layer
    depth: int = 3  # hidden layers
    time_dim: int = 32  # size of the sinusoidal embedding of t (even)

    def __post_init__(self):
        check_positive(hidden=self.hidden, depth=self.depth)
        _check_time_dim(self.time_dim)

    def build(self, shape: tuple[int, ...]) -> PlainMLP:
        """A fresh model for per-sample data shape `shape`; init from torch's global RNG."""
        if len(shape) == 0 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise ValueError(f"shape must be a non-empty tuple of positive integers; got {shape!r}")
        return PlainMLP(math.prod(shape), self.hidden, self.depth, self.time_dim)


@dataclass(frozen=True)
class UNetConfig:
    """A UNetDenoiser for images of shape (C, H, W), H and W divisible by 2^(len(mults) - 1)."""

    base: int = 32  # channels of the first level
    mults: tuple[int, ...] = (1, 2)  # channel multiplier per level; each level after the first halves H and W
    time_dim: int = 64  # size of the sinusoidal embedding of t (even; DDPM: base)
    blocks: int = 1  # residual blocks per level on the way down, blocks + 1 on the way up (DDPM's CIFAR-10: 2)
    attention: tuple[int, ...] = ()  # resolutions (H) with self-attention after each block (DDPM: (16,))
    autocast: tuple[str, ...] = ("cuda",)  # device types run under bf16 autocast: CUDA; the CPU stays float32
    dropout: float = 0.0  # dropout probability inside every residual block (DDPM's CIFAR-10: 0.1)

    def __post_init__(self):
        check_positive(base=self.base, blocks=self.blocks)
        for name in ("mults", "attention", "autocast"):  # a list would make the config unhashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not all(isinstance(r, int) and r >= 1 for r in self.attention):
            raise ValueError(f"attention must be a tuple of positive resolutions; got {self.attention!r}")
        if len(self.mults) == 0 or not all(isinstance(m, int) and m >= 1 for m in self.mults):
            raise ValueError(f"mults must be a non-empty tuple of positive integers; got {self.mults!r}")
        if not set(self.autocast) <= set(AUTOCAST_DEVICES):
            raise ValueError(f"autocast must be a tuple of device types from {', '.join(AUTOCAST_DEVICES)}; got "
                             f"{self.autocast!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1); got {self.dropout!r}")
        _check_time_dim(self.time_dim)

    def build(self, shape: tuple[int, ...]) -> UNetDenoiser:
        """A fresh model for images of shape (C, H, W); init from torch's global RNG."""
        if len(shape) != 3:
            raise ValueError(f"UNetConfig needs an image shape (C, H, W); got {shape!r}")
        return UNetDenoiser(tuple(shape), self.base, self.mults, self.time_dim, self.blocks, self.attention,
                            self.autocast, float(self.dropout))


def parameter_count(model_cfg, shape: tuple[int, ...]) -> int:
    """The number of trainable parameters of model_cfg.build(shape) (built on the meta device: no memory, no
    draws from the global RNG)."""
    with torch.device("meta"):
        model = model_cfg.build(tuple(shape))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- checks

def _zero(layer: nn.Module) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def _check_time_dim(time_dim) -> None:
    if not isinstance(time_dim, int) or time_dim < 2 or time_dim % 2:
        raise ValueError(f"time_dim must be an even integer >= 2; got {time_dim!r}")
