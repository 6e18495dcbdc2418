"""Layer 3: generators for the chapter on the forward-time objective, in the `mi.GenerativeModel` shape
`(train [n, D], n_samples, generator) -> z [K, D]`, so that I(z; S) can be estimated over many training sets.

- `NoisyPointSampler`: DDIM driven by the optimum of the forward-time objective whose intermediate states x_s are a
  finite set drawn once (denoisers.NoisyPointOptimum): it reproduces noisy training points.
- `TrainedSampler`: trains a network on the set with a given objective (through the cache) and samples it by DDIM.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .denoisers import NoisyPointOptimum
from .samplers import sample_ddim
from .schedule import Schedule
from .train import TrainConfig, train


@dataclass(frozen=True)
class NoisyPointSampler:
    """z = DDIM(eta = 0) under NoisyPointOptimum of noisy points at time s drawn once from `generator`, x_T ~ N(0, I)."""

    sched: Schedule
    s: int  # the time of the finite intermediate set
    steps: int = 50  # DDIM steps

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        opt = NoisyPointOptimum.draw(train, self.sched, self.s, generator, dtype=torch.float64, fused=False)
        x_T = torch.randn(n_samples, train.shape[1], generator=generator, dtype=torch.float64).to(train.device)
        return sample_ddim(opt, x_T, self.sched, self.steps)


@dataclass(frozen=True)
class TrainedSampler:
    """z = DDIM(eta = 0) samples of model_cfg trained on the set with `objective` (train() caches each run);
    x_T ~ N(0, I) from `generator`."""

    model_cfg: object  # e.g. models.MLPConfig
    objective: object  # e.g. objectives.EpsLoss or objectives.ForwardTimeLoss
    cfg: TrainConfig
    sched: Schedule
    steps: int = 50  # DDIM steps
    device: str = "auto"

    def __call__(self, train_set: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        run = train(self.model_cfg, self.objective, train_set, (train_set.shape[1],), self.cfg, device=self.device,
                    progress=False)
        x_T = torch.randn(n_samples, train_set.shape[1], generator=generator, dtype=torch.float64)
        return sample_ddim(run.model, x_T.to(next(run.model.parameters()).device), self.sched, self.steps).cpu()
