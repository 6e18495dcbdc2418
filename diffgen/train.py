"""Layer 4: train a noise predictor on a finite training set, through the cache.

`train(model_cfg, objective, x0, shape, cfg)` minimises mean_b objective.loss(model, x0[idx_b], generator) with
AdamW, linear learning-rate warm-up, global gradient-norm clipping and an EMA of the weights. One CPU generator,
seeded from cfg.seed, draws the batch indices (uniformly WITH replacement, so a batch may be larger than the training
set) and feeds the objective; model init is seeded from cfg.seed too, so a config determines the weights.
Every cfg.checkpoint_every steps it keeps an EMA snapshot and writes a resumable checkpoint; an interrupted run
resumes from it, bit for bit. The finished run is one artifact under the run's key (cache.artifact_key: the configs,
the data and the code of this module, of the model's and of the objective's): a second call loads it.
`warmup_lr` and `ema_decay` are the schedules every training loop of the package uses.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from ._util import check_non_negative, check_positive, resolve_device
from .cache import artifact_key, cache_root, load_artifact, load_or_compute, save_artifact
from .objectives import Objective
from .progress import note, progress as show_progress

StateDict = dict[str, torch.Tensor]
ARTIFACT_FORMAT = 1  # bump when the artifact layout changes (the source hash in the key changes with it anyway)


class ModelConfig(Protocol):
    def build(self, shape: tuple[int, ...]) -> nn.Module:
        """A fresh model for per-sample data shape `shape` (e.g. models.MLPConfig, models.UNetConfig)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (all part of the cache key)."""

    train_steps: int = 4000  # optimizer steps
    batch_size: int = 128  # training points per step, drawn uniformly with replacement
    lr: float = 2e-3  # AdamW learning rate after warm-up (constant afterwards)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: int = 100  # steps of linear warm-up: lr * min(1, step / warmup); 0 disables it
    ema_decay: float = 0.999  # EMA decay; step k uses min(ema_decay, (1 + k) / (10 + k)) so early snapshots move
    grad_clip: float | None = 1.0  # max global L2 norm of the gradient; None disables clipping
    checkpoint_every: int = 500  # steps between EMA snapshots and resumable checkpoints (plus one at the end)
    seed: int = 0  # seeds model init, batch indices and the objective's draws

    def __post_init__(self):
        check_positive(train_steps=self.train_steps, batch_size=self.batch_size,
                       checkpoint_every=self.checkpoint_every)
        check_non_negative(warmup=self.warmup, seed=self.seed)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None; got {self.grad_clip!r}")


def warmup_lr(lr: float, warmup: int, step: int) -> float:
    """Learning rate of optimizer step `step` (1-based): lr min(1, step / warmup), a function of the step alone
    (so a resumed run restores its "scheduler" from the step)."""
    return lr * min(1.0, step / warmup) if warmup else lr


def ema_decay(decay: float, step: int) -> float:
    """EMA decay after optimizer step `step` (1-based): min(decay, (1 + step) / (10 + step)), so that early
    snapshots follow the weights (theta_ema <- d theta_ema + (1 - d) theta)."""
    return min(decay, (1 + step) / (10 + step))


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A finished run: EMA and raw weights, the loss curve and the EMA snapshots."""

    model: nn.Module  # EMA weights: eval mode, requires_grad off, on the training device
    raw_model: nn.Module  # the optimizer's last weights (not averaged), also eval mode and frozen
    losses: np.ndarray  # [train_steps] mean training loss of each step
    snapshots: dict[int, StateDict]  # train step -> EMA state_dict (CPU) every checkpoint_every steps and at the end
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


def train_key(model_cfg: ModelConfig, objective: Objective, x0: torch.Tensor, shape: tuple[int, ...],
              cfg: TrainConfig) -> str:
    """The run's cache key: everything that determines the weights, and the code that computes them."""
    return artifact_key(__name__, model_cfg, objective, x0, tuple(shape), cfg)


def train(model_cfg: ModelConfig, objective: Objective, x0: torch.Tensor, shape: tuple[int, ...],
          cfg: TrainConfig = TrainConfig(), *, device: str | torch.device = "auto", cache_dir: Path | None = None,
          progress: bool = True, callback: Callable[[int, torch.Tensor], None] | None = None) -> TrainResult:
    """Train model_cfg.build(shape) on x0 [N, D] (D = prod(shape)) with `objective`, or load the finished run.

    cache_dir: folder for artifacts and checkpoints (None: cache.cache_root()); files go to <cache_dir>/train/<key>.
    callback(step, loss) runs after every step (and after that step's checkpoint); an exception raised in it
    stops training, and the next call with the same inputs resumes from the latest checkpoint.
    """
    if x0.ndim != 2 or len(x0) == 0:
        raise ValueError(f"x0 must be a non-empty [N, D] tensor; got shape {tuple(x0.shape)}")
    if int(np.prod(shape)) != x0.shape[1]:
        raise ValueError(f"shape {tuple(shape)} must have prod(shape) = D = {x0.shape[1]}")
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig; got {type(cfg).__name__}")
    dev = resolve_device(device)
    key = train_key(model_cfg, objective, x0, shape, cfg)
    folder = (Path(cache_dir) if cache_dir is not None else cache_root()) / "train"
    path, ckpt_path = folder / f"{key}.pt", folder / f"{key}.ckpt"
    model = _init_model(model_cfg, shape, cfg.seed).to(dev)

    def compute() -> dict:
        start = time.perf_counter()
        ema, losses, snapshots = _fit(copy.deepcopy(model), objective, x0, cfg, dev, ckpt_path, progress, callback)
        note(f"diffgen.train: trained {cfg.train_steps} steps in {time.perf_counter() - start:.1f} s on {dev}")
        return {"ema": _cpu(ema[0]), "raw": _cpu(ema[1]), "losses": losses, "snapshots": snapshots}

    def restore(art: dict) -> tuple:
        raw = copy.deepcopy(model)
        raw.load_state_dict(art["raw"])
        ema = copy.deepcopy(model)
        ema.load_state_dict(art["ema"])
        return _frozen(ema), _frozen(raw), art["losses"].numpy(), {int(k): v for k, v in art["snapshots"].items()}

    (ema, raw, losses, snapshots), from_cache = load_or_compute(path, compute, restore, fmt=ARTIFACT_FORMAT,
                                                                name="diffgen.train")
    ckpt_path.unlink(missing_ok=True)
    return TrainResult(model=ema, raw_model=raw, losses=losses, snapshots=snapshots, from_cache=from_cache, path=path)


def _init_model(model_cfg: ModelConfig, shape, seed: int) -> nn.Module:
    """model_cfg.build(shape) with torch's CPU RNG seeded from `seed` (the caller's RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cfg.build(tuple(shape))


def _fit(model: nn.Module, objective: Objective, x0: torch.Tensor, cfg: TrainConfig, dev: torch.device,
         ckpt_path: Path, progress: bool, callback):
    """The training loop, resumed from `ckpt_path` when a usable checkpoint is there.
    Returns ((ema, model), losses [train_steps], snapshots)."""
    ema = copy.deepcopy(model).requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    buffers = list(zip(ema.buffers(), model.buffers()))  # e.g. norm statistics: copied, not averaged
    # foreach: one fused loop over all tensors instead of a Python loop (torch picks it on GPU only by default)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = x0.to(device=dev, dtype=next(model.parameters()).dtype)
    losses = torch.zeros(cfg.train_steps, dtype=torch.float32, device=dev)
    snapshots: dict[int, StateDict] = {}
    done = 0
    ckpt = load_artifact(ckpt_path)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        done, snapshots = int(ckpt["step"]), dict(ckpt["snapshots"])
        losses[:done] = ckpt["losses"].to(dev)
        note(f"diffgen.train: resuming at step {done} from checkpoint {ckpt_path}")

    model.train()
    remaining = range(done, cfg.train_steps)
    recent = lambda: f"loss {losses[max(0, done - 25):max(done, 1)].mean().item():.4f}"  # noqa: E731
    steps = show_progress(remaining, desc="train", total=cfg.train_steps, initial=done, status=recent) \
        if progress else remaining
    for step in steps:
        done = step + 1
        for group in opt.param_groups:
            group["lr"] = warmup_lr(cfg.lr, cfg.warmup, done)
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen).to(dev)
        loss = objective.loss(model, data[idx], gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        opt.step()
        with torch.no_grad():  # EMA: theta_ema <- decay theta_ema + (1 - decay) theta
            torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(cfg.ema_decay, done))
            for e, b in buffers:
                e.copy_(b)
        losses[step] = loss.detach()
        if done % cfg.checkpoint_every == 0 or done == cfg.train_steps:
            snapshots[done] = _cpu(ema)
            if done < cfg.train_steps:  # the last state goes straight into the artifact
                save_artifact(ckpt_path, {"model": _cpu(model), "ema": _cpu(ema), "optimizer": opt.state_dict(),
                                          "generator": gen.get_state(), "step": done,
                                          "losses": losses[:done].cpu(), "snapshots": snapshots})
        if callback is not None:
            callback(done, loss.detach())
    return (ema, model), losses.cpu(), snapshots


def _cpu(model: nn.Module) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)
