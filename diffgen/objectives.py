"""Layer 2: training objectives, per-sample losses `objective.loss(model, x0 [B, D], generator) -> [B]`.

`train` reduces the per-sample losses and never asks which objective it got. All randomness comes from
`generator`, a CPU torch.Generator: draws happen on the CPU and are then moved to x0's device, so a CPU and a GPU
run see the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .schedule import Schedule, add_noise

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # eps_hat(x_t [B, D], t [B]) -> [B, D]


class Objective(Protocol):
    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-sample loss [B] of `model` on the clean batch x0 [B, D], random draws from `generator`."""


@dataclass(frozen=True)
class EpsLoss:
    """The standard objective (PAPER.md, L_S): || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps ||^2 / D,
    t ~ Uniform{1..T}, eps ~ N(0, I); its pointwise minimiser is the empirical optimum eps*."""

    sched: Schedule  # the forward process: T and abar_t

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B]: mean over D of (model(x_t, t) - eps)^2. Draws t [B] (long) first, then eps [B, D] in x0's dtype."""
        if x0.ndim != 2:
            raise ValueError(f"x0 must have shape [B, D]; got {tuple(x0.shape)}")
        t = torch.randint(1, self.sched.T + 1, (len(x0),), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        xt = add_noise(self.sched, x0, t, eps)
        return (model(xt, t).to(x0.dtype) - eps).pow(2).mean(1)
