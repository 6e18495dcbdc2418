"""The optimisation loop behind diffgen.diffusion.train: AdamW with warm-up and an optional cosine decay
(`lr_at`), per-member gradient clipping, the EMA of the weights (`ema_decay`), checkpoints that resume bit for bit."""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.func import stack_module_state

from ..base import distributed
from ..base.cache import load_artifact, save_artifact
from ..base.progress import note
from ..base.progress import progress as show_progress
from ..base.util import check_non_negative, check_positive, stream_generator, stream_seed
from .ensemble import StackedMembers, StateDict, batched_call
from .objectives import Objective

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


def _init_model(model_cfg: ModelConfig, shape, seed: int) -> nn.Module:
    """model_cfg.build(shape) with torch's CPU RNG seeded from `seed` (the caller's RNG state is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cfg.build(tuple(shape))


def fit_members(model_cfg: ModelConfig, objective: Objective, sets: list[torch.Tensor], shape, cfg: TrainConfig,
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
        stacked_module = StackedMembers(base, params, buffers)
        params = dict(zip(params, stacked_module.weights))  # the module's own tensors, which DDP hooks
        model = nn.parallel.DistributedDataParallel(stacked_module, device_ids=[dev] if dev.type == "cuda" else None,
                                                    broadcast_buffers=False)
    else:
        model = batched_call(base, params, buffers)
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
        note(f"diffgen.diffusion.train: resuming at step {done} from checkpoint {ckpt_path}")

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
