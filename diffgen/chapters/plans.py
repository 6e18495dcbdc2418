"""What a chapter trains, built from its parameters: one definition for the chapter and for `diffgen train`.

A chapter calls `trained_gap_plan(parameters, device)` and runs the plan's jobs; `diffgen train ch3 ...` (or the
same under torchrun, on several GPUs) builds the plan from the same parameters and runs the same jobs ahead of time.
Each job is one train.train_ensemble call, so both land under one cache key and the chapter then loads the weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ..data.datasets import Dataset, load_dataset
from ..diffusion.fit import ModelConfig, TrainConfig
from ..diffusion.models import MLPConfig, PlainMLPConfig, UNetConfig
from ..diffusion.objectives import EpsLoss
from ..diffusion.schedule import Schedule, linear_schedule
from ..diffusion.train import EnsembleResult, ensemble_key, train_ensemble

MODELS = ("mlp", "unet")  # the chapters' `model` parameter
WIDTHS = (1 / 2, 2 / 3, 5 / 6, 1, 7 / 6)  # chapter 3's widths (shares of `width`) at the middle size: C6 at equal
# time (measured at 3000 steps on digits: widths of a quarter to a half of 96 fail the quality gate at n = 63)


SNAPSHOTS = 6  # EMA snapshots along a chapter's training: the learning curves' points


def snapshot_interval(train_steps: int, count: int = SNAPSHOTS) -> int:
    """TrainConfig.checkpoint_every for `count` EMA snapshots of a run of train_steps: ceil(train_steps / count), so
    that the last interval, which says whether a curve has flattened (training_curves.convergence), is a full one or
    nearly (floor division left train_steps mod count steps there: 4 steps at 1000, 2 at 2000)."""
    return max(1, -(-train_steps // count))


def net_config(model: str, width: int, shape: tuple[int, ...], dropout: float | None = None) -> ModelConfig:
    """The noise predictor of `model` at `width`: an MLP of that hidden width on flattened images, or DDPM's U-Net
    with `width` base channels: levels down to 4x4 (8x8 images: 8, 4), two residual blocks per level and
    self-attention at half the resolution from 28x28 up (DDPM's CIFAR-10 layout: 32, 16 (attention), 8, 4), t embedded
    in `width` dimensions (rounded down to even). dropout: inside every residual block of the U-Net; None picks
    DDPM's CIFAR-10 value, 0.1, for 32x32 images at width >= 128 (DDPM's network: 35.7 M parameters), else 0."""
    if model == "mlp":
        if dropout:
            raise ValueError(f"dropout applies to model = 'unet' only; got dropout={dropout!r} for model = 'mlp'")
        return MLPConfig(hidden=width)
    if model != "unet":
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    if len(shape) != 3:
        raise ValueError(f"model = 'unet' needs image data (C, H, W); got shape {shape}")
    side = shape[1]
    levels = 1
    while side % 2 ** levels == 0 and side // 2 ** levels >= 4 and levels < 4:
        levels += 1
    mults = (1,) + (2,) * (levels - 1)
    big = side >= 28
    if dropout is None:
        dropout = 0.1 if side == 32 and width >= 128 else 0.0
    return UNetConfig(base=width, mults=mults, time_dim=max(2, width - width % 2), blocks=2 if big else 1,
                      attention=(side // 2,) if big else (), dropout=dropout)


@dataclass(frozen=True, eq=False)
class TrainingJob:
    """One train_ensemble call: member m of model_cfg trained on sets[m] with seed seeds[m]."""

    model_cfg: ModelConfig
    objective: object
    sets: list[torch.Tensor]
    shape: tuple[int, ...]
    cfg: TrainConfig
    seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        return ensemble_key(self.model_cfg, self.objective, self.sets, self.shape, self.cfg, self.seeds)

    def run(self, device, *, progress: bool = True, cache_dir=None) -> EnsembleResult:
        return train_ensemble(self.model_cfg, self.objective, self.sets, self.shape, self.cfg, seeds=self.seeds,
                              device=device, progress=progress, cache_dir=cache_dir)


@dataclass(frozen=True, eq=False)
class TrainedGapPlan:
    """Chapter 3's data and training runs. Jobs: "main" = the seeds on S, then the same seeds on the disjoint S' (the
    S-blind yardstick), at n_train; "sweep" = the same pair at each smaller size n (S[:n] and S'[:n]); "width W" =
    narrower nets on S at the middle size (WIDTHS: with the chapter's width, five widths for the trade-off at equal
    training time). `members(n)` says where size n's nets sit."""

    ds: Dataset
    sched: Schedule
    net_cfg: ModelConfig
    cfg: TrainConfig
    seeds: tuple[int, ...]
    sizes: list[int]  # increasing; the last is n_train
    widths: list[int]  # increasing; one of them is the chapter's width (its nets: the sweep's at the middle size)
    jobs: dict[str, TrainingJob]

    @property
    def middle(self) -> int:
        """The size at which the widths are compared: the middle of the sweep (the second of two)."""
        return self.sizes[len(self.sizes) // 2]

    def members(self, n: int) -> tuple[str, list[int], list[int]]:
        """(job name, members on S[:n], members on S'[:n]) of size n, one member per seed each."""
        if n not in self.sizes:
            raise ValueError(f"n must be one of the sizes {self.sizes}; got {n!r}")
        k = len(self.seeds)
        if n == self.sizes[-1]:
            return "main", list(range(k)), list(range(k, 2 * k))
        i = self.sizes.index(n)
        return "sweep", list(range(2 * k * i, 2 * k * i + k)), list(range(2 * k * i + k, 2 * k * (i + 1)))

    def nets(self, runs: Mapping, n: int) -> tuple[list, list]:
        """(the nets on S[:n], the nets on S'[:n]) of size n, one per seed, from runs = {job name: EnsembleResult}."""
        job, on_s, on_s2 = self.members(n)
        ensemble = runs[job].model_at()
        return [ensemble.member(m) for m in on_s], [ensemble.member(m) for m in on_s2]


def trained_gap_plan(p: Mapping, device, *, dataset: Dataset | None = None) -> TrainedGapPlan:
    """Chapter 3's plan from its parameters p (dataset, n_train, n_heldout, n_sizes, model, width, width_sweep,
    n_seeds, train_steps, batch_size, seed). dataset: the data already loaded, in place of p["dataset"] (the GPU
    benchmark passes synthetic images of CIFAR-10's shape and sizes)."""
    sched = linear_schedule()  # DDPM: T = 1000, beta linear 1e-4 .. 0.02
    ds = dataset if dataset is not None else load_dataset(p["dataset"], p["n_train"], p["n_heldout"],
                                                          n_disjoint=p["n_train"], seed=p["seed"], device=device)
    S, S2 = ds.train, ds.disjoint  # S' never overlaps S or the held-out images
    seeds = tuple(range(p["seed"], p["seed"] + p["n_seeds"]))
    net_cfg = net_config(p["model"], p["width"], ds.shape)
    cfg = TrainConfig(train_steps=p["train_steps"], batch_size=p["batch_size"],
                      checkpoint_every=snapshot_interval(p["train_steps"]))
    sizes = sorted({int(round(v)) for v in np.geomspace(8, p["n_train"], p["n_sizes"])})
    w = p["width"]
    widths = sorted({max(8, round(w * f)) for f in WIDTHS}) if p["width_sweep"] else [w]
    others = [v for v in widths if v != w]  # the chapter's own width is the sweep's net at the middle size
    loss = EpsLoss(sched)
    k = len(seeds)
    pairs = lambda n: [S[:n]] * k + [S2[:n]] * k  # noqa: E731  (the nets on S[:n], then their S-blind yardsticks)
    middle = sizes[len(sizes) // 2]
    jobs = {"main": TrainingJob(net_cfg, loss, pairs(sizes[-1]), ds.shape, cfg, seeds * 2),
            "sweep": TrainingJob(net_cfg, loss, [x for n in sizes[:-1] for x in pairs(n)], ds.shape, cfg,
                                 seeds * 2 * (len(sizes) - 1)),
            **{f"width {v}": TrainingJob(net_config(p["model"], v, ds.shape), loss, [S[:middle]] * k, ds.shape,
                                         cfg, seeds) for v in others}}
    return TrainedGapPlan(ds, sched, net_cfg, cfg, seeds, sizes, widths, jobs)


def toy_job(objective, sets: torch.Tensor, *, seeds, train_steps: int) -> TrainingJob:
    """One small net per 2-D training set of sets [M, n, 2] and seed (member r M + m: set m, seed number r), as
    chapters 1 and 4 train them. One definition for both chapters: with the same sets, seeds and steps they train one
    ensemble, and the second finds it in the cache."""
    early = np.geomspace(max(1, train_steps // 40), train_steps, 5).round().astype(int)  # EMA snapshots
    cfg = TrainConfig(train_steps=train_steps, batch_size=32, grad_clip=None, ema_decay=0.995,
                      checkpoint_every=train_steps, snapshots=tuple(sorted(set(early.tolist()) - {train_steps})))
    seeds = tuple(seeds)
    return TrainingJob(PlainMLPConfig(), objective, list(sets) * len(seeds), (2,), cfg,
                       tuple(s for s in seeds for _ in range(len(sets))))


PLANS = {"ch3": trained_gap_plan}  # chapters whose training `diffgen train` runs ahead of them
