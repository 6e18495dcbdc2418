"""Layer 1: datasets as flat tensors [N, D] with their per-sample shape.

2-D toys come from a seed; `gmm` has known parameters (so its density and score are exact); `digits` is
scikit-learn's 8x8 digits (ships inside the package, no download), scaled to [-1, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._util import check_non_negative, check_positive

DATASETS = ("digits", "gmm", "moons", "circle")
DIGITS_SIZE = 1797


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training set, a held-out set and a disjoint second training set S' (for S-blind controls), drawn from the
    same distribution and pairwise disjoint."""

    name: str
    train: torch.Tensor  # [N, D]
    heldout: torch.Tensor  # [M, D]
    shape: tuple[int, ...]  # per-sample shape: (2,) for toys, (1, 8, 8) for digits
    seed: int
    disjoint: torch.Tensor | None = None  # [N', D]: a training set for controls that never see `train`

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train.shape)}, heldout={tuple(self.heldout.shape)}, "
                f"shape={self.shape}, seed={self.seed})")


@dataclass(frozen=True)
class GaussianMixture:
    """p(x) = sum_k pi_k N(x; mu_k, std^2 I): isotropic components, exact log-density and sampling."""

    means: torch.Tensor  # [K, D]
    std: float
    weights: torch.Tensor  # [K]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x [B, D]."""
        d = self.means.shape[1]
        sq = torch.cdist(x.to(torch.float64), self.means).pow(2)
        comp = -sq / (2 * self.std**2) - 0.5 * d * math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(comp + self.weights.log(), dim=1)


def gaussian(dim: int = 1, std: float = 1.0) -> GaussianMixture:
    """P = N(0, std^2 I_dim) as a one-component GaussianMixture (exact density, sampling, cell masses)."""
    check_positive(dim=dim)
    if not std > 0:
        raise ValueError(f"std must be > 0; got {std}")
    return GaussianMixture(means=torch.zeros(1, dim, dtype=torch.float64), std=float(std),
                           weights=torch.ones(1, dtype=torch.float64))


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """The `gmm` toy: 8 equal-weight components on a circle of the given radius."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means=means, std=std, weights=torch.full((8,), 1 / 8, dtype=torch.float64))


def _toy(name: str, n: int, g: torch.Generator) -> torch.Tensor:
    if name == "gmm":
        return eight_gaussians().sample(n, g)
    if name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n, noise=0.05, random_state=int(torch.randint(2**31 - 1, (1,), generator=g)))
        x = torch.from_numpy(x)
        return (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 1.5  # roughly centred, unit scale
    if name == "circle":
        angle = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
        r = 2.0 + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
        return r[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    raise AssertionError(name)


def _digits() -> torch.Tensor:
    return digits_with_labels()[0]


def digits_with_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float64 pixels [1797, 64] scaled to [-1, 1] and their labels [1797] (long)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = d.data.astype(np.float64)  # integers 0..16
    return torch.from_numpy(pixels / 8.0 - 1.0), torch.from_numpy(d.target).long()


def load_dataset(name: str, n_train: int, n_heldout: int = 0, *, n_disjoint: int = 0, seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Dataset:
    """Training, held-out and (n_disjoint > 0) second training sets of `name`, pairwise disjoint, drawn (toys) or
    split (digits) from `seed`; the training and held-out sets do not depend on n_disjoint."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
    check_positive(n_train=n_train)
    check_non_negative(n_heldout=n_heldout, n_disjoint=n_disjoint)
    g = torch.Generator().manual_seed(seed)
    if name == "digits":
        total = n_train + n_heldout + n_disjoint
        if total > DIGITS_SIZE:
            raise ValueError(f"digits has {DIGITS_SIZE} images: n_train + n_heldout + n_disjoint must be <= "
                             f"{DIGITS_SIZE}; got {n_train} + {n_heldout} + {n_disjoint}")
        x = _digits()[torch.randperm(DIGITS_SIZE, generator=g)[:total]]
        shape = (1, 8, 8)
    else:
        x = _toy(name, n_train + n_heldout, g)
        x = torch.cat([x, _toy(name, n_disjoint, g)]) if n_disjoint else x
        shape = (2,)
    x = x.to(device=device, dtype=dtype)
    cut = n_train + n_heldout
    return Dataset(name, x[:n_train].contiguous(), x[n_train:cut].contiguous(), shape, seed,
                   x[cut:].contiguous() if n_disjoint else None)
