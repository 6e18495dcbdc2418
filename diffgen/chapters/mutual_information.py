"""Chapter 1's measurements: the kNN estimator against closed forms and exact densities, I(z; S) over training-set
sizes, over seeds and along training, and the copy rate of samples drawn per training set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.datasets import GaussianMixture
from ..diffusion.schedule import Schedule
from ..measures.metrics import Estimate, Proportion, copy_rate, nearest_neighbors, pooled_rate, spearman
from ..measures.mi import mi_knn, mi_mean_generator, mi_plugin_grid, uniform_edges
from .generators import GaussianFit, SetSamples, draw_sets


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
    jackknife: tuple[Estimate, Estimate]  # (bootstrap, leave-one-set-out jackknife) of the kNN estimate, n = 4, on
    # the first jackknife_sets sets

    def covered(self, which: str = "knn") -> int:
        """How many sizes have the exact value inside the estimate's 95% interval."""
        return sum(e.low <= x <= e.high for e, x in zip(getattr(self, which), self.exact))

    @property
    def max_error(self) -> float:
        """Largest |kNN estimate - exact| over the sizes."""
        return float(np.max(np.abs(np.array([e.value for e in self.knn]) - self.exact)))


def estimator_check(sizes, *, n_sets: int, n_samples: int, k: int, seed: int,
                    jackknife_sets: int = 40) -> EstimatorCheck:
    """EstimatorCheck on M = n_sets training sets per size, K = n_samples samples per set (30-cell grid on
    [-4.5, 4.5]); the jackknife (M + 1 kNN estimates) runs on the first `jackknife_sets` sets of n = 4."""
    from ..data.datasets import gaussian
    from ..measures.mi import jackknife
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
    z = draw_sets(P, GaussianFit(std=1.0), n_sets=min(n_sets, jackknife_sets), n_train=4, n_samples=n_samples,
                  seed=seed).z
    resampling = (mi_knn(z, k, seed=seed), jackknife(lambda part: mi_knn(part, k, n_boot=1).value, z))
    return EstimatorCheck(tuple(sizes), exact, knn, grid, extremes[0], extremes[1], n_sets, resampling)


@dataclass(frozen=True)
class DensityCheck:
    """The kNN estimate of I(z; m) against the Monte Carlo value from exact densities, on the same samples."""

    knn: Estimate
    exact: Estimate  # mean over the sets of E_z [log p_m(z) - log (1/M) sum_j p_j(z)], bootstrap over sets


def noisy_copier_check(data: GaussianMixture, std: float, *, n_sets: int, n_train: int, n_samples: int, k: int,
                       seed: int) -> DensityCheck:
    """DensityCheck for generators.NoisyCopier(std), whose P_{z|m} is known exactly."""
    from ..measures.mi import mean_of_terms, mi_density_terms
    from .generators import NoisyCopier

    gen = NoisyCopier(std)
    s = draw_sets(data, gen, n_sets=n_sets, n_train=n_train, n_samples=n_samples, seed=seed)
    flat = s.z.reshape(-1, s.dim)
    log_p = torch.stack([gen.log_prob(flat, train) for train in s.train], 1).reshape(n_sets, n_samples, n_sets)
    return DensityCheck(mi_knn(s.z, k, seed=seed), mean_of_terms(mi_density_terms(log_p), seed=seed))


def mi_over_sizes(data: GaussianMixture, generator, sizes, *, n_sets: int, n_samples: int, k: int,
                  seed: int) -> list[Estimate]:
    """kNN I(z; m) of `generator` on n_sets training sets of each size."""
    return [mi_knn(draw_sets(data, generator, n_sets=n_sets, n_train=n, n_samples=n_samples, seed=seed).z, k,
                   seed=seed) for n in sizes]


@dataclass(frozen=True)
class AlongTraining:
    """An ensemble's I(z; m) (kNN, per-set terms averaged over its seeds) and copy rate (pooled over its seeds) at each
    EMA snapshot, and how the grid split of the excess risk moves from `start_step` (the first snapshot whose samples
    pass the quality gate: the nets already denoise) to the last snapshot, per seed."""

    train_steps: tuple[int, ...]
    mi: list[Estimate]
    copy: list[Proportion]
    mi_changes: list[float] | None  # per seed: grid I(z; m), last snapshot minus start (None: no start before it)
    marginal_changes: list[float] | None  # per seed: grid KL(P_z || P), last snapshot minus start
    seeds: int
    start_step: int | None = None  # the first snapshot that passes the quality gate (None: none before the last)
    passes: tuple[bool, ...] = ()  # per snapshot: its samples pass the quality gate

    @property
    def spearman(self) -> float | None:
        """Spearman correlation of I(z; m) with the training step (None with fewer than 3 snapshots or no spread)."""
        return spearman(self.train_steps, [e.value for e in self.mi])


def mi_along_training(ensemble, sets: torch.Tensor, sched: Schedule, *, n_samples: int, steps: int, k: int,
                      seed: int, edges, mass: torch.Tensor, passes=None) -> AlongTraining:
    """AlongTraining of a train.EnsembleResult whose members are the M training sets `sets` [M, n, D] repeated once
    per seed (member r M + m: set m, seed number r). passes: a function of one snapshot's samples (a list of
    SetSamples, one per seed) that says whether they pass the quality gate (None: every snapshot does)."""
    from ..measures.mi import grid_split_change, mean_of_terms, mi_knn_terms

    M = len(sets)
    seeds = ensemble.n_members // M
    mis, copies, samples, ok = [], [], [], []
    for step in ensemble.snapshot_steps:
        z = ensemble.sample(step, sched, n_samples, steps=steps, seed=seed).reshape(seeds, M, n_samples, -1)
        terms = torch.stack([mi_knn_terms(z[r], k) for r in range(seeds)]).mean(0)
        mis.append(mean_of_terms(terms, seed=seed))
        per_seed = [SetSamples(z[r], sets.to(z.dtype), seed) for r in range(seeds)]
        copies.append(pooled_rate([set_copy_rate(s) for s in per_seed]))
        ok.append(True if passes is None else bool(passes(per_seed)))
        samples.append(z)
    start = next((j for j in range(len(samples) - 1) if ok[j]), None)
    if start is None:
        changes = None
    else:
        changes = [grid_split_change(samples[start][r], samples[-1][r], edges, mass, n_boot=1, seed=seed)
                   for r in range(seeds)]
    steps_ = tuple(ensemble.snapshot_steps)
    return AlongTraining(steps_, mis, copies, changes and [c[0].value for c in changes],
                         changes and [c[1].value for c in changes], seeds,
                         None if start is None else steps_[start], tuple(ok))


def set_copy_rate(samples: SetSamples) -> Proportion:
    """Copy rate of every set's samples against its own training set, pooled over the sets."""
    return copy_rate(torch.cat([nearest_neighbors(z, train).ratio.cpu() for z, train in zip(samples.z, samples.train)]))


def set_samples(ensemble, sets: torch.Tensor, sched: Schedule, *, n_samples: int, steps: int, seed: int,
                seed_number: int = 0) -> SetSamples:
    """The final samples of one seed of the ensemble (members seed_number M .. seed_number M + M - 1) as SetSamples
    on their training sets (the input of the I(z; m) estimators)."""
    z = ensemble.sample(None, sched, n_samples, steps=steps, seed=seed)
    return SetSamples(z[seed_number * len(sets):(seed_number + 1) * len(sets)], sets, seed)


def mi_over_seeds(ensemble, sets: torch.Tensor, sched: Schedule, *, n_samples: int, steps: int, k: int,
                  seed: int) -> tuple[list[float], list[SetSamples]]:
    """I(z; m) of an ensemble of M sets x seeds (as in mi_along_training) at its end, one kNN estimate per seed (on
    the same training sets), and each seed's SetSamples."""
    M = len(sets)
    z = ensemble.sample(None, sched, n_samples, steps=steps, seed=seed)
    per_seed = [SetSamples(z[r * M:(r + 1) * M], sets, seed) for r in range(ensemble.n_members // M)]
    return [mi_knn(s.z, k, n_boot=1).value for s in per_seed], per_seed
