"""Train noise predictors on finite training sets, one or many at once, through the cache.

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
The generators are util.stream_generator(seed, 0) for batches and (seed, 1 + stream) for draws, made on the training
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

import copy
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..base import distributed
from ..base.cache import artifact_key, cache_root, load_or_compute
from ..base.progress import note
from ..base.util import randn, resolve_device, sample_generators
from .ensemble import Ensemble, StateDict
from .fit import ModelConfig, TrainConfig, fit_members
from .objectives import Objective

ARTIFACT_FORMAT = 2  # bump when the artifact layout changes (the source hash in the key changes with it anyway)


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
        out = fit_members(model_cfg, objective, sets, tuple(shape), cfg, seeds, streams, dev, ckpt_path,
                   progress and distributed.is_main(), callback, compile)
        what = "1 net" if len(sets) == 1 else f"{len(sets)} nets"
        where = f"{dev}" if not distributed.active() else f"{distributed.world_size()} processes ({dev} on rank 0)"
        if distributed.is_main():
            note(f"diffgen.diffusion.train: trained {what} for {cfg.train_steps} steps in "
                 f"{time.perf_counter() - start:.1f} s on {where}")
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
    result, from_cache = load_or_compute(path, compute, restore, fmt=ARTIFACT_FORMAT, name="diffgen.diffusion.train",
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
