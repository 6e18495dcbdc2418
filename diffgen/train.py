"""Layer 3: train a noise predictor on a finite training set, through the cache.

`train(model_cfg, objective, x0, shape, cfg)` minimises mean_b objective.loss(model, x0[idx_b], generator) with
AdamW, linear learning-rate warm-up, global gradient-norm clipping and an EMA of the weights. One CPU generator,
seeded from cfg.seed, draws the batch indices (uniformly WITH replacement, so a batch may be larger than the training
set) and feeds the objective; model init is seeded from cfg.seed too, so a config determines the weights.
Every cfg.checkpoint_every steps it keeps an EMA snapshot and writes a resumable checkpoint; an interrupted run
resumes from it, bit for bit. The finished run is one artifact under the run's key: a second call loads it.
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

from ._util import progress as progress_bar
from ._util import resolve_device
from .cache import cache_root, config_key, load_artifact, save_artifact
from .objectives import Objective

StateDict = dict[str, torch.Tensor]
ARTIFACT_FORMAT = 1  # bump when the artifact layout changes (the source hash in the key changes with it anyway)


class ModelConfig(Protocol):
    def build(self, shape: tuple[int, ...]) -> nn.Module:
        """A fresh model for per-sample data shape `shape` (e.g. models.MLPConfig, models.UNetConfig)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (all part of the cache key)."""

    steps: int = 4000  # optimizer steps
    batch_size: int = 128  # training points per step, drawn uniformly with replacement
    lr: float = 2e-3  # AdamW learning rate after warm-up (constant afterwards)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup: int = 100  # steps of linear warm-up: lr * min(1, step / warmup); 0 disables it
    ema_decay: float = 0.999  # EMA decay; step k uses min(ema_decay, (1 + k) / (10 + k)) so early snapshots move
    grad_clip: float | None = 1.0  # max global L2 norm of the gradient; None disables clipping
    checkpoint_every: int = 500  # steps between EMA snapshots and resumable checkpoints (plus one at the end)
    seed: int = 0  # seeds model init, batch indices and the objective's draws

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer; got {self.warmup!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {self.seed!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None; got {self.grad_clip!r}")


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A finished run: EMA and raw weights, the loss curve and the EMA snapshots."""

    model: nn.Module  # EMA weights: eval mode, requires_grad off, on the training device
    raw_model: nn.Module  # the optimizer's last weights (not averaged), also eval mode and frozen
    losses: np.ndarray  # [steps] mean training loss of each step
    snapshots: dict[int, StateDict]  # step -> EMA state_dict (CPU) at every checkpoint_every steps and the end
    from_cache: bool  # True when loaded from the artifact, False when trained by this call
    path: Path  # the artifact file

    def model_at(self, step: int) -> nn.Module:
        """A copy of `model` holding the EMA snapshot taken after `step` steps."""
        if step not in self.snapshots:
            raise ValueError(f"step must be one of the snapshot steps {sorted(self.snapshots)}; got {step!r}")
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.snapshots[step])
        return model


def train_key(model_cfg: ModelConfig, objective: Objective, x0: torch.Tensor, shape: tuple[int, ...],
              cfg: TrainConfig) -> str:
    """The run's cache key: config_key of everything that determines the weights (plus the diffgen source)."""
    return config_key(model_cfg, objective, x0, tuple(shape), cfg)


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
    cached = _from_artifact(model, load_artifact(path), dev, path)
    if cached is not None:
        print(f"diffgen.train: loaded from cache {path}")
        return cached

    start = time.perf_counter()
    ema, losses, snapshots = _fit(model, objective, x0, cfg, dev, ckpt_path, progress, callback)
    save_artifact(path, {"format": ARTIFACT_FORMAT, "ema": _cpu(ema), "raw": _cpu(model),
                         "losses": losses, "snapshots": snapshots})
    ckpt_path.unlink(missing_ok=True)
    print(f"diffgen.train: trained {cfg.steps} steps in {time.perf_counter() - start:.1f} s on {dev}; saved {path}")
    return TrainResult(model=_frozen(ema), raw_model=_frozen(model), losses=losses.numpy(), snapshots=snapshots,
                       from_cache=False, path=path)


def _init_model(model_cfg: ModelConfig, shape, seed: int) -> nn.Module:
    """model_cfg.build(shape) with torch's CPU RNG seeded from `seed` (the caller's RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cfg.build(tuple(shape))


def _fit(model: nn.Module, objective: Objective, x0: torch.Tensor, cfg: TrainConfig, dev: torch.device,
         ckpt_path: Path, progress: bool, callback) -> tuple[nn.Module, torch.Tensor, dict[int, StateDict]]:
    """The training loop, resumed from `ckpt_path` when a usable checkpoint is there. Returns (ema, losses, snapshots)."""
    ema = copy.deepcopy(model).requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    buffers = list(zip(ema.buffers(), model.buffers()))  # e.g. norm statistics: copied, not averaged
    # foreach: one fused loop over all tensors instead of a Python loop (torch picks it on GPU only by default)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = x0.to(device=dev, dtype=next(model.parameters()).dtype)
    losses = torch.zeros(cfg.steps, dtype=torch.float32, device=dev)
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
        print(f"diffgen.train: resuming at step {done} from checkpoint {ckpt_path}")

    model.train()
    remaining = range(done, cfg.steps)
    bar = progress_bar(remaining, total=cfg.steps, initial=done, desc="train") if progress else remaining
    for step in bar:
        # the learning rate is a function of the step alone, so the step restores the "scheduler" on resume
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
        idx = torch.randint(len(data), (cfg.batch_size,), generator=gen).to(dev)
        loss = objective.loss(model, data[idx], gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        opt.step()
        done = step + 1
        with torch.no_grad():  # EMA: theta_ema <- decay theta_ema + (1 - decay) theta
            torch._foreach_lerp_(ema_params, params, 1.0 - min(cfg.ema_decay, (1 + done) / (10 + done)))
            for e, b in buffers:
                e.copy_(b)
        losses[step] = loss.detach()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            snapshots[done] = _cpu(ema)
            if done < cfg.steps:  # the last state goes straight into the artifact
                save_artifact(ckpt_path, {"model": _cpu(model), "ema": _cpu(ema), "optimizer": opt.state_dict(),
                                          "generator": gen.get_state(), "step": done,
                                          "losses": losses[:done].cpu(), "snapshots": snapshots})
        if hasattr(bar, "set_postfix") and (done % 25 == 0 or done == cfg.steps):
            bar.set_postfix(loss=f"{losses[max(0, done - 25):done].mean().item():.4f}", refresh=False)
        if callback is not None:
            callback(done, loss.detach())
    return ema, losses.cpu(), snapshots


def _cpu(model: nn.Module) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def _from_artifact(model: nn.Module, art, dev: torch.device, path: Path) -> TrainResult | None:
    """The TrainResult stored in `art`, or None (and the file deleted) when it is absent or does not fit the model."""
    if art is None:
        return None
    try:
        if art["format"] != ARTIFACT_FORMAT:
            raise ValueError(f"artifact format {art['format']!r}, expected {ARTIFACT_FORMAT}")
        raw = copy.deepcopy(model)
        raw.load_state_dict(art["raw"])
        model.load_state_dict(art["ema"])
        snapshots = {int(k): v for k, v in art["snapshots"].items()}
        losses = art["losses"].numpy()
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        print(f"diffgen.train: deleting unusable artifact {path} ({type(err).__name__}: {err}); retraining")
        path.unlink(missing_ok=True)
        return None
    return TrainResult(model=_frozen(model.to(dev)), raw_model=_frozen(raw.to(dev)), losses=losses,
                       snapshots=snapshots, from_cache=True, path=path)
