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
from .denoisers import Blend, ClippedX0, EmpiricalOptimum, GaussianDenoiser, TimeSwitch
from .generators import GaussianFit, SetSamples, draw_sets
from .metrics import (Estimate, Proportion, bootstrap_ci, copy_rate, denoising_losses, loss_reduction_share,
                      nearest_neighbors, objective_samples, pooled_rate, wilson_interval)
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


BANDS = ((1, 10), (11, 100), (101, 1000))  # low, intermediate and high noise of the DDPM schedule


def shares_by_band(denoisers: dict, optimum, x0: torch.Tensor, sched: Schedule, *, bands=BANDS, repeats: int = 4,
                   seed: int = 0) -> dict[tuple[int, int], dict[str, float]]:
    """band -> name -> share of the optimum's loss reduction over the zero predictor, 1 - (L_d - L_opt) /
    (L_zero - L_opt), with t uniform in the band (all bands together: (1, T)); every denoiser on the same
    (x0, t, eps) draws."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    out = {}
    for band in (*bands, (1, sched.T)):
        g = torch.Generator().manual_seed(seed)
        losses = denoising_losses({**denoisers, "optimum": optimum, "zero": zero}, x0, sched, t_range=band,
                                  repeats=repeats, generator=g)
        opt, none = losses["optimum"].mean(), losses["zero"].mean()
        out[band] = {name: float(1 - (losses[name].mean() - opt) / (none - opt)) for name in denoisers}
    return out


def blind_yardsticks(disjoint: torch.Tensor, sched: Schedule) -> dict:
    """Denoisers that never saw S, built on a disjoint set S' [n, D]: its Gaussian fit (covariance + 1e-4 I, which
    keeps it defined below n = D) and its empirical optimum."""
    cov = torch.cov(disjoint.T) + 1e-4 * torch.eye(disjoint.shape[1], device=disjoint.device, dtype=disjoint.dtype)
    return {"Gaussian fit of S'": GaussianDenoiser(disjoint.mean(0), cov, sched),
            "empirical optimum of S'": EmpiricalOptimum(disjoint, sched, dtype=torch.float64)}


def normalized_share(share: float, blind: float) -> float:
    """(share - share_blind) / (1 - share_blind): the part of what an S-blind denoiser leaves to gain that a model
    gains (1: the optimum itself; 0: no closer to the optimum than the blind denoiser; negative: farther)."""
    return (share - blind) / (1 - blind)


def normalized_shares(shares: list[dict], model: str, yardstick: str) -> dict[tuple[int, int], list[float]]:
    """band -> [normalized_share of `model` by `yardstick`, one per seed] from one shares_by_band result per seed."""
    return {band: [normalized_share(sh[band][model], sh[band][yardstick]) for sh in shares] for band in shares[0]}


@dataclass(frozen=True)
class Snapshot:
    """One (training-set size, seed, training step) point of a run: copy rate of its samples, gap to its set's
    optimum, and the nearest-neighbour distances d1 / sqrt(D) of its samples."""

    n: int
    seed: int
    train_step: int
    rate: Proportion
    gap: float  # relative gap to eps*, mean over the probe times
    d1: np.ndarray  # [K]


def sampled(denoiser, sched: Schedule, clip: tuple[float, float] | None):
    """The denoiser a sampler runs: `denoiser` itself, or with its x0 prediction clamped to the data range `clip`
    (denoisers.ClippedX0)."""
    return denoiser if clip is None else ClippedX0(denoiser, sched, *clip)


def snapshot_rows(curves, members: dict) -> list[Snapshot]:
    """Snapshot rows of the members {m: (n, seed)} of an ObjectiveCurves: each snapshot's copy rate (with its Wilson
    interval) and gap to eps*, and at the last snapshot the samples' d1 / sqrt(D) (earlier snapshots: empty)."""
    K, D = curves.samples.shape[1:]
    last = curves.train_steps[-1]
    return [Snapshot(n, seed, step, wilson_interval(int(round(curves.rate[m, j] * K)), K), float(curves.gap[m, j]),
                     curves.d1[m].numpy() / math.sqrt(D) if step == last else np.zeros(0))
            for m, (n, seed) in members.items() for j, step in enumerate(curves.train_steps)]


def blend_curve(model, optimum, weights, x_T: torch.Tensor, train: torch.Tensor, sched: Schedule,
                steps, *, clip: tuple[float, float] | None = None) -> list[Proportion]:
    """Copy rate of DDIM samples from x_T under (1 - w) eps_model + w eps* for each weight w (x0 clamped to
    `clip`)."""
    rates = []
    for w in weights:
        with torch.no_grad():
            z = sample_ddim(sampled(Blend(model, optimum, float(w)), sched, clip), x_T, sched, steps)
        rates.append(copy_rate(nearest_neighbors(z, train).ratio))
    return rates


def crossing(x, rates, level: float = 0.5) -> float | None:
    """The first x at which the rate reaches `level`, interpolated linearly between grid points (the first point,
    when it already does); None when it never does."""
    x, v = np.asarray(x, dtype=float), np.array([getattr(r, "value", r) for r in rates], dtype=float)
    above = np.flatnonzero(v >= level)
    if not len(above):
        return None
    k = int(above[0])
    if k == 0:
        return float(x[0])
    return float(x[k - 1] + (level - v[k - 1]) / (v[k] - v[k - 1]) * (x[k] - x[k - 1]))


def prefix_switch(model, optimum, taus, x_T: torch.Tensor, train: torch.Tensor, sched: Schedule,
                  steps, *, clip: tuple[float, float] | None = None) -> list[Proportion]:
    """Copy rate of DDIM samples from x_T with the optimum from T down to tau (t > tau) and the model below, for
    each tau: how far into sampling the optimum can lead before the model can no longer avoid a training point."""
    rates = []
    for tau in taus:
        denoiser = TimeSwitch(optimum, model, int(tau) + 1, sched.T) if tau < sched.T else model
        with torch.no_grad():
            z = sample_ddim(sampled(denoiser, sched, clip), x_T, sched, steps)
        rates.append(copy_rate(nearest_neighbors(z, train).ratio))
    return rates


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
    from .mi import jackknife
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
    from .generators import NoisyCopier
    from .mi import mean_of_terms, mi_density_terms

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
    from .mi import grid_split_change, mean_of_terms, mi_knn_terms

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

    @property
    def covers(self) -> bool:
        """Whether the slope's interval covers Tweedie's c_{t,s}."""
        return self.slope.low <= self.c <= self.slope.high


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


# ----------------------------------------------------------------------------- chapter 4: objectives side by side
@dataclass(frozen=True)
class Probe:
    """Forward samples x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps of each member's training images at fixed times,
    with the empirical optimum of that member's set there: where gaps and prediction differences are measured."""

    times: tuple[int, ...]
    xt: torch.Tensor  # [M, len(times), B, D] float64
    eps_star: torch.Tensor  # [M, len(times), B, D] float64: eps* of member m's training set at (x_t, t)


def member_probe(sets: list[torch.Tensor], sched: Schedule, times, *, n_probe: int, seed: int) -> Probe:
    """Probe for members trained on sets[m] [n_m, D]; members with equal sets get equal probes (same seed)."""
    from .schedule import add_noise

    xts, stars = [], []
    for train in sets:
        g = torch.Generator().manual_seed(seed)
        x0 = train.cpu().to(torch.float64)[torch.randint(len(train), (n_probe,), generator=g)]
        optimum = EmpiricalOptimum(train.cpu(), sched, dtype=torch.float64)
        xt = torch.stack([add_noise(sched, x0, int(t), torch.randn(x0.shape, generator=g, dtype=torch.float64))
                          for t in times])
        xts.append(xt)
        stars.append(torch.stack([optimum(x, int(t)) for x, t in zip(xt, times)]))
    return Probe(tuple(int(t) for t in times), torch.stack(xts), torch.stack(stars))


def relative_differences(model, probe: Probe, other=None) -> np.ndarray:
    """[M, len(times)]: E||eps_model - eps_ref||^2 / E||eps_ref||^2 per member and time on the probe, eps_ref = eps*
    (other None: the gap to the optimum) or the prediction of the ensemble `other` (train.Ensemble, member by
    member: how different two trained models are)."""
    dev = model.state[next(iter(model.state))].device
    out = np.zeros(probe.xt.shape[:2])
    with torch.no_grad():
        for j, t in enumerate(probe.times):
            x = probe.xt[:, j].to(device=dev, dtype=torch.float32)
            tt = torch.full(x.shape[:2], t, device=dev)
            ref = probe.eps_star[:, j] if other is None else other(x, tt).cpu().to(torch.float64)
            diff = model(x, tt).cpu().to(torch.float64) - ref
            out[:, j] = (diff.pow(2).sum((1, 2)) / ref.pow(2).sum((1, 2))).numpy()
    return out


@dataclass(frozen=True)
class ObjectiveCurves:
    """An ensemble measured at each of its EMA snapshots, member by member: the copy rate of its samples against the
    member's training set, their KID to the held-out images (when a feature classifier is given), the member's
    relative eps-gap to the empirical optimum of its set (mean over the probe's times) and its standard denoising
    loss on the held-out images; and the final samples."""

    train_steps: tuple[int, ...]
    rate: np.ndarray  # [M, snapshots]
    kid: np.ndarray | None  # [M, snapshots]
    gap: np.ndarray  # [M, snapshots]
    heldout_loss: np.ndarray  # [M, snapshots]
    samples: torch.Tensor  # [M, K, D] at the last snapshot (member m's sample k from x_T number m K + k)
    ratios: torch.Tensor  # [M, K] d1 / d2 of those samples against the member's training set
    d1: torch.Tensor  # [M, K] their distance to the nearest point of the member's training set

    def rates(self, members) -> list[Proportion]:
        """The final copy rate of each of `members`, with its count (one Proportion per member)."""
        return [copy_rate(self.ratios[m]) for m in members]

    def select(self, members) -> "ObjectiveCurves":
        """The curves of `members` only (indices into this ensemble's members), in that order."""
        m = list(members)
        return ObjectiveCurves(self.train_steps, self.rate[m], None if self.kid is None else self.kid[m],
                               self.gap[m], self.heldout_loss[m], self.samples[m], self.ratios[m], self.d1[m])


def objective_curves(ensemble, sets: list[torch.Tensor], heldout: torch.Tensor, features, sched: Schedule,
                     probe: Probe, *, n_samples: int, steps, seed: int,
                     clip: tuple[float, float] | None = None, n_samples_along: int | None = None) -> ObjectiveCurves:
    """ObjectiveCurves of a train.EnsembleResult whose member m was trained on sets[m] (DDIM on `steps`, a number of
    steps or a grid, x0 clamped to `clip`; KID in the space of `features`, a fid.QualityFeatures or a classifier
    (standardized unless they are Inception's); None: no KID). Two ensembles of the same members sample member
    m from the same noise: their samples are paired. n_samples_along: fewer samples at the snapshots before the
    last (the curves cost less; the last snapshot, which the rows read, keeps n_samples)."""
    from .quality import kid

    ref = None if features is None else features.features(heldout)
    standardize = not getattr(features, "inception", False)  # a classifier's features: KID on the reference's scale
    M, snaps = ensemble.n_members, ensemble.snapshot_steps
    rate, kids, gap, loss = (np.zeros((M, len(snaps))) for _ in range(4))
    for j, step in enumerate(snaps):
        k = n_samples if n_samples_along is None or j == len(snaps) - 1 else n_samples_along
        z = ensemble.sample(step, sched, k, steps=steps, seed=seed, clip=clip)
        nn = [nearest_neighbors(z[m], sets[m].cpu()) for m in range(M)]
        ratios, d1 = torch.stack([x.ratio.cpu() for x in nn]), torch.stack([x.d1.cpu() for x in nn])
        rate[:, j] = [copy_rate(r).value for r in ratios]
        if ref is not None:
            kids[:, j] = [kid(features.features(z[m].to(heldout.device)), ref, standardize=standardize)
                          for m in range(M)]
        model = ensemble.model_at(step)
        gap[:, j] = relative_differences(model, probe).mean(1)
        loss[:, j] = heldout_losses(model, heldout, sched, seed=seed)
    return ObjectiveCurves(tuple(snaps), rate, None if ref is None else kids, gap, loss, z, ratios, d1)


def select_members(ensemble, members):
    """The train.Ensemble of `members` (indices) of `ensemble`: the same architecture with their states only."""
    index = torch.as_tensor(list(members), dtype=torch.long)
    return type(ensemble)(ensemble.base, {k: v[index.to(v.device)] for k, v in ensemble.state.items()})


def similarity_ratios(model, standard, reruns: list, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
    """([M] ratios, [R, M] null ratios): mean over t of the relative difference model vs standard, divided by the mean
    of that of the R reruns (train.Ensemble each, same initialisation and batches, other draws of t and noise) vs
    standard; 1 when the objective moves the net as much as rerunning the standard objective does. The null ratios
    are each rerun's own ratio against the others' mean: how much that unit varies between reruns (R >= 2)."""
    if len(reruns) < 2:
        raise ValueError(f"similarity_ratios needs at least two reruns (their spread is the null); got {len(reruns)}")
    unit = np.stack([relative_differences(r, probe, standard).mean(1) for r in reruns])  # [R, M]
    own = relative_differences(model, probe, standard).mean(1)
    null = np.stack([unit[j] / np.delete(unit, j, axis=0).mean(0) for j in range(len(reruns))])
    return own / unit.mean(0), null


def rates_at_matched_gap(gap_a, rate_a, gap_b, rate_b) -> tuple[float, float, float] | None:
    """(g, rate of a at g, rate of b at g) at the smallest gap both runs reach, g = max(min gap_a, min gap_b), each
    rate interpolated along its snapshots in log gap; None when g lies outside a run's range of gaps (a run whose
    first snapshot is already closer than g cannot be read there)."""
    def at(gaps, rates, g):
        order = np.argsort(gaps)
        gs, rs = np.log(np.asarray(gaps)[order]), np.asarray(rates)[order]
        return float(np.interp(math.log(g), gs, rs)) if gs[0] <= math.log(g) <= gs[-1] else None

    g = max(float(np.min(gap_a)), float(np.min(gap_b)))
    a, b = at(gap_a, rate_a, g), at(gap_b, rate_b, g)
    return None if a is None or b is None else (g, a, b)


def last_fall(values) -> float:
    """The relative fall of a curve's last interval, (v[-2] - v[-1]) / |v[-2]| (negative where it rises; 0 for a
    curve at 0)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        raise ValueError("last_fall needs at least two values")
    return float((v[-2] - v[-1]) / abs(v[-2])) if v[-2] != 0 else 0.0


def still_falling(values, tolerance: float = 0.05) -> float | None:
    """The relative fall of the last interval (last_fall) when it exceeds `tolerance`; None when the curve has
    flattened (or rises)."""
    fall = last_fall(values)
    return fall if fall > tolerance else None


# ------------------------------------------------------------------------------- per-seed statistics and bisection
def blend_crossings(net, members: int, optimum, x_T: torch.Tensor, train: torch.Tensor, sched: Schedule, steps, *,
                    level: float = 0.5, iterations: int = 8, clip: tuple[float, float] | None = None) -> np.ndarray:
    """[M]: for each of M members of a flat denoiser `net` of [M K, D] rows (member m: rows m K .. m K + K - 1, e.g.
    train.Ensemble.denoiser()), the smallest weight lambda in [0, 1] at which DDIM samples of
    (1 - lambda) eps_member + lambda eps* from x_T [K, D] (the same noise for every member) are copies of `train` at
    rate >= `level`, found by bisection to 2^-iterations; every member at once, one batched sampling run per step.
    0 when the member alone already copies at that rate; nan when even lambda = 1 (eps* itself) does not."""
    M, K = members, len(x_T)
    x = x_T.repeat(M, 1)

    def rates(weights: torch.Tensor) -> np.ndarray:
        w = weights.to(device=x.device, dtype=x.dtype).repeat_interleave(K)[:, None]
        blend = lambda xt, t: (1 - w) * net(xt, t).to(xt.dtype) + w * optimum(xt, t).to(xt.dtype)  # noqa: E731
        with torch.no_grad():
            z = sample_ddim(sampled(blend, sched, clip), x, sched, steps).reshape(M, K, -1)
        return np.array([copy_rate(nearest_neighbors(z[m], train).ratio).value for m in range(M)])

    lo, hi = torch.zeros(M, dtype=torch.float64), torch.ones(M, dtype=torch.float64)
    at_zero, at_one = rates(lo) >= level, rates(hi) >= level
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = torch.as_tensor(rates(mid) >= level)
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    out = ((lo + hi) / 2).numpy()
    out[at_zero] = 0.0
    out[~at_one] = np.nan
    return out


def member_copy_rates(samples: torch.Tensor, sets) -> list[Proportion]:
    """Copy rate of member m's samples [M, K, D] against its own training set sets[m], one per member."""
    return [copy_rate(nearest_neighbors(z, s.to(z.device)).ratio) for z, s in zip(samples, sets)]


@dataclass(frozen=True)
class SeedCorrelations:
    """One Spearman correlation of gap and copy rate per training seed: the mean over that seed's groups (e.g. its
    training-set sizes) of the correlation along the group's points (e.g. snapshots). Groups whose copy rate (or gap)
    never moved on some seed have no correlation; they are left out of every seed, and named."""

    per_seed: list[float]  # one value per seed (empty when no group is defined)
    groups: list  # the groups that entered
    dropped: list  # the groups left out


def correlations_by_seed(seeds, groups, gaps, rates) -> SeedCorrelations:
    """SeedCorrelations of points given as parallel sequences (seed, group, gap, copy rate): per (seed, group)
    Spearman(gap, rate) over its points, averaged over the groups defined for every seed."""
    seeds, groups = list(seeds), list(groups)
    gaps, rates = np.asarray(gaps, dtype=float), np.asarray(rates, dtype=float)
    if not len(seeds) == len(groups) == len(gaps) == len(rates):
        raise ValueError("seeds, groups, gaps and rates must have one entry per point")
    keys, order = sorted(set(groups)), sorted(set(seeds))
    pick = lambda r, g: [i for i in range(len(seeds)) if seeds[i] == r and groups[i] == g]  # noqa: E731
    corr = {(r, g): spearman(gaps[pick(r, g)], rates[pick(r, g)]) for r in order for g in keys}
    kept = [g for g in keys if all(corr[r, g] is not None for r in order)]
    per_seed = [float(np.mean([corr[r, g] for g in kept])) for r in order] if kept else []
    return SeedCorrelations(per_seed, kept, [g for g in keys if g not in kept])


def heldout_losses(ensemble, heldout: torch.Tensor, sched: Schedule, *, repeats: int = 2, seed: int = 0) -> np.ndarray:
    """[M]: the standard denoising loss E_{t, eps} ||eps_m(x_t, t) - eps||^2 / D of each member of a train.Ensemble
    on the held-out images, every member on the same (x0, t, eps) draws (common random numbers), t ~ U{1..T}."""
    from .schedule import add_noise

    g = torch.Generator().manual_seed(seed)
    x0 = heldout.cpu().to(torch.float64).repeat(repeats, 1)
    t = torch.randint(1, sched.T + 1, (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xt = add_noise(sched, x0, t, eps)
    dev = next(iter(ensemble.state.values())).device
    M = ensemble.n_members
    with torch.no_grad():
        pred = ensemble(xt.to(device=dev, dtype=torch.float32).expand(M, -1, -1).contiguous(),
                        t.to(dev).expand(M, -1).contiguous()).cpu().to(torch.float64)
    return (pred - eps).pow(2).mean((1, 2)).numpy()


def flattened(curve, tolerance: float = 0.05) -> bool:
    """Whether a learning curve (values at the snapshots, e.g. the mean over seeds of the gap to eps*) has flattened:
    its last interval falls by at most `tolerance` of its value (experiments.last_fall)."""
    return still_falling(curve, tolerance) is None


@dataclass(frozen=True)
class Convergence:
    """Per member, how much each learning curve still moved over the last interval between snapshots: the relative
    fall of the gap to eps*, the relative change of the held-out loss (it may rise: overfitting), the absolute change
    of the copy rate; a member has converged where all three stay within their tolerances."""

    gap_fall: np.ndarray  # [M] (g[-2] - g[-1]) / g[-2]
    loss_change: np.ndarray  # [M] |l[-1] - l[-2]| / l[-2]
    rate_change: np.ndarray  # [M] |r[-1] - r[-2]|
    relative: float  # tolerance of the gap and the loss
    absolute: float  # tolerance of the copy rate

    @property
    def converged(self) -> np.ndarray:
        """[M] bool."""
        return (self.gap_fall <= self.relative) & (self.loss_change <= self.relative) & \
            (self.rate_change <= self.absolute)


def convergence(curves: ObjectiveCurves, *, relative: float = 0.05, absolute: float = 0.05) -> Convergence:
    """Convergence of every member of an ObjectiveCurves from its last two snapshots."""
    g, l, r = curves.gap[:, -2:], curves.heldout_loss[:, -2:], curves.rate[:, -2:]
    return Convergence((g[:, 0] - g[:, 1]) / np.abs(g[:, 0]), np.abs(l[:, 1] - l[:, 0]) / np.abs(l[:, 0]),
                       np.abs(r[:, 1] - r[:, 0]), relative, absolute)


def along_differences(a: ObjectiveCurves, b: ObjectiveCurves, members, members_b=None) -> list[float]:
    """Copy rate of a minus b averaged over the snapshots before the last (the two trained alike, at equal steps), one
    per member (members_b: b's, paired; default the same): how much less b copies while training."""
    return [float((a.rate[m, :-1] - b.rate[mb, :-1]).mean()) for m, mb in zip(members, members_b or members)]


@dataclass(frozen=True)
class WidthSlopes:
    """Per seed, the least-squares slope of the copy rate on log10 of the gap to eps* across model widths trained
    for the same number of steps (C6 at equal training time); widths whose samples fail the quality gate are left
    out. per_seed None: not measurable (`reason`)."""

    widths: list[int]  # the widths that entered
    per_seed: list[float] | None
    dropped: list[int]  # widths left out: their samples fail the quality gate
    reason: str = ""  # why it is not measurable ('' where it is)


def width_slopes(widths, gaps, rates, passes) -> WidthSlopes:
    """WidthSlopes from gaps and rates [widths, seeds] (at the same training step) and, per width, whether its
    samples pass the quality gate. Needs 3 widths that pass and a copy rate that moves in some seed."""
    gaps, rates = np.asarray(gaps, dtype=float), np.asarray(rates, dtype=float)
    if gaps.shape != rates.shape or gaps.shape[0] != len(widths) or len(passes) != len(widths):
        raise ValueError(f"need gaps and rates of shape [widths, seeds] and one gate per width; got {gaps.shape}, "
                         f"{rates.shape}, {len(passes)} gates for {len(widths)} widths")
    if not (gaps > 0).all():
        raise ValueError(f"gaps must be positive (their log10 is the abscissa); got {gaps.min()}")
    keep = [i for i, ok in enumerate(passes) if ok]
    kept, dropped = [widths[i] for i in keep], [w for w, ok in zip(widths, passes) if not ok]
    if len(keep) < 3:
        return WidthSlopes(kept, None, dropped, f"{len(keep)} widths pass the quality gate, 3 needed")
    x, y = np.log10(gaps[keep]), rates[keep]
    if np.ptp(y, axis=0).max() == 0:
        return WidthSlopes(kept, None, dropped, "the copy rate is the same at every width in every seed")
    slopes = [float(np.polyfit(x[:, r], y[:, r], 1)[0]) for r in range(y.shape[1])]
    return WidthSlopes(kept, slopes, dropped)


# ------------------------------------------------------------------------------------ objectives, seed by seed
def member_energies(samples: torch.Tensor, members, reference: torch.Tensor) -> list[float]:
    """Energy distance of each of `members`' samples (samples [M, K, D]) to the reference images."""
    from .quality import energy_distance

    ref = reference.cpu().to(torch.float64)
    return [energy_distance(samples[m].to(torch.float64), ref) for m in members]


def rate_differences(a, b, members, members_b=None) -> list[float]:
    """Final copy rate of ObjectiveCurves a minus b, one per member (members_b: b's members paired with `members`,
    default the same; paired members sample from the same x_T)."""
    return [float(a.rate[m, -1] - b.rate[mb, -1]) for m, mb in zip(members, members_b or members)]


def matched_differences(a, b, members, along: str = "gap", members_b=None) -> list[float] | None:
    """Copy rate of ObjectiveCurves a minus b at the same value of `along` ('gap': the gap to eps*; 'heldout_loss':
    the standard loss on held-out images), one per member (members_b: b's, paired; default the same) from
    rates_at_matched_gap on its snapshot curves; None when some member's two ranges do not overlap."""
    out = []
    for m, mb in zip(members, members_b or members):
        matched = rates_at_matched_gap(getattr(a, along)[m], a.rate[m], getattr(b, along)[mb], b.rate[mb])
        if matched is None:
            return None
        out.append(matched[1] - matched[2])
    return out
