"""Generators built on a training set, for the I(z; S) experiment (chapter 1) and its cousins (chapter 4).

A generator is a training algorithm and a sampler in one callable, `(train [n, D], n_samples, generator) -> z [K, D]`
(`GenerativeModel`); `draw_sets` draws M independent training sets from a distribution P and K samples from the
generator built on each, the input of every estimator in `mi`. From memorizing to generalizing:
- `Copier`: a training point (I(z; S) = inf on continuous data);
- `OptimumSampler`: DDIM (or DDPM) under the empirical optimum, or under its smoothed version (bandwidth h > 0);
- `NoisyPointSampler`: DDIM under the optimum of a finite set of intermediate states (chapter 4);
- `TrainedSampler`: a network trained on the set (through the cache), sampled by DDIM;
- `GaussianFit`: N(mean(S), cov(S));
- `TrueScoreSampler`, `TrueDistribution`: the exact score of P, P itself (I(z; S) = 0);
- `PureNoise`: N(0, std^2 I), a generator that copies nothing and produces nothing useful (the yardstick that every
  memorization row's quality gate must stop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..base.util import check_positive, sample_generators
from ..data.datasets import GaussianMixture
from ..diffusion.denoisers import NoisyPointOptimum
from ..diffusion.fit import TrainConfig
from ..diffusion.optimum import SmoothedOptimum
from ..diffusion.samplers import sample_ddim
from ..diffusion.schedule import Schedule
from ..diffusion.train import train


class GenerativeModel(Protocol):
    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        """z [K, D] drawn from the generative model built on train [n, D], randomness from `generator`."""


@dataclass(frozen=True, eq=False)
class SetSamples:
    """K samples from the generator of each of M independent training sets: z [M, K, D], the sets train [M, n, D]."""

    z: torch.Tensor  # [M, K, D]
    train: torch.Tensor  # [M, n, D]
    seed: int

    def __post_init__(self):
        if self.z.ndim != 3 or self.train.ndim != 3 or self.z.shape[::2] != self.train.shape[::2]:
            raise ValueError(f"z must be [M, K, D] and train [M, n, D] with the same M and D; "
                             f"got {tuple(self.z.shape)} and {tuple(self.train.shape)}")

    @property
    def n_sets(self) -> int:
        return self.z.shape[0]

    @property
    def n_samples(self) -> int:
        return self.z.shape[1]

    @property
    def n_train(self) -> int:
        return self.train.shape[1]

    @property
    def dim(self) -> int:
        return self.z.shape[2]

    def __repr__(self) -> str:
        return (f"SetSamples(M={self.n_sets}, K={self.n_samples}, n={self.n_train}, D={self.dim}, "
                f"seed={self.seed})")


def draw_sets(data, generator: GenerativeModel, *, n_sets: int, n_train: int, n_samples: int,
              seed: int = 0) -> SetSamples:
    """S_m ~ P^n and z_m = generator(S_m, K) for m = 1..M (data: anything with .sample(n, torch.Generator) -> [n, D],
    e.g. GaussianMixture). Set m is seeded from (seed, m): the same whatever M, so a larger experiment extends a
    smaller one, and the same sets as training_sets(data, ..., seed) for every generator."""
    check_positive(n_sets=n_sets, n_train=n_train, n_samples=n_samples)
    zs, sets = [], []
    for g in sample_generators(seed, n_sets):
        train = data.sample(n_train, g).to(torch.float64)
        z = generator(train, n_samples, g)
        if z.shape != (n_samples, train.shape[1]):
            raise ValueError(f"generator must return z [K={n_samples}, D={train.shape[1]}]; got {tuple(z.shape)}")
        zs.append(z.to(torch.float64))
        sets.append(train)
    return SetSamples(torch.stack(zs), torch.stack(sets), seed)


def training_sets(data, *, n_sets: int, n_train: int, seed: int = 0) -> torch.Tensor:
    """The training sets [M, n, D] (float64) that draw_sets uses for this seed: for generators that are built on
    all sets at once (e.g. train.train_ensemble) rather than one set at a time."""
    check_positive(n_sets=n_sets, n_train=n_train)
    return torch.stack([data.sample(n_train, g).to(torch.float64) for g in sample_generators(seed, n_sets)])


# ----------------------------------------------------------------------------------------------- generators
@dataclass(frozen=True)
class GaussianFit:
    """z ~ N(mean(S), std^2 I) when std is given, else N(mean(S), cov(S)) with the ML covariance (1/n)."""

    std: float | None = None  # None: fit the covariance too (needs n > D)

    def params(self, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(means [M, D], covs [M, D, D]) of P_{z|m} for training sets train [M, n, D]: the exact P_{z|m}."""
        x = train.to(torch.float64)
        mean = x.mean(1)
        d = x.shape[2]
        if self.std is not None:
            return mean, (self.std**2 * torch.eye(d, dtype=torch.float64)).expand(len(x), d, d)
        if x.shape[1] <= d:
            raise ValueError(f"GaussianFit() fits a covariance: needs n > D = {d} training points; got n = "
                             f"{x.shape[1]} (pass std= for a fixed covariance)")
        centred = x - mean[:, None]
        return mean, centred.transpose(1, 2) @ centred / x.shape[1]

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        mean, cov = self.params(train[None])
        eps = torch.randn(n_samples, train.shape[1], generator=generator, dtype=torch.float64)
        eig, vec = torch.linalg.eigh(cov[0])  # a square root that also holds for a singular covariance (constant pixels)
        return mean[0] + eps @ (vec * eig.clamp(min=0).sqrt()).T


@dataclass(frozen=True)
class Copier:
    """z = a uniformly drawn training point of S (I(z; S) = inf on continuous data; I(z; m) = log M)."""

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        return train[torch.randint(len(train), (n_samples,), generator=generator)].to(torch.float64)


@dataclass(frozen=True)
class NoisyCopier:
    """z = x_I + std xi, I uniform on the training points: P_{z|S} = (1/n) sum_i N(x_i, std^2 I) exactly, so I(z; m)
    can be computed from densities (log_prob) and I(z; S) is finite, between 0 (std -> inf) and inf (std = 0)."""

    std: float

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"std must be > 0; got {self.std}")

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        pick = train[torch.randint(len(train), (n_samples,), generator=generator)].to(torch.float64)
        return pick + self.std * torch.randn(pick.shape, generator=generator, dtype=torch.float64)

    def log_prob(self, z: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        """log p(z | S) for z [B, D] under the mixture of the training set train [n, D]."""
        mixture = GaussianMixture(train.to(torch.float64), self.std,
                                  torch.full((len(train),), 1 / len(train), dtype=torch.float64))
        return mixture.log_prob(z)


@dataclass(frozen=True)
class PureNoise:
    """z ~ N(0, std^2 I), ignoring S: I(z; S) = 0 and no copies, and nothing like the data either."""

    std: float = 1.0

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"std must be > 0; got {self.std}")

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        return self.std * torch.randn(n_samples, train.shape[1], generator=generator, dtype=torch.float64)


@dataclass(frozen=True)
class TrueDistribution:
    """z ~ P itself, ignoring S: I(z; S) = 0."""

    data: GaussianMixture

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        return self.data.sample(n_samples, generator).to(torch.float64)


@dataclass(frozen=True)
class OptimumSampler:
    """z = sample_ddim(eps*_S, x_T ~ N(0, I)): the empirical optimum of S (bandwidth > 0: its smoothed version,
    see optimum.SmoothedOptimum) driven by DDIM with `steps` steps and the given eta."""

    sched: Schedule
    steps: int = 50  # DDIM steps
    eta: float = 0.0  # 0: deterministic sampler (copies training points); 1: DDPM posterior noise
    bandwidth: float = 0.0  # 0: the empirical optimum; h > 0: optimum of the kernel density (1/n) sum N(x_i, h^2 I)

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        denoiser = SmoothedOptimum(train, self.sched, self.bandwidth, dtype=torch.float64, fused=False)
        x_T = torch.randn(n_samples, train.shape[1], generator=generator, dtype=torch.float64)
        gens = sample_generators(int(torch.randint(2**62, (1,), generator=generator)), n_samples)
        return sample_ddim(denoiser, x_T, self.sched, self.steps, eta=self.eta, generators=gens)


@dataclass(frozen=True)
class TrueScoreSampler:
    """z = sample_ddim(eps_P, x_T) with the exact denoiser of P (an equally weighted isotropic mixture: its exact
    denoiser is the smoothed optimum of its means with bandwidth P.std). Ignores S, so I(z; S) = 0; differs from
    TrueDistribution only by the sampler's discretisation."""

    data: GaussianMixture
    sched: Schedule
    steps: int = 50  # DDIM steps

    def __post_init__(self):
        w = self.data.weights
        if not bool(torch.allclose(w, w.mean().expand_as(w))):
            raise ValueError("TrueScoreSampler needs a mixture with equal weights (its exact denoiser is then a "
                             "smoothed optimum of the means)")

    def __call__(self, train: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        sampler = OptimumSampler(self.sched, self.steps, eta=0.0, bandwidth=self.data.std)
        return sampler(self.data.means.to(torch.float64), n_samples, generator)


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
