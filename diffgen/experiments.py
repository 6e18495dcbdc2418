"""Layer 7: the chapters' measurements, one function each, from models, data and samplers to plain numbers.

Each returns arrays, estimates or small dataclasses that the chapters plot and quote; none trains (trained models
come in as train.TrainResult or train.EnsembleResult, from the cache).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .data import GaussianMixture
from .denoisers import EmpiricalOptimum, TimeSwitch
from .generators import GaussianFit, SetSamples, draw_sets
from .metrics import Estimate, Proportion, bootstrap_ci, copy_rate, gap_on_forward_samples, loss_reduction_share, \
    nearest_neighbors, objective_samples
from .mi import mi_knn, mi_mean_generator, mi_plugin_grid, uniform_edges
from .samplers import sample_ddim
from .schedule import Schedule


def spearman(x, y) -> float | None:
    """Spearman rank correlation of x and y; None when it is undefined (fewer than 3 points, or a constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------------------------------- chapter 3
def loss_share(objective, model, optimum, x0: torch.Tensor, *, repeats: int, seed: int, n_boot: int = 500) -> Estimate:
    """Share of the optimum's loss reduction over the zero predictor that `model` achieves,
    1 - (L_model - L_opt) / (L_zero - L_opt), with a bootstrap interval over (sample, draw) pairs; all three
    denoisers see the same t and noise (common random numbers)."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731  (eps_hat = 0: the objective with no model at all)
    columns = np.stack([objective_samples(objective, d, x0, repeats=repeats, seed=seed) for d in (model, optimum, zero)],
                       axis=1)
    return bootstrap_ci(columns, loss_reduction_share, n_boot=n_boot, seed=seed)


@dataclass(frozen=True)
class Snapshot:
    """One (training-set size, training step) point of a run: copy rate of its samples, gap to its set's optimum,
    and the nearest-neighbour distances d1 / sqrt(D) of its samples."""

    n: int
    train_step: int
    rate: Proportion
    gap: float  # relative gap to eps*, mean over the probe times
    d1: np.ndarray  # [K]


def memorization_along_training(runs: dict, train: torch.Tensor, x_T: torch.Tensor, sched: Schedule, steps: int, *,
                                probe_times=(10, 30, 100, 300), probes: int = 128, seed: int = 0) -> list[Snapshot]:
    """For each run (n -> TrainResult trained on train[:n]) and each of its EMA snapshots: DDIM samples from x_T, their
    copy rate against train[:n], and the relative gap to the optimum of train[:n] on forward samples of `probes`
    training points at `probe_times`."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n, run in runs.items():
        optimum = EmpiricalOptimum(train[:n], sched, dtype=torch.float64)
        x0 = train[:n][torch.randint(n, (probes,), generator=g)]
        for step in run.snapshot_steps:
            model = run.model_at(step)
            with torch.no_grad():
                nn = nearest_neighbors(sample_ddim(model, x_T, sched, steps), train[:n])
            gap = float(gap_on_forward_samples(model, optimum, x0, sched, probe_times, g).mean())
            rows.append(Snapshot(n, step, copy_rate(nn.ratio), gap, (nn.d1 / math.sqrt(train.shape[1])).cpu().numpy()))
    return rows


def window_swap(net, optimum, windows, x_T: torch.Tensor, train: torch.Tensor, sched: Schedule,
                steps: int) -> dict[tuple[int, int], dict[str, Proportion]]:
    """Copy rates of DDIM samples from x_T under a time switch: the optimum for t in each window [lo, hi] and the net
    elsewhere ("optimum inside"), and the reverse ("net inside")."""
    out = {}
    for lo, hi in windows:
        out[lo, hi] = {}
        for name, inside, outside in (("optimum inside", optimum, net), ("net inside", net, optimum)):
            with torch.no_grad():
                z = sample_ddim(TimeSwitch(inside, outside, lo, hi), x_T, sched, steps)
            out[lo, hi][name] = copy_rate(nearest_neighbors(z, train).ratio)
    return out


# --------------------------------------------------------------------------------------------------- chapter 1
@dataclass(frozen=True)
class EstimatorCheck:
    """kNN and grid estimates of I(z; S) for the mean generator z = mean(S) + xi on N(0, 1), against the closed form
    0.5 log(1 + 1/n), and the two extremes (a copier: log M; a generator that ignores S: 0)."""

    sizes: tuple[int, ...]
    exact: np.ndarray  # [sizes] 0.5 log(1 + 1/n)
    knn: list[Estimate]
    grid: list[Estimate]
    copier: tuple[Estimate, Estimate]  # (kNN, grid) of a copier of training points, n = 4
    independent: tuple[Estimate, Estimate]  # (kNN, grid) of z ~ P, ignoring S, n = 4
    n_sets: int

    def covered(self, which: str = "knn") -> int:
        """How many sizes have the exact value inside the estimate's 95% interval."""
        return sum(e.low <= x <= e.high for e, x in zip(getattr(self, which), self.exact))

    @property
    def max_error(self) -> float:
        """Largest |kNN estimate - exact| over the sizes."""
        return float(np.max(np.abs(np.array([e.value for e in self.knn]) - self.exact)))


def estimator_check(sizes, *, n_sets: int, n_samples: int, k: int, seed: int) -> EstimatorCheck:
    """EstimatorCheck on M = n_sets training sets per size, K = n_samples samples per set (30-cell grid on
    [-4.5, 4.5])."""
    from .data import gaussian
    from .generators import Copier, TrueDistribution

    P, edges = gaussian(1), uniform_edges(-4.5, 4.5, 30)
    knn, grid = [], []
    for n in sizes:
        s = draw_sets(P, GaussianFit(std=1.0), n_sets=n_sets, n_train=n, n_samples=n_samples, seed=seed)
        knn.append(mi_knn(s.z, k, seed=seed))
        grid.append(mi_plugin_grid(s.z, edges, seed=seed))
    extremes = []
    for gen in (Copier(), TrueDistribution(P)):
        s = draw_sets(P, gen, n_sets=n_sets, n_train=4, n_samples=n_samples, seed=seed)
        extremes.append((mi_knn(s.z, k, seed=seed), mi_plugin_grid(s.z, edges, seed=seed)))
    exact = np.array([mi_mean_generator(n) for n in sizes])
    return EstimatorCheck(tuple(sizes), exact, knn, grid, extremes[0], extremes[1], n_sets)


def mi_over_sizes(data: GaussianMixture, generator, sizes, *, n_sets: int, n_samples: int, k: int,
                  seed: int) -> list[Estimate]:
    """kNN I(z; m) of `generator` on n_sets training sets of each size."""
    return [mi_knn(draw_sets(data, generator, n_sets=n_sets, n_train=n, n_samples=n_samples, seed=seed).z, k,
                   seed=seed) for n in sizes]


@dataclass(frozen=True)
class AlongTraining:
    """An ensemble's I(z; m) and copy rate at each EMA snapshot."""

    train_steps: tuple[int, ...]
    mi: list[Estimate]
    copy: list[Proportion]

    @property
    def spearman(self) -> float | None:
        """Spearman correlation of I(z; m) with the training step (None with fewer than 3 snapshots or no spread)."""
        return spearman(self.train_steps, [e.value for e in self.mi])


def mi_along_training(ensemble, sets: torch.Tensor, sched: Schedule, *, n_samples: int, steps: int, k: int,
                      seed: int) -> AlongTraining:
    """I(z; m) (kNN) and the copy rate of the ensemble's samples at every snapshot; member m against sets[m]."""
    mis, copies = [], []
    for step in ensemble.snapshot_steps:
        z = ensemble.sample(step, sched, n_samples, steps=steps, seed=seed)
        mis.append(mi_knn(z, k, seed=seed))
        copies.append(set_copy_rate(SetSamples(z, sets.to(z.dtype), seed)))
    return AlongTraining(tuple(ensemble.snapshot_steps), mis, copies)


def set_copy_rate(samples: SetSamples) -> Proportion:
    """Copy rate of every set's samples against its own training set, pooled over the sets."""
    return copy_rate(torch.cat([nearest_neighbors(z, train).ratio.cpu() for z, train in zip(samples.z, samples.train)]))


def set_samples(ensemble, sets: torch.Tensor, sched: Schedule, *, n_samples: int, steps: int, seed: int) -> SetSamples:
    """The ensemble's final samples as SetSamples on its training sets (the input of the I(z; m) estimators)."""
    return SetSamples(ensemble.sample(ensemble.cfg.train_steps, sched, n_samples, steps=steps, seed=seed), sets, seed)


# --------------------------------------------------------------------------------------------------- chapter 4
def forward_time_minimiser_error(objective, train: torch.Tensor, sched: Schedule, times, *, n_probe: int,
                                 generator: torch.Generator) -> float:
    """max over t of |minimiser - eps*| / |eps*| on forward draws of n_probe training points: the brute-force pointwise
    minimiser of the forward-time objective (denoisers.forward_time_minimiser, explicit Gaussian conditioning)
    against the empirical optimum."""
    from .denoisers import forward_time_minimiser
    from .objectives import forward_draw

    optimum = EmpiricalOptimum(train, sched, dtype=torch.float64)
    probe = train[torch.randint(len(train), (n_probe,), generator=generator)]
    worst = 0.0
    for t in times:
        xt = forward_draw(sched, probe, torch.full((n_probe,), t), torch.zeros(n_probe, dtype=torch.long), generator).xt
        ref = optimum(xt, t)
        err = (forward_time_minimiser(train, sched, xt, t, objective.gap_probs(t)) - ref).norm() / ref.norm()
        worst = max(worst, float(err))
    return worst


@dataclass(frozen=True)
class TweedieSlope:
    """The regression slope of xi_{t,s} on eps*(x_t, t) over forward draws, and Tweedie's prediction c_{t,s}."""

    t: int
    s: int
    c: float
    slope: Estimate


def tweedie_slopes(train: torch.Tensor, sched: Schedule, pairs, *, n_mc: int, generator: torch.Generator,
                   seed: int) -> list[TweedieSlope]:
    """TweedieSlope for each (t, s) pair from n_mc forward draws of training points."""
    from .metrics import regression_slope
    from .objectives import forward_draw, forward_time_coef

    optimum = EmpiricalOptimum(train, sched, dtype=torch.float64)
    out = []
    for t, s in pairs:
        x0 = train[torch.randint(len(train), (n_mc,), generator=generator)]
        d = forward_draw(sched, x0, torch.full((n_mc,), t), torch.full((n_mc,), s), generator)
        out.append(TweedieSlope(t, s, float(forward_time_coef(sched, t, s)),
                                regression_slope(d.xi, optimum(d.xt, t), n_boot=300, seed=seed)))
    return out


@dataclass(frozen=True)
class NoisyPointRow:
    """DDIM samples of the optimum over noisy points at time s: copy rate and median d1 / sqrt(D) against the clean
    training set, and the noise scale h_s of the points."""

    s: int
    h: float
    rate: Proportion
    d1: float


def noisy_point_rows(train: torch.Tensor, sched: Schedule, s_values, x_T: torch.Tensor, steps: int, *,
                     seed: int) -> list[NoisyPointRow]:
    """NoisyPointRow for each s (the noisy points drawn from a generator seeded by `seed`)."""
    from .denoisers import NoisyPointOptimum

    rows = []
    for s in s_values:
        npo = NoisyPointOptimum.draw(train, sched, s, torch.Generator().manual_seed(seed), dtype=torch.float64)
        nn = nearest_neighbors(sample_ddim(npo.to(x_T.device), x_T, sched, steps), train)
        rows.append(NoisyPointRow(s, npo.noise_var**0.5, copy_rate(nn.ratio),
                                  float(nn.d1.median()) / math.sqrt(train.shape[1])))
    return rows
