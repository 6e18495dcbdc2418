"""The empirical optimum: the closed-form minimiser of the denoising objective on a finite training set,
its sharded and smoothed variants, and the float64 brute-force references it is tested against."""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base import distributed
from ..base.util import tiles
from .schedule import Schedule, add_noise, eps_from_x0

ALIGN = 8  # key widths are padded with zero columns to a multiple of this (fused kernels, cuBLAS row alignment)
CHUNK = 1 << 25  # the brute-force references hold at most this many pairwise differences at once (256 MiB, float64)


@contextmanager
def exact_matmuls(device_type: str):
    """Inside: float32 matmuls in IEEE float32 (no TF32 on CUDA, no bf16 in oneDNN on the CPU) and autocast off,
    whatever the caller set (torch.set_float32_matmul_precision, the fp32_precision flags, torch.autocast); the
    caller's settings come back on exit."""
    flags = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)
    saved = [f.fp32_precision for f in flags]
    try:
        for f in flags:
            f.fp32_precision = "ieee"
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        for f, value in zip(flags, saved):
            f.fp32_precision = value


class Denoiser(Protocol):
    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat(x_t, t): [B, D], [B] (long) -> [B, D]."""


@dataclass(frozen=True)
class WeightStats:
    """Diagnostics of the softmax weights w(x_t, t) over the training set, one value per query."""

    entropy: torch.Tensor  # [B] nats, H(w) = -sum_i w_i log w_i; 0 means all weight on one training point
    nearest: torch.Tensor  # [B] long, argmax_i w_i = the training point nearest to x_t / sqrt(abar_t)
    max_weight: torch.Tensor  # [B] max_i w_i


def time_batch(t, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    if t.dtype.is_floating_point:
        raise TypeError(f"t must hold integer time steps; got dtype {t.dtype}")
    t = t.expand(batch) if t.ndim == 0 else t
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},); got {tuple(t.shape)}")
    return t


class EmpiricalOptimum:
    """eps*(x, t), the exact minimiser of the denoising objective on a finite training set.

    One pass over the training set in tiles with a per-query running max, normaliser and accumulator (the online
    log-sum-exp of flash attention): memory O(B x tile), never a B x N matrix. With `fused=True` the same
    computation runs in torch's fused attention kernel where one exists and it is the faster path. Which path runs
    (`path(device)`):
    - CPU: the fused flash-attention kernel (float32 and float64) up to D = CPU_FUSED_MAX_DIM, the tiled loop above;
    - CUDA, float32: the fused memory-efficient attention kernel (on sm80 and later its float32 products are
      CUTLASS's 3xTF32, float32-accurate and independent of the TF32 settings);
    - CUDA, float64: the tiled loop (no fused float64 kernel), with tiles of CUDA_LOGITS // B training points.
    The keys [x_i - m, |x_i - m|^2] are stored once, padded with zero columns to a multiple of `align` (fused kernels
    need widths that are multiples of 8, cuBLAS 16-byte rows): a zero column adds 0 to every logit, and the padded
    value columns are dropped. They also serve as the values. Logits are computed in float32 or float64 as asked,
    never in TF32 or bf16 (`exact_matmuls`), whatever the caller set.
    """

    # On the CPU the flash-attention kernel leads at D = 64 and 784 but trails the tiled loop at D = 3072 (0.65 vs
    # 0.77 of same-run matmul throughput, benchmarks/bench_empirical.py): above this width the loop runs instead.
    CPU_FUSED_MAX_DIM = 2048
    CPU_TILE = 512  # training points per tile of the loop on the CPU (when `tile` is None)
    CUDA_LOGITS = 1 << 24  # on CUDA a tile of the loop holds B x tile = 2^24 logits (128 MiB in float64)

    def __init__(self, train: torch.Tensor, sched: Schedule, *, dtype: torch.dtype = torch.float32,
                 tile: int | None = None, fused: bool = True, centre: torch.Tensor | None = None, align: int = ALIGN):
        if train.ndim != 2 or len(train) == 0:
            raise ValueError(f"train must be a non-empty [N, D] tensor; got shape {tuple(train.shape)}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
        if tile is not None and tile < 1:
            raise ValueError(f"tile must be None (sized per device) or >= 1; got {tile}")
        if align < 1:
            raise ValueError(f"align must be >= 1; got {align}")
        if centre is not None and centre.shape != train.shape[1:]:
            raise ValueError(f"centre must have shape [{train.shape[1]}]; got {tuple(centre.shape)}")
        self.sched, self.dtype, self.tile, self.fused, self.align = sched, dtype, tile, fused, align
        self.train = train  # [N, D] as given, not copied: the float64 diagnostics rebuild from it
        (N, D), rows = train.shape, list(tiles(len(train), 4096))
        # [D] m, float64 (the centring is exact up to one rounding): the set's mean unless given (a sharded set's)
        self._mean = (sum(train[sl].to(torch.float64).sum(0) for sl in rows) / N if centre is None
                      else centre.to(train.device, torch.float64))
        # [N, W] keys and values [x_i - m, |x_i - m|^2, 0...], W = D + 1 rounded up to a multiple of align; filled in
        # tiles, so that building it never holds a second copy of the set
        self._keys = train.new_zeros((N, -(-(D + 1) // align) * align), dtype=dtype)
        for sl in rows:
            centred = self._keys[sl, :D]
            centred.copy_(train[sl].to(torch.float64) - self._mean)
            self._keys[sl, D] = centred.pow(2).sum(1)

    def __repr__(self) -> str:
        return f"EmpiricalOptimum(N={len(self.train)}, D={self.train.shape[1]}, dtype={self.dtype}, tile={self.tile})"

    def to(self, device) -> "EmpiricalOptimum":
        """The same denoiser with its training set on `device`."""
        moved = copy.copy(self)
        moved.train, moved._mean, moved._keys = (v.to(device) for v in (self.train, self._mean, self._keys))
        return moved

    def path(self, device) -> str:
        """'fused' or 'tiled': what x0_star runs for queries on `device` (see the class docstring)."""
        device = torch.device(device)
        if not self.fused:
            return "tiled"
        if device.type == "cpu":
            return "fused" if self.train.shape[1] <= self.CPU_FUSED_MAX_DIM else "tiled"
        return "fused" if self.dtype == torch.float32 else "tiled"

    def tile_size(self, device, batch: int) -> int:
        """Training points per tile of the loop: `tile` when given; else CPU_TILE on the CPU and CUDA_LOGITS // B
        (at least CPU_TILE) elsewhere."""
        if self.tile is not None:
            return self.tile
        if torch.device(device).type == "cpu":
            return self.CPU_TILE
        return max(self.CPU_TILE, self.CUDA_LOGITS // max(batch, 1))

    def _variance(self, abar: torch.Tensor) -> torch.Tensor:
        """Variance of each mixture component of x_t: s^2 = 1 - abar_t."""
        return 1 - abar

    def _query(self, xt: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-query coefficients a = sqrt(abar_t), c = a / s^2 as [B] tensors, and the centred query x - a m in the
        working dtype."""
        if xt.ndim != 2 or xt.shape[1] != self.train.shape[1]:
            raise ValueError(f"xt must have shape [B, {self.train.shape[1]}]; got {tuple(xt.shape)}")
        t = time_batch(t, len(xt), xt.device)
        if bool((t < 1).any()):
            raise ValueError("t must be >= 1: the optimum is undefined at t = 0 (no noise)")
        abar = self.sched.alpha_bar(t)
        a = abar.sqrt().to(self.dtype)
        c = (abar.sqrt() / self._variance(abar)).to(self.dtype)
        mean = self._mean.to(xt.device)
        centred = (xt.to(torch.float64) - abar.sqrt().to(torch.float64)[:, None] * mean).to(self.dtype)
        return centred, a, c

    def x0_star(self, xt: torch.Tensor, t) -> torch.Tensor:
        """x0*(x_t, t) = m + sum_i w_i (x_i - m) = sum_i w_i x_i, [B, D] in self.dtype."""
        x, a, c = self._query(xt, t)
        with exact_matmuls(x.device.type):
            out = self._x0_fused(x, a, c) if self.path(x.device) == "fused" else None
            out = self._x0_tiled(x, a, c)[0] if out is None else out
        return out + self._mean.to(device=out.device, dtype=self.dtype)

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        """eps*(x_t, t) = (x_t - sqrt(abar_t) x0*) / sqrt(1 - abar_t)."""
        t = time_batch(t, len(xt), xt.device)
        return eps_from_x0(self.sched, xt.to(self.dtype), t, self.x0_star(xt, t))

    def weights(self, xt: torch.Tensor, t) -> torch.Tensor:
        """w(x_t, t) [B, N] as a dense matrix, in float64 (diagnostics on small sets: O(B N) memory)."""
        opt = self if self.dtype == torch.float64 else copy.copy(self)._as_float64()
        x, a, c = opt._query(xt, t)
        with exact_matmuls(x.device.type):
            return torch.softmax(opt._query_rows(x, a, c) @ opt._keys.to(x.device).T, dim=1)

    def weight_stats(self, xt: torch.Tensor, t) -> WeightStats:
        """Entropy, argmax and max of w(x_t, t), accumulated online in float64."""
        opt = self if self.dtype == torch.float64 else copy.copy(self)._as_float64()
        x, a, c = opt._query(xt, t)
        with exact_matmuls(x.device.type):
            _, lse, mean_logit, nearest, max_logit = opt._x0_tiled(x, a, c, stats=True)
        return WeightStats(entropy=(lse - mean_logit).clamp(min=0), nearest=nearest, max_weight=(max_logit - lse).exp())

    def _as_float64(self) -> "EmpiricalOptimum":
        """Rebuild the keys in float64 from the data as given (not from a rounded copy)."""
        EmpiricalOptimum.__init__(self, self.train, self.sched, dtype=torch.float64, tile=self.tile, fused=False,
                                  centre=self._mean, align=self.align)
        return self

    def _query_rows(self, x, a, c) -> torch.Tensor:
        """q [B, W] = c [x, -a/2, 0...], so that q . [x_i, |x_i|^2, 0...] is the logit l_i."""
        q = x.new_zeros((len(x), self._keys.shape[1]))
        q[:, :x.shape[1]] = c[:, None] * x
        q[:, x.shape[1]] = c * (-0.5 * a)
        return q

    def _x0_fused(self, x, a, c) -> torch.Tensor | None:
        q = self._query_rows(x, a, c)
        backends = [SDPBackend.FLASH_ATTENTION] if x.device.type == "cpu" else [SDPBackend.EFFICIENT_ATTENTION]
        keys = self._keys.to(x.device)[None, None]
        try:
            with sdpa_kernel(backends):
                out = F.scaled_dot_product_attention(q[None, None], keys, keys, scale=1.0)[0, 0]
        except RuntimeError as e:  # no fused kernel for this device/dtype/width: say so, then use the tiled loop
            warnings.warn(f"EmpiricalOptimum: no fused attention kernel for {self.dtype} rows of width "
                          f"{keys.shape[-1]} on {x.device} ({str(e).splitlines()[0]}); using the tiled loop",
                          RuntimeWarning, stacklevel=3)
            return None
        return out[:, :x.shape[1]]

    def _x0_tiled(self, x, a, c, stats: bool = False, partial: bool = False):
        """Online log-sum-exp over training tiles; each query row keeps its own running max m. partial=True: the
        running max, normaliser and accumulator (m [B], l [B], acc [B, D]) instead of x0 = acc / l."""
        (B, D), dev = x.shape, x.device
        q = self._query_rows(x, a, c)
        keys = self._keys.to(dev)
        m = torch.full((B,), -torch.inf, dtype=self.dtype, device=dev)
        l = torch.zeros(B, dtype=self.dtype, device=dev)
        acc = torch.zeros_like(q)  # [B, W]: sum_i exp(l_i - m) keys_i; its first D columns are the values' sum
        wsum_logit = torch.zeros(B, dtype=self.dtype, device=dev)  # sum_i exp(l_i - m) (l_i - m), for the entropy
        best = torch.zeros(B, dtype=torch.long, device=dev)
        for sl in tiles(len(keys), self.tile_size(dev, B)):
            logits = q @ keys[sl].T  # [B, tile]
            tile_max, tile_arg = logits.max(1)
            m_new = torch.maximum(m, tile_max)
            rescale = (m - m_new).exp_()
            centred = logits.sub_(m_new[:, None])  # l_i - m_new, in place
            if stats:
                # re-centre the running sum from the old max to the new one: (l - m_old) = (l - m_new) + (m_new - m_old)
                shift = torch.where(l > 0, m - m_new, torch.zeros_like(m))
                p = centred.exp()
                wsum_logit = rescale * (wsum_logit + shift * l) + (p * centred).sum(1)
                best = torch.where(tile_max > m, tile_arg + sl.start, best)
            else:
                p = centred.exp_()
            l = rescale * l + p.sum(1)
            acc = torch.addmm(acc.mul_(rescale[:, None]), p, keys[sl])
            m = m_new
        acc = acc[:, :D]
        if partial:
            return m, l, acc
        x0 = acc / l[:, None]
        if not stats:
            return (x0,)
        lse = m + l.log()
        return x0, lse, m + wsum_logit / l, best, m


class ShardedOptimum:
    """eps*(x, t) over a training set split across processes (torchrun): this process holds one shard [N_r, D].

    Each process runs the tiled online log-sum-exp over its shard and one exact merge combines the running maxima,
    normalisers and weighted sums of all shards (distributed.merge_across_ranks), so x0* is the softmax mean over the
    whole set, never an average of per-shard means. The shards are centred on the whole set's mean (one all-reduce),
    so their logits share one offset. With one process it is EmpiricalOptimum(shard) with the tiled loop."""

    def __init__(self, shard: torch.Tensor, sched: Schedule, *, dtype: torch.dtype = torch.float32,
                 tile: int | None = None):
        if shard.ndim != 2 or len(shard) == 0:
            raise ValueError(f"shard must be a non-empty [N_r, D] tensor; got shape {tuple(shard.shape)}")
        total = distributed.all_reduce_sum(
            torch.cat([shard.to(torch.float64).sum(0), shard.new_tensor([len(shard)], dtype=torch.float64)]))
        self.n_total = int(total[-1])  # N, the points of all shards
        self.local = EmpiricalOptimum(shard, sched, dtype=dtype, tile=tile, fused=False,
                                      centre=total[:-1] / total[-1])
        self.sched = sched

    def __repr__(self) -> str:
        return f"ShardedOptimum(N={self.n_total} over {distributed.world_size()} processes, local {self.local!r})"

    def x0_star(self, xt: torch.Tensor, t) -> torch.Tensor:
        """x0*(x_t, t) = sum_i w_i x_i over every shard's points, [B, D]; every process gets the same value."""
        opt = self.local
        x, a, c = opt._query(xt, t)
        with exact_matmuls(x.device.type):
            m, l, acc = opt._x0_tiled(x, a, c, partial=True)
        return distributed.merge_across_ranks(m, l, acc) + opt._mean.to(device=acc.device, dtype=opt.dtype)

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        t = time_batch(t, len(xt), xt.device)
        return eps_from_x0(self.sched, xt.to(self.local.dtype), t, self.x0_star(xt, t))


class SmoothedOptimum(EmpiricalOptimum):
    """The exact denoiser of the Gaussian kernel density p_h = (1/N) sum_i N(x_i, h^2 I) (the empirical optimum
    for training data x_i + h xi): x_t is then a mixture of N(a x_i, v I) with v = s^2 + a^2 h^2, so
    w_i = softmax_i(-||x - a x_i||^2 / (2 v)) and x0_hat = (s^2 / v) sum_i w_i x_i + (a h^2 / v) x.
    h = 0 is the empirical optimum; a sampler driven by it draws from p_h instead of copying."""

    def __init__(self, train: torch.Tensor, sched: Schedule, bandwidth: float, **kwargs):
        if not bandwidth >= 0:
            raise ValueError(f"bandwidth must be >= 0; got {bandwidth}")
        self.bandwidth = float(bandwidth)
        super().__init__(train, sched, **kwargs)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", bandwidth={self.bandwidth})"

    def _variance(self, abar: torch.Tensor) -> torch.Tensor:
        return 1 - abar + abar * self.bandwidth**2

    def _as_float64(self) -> "SmoothedOptimum":
        self.__init__(self.train, self.sched, self.bandwidth, dtype=torch.float64, tile=self.tile, fused=False,
                      align=self.align)
        return self

    def x0_star(self, xt: torch.Tensor, t) -> torch.Tensor:
        mean = super().x0_star(xt, t)  # sum_i w_i x_i with the widened variance v
        abar = self.sched.alpha_bar(time_batch(t, len(xt), xt.device))[:, None]
        v = self._variance(abar)
        return ((1 - abar) / v).to(self.dtype) * mean + (abar.sqrt() * self.bandwidth**2 / v).to(self.dtype) * xt.to(
            self.dtype)


def squared_distances(x: torch.Tensor, train: torch.Tensor, a: float, *, chunk: int = CHUNK) -> torch.Tensor:
    """||x_b - a x_i||^2 [B, N] in float64 from explicit differences, over tiles of the training set [N, D]: at most
    `chunk` differences (a [B, tile, D] block) at once, never all B N D."""
    x = x.to(torch.float64)
    out = torch.empty(len(x), len(train), dtype=torch.float64, device=x.device)
    for sl in tiles(len(train), max(1, chunk // max(x.numel(), 1))):
        out[:, sl] = (x[:, None, :] - a * train[sl].to(device=x.device, dtype=torch.float64)[None]).square_().sum(-1)
    return out


def weighted_sum(w: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """sum_i w_i x_i [B, D] in float64 for weights w [B, N], over tiles of the training set (no float64 copy of it)."""
    out = torch.zeros(len(w), train.shape[1], dtype=torch.float64, device=w.device)
    for sl in tiles(len(train), 4096):
        out.addmm_(w[:, sl], train[sl].to(device=w.device, dtype=torch.float64))
    return out


def x0_star_reference(xt: torch.Tensor, train: torch.Tensor, abar: float, *, chunk: int = CHUNK) -> torch.Tensor:
    """Brute-force float64 x0* = sum_i w_i x_i, w = softmax_i(-||x - sqrt(abar) x_i||^2 / (2 (1 - abar))) from
    explicit squared differences (squared_distances: tiles of N, [B, N] logits, never [B, N, D])."""
    w = torch.softmax(-squared_distances(xt, train, abar**0.5, chunk=chunk) / (2 * (1 - abar)), dim=1)
    return weighted_sum(w, train)


def reference_errors(variants: dict, train: torch.Tensor, sched: Schedule, times, n_queries: int,
                     generator: torch.Generator) -> dict[tuple[int, str], dict[str, float]]:
    """max |x0*(x, t) - x0_star_reference(x, t)| of each denoiser in `variants` (name -> EmpiricalOptimum on `train`)
    at each t, on two kinds of query: noisy training points x_t ("noisy training") and exact midpoints
    a (x_i + x_j) / 2 ("midpoints (ties)"), where two weights tie and the softmax is worst conditioned.
    Returns (t, kind) -> name -> error."""
    i, j = (torch.randint(len(train), (n_queries,), generator=generator) for _ in range(2))
    x, y = train[i].to(torch.float64), train[j].to(torch.float64)
    errors = {}
    for t in times:
        a = float(sched.abar[t]) ** 0.5
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(train.device)
        for kind, xt in [("noisy training", add_noise(sched, x, t, noise)), ("midpoints (ties)", a * (x + y) / 2)]:
            reference = x0_star_reference(xt, train, a**2)
            errors[t, kind] = {name: float((opt.x0_star(xt, t).double() - reference).abs().max())
                               for name, opt in variants.items()}
    return errors


def max_error(errors: dict, names=None, kind: str | None = None) -> float:
    """The largest error of reference_errors' output over the denoisers `names` (None: all) and queries of `kind`
    (None: both kinds)."""
    return max(err for (_, k), row in errors.items() if kind in (None, k)
               for name, err in row.items() if names is None or name in names)
