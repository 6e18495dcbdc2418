"""What a verdict rests on: statistics across seeds (`across`, `rates_across`) and quality gates (`image_gate`,
`toy_gate`) that keep a generator producing nothing useful from deciding a memorization row."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..measures.metrics import Proportion, across_seeds, pooled_rate
from .results import Comparison, Condition


@dataclass(frozen=True)
class SeedStat:
    """A statistic measured on each of k seeds: its mean with the interval across seeds (None: the same value in
    every seed) and how that interval was formed."""

    value: float
    ci: tuple[float, float] | None
    interval: str
    k: int

    @property
    def low(self) -> float:
        return self.value if self.ci is None else self.ci[0]

    @property
    def high(self) -> float:
        return self.value if self.ci is None else self.ci[1]


def across(values, *, log: bool = False, bounds: tuple[float, float] | None = None) -> SeedStat:
    """SeedStat of one number per seed: the t interval across seeds (metrics.across_seeds; `log`: geometric mean),
    or no interval when every seed gives the same number."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) >= 2 and np.ptp(v) == 0:
        return SeedStat(float(v[0]), None, f"none: the same value in all {len(v)} seeds", len(v))
    est = across_seeds(values, log=log, bounds=bounds)
    kind = "t interval of the logarithms" if log else "t interval"
    return SeedStat(est.value, (est.low, est.high), f"{kind} across {len(v)} seeds", len(v))


def rates_across(rates: list[Proportion]) -> SeedStat:
    """SeedStat of one rate per seed (metrics.pooled_rate): the t interval across seeds widened to the Wilson
    interval of the samples pooled over them, so a rate of 0 in every seed still has an upper end."""
    p = pooled_rate(rates)
    return SeedStat(p.value, (p.low, p.high), f"t interval across {len(rates)} seeds widened to the Wilson interval "
                                              f"of the {p.total} samples pooled over them ({p.count} copies)",
                    len(rates))


@dataclass(frozen=True)
class QualityGate:
    """The gate of a row whose holding means "memorizes little": the generator's samples must be at least as close
    to held-out data as a stated crude yardstick's (a generator of noise copies nothing, and must not pass)."""

    metric: str  # e.g. "energy distance to held-out images"
    value: float  # the generator's (mean over seeds)
    yardstick: str  # e.g. "an isotropic Gaussian fit of S (mean image, pixel spread)"
    yardstick_value: float

    @property
    def passes(self) -> bool:
        return bool(self.value <= self.yardstick_value)

    @property
    def condition(self) -> Condition:
        return Condition("the samples are at least as good as a crude yardstick's", self.passes,
                         (Comparison(self.metric, self.value, "<=", self.yardstick_value, self.yardstick),))


def image_gate(samples, train, heldout, *, seed: int = 0) -> QualityGate:
    """QualityGate of image samples (one [K, D] tensor per seed): their energy distance to the held-out images, mean
    over seeds, against that of K samples of an isotropic Gaussian fit of the training set (its mean image and pixel
    spread: a generator that knows nothing else)."""
    import torch

    from ..chapters.generators import GaussianFit
    from ..measures.quality import energy_distance

    samples = list(samples)
    k = len(samples[0])
    crude = GaussianFit(std=float(train.std()))(train.cpu(), k, torch.Generator().manual_seed(seed))
    ref = heldout.cpu().to(torch.float64)
    value = sum(energy_distance(z.cpu().to(torch.float64), ref) for z in samples) / len(samples)
    return QualityGate("energy distance to held-out images", value,
                       "an isotropic Gaussian fit of S", energy_distance(crude, ref))


def toy_gate(samples, data, *, seed: int = 0, level: float = 0.99) -> QualityGate:
    """QualityGate of 2-D samples of M training sets (generators.SetSamples, one per seed) from a distribution P of
    known density: the share of samples outside P's `level` highest-density region (log p below the (1 - level)
    quantile of log p over 20 000 samples of P), mean over sets and seeds, against that of samples of a Gaussian fit
    (mean and covariance) of each training set. On a ring of clusters a distance such as the energy distance lets
    well-scaled noise look as good as a fit of S; being on P's support does not."""
    import torch

    from ..chapters.generators import GaussianFit

    samples = list(samples)
    g = torch.Generator().manual_seed(seed)
    cut = torch.quantile(data.log_prob(data.sample(20_000, g).to(torch.float64)), 1 - level)
    outside = lambda z: float((data.log_prob(z.to(torch.float64)) < cut).double().mean())  # noqa: E731
    value = sum(outside(z) for s in samples for z in s.z) / sum(len(s.z) for s in samples)
    K = samples[0].z.shape[1]
    crude = sum(outside(GaussianFit()(train.cpu(), K, g)) for train in samples[0].train) / len(samples[0].train)
    return QualityGate(f"share of samples outside P's {level:.0%} highest-density region", value,
                       "a Gaussian fit of each training set", crude)
