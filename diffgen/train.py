"""Layer 4: train noise predictors on finite training sets, one or many at once, through the cache.

`train_ensemble(model_cfg, objective, sets, shape, cfg, seeds=...)` trains M members of one architecture at once:
member m is model_cfg.build(shape) initialised from seeds[m] and trained on sets[m] ([n_m, D]; sizes may differ).
Their parameters are stacked on a leading member dimension and evaluated with torch.func.vmap, so M nets cost one
batched pass (seeds and controls of an experiment train together). Members with the same seed share their
initialisation and their batch positions; members with the same seed and draw stream (streams[m], default 0) also
share the objective's draws (t, noise): then they differ only through their training sets, as the I(z; S) experiment
needs. Two objectives trained with one seed see the same batches (the batch positions have a generator of their own);
members with different seeds are independent runs. The loss is the sum of the
members' mean losses, Adam(W) and the EMA act elementwise and gradient clipping is per member, so training them
together is training them apart. `train(...)` is one member: a single network.

Optimisation: AdamW with linear warm-up and an optional cosine decay (`lr_at`), per-member global-norm gradient
clipping, an EMA of the weights
(`ema_decay`). Each step: per seed, u ~ U[0, 1)^B from its batch generator (batch positions floor(u n_m) into each
member's set, with replacement); per (seed, stream), the objective's draws from its draw generator (objective.draw).
The generators are _util.stream_generator(seed, 0) for batches and (seed, 1 + stream) for draws, made on the training
device: on the CPU the numbers are those of every earlier version, on CUDA they are drawn on the GPU. Dropout masks
(models with dropout > 0) come from the device's default generator, seeded from the first member's seed (and the
process's rank) inside a forked RNG (the caller's RNG is left alone); under vmap each member gets its own masks
(randomness="different"), drawn together as one tensor, so with dropout a member trained together with others
differs from the member trained alone by its masks (and only by them). Every cfg.checkpoint_every steps (and at
cfg.snapshots) an EMA snapshot is kept and a resumable checkpoint written, with the state of every generator the run
draws from; an interrupted run resumes from it, bit for bit on the CPU (on CUDA to rounding: cuDNN's autotuned
algorithms are not bitwise reproducible). The finished run is one artifact under its key (cache.artifact_key: the
configs, the data and the code of this module, of the model's and of the objective's): a second call loads it.

The step never waits for the GPU: draws, batch positions and losses stay on the device; the losses are read back
when the progress line refreshes (every 25 steps in a notebook, every 5 s headless) and at checkpoints. Speed
levers: AdamW fused into one kernel on the device types in FUSED_ADAMW (CUDA and the CPU, where it measured 7x
faster than foreach on a 75-member ensemble; the same nets to rounding), cuDNN autotuning during training on CUDA,
and, when asked (`compile=True`, off by default; not part of the cache key: the same math up to rounding),
torch.compile of the members' batched forward (it crashed with a misaligned address on the U-Net at batch 512 on
CUDA in torch 2.11). channels_last is not among them: GroupNorm under vmap refuses a channels_last input (torch
2.13: "NYI: querying is_contiguous inside of vmap for memory_format other than torch.contiguous_format"), and
members train together under vmap.

Several processes (torchrun; distributed.init joins the group): every process draws the whole global batch from the
same generators and keeps its rows r B/R .. (r+1) B/R; DistributedDataParallel averages the gradients, so each step
is the one-process step on the same global batch (to float rounding; with dropout, each process draws its own
masks), every process holds the same weights, and the artifact lands under the same key. Only rank 0 writes
checkpoints and the artifact; every process resumes from them.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import distributed
from ._util import (check_non_negative, check_positive, randn, resolve_device, sample_generators, stream_generator,
                    stream_seed)
from .cache import artifact_key, cache_root, load_artifact, load_or_compute, save_artifact
from .objectives import Objective
from .progress import note, progress as show_progress

StateDict = dict[str, torch.Tensor]
ARTIFACT_FORMAT = 2  # bump when the artifact layout changes (the source hash in the key changes with it anyway)
DECAYS = ("none", "cosine")  # TrainConfig.decay
FUSED_ADAMW = ("cuda", "cpu")  # device types where AdamW runs fused (one kernel per step); foreach elsewhere


class ModelConfig(Protocol):
    def build(self, shape: tuple[int, ...]) -> nn.Module:
        """A fresh model for per-sample data shape `shape` (e.g. models.MLPConfig, models.UNetConfig)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (all part of the cache key)."""

    train_steps: int = 4000  # optimizer steps
    batch_size: int = 128  # training points per member and step, drawn uniformly with replacement
    lr: float = 2e-3  # AdamW learning rate after warm-up (constant afterwards, or decayed: `decay`)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: int = 100  # steps of linear warm-up: lr * min(1, step / warmup); 0 disables it
    decay: str = "none"  # after warm-up: "none" (constant lr) or "cosine" (to 0 at train_steps)
    ema_decay: float = 0.999  # EMA decay; step k uses min(ema_decay, (1 + k) / (10 + k)) so early snapshots move
    grad_clip: float | None = 1.0  # max global L2 norm of each member's gradient; None disables clipping
    checkpoint_every: int = 500  # steps between EMA snapshots and resumable checkpoints (plus one at the end)
    snapshots: tuple[int, ...] = ()  # further steps whose EMA weights are kept
    seed: int = 0  # seeds model init, batch positions and the objective's draws (of `train`; ensembles: seeds=)

    def __post_init__(self):
        check_positive(train_steps=self.train_steps, batch_size=self.batch_size,
                       checkpoint_every=self.checkpoint_every)
        check_non_negative(warmup=self.warmup, seed=self.seed)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(DECAYS)}; got {self.decay!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None; got {self.grad_clip!r}")
        object.__setattr__(self, "snapshots", tuple(self.snapshots))
        bad = [s for s in self.snapshots if not isinstance(s, int) or not 1 <= s <= self.train_steps]
        if bad or list(self.snapshots) != sorted(set(self.snapshots)):
            raise ValueError(f"snapshots must be increasing integers in [1, train_steps = {self.train_steps}]; "
                             f"got {self.snapshots!r}")

    def keeps(self, step: int) -> bool:
        """Whether the EMA weights after optimizer step `step` are kept as a snapshot."""
        return step % self.checkpoint_every == 0 or step == self.train_steps or step in self.snapshots


def lr_at(cfg: "TrainConfig", step: int) -> float:
    """Learning rate of optimizer step `step` (1-based): cfg.lr min(1, step / warmup) during warm-up; afterwards
    cfg.lr, or with decay "cosine" cfg.lr (1 + cos(pi (step - warmup) / (train_steps - warmup))) / 2. A function of
    the step alone (so a resumed run restores its "scheduler" from the step)."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * step / cfg.warmup
    if cfg.decay == "none" or cfg.train_steps <= cfg.warmup:
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / (cfg.train_steps - cfg.warmup)))


def ema_decay(decay: float, step: int) -> float:
    """EMA decay after optimizer step `step` (1-based): min(decay, (1 + step) / (10 + step)), so that early
    snapshots follow the weights (theta_ema <- d theta_ema + (1 - d) theta)."""
    return min(decay, (1 + step) / (10 + step))


# ---------------------------------------------------------------------------------------------------- ensembles
class Ensemble:
    """M copies of one architecture evaluated together: x [M, B, D], t [M, B] -> eps_hat [M, B, D], member m with the
    state state[name][m] (torch.func.vmap over torch.func.functional_call)."""

    def __init__(self, base: nn.Module, state: StateDict):
        self.base = base  # the architecture (its own tensors are never used)
        self.state = state  # name -> [M, ...]: parameters and buffers
        self.n_members = len(next(iter(state.values())))
        names = dict(base.named_parameters())
        params = {k: v for k, v in state.items() if k in names}
        buffers = {k: v for k, v in state.items() if k not in names}
        self._call = _batched(base, params, buffers)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.n_members or t.shape != x.shape[:2]:
            raise ValueError(f"need x [M={self.n_members}, B, D] and t [M, B]; got {tuple(x.shape)} and "
                             f"{tuple(t.shape)}")
        return self._call(x, t)

    def denoiser(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The ensemble as one denoiser of flat batches [M K, D] (member m gets rows m K .. m K + K - 1), for the
        samplers."""
        def denoise(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t = torch.as_tensor(t, device=xt.device)
            t = t.expand(len(xt)) if t.ndim == 0 else t
            M = self.n_members
            return self(xt.reshape(M, -1, *xt.shape[1:]), t.reshape(M, -1)).reshape(xt.shape)
        return denoise

    def member(self, m: int) -> nn.Module:
        """Member m as a plain module (frozen, eval mode), on the ensemble's device."""
        if not 0 <= m < self.n_members:
            raise ValueError(f"m must lie in [0, {self.n_members}); got {m!r}")
        device = next(iter(self.state.values())).device
        module = copy.deepcopy(self.base).to_empty(device=device)
        module.load_state_dict({k: v[m] for k, v in self.state.items()})
        return _frozen(module)


@dataclass(frozen=True, eq=False)
class EnsembleResult:
    """A finished ensemble: EMA and raw weights of every member, the loss curves and the EMA snapshots."""

    model_cfg: ModelConfig
    shape: tuple[int, ...]
    cfg: TrainConfig
    seeds: tuple[int, ...]  # member m's seed
    snapshots: dict[int, StateDict]  # train step -> stacked EMA state (CPU)
    raw: StateDict  # stacked raw (not averaged) state of the last step (CPU)
    losses: torch.Tensor  # [train_steps, M] each member's mean loss at each step
    from_cache: bool
    path: Path
    device: torch.device = field(default=torch.device("cpu"))

    @property
    def n_members(self) -> int:
        return len(self.seeds)

    @property
    def snapshot_steps(self) -> list[int]:
        return sorted(self.snapshots)

    def model_at(self, train_step: int | None = None) -> Ensemble:
        """The EMA ensemble after `train_step` optimizer steps (a snapshot step; None: the end), frozen."""
        step = self.cfg.train_steps if train_step is None else train_step
        if step not in self.snapshots:
            raise ValueError(f"train_step must be one of the snapshot steps {self.snapshot_steps}; got {step!r}")
        return Ensemble(self._base(), {k: v.to(self.device) for k, v in self.snapshots[step].items()})

    def member(self, m: int) -> "TrainResult":
        """Member m as a single run (its EMA model, raw model, loss curve and snapshots)."""
        if not 0 <= m < self.n_members:
            raise ValueError(f"m must lie in [0, {self.n_members}); got {m!r}")
        return TrainResult(model=self.model_at().member(m), raw_model=self.raw_model().member(m),
                           losses=self.losses[:, m].numpy(),
                           snapshots={s: {k: v[m] for k, v in state.items()} for s, state in self.snapshots.items()},
                           from_cache=self.from_cache, path=self.path)

    def raw_model(self) -> Ensemble:
        return Ensemble(self._base(), {k: v.to(self.device) for k, v in self.raw.items()})

    def _base(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            return self.model_cfg.build(self.shape).to("meta").eval()  # evaluation: dropout off

    def sample(self, train_step: int | None, sched, n_samples: int, *, steps: int = 50, seed: int = 0,
               eta: float = 0.0, clip: tuple[float, float] | None = None) -> torch.Tensor:
        """z [M, K, ...]: K DDIM samples (`steps` sampler steps, float64 loop) from each member at snapshot
        `train_step`; member m's sample k starts from the x_T of per-sample generator (seed, m K + k), the same
        whatever the snapshot. clip=(low, high): the x0 prediction clamped to that data range (denoisers.ClippedX0)."""
        from .denoisers import ClippedX0
        from .samplers import sample_ddim

        model, M, K = self.model_at(train_step), self.n_members, n_samples
        D = int(np.prod(self.shape))
        gens = sample_generators(seed, M * K) if eta > 0 else None
        x_T = _start_noise(seed, M * K, D).to(self.device, copy=True)  # a copy: the cached noise stays as drawn
        denoiser = model.denoiser() if clip is None else ClippedX0(model.denoiser(), sched, *clip)
        with torch.no_grad():
            z = sample_ddim(denoiser, x_T, sched, steps, eta=eta, generators=gens if eta > 0 else None)
        return z.reshape(M, K, D).cpu()


@functools.lru_cache(maxsize=8)
def _start_noise(seed: int, n: int, dim: int) -> torch.Tensor:
    """x_T [n, dim] of per-sample generators (seed, 0..n-1) on the CPU, kept for the next snapshot (the same
    noise at every snapshot of a run: one draw instead of one per snapshot)."""
    return randn(sample_generators(seed, n), dim)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A finished single run: EMA and raw weights, the loss curve and the EMA snapshots."""

    model: nn.Module  # EMA weights: eval mode, requires_grad off, on the training device
    raw_model: nn.Module  # the optimizer's last weights (not averaged), also eval mode and frozen
    losses: np.ndarray  # [train_steps] mean training loss of each step
    snapshots: dict[int, StateDict]  # train step -> EMA state_dict (CPU)
    from_cache: bool  # True when loaded from the artifact, False when trained by this call
    path: Path  # the artifact file

    @property
    def snapshot_steps(self) -> list[int]:
        return sorted(self.snapshots)

    def model_at(self, train_step: int) -> nn.Module:
        """A copy of `model` holding the EMA snapshot taken after `train_step` optimizer steps."""
        if train_step not in self.snapshots:
            raise ValueError(f"train_step must be one of the snapshot steps {self.snapshot_steps}; got {train_step!r}")
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.snapshots[train_step])
        return model


# ---------------------------------------------------------------------------------------------------- training
def ensemble_key(model_cfg: ModelConfig, objective: Objective, sets: Sequence[torch.Tensor], shape: tuple[int, ...],
                 cfg: TrainConfig, seeds: Sequence[int], streams: Sequence[int] | None = None) -> str:
    """The run's cache key: everything that determines the weights, and the code that computes them."""
    streams = tuple(0 for _ in seeds) if streams is None else tuple(streams)
    objective = _objectives(objective, len(sets))
    return artifact_key(__name__, model_cfg, objective, list(sets), tuple(shape), cfg, tuple(seeds), streams)


def train_key(model_cfg: ModelConfig, objective: Objective, x0: torch.Tensor, shape: tuple[int, ...],
              cfg: TrainConfig) -> str:
    """The cache key of `train`: the key of its one-member ensemble."""
    return ensemble_key(model_cfg, objective, [x0], shape, cfg, (cfg.seed,))


def _objectives(objective, n: int):
    """One objective for every member, or a tuple of one per member (each with model_inputs and loss_given: they
    train in one batched pass); a sequence whose entries are all one object is that object (the same cache key)."""
    if not isinstance(objective, (list, tuple)):
        return objective
    objective = tuple(objective)
    if len(objective) != n:
        raise ValueError(f"objective must be one objective or {n}, one per set; got {len(objective)}")
    if all(o is objective[0] for o in objective):
        return objective[0]
    missing = [type(o).__name__ for o in objective if not (hasattr(o, "model_inputs") and hasattr(o, "loss_given"))]
    if missing:
        raise ValueError(f"objectives trained together need model_inputs and loss_given; {missing[0]} has not")
    return objective


def _per_member(name: str, values, n: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{name} must be {n} non-negative integers, one per set; got {values!r}")
    return values


def train_ensemble(model_cfg: ModelConfig, objective: Objective | Sequence[Objective], sets, shape: tuple[int, ...],
                   cfg: TrainConfig = TrainConfig(), *, seeds: Sequence[int] | None = None,
                   streams: Sequence[int] | None = None,
                   device: str | torch.device = "auto", cache_dir: Path | None = None, progress: bool = True,
                   callback: Callable[[int, torch.Tensor], None] | None = None,
                   compile: bool = False) -> EnsembleResult:
    """Train member m (model_cfg.build(shape), seed seeds[m]; default: cfg.seed for every member) on sets[m]
    ([n_m, D], D = prod(shape); a list, or a tensor [M, n, D]) with `objective` (or objective[m], one per member:
    members of several objectives train in one batched pass, each exactly as it would with its objective alone),
    or load the finished run.

    streams[m] (default 0): member m's stream of the objective's draws; members with one seed and different streams
    share initialisation and batches but not t and noise (the reference "same run, other draws").

    cache_dir: folder for artifacts and checkpoints (None: cache.cache_root()); files go to <cache_dir>/train/<key>.
    callback(step, losses [M]) runs after every step (and after that step's checkpoint), losses on the training
    device (reading them, e.g. float(losses[0]), waits for the GPU: a callback that needs them every step costs a
    sync per step); an exception raised in it stops training, and the next call with the same inputs resumes from
    the latest checkpoint. compile: run the members' batched forward through torch.compile (same weights up to
    rounding, so not part of the key).
    """
    sets = _check_sets(sets, shape)
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig; got {type(cfg).__name__}")
    if cfg.batch_size % distributed.world_size():
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes "
                         f"({distributed.world_size()}): each process takes an equal share of the global batch")
    seeds = _per_member("seeds", (cfg.seed,) * len(sets) if seeds is None else seeds, len(sets))
    streams = _per_member("streams", (0,) * len(sets) if streams is None else streams, len(sets))
    objective = _objectives(objective, len(sets))
    dev = resolve_device(device)
    key = ensemble_key(model_cfg, objective, sets, shape, cfg, seeds, streams)
    folder = (Path(cache_dir) if cache_dir is not None else cache_root()) / "train"
    path, ckpt_path = folder / f"{key}.pt", folder / f"{key}.ckpt"

    def compute() -> dict:
        start = time.perf_counter()
        out = _fit(model_cfg, objective, sets, tuple(shape), cfg, seeds, streams, dev, ckpt_path,
                   progress and distributed.is_main(), callback, compile)
        what = "1 net" if len(sets) == 1 else f"{len(sets)} nets"
        where = f"{dev}" if not distributed.active() else f"{distributed.world_size()} processes ({dev} on rank 0)"
        if distributed.is_main():
            note(f"diffgen.train: trained {what} for {cfg.train_steps} steps in {time.perf_counter() - start:.1f} s "
                 f"on {where}")
        return out

    def restore(art: dict) -> EnsembleResult:
        snapshots = {int(k): v for k, v in art["snapshots"].items()}
        expected = [s for s in range(1, cfg.train_steps + 1) if cfg.keeps(s)]
        if sorted(snapshots) != expected or tuple(art["losses"].shape) != (cfg.train_steps, len(sets)):
            raise ValueError("snapshots or losses do not match the config")
        result = EnsembleResult(model_cfg, tuple(shape), cfg, seeds, snapshots, art["raw"], art["losses"], False,
                                path, dev)
        result.model_at().member(0)  # the state fits the architecture (else a RuntimeError: unusable)
        return result

    main = distributed.is_main()
    result, from_cache = load_or_compute(path, compute, restore, fmt=ARTIFACT_FORMAT, name="diffgen.train",
                                         save=main)
    if main:
        ckpt_path.unlink(missing_ok=True)
    distributed.barrier()  # the artifact is on disk before any process goes on
    return dataclasses.replace(result, from_cache=from_cache)


def train(model_cfg: ModelConfig, objective: Objective, x0: torch.Tensor, shape: tuple[int, ...],
          cfg: TrainConfig = TrainConfig(), *, device: str | torch.device = "auto", cache_dir: Path | None = None,
          progress: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None) -> TrainResult:
    """Train model_cfg.build(shape) on x0 [N, D] (D = prod(shape)) with `objective`, seed cfg.seed, or load the
    finished run: a one-member train_ensemble."""
    if not isinstance(x0, torch.Tensor) or x0.ndim != 2 or len(x0) == 0:
        raise ValueError(f"x0 must be a non-empty [N, D] tensor; got shape {tuple(getattr(x0, 'shape', ()))}")
    step_callback = None if callback is None else (lambda step, losses: callback(step, losses[0]))
    return train_ensemble(model_cfg, objective, [x0], shape, cfg, device=device, cache_dir=cache_dir,
                          progress=progress, callback=step_callback).member(0)


def _check_sets(sets, shape) -> list[torch.Tensor]:
    sets = list(sets) if isinstance(sets, (list, tuple)) else list(sets) if isinstance(sets, torch.Tensor) else None
    if not sets or not all(isinstance(s, torch.Tensor) and s.ndim == 2 and len(s) > 0 for s in sets):
        raise ValueError("sets must be a non-empty list of non-empty [n, D] tensors (or a tensor [M, n, D])")
    dims = {s.shape[1] for s in sets}
    if len(dims) != 1 or int(np.prod(shape)) != dims.pop():
        raise ValueError(f"shape {tuple(shape)} must have prod(shape) = D, the width of every set; got widths "
                         f"{sorted({s.shape[1] for s in sets})}")
    return sets


def _init_model(model_cfg: ModelConfig, shape, seed: int) -> nn.Module:
    """model_cfg.build(shape) with torch's CPU RNG seeded from `seed` (the caller's RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cfg.build(tuple(shape))


def _fit(model_cfg: ModelConfig, objective: Objective, sets: list[torch.Tensor], shape, cfg: TrainConfig,
         seeds: tuple[int, ...], streams: tuple[int, ...], dev: torch.device, ckpt_path: Path, progress: bool,
         callback, compile: bool) -> dict:
    """The training loop (_fit_loop) in a forked RNG whose device generator is seeded for dropout, with cuDNN
    autotuning on CUDA; resumed from `ckpt_path` when a usable checkpoint is there. Returns the artifact payload."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), _cudnn_benchmark(dev.type == "cuda"):
        if dev.type in ("cpu", "cuda"):  # dropout's masks (if any) come from the device's default generator
            seed = stream_seed(stream_seed(seeds[0], 0), distributed.rank())  # a stream of the batch stream's seed
            _set_rng_state(dev, torch.Generator(device=dev).manual_seed(seed).get_state())
        return _fit_loop(model_cfg, objective, sets, shape, cfg, seeds, streams, dev, ckpt_path, progress, callback,
                         compile)


def _fit_loop(model_cfg, objective, sets, shape, cfg, seeds, streams, dev, ckpt_path, progress, callback,
              compile) -> dict:
    M, B = len(sets), cfg.batch_size
    members = [_init_model(model_cfg, shape, s) for s in seeds]
    base = copy.deepcopy(members[0]).to("meta").train()
    params, buffers = stack_module_state(members)
    params = {k: v.detach().to(dev).requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.to(dev) for k, v in buffers.items()}
    ema = {k: v.detach().clone() for k, v in params.items()}
    world, rank = distributed.world_size(), distributed.rank()
    rows = slice(rank * B // world, (rank + 1) * B // world)  # this process's share of every global batch
    if world > 1:
        stacked_module = _Stacked(base, params, buffers)
        params = dict(zip(params, stacked_module.weights))  # the module's own tensors, which DDP hooks
        model = nn.parallel.DistributedDataParallel(stacked_module, device_ids=[dev] if dev.type == "cuda" else None,
                                                    broadcast_buffers=False)
    else:
        model = _batched(base, params, buffers)
    if compile:
        model = torch.compile(model)
    fused = dev.type in FUSED_ADAMW
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None,
                            foreach=not fused)

    gen_dev = dev if dev.type != "meta" else torch.device("cpu")  # meta (shapes only) has no generator of its own
    unique = sorted(set(seeds))  # members with one seed share its batches
    batch_group = torch.tensor([unique.index(s) for s in seeds], device=dev)
    batch_gens = [stream_generator(s, 0, gen_dev) for s in unique]
    kinds = _kinds(objective)  # the distinct objectives, and each member's
    kind = kinds[1] if len(kinds[0]) > 1 else [0] * M
    # members with one (seed, stream, objective) share its draws, from the generator the objective would draw from
    # alone: a member trained beside members of other objectives is the member trained with its objective only
    pairs = sorted(set(zip(seeds, streams, kind)))
    draw_group = [[pairs.index(p) for p in zip(seeds, streams, kind) if p[2] == k] for k in range(len(kinds[0]))]
    of_kind = [torch.tensor([m for m in range(M) if kind[m] == k], device=dev) for k in range(len(kinds[0]))]
    draw_gens = [stream_generator(s, 1 + k, gen_dev) for s, k, _ in pairs]
    gens = batch_gens + draw_gens  # (their states go into checkpoints)
    n = torch.tensor([len(s) for s in sets], device=dev, dtype=torch.float64)
    data = torch.zeros(M, max(len(s) for s in sets), sets[0].shape[1], dtype=params[next(iter(params))].dtype,
                       device=dev)
    for m, s in enumerate(sets):
        data[m, :len(s)] = s.to(device=dev, dtype=data.dtype)
    template = data[0, :1].expand(B, -1)  # shape, dtype and device of one member's batch, for objective.draw

    losses = torch.zeros(cfg.train_steps, M, dtype=torch.float32, device=dev)
    snapshots: dict[int, StateDict] = {}
    done = 0
    ckpt = load_artifact(ckpt_path)
    if ckpt is not None:
        with torch.no_grad():
            for k in params:
                params[k].copy_(ckpt["raw"][k])
                ema[k].copy_(ckpt["ema"][k])
            for k in buffers:
                buffers[k].copy_(ckpt["raw"][k])
        opt.load_state_dict(ckpt["optimizer"])
        for g, state in zip(gens, ckpt["generators"]):
            g.set_state(state)
        _set_rng_state(dev, ckpt["rng"])
        done, snapshots = int(ckpt["step"]), dict(ckpt["snapshots"])
        losses[:done] = ckpt["losses"].to(dev)
        note(f"diffgen.train: resuming at step {done} from checkpoint {ckpt_path}")

    def state(weights: dict) -> StateDict:  # stacked parameters and buffers, on the CPU
        return {k: v.detach().cpu().clone() for k, v in {**weights, **buffers}.items()}

    # read back only when the progress line refreshes (every 25 steps in a notebook, every few seconds headless)
    recent = lambda: f"loss {losses[max(0, done - 25):max(done, 1)].mean().item():.4f}"  # noqa: E731
    remaining = range(done, cfg.train_steps)
    desc = "train" if M == 1 else f"train {M} nets"
    steps = show_progress(remaining, desc=desc, total=cfg.train_steps, initial=done, status=recent) \
        if progress else remaining
    plist, elist = list(params.values()), list(ema.values())
    for step in steps:
        done = step + 1
        u = torch.stack([torch.rand(B, generator=g, dtype=torch.float64, device=dev) for g in batch_gens])
        draws = [kinds[0][p[2]].draw(template, g) for p, g in zip(pairs, draw_gens)]
        idx = (u[batch_group][:, rows] * n[:, None]).long()  # floor(u n_m) < n_m: a position in member m's set
        x0 = torch.gather(data, 1, idx[..., None].expand(M, idx.shape[1], data.shape[2]))
        per_member = _member_losses(kinds[0], of_kind, model, x0, [
            {key: torch.stack([draws[i][key] for i in group])[:, rows] for key in draws[group[0]]}
            for group in draw_group]).mean(1)  # [M]
        for group_ in opt.param_groups:
            group_["lr"] = lr_at(cfg, done)
        opt.zero_grad(set_to_none=True)
        per_member.sum().backward()
        if cfg.grad_clip is not None:
            _clip_per_member(plist, cfg.grad_clip, M)
        opt.step()
        with torch.no_grad():  # EMA: theta_ema <- decay theta_ema + (1 - decay) theta
            torch._foreach_lerp_(elist, plist, 1.0 - ema_decay(cfg.ema_decay, done))
        global_loss = distributed.all_reduce_mean(per_member.detach())  # [M] over the whole global batch
        losses[step] = global_loss
        if cfg.keeps(done):
            snapshots[done] = state(ema)
            if done < cfg.train_steps and done % cfg.checkpoint_every == 0 and rank == 0:
                save_artifact(ckpt_path, {"raw": state(params), "ema": state(ema), "optimizer": opt.state_dict(),
                                          "generators": [g.get_state() for g in gens], "rng": _rng_state(dev),
                                          "step": done, "losses": losses[:done].cpu(), "snapshots": snapshots})
        if callback is not None:
            callback(done, global_loss)
    return {"raw": state(params), "snapshots": snapshots, "losses": losses.cpu()}


def _kinds(objective) -> tuple[list, list[int]]:
    """(the distinct objectives in order of first use, by identity; each member's index into them) of one objective
    or a sequence of one per member."""
    per_member = list(objective) if isinstance(objective, (list, tuple)) else [objective]
    distinct = []
    for o in per_member:
        if not any(o is d for d in distinct):
            distinct.append(o)
    return distinct, [next(k for k, d in enumerate(distinct) if d is o) for o in per_member]


def _member_losses(kinds: list, of_kind: list[torch.Tensor], model, x0: torch.Tensor, draws: list[dict]):
    """Per-sample losses [M, B]: with one objective, its loss_from (the model called once); with several, each
    objective's model inputs for its members, one call of the model on all of them, each objective's loss on its
    members' predictions."""
    if len(kinds) == 1:
        return kinds[0].loss_from(model, x0, draws[0])
    xt, t = torch.empty_like(x0), torch.empty(x0.shape[:2], dtype=torch.long, device=x0.device)
    for objective, members, draw in zip(kinds, of_kind, draws):
        xt[members], t[members] = objective.model_inputs(x0[members], draw)
    pred = model(xt, t)
    losses = torch.empty(x0.shape[:2], dtype=x0.dtype, device=x0.device)
    for objective, members, draw in zip(kinds, of_kind, draws):
        losses[members] = objective.loss_given(pred[members], x0[members], draw)
    return losses


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """cuDNN autotuning (torch.backends.cudnn.benchmark) inside the block when `on`; the previous setting after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _rng_state(dev: torch.device) -> torch.Tensor | None:
    """The state of `dev`'s default generator (dropout's masks draw from it)."""
    if dev.type == "cuda":
        return torch.cuda.get_rng_state(dev)
    return torch.get_rng_state() if dev.type == "cpu" else None


def _set_rng_state(dev: torch.device, state: torch.Tensor | None) -> None:
    if dev.type == "cuda":
        torch.cuda.set_rng_state(state, dev)
    elif dev.type == "cpu":
        torch.set_rng_state(state)


def _batched(base: nn.Module, params: StateDict, buffers: StateDict):
    """model(x [M, B, D], t [M, B]) -> [M, B, D] with member m's parameters params[name][m]: vmap over the members,
    each with its own random draws (dropout masks); one member is called directly (vmap would only add its
    overhead)."""
    if len(next(iter(params.values()))) == 1:
        def single(x, t):
            state = ({k: v[0] for k, v in params.items()}, {k: v[0] for k, v in buffers.items()})
            return functional_call(base, state, (x[0], t[0]))[None]
        return single
    forward = vmap(lambda p, b, x, t: functional_call(base, (p, b), (x, t)), randomness="different")
    return lambda x, t: forward(params, buffers, x, t)


class _Stacked(nn.Module):
    """The members' stacked parameters as the parameters of one module, the form DistributedDataParallel wraps:
    forward(x [M, B, D], t [M, B]) is _batched over them."""

    def __init__(self, base: nn.Module, params: StateDict, buffers: StateDict):
        super().__init__()
        self.names = list(params)
        self.weights = nn.ParameterList([nn.Parameter(v.detach()) for v in params.values()])
        self._fixed = [base, buffers]  # in a list: the meta-device base and the buffers are not DDP's to sync

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        base, buffers = self._fixed
        return _batched(base, dict(zip(self.names, self.weights)), buffers)(x, t)


def _clip_per_member(params: list[torch.Tensor], max_norm: float, M: int) -> None:
    """Scale each member's gradient (slice m of every tensor) to global L2 norm at most max_norm, as
    torch.nn.utils.clip_grad_norm_ does for one model (and does here, when there is one member)."""
    if M == 1:
        nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.reshape(M, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(M, *([1] * (g.ndim - 1))))


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)
