"""Memorization metrics: exact nearest neighbours, the d1/d2 copy rate with a Wilson interval, bootstrap
confidence intervals, denoiser gaps per noise level."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import numpy as np
import torch

from ..base.util import tiles

COPY_THRESHOLD = 1 / 3  # a sample is a copy when d1 / d2 < 1/3 (the ratio test used by memorization studies)


@dataclass(frozen=True)
class Estimate:
    """A statistic with a percentile-bootstrap confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    @property
    def ci(self) -> list[float]:
        return [self.low, self.high]

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


@dataclass(frozen=True)
class Proportion(Estimate):
    """count of total, with a Wilson score interval: never collapses to a point at 0 or 1 (0/256 reads [0, 0.015])."""

    count: int = 0
    total: int = 0

    def __format__(self, spec: str) -> str:
        return f"{Estimate.__format__(self, spec)} ({self.count}/{self.total})"


def wilson_interval(count: int, total: int, level: float = 0.95) -> Proportion:
    """Wilson score interval for a binomial proportion: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n),
    p = count/total, z the (1 + level)/2 normal quantile (Wilson 1927)."""
    if not isinstance(total, int) or total < 1 or not isinstance(count, int) or not 0 <= count <= total:
        raise ValueError(f"need integers 0 <= count <= total, total >= 1; got count={count!r}, total={total!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p, n = count / total, total
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = (0.0 if count == 0 else max(0.0, centre - half)), (1.0 if count == total else min(1.0, centre + half))
    return Proportion(p, low, high, level, count, total)


def across_seeds(values, level: float = 0.95, *, log: bool = False,
                 bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean of one number measured on k >= 2 training seeds, with the t interval mean -/+ t_{k-1} sd / sqrt(k): the
    spread that the seed alone (initialisation, batches, noise) puts on a trained-model number. log=True (positive
    values, e.g. ratios): the geometric mean, with the t interval of the logarithms mapped back. bounds: the range
    the number cannot leave (a correlation's [-1, 1], a rate's [0, 1]); the interval is cut to it."""
    from scipy.stats import t as student

    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2 or not np.isfinite(v).all() or (log and not (v > 0).all()):
        raise ValueError(f"across_seeds needs at least two finite{' positive' if log else ''} values (one per seed); "
                         f"got {values!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    v = np.log(v) if log else v
    half = float(student.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    est = (float(v.mean()), float(v.mean()) - half, float(v.mean()) + half)
    value, low, high = (math.exp(x) for x in est) if log else est
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Estimate(value, low, high, level)


def equivalence_power(margin: float, sd: float, k: int, level: float = 0.95, *, sides: int = 2) -> float:
    """The power of an equivalence test on k seeds when the true difference is 0: the probability that the t interval
    (`level`) of the mean of k values ~ N(0, sd^2) lies inside [-margin, margin] (sides=2), or below margin (sides=1,
    non-inferiority). Exact for normal values: P = E_s[2 Phi((margin - c s) sqrt(k) / sd) - 1]^+ (sides=2) or
    E_s[Phi(...)] (sides=1), c = t_{k-1,(1+level)/2} / sqrt(k), over the sample sd s = sd sqrt(q / (k-1)),
    q ~ chi^2_{k-1}."""
    from scipy import integrate
    from scipy.stats import chi2, norm
    from scipy.stats import t as student

    if sides not in (1, 2) or k < 2 or margin <= 0 or sd < 0:
        raise ValueError(f"need sides 1 or 2, k >= 2, margin > 0, sd >= 0; got {sides}, {k}, {margin}, {sd}")
    if sd == 0:
        return 1.0
    c, df = float(student.ppf((1 + level) / 2, k - 1)) / math.sqrt(k), k - 1

    def given(q: float) -> float:
        z = (margin - c * sd * math.sqrt(q / df)) * math.sqrt(k) / sd
        p = norm.cdf(z) if sides == 1 else max(0.0, 2 * norm.cdf(z) - 1)
        return p * chi2.pdf(q, df)

    top = df * (margin / (c * sd)) ** 2 if sides == 2 else math.inf  # beyond it the interval cannot fit
    return float(min(1.0, integrate.quad(given, 0, top, limit=200)[0]))


def seeds_for_power(margin: float, sd: float, target: float = 0.8, level: float = 0.95, *, sides: int = 2,
                    most: int = 1000) -> int:
    """The fewest seeds k >= 2 whose equivalence_power reaches `target` (`most` when none up to it does); the power
    grows with k, so doubling then bisection finds it in a few dozen evaluations."""
    power = lambda k: equivalence_power(margin, sd, k, level, sides=sides)  # noqa: E731
    lo, hi = 1, 2  # power(lo) < target (k = 1 has no interval), power(hi) to be tested
    while power(hi) < target:
        if hi >= most:
            return most
        lo, hi = hi, min(2 * hi, most)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(mid) >= target else (mid, hi)
    return hi


def pooled_rate(rates: list[Proportion], level: float = 0.95) -> Proportion:
    """A proportion measured on several seeds: the pooled count with its Wilson interval, widened to hold the
    across-seeds t interval of the per-seed rates (clipped to [0, 1]) when there are two or more. It never
    collapses at 0 or 1 (Wilson) and never hides the seeds' spread (t)."""
    pooled = wilson_interval(sum(r.count for r in rates), sum(r.total for r in rates), level)
    if len(rates) < 2:
        return pooled
    spread = across_seeds([r.value for r in rates], level)
    return Proportion(pooled.value, min(pooled.low, max(0.0, spread.low)), max(pooled.high, min(1.0, spread.high)),
                      level, pooled.count, pooled.total)


@dataclass(frozen=True)
class Neighbors:
    """The k nearest training points of each sample: distances [B, k] (ascending) and indices [B, k]."""

    dist: torch.Tensor
    index: torch.Tensor

    @property
    def d1(self) -> torch.Tensor:
        return self.dist[:, 0]

    @property
    def ratio(self) -> torch.Tensor:
        """d1 / d2: near 0 for a copy of one training point, near 1 when two points are equally close."""
        return self.dist[:, 0] / self.dist[:, 1]


def distinct_rows(x: torch.Tensor, *, tile: int = 4096) -> torch.Tensor:
    """Indices [U] (ascending) of the first occurrence of each distinct row of x [N, D]: exact (bitwise) duplicates
    dropped. One pass of row hashes, every hash seen before confirmed by comparing the rows themselves; the rows
    reach the host `tile` at a time (memory O(tile x D), whatever the device)."""
    if x.ndim != 2:
        raise ValueError(f"x must have shape [N, D]; got {tuple(x.shape)}")
    seen: dict[int, list[int]] = {}  # hash -> the kept rows with that hash
    keep = []
    for sl in tiles(len(x), tile):
        block = x[sl].detach().cpu().contiguous().numpy()
        for i, row in enumerate(block, sl.start):
            same_hash = seen.setdefault(hash(row.tobytes()), [])
            if not any(np.array_equal(_row(x, block, sl, j), row) for j in same_hash):
                same_hash.append(i)
                keep.append(i)
    return torch.tensor(keep, dtype=torch.long, device=x.device)


def _row(x: torch.Tensor, block: np.ndarray, sl: slice, j: int) -> np.ndarray:
    """Row j of x, from the block on the host when it lies there."""
    return block[j - sl.start] if j >= sl.start else x[j].detach().cpu().numpy()


def nearest_neighbors(z: torch.Tensor, train: torch.Tensor, k: int = 2, *, tile: int = 4096,
                      distinct: bool = True) -> Neighbors:
    """Exact k nearest training points (Euclidean) of each row of z [B, D] among train [N, D].

    Tiles over the training set keeping a running top-k per query (memory O(B x (tile + k)) plus one tile of train in
    float64, never a copy of the whole set), ranks in float64 and recomputes the final distances as ||z - x_i||
    directly, so tiny distances (copies) are not lost to cancellation. distinct=True: exact duplicates in train count
    once (the first occurrence's index is reported), so the second neighbour of a copy of a duplicated image is the
    nearest *other* image and d1/d2 = 0, not 0/0.
    """
    if z.ndim != 2 or train.ndim != 2 or z.shape[1] != train.shape[1]:
        raise ValueError(f"z [B, D] and train [N, D] must agree in D; got {tuple(z.shape)} and {tuple(train.shape)}")
    repeated = None  # [N] bool on z's device: rows that repeat an earlier one (skipped), when there are any
    if distinct:
        keep = distinct_rows(train)
        if len(keep) < len(train):
            if not 1 <= k <= len(keep):
                raise ValueError(f"k must lie in [1, {len(keep)}] (the distinct rows of train); got {k}")
            repeated = torch.ones(len(train), dtype=torch.bool, device=z.device)
            repeated[keep.to(z.device)] = False
    if not 1 <= k <= len(train):
        raise ValueError(f"k must lie in [1, N={len(train)}]; got {k}")
    z64 = z.to(torch.float64)
    best_d = torch.full((len(z), 0), torch.inf, dtype=torch.float64, device=z.device)
    best_i = torch.zeros((len(z), 0), dtype=torch.long, device=z.device)
    z_sq = z64.pow(2).sum(1, keepdim=True)
    for sl in tiles(len(train), tile):
        xs = train[sl].to(device=z.device, dtype=torch.float64)
        d2 = (z_sq - 2 * z64 @ xs.T + xs.pow(2).sum(1)[None]).clamp(min=0)
        if repeated is not None:
            d2[:, repeated[sl]] = torch.inf
        cand_d = torch.cat([best_d, d2], 1)
        cand_i = torch.cat([best_i, torch.arange(sl.start, sl.stop, device=z.device).expand(len(z), -1)], 1)
        best_d, pos = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False)
        best_i = cand_i.gather(1, pos)
    nearest = train[best_i.to(train.device)].to(device=z.device, dtype=torch.float64)  # [B, k, D]
    exact = (z64[:, None, :] - nearest).norm(dim=-1)
    order = exact.argsort(dim=1)  # re-sort on the exact distances (ties within rounding may swap)
    return Neighbors(dist=exact.gather(1, order), index=best_i.gather(1, order))


def bootstrap_ci(values, statistic: Callable[[np.ndarray], float] = np.mean, *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> Estimate:
    """Percentile bootstrap: resample `values` (axis 0) with replacement n_boot times and take the
    (1 - level)/2 and (1 + level)/2 quantiles of the statistic."""
    values = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = np.array([statistic(values[i]) for i in idx])
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(statistic(values)), float(low), float(high), level)


def hierarchical_bootstrap(sizes: list[int], statistic: Callable[[int, np.ndarray], float], *, n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0) -> Estimate | list[Estimate]:
    """The mean over groups g (training seeds) of statistic(g, rows), rows = all sizes[g] rows of the group, with a
    two-stage percentile bootstrap interval: each replicate resamples the groups with replacement, then the rows
    within each drawn group (a row is what must stay together, e.g. the samples of two models from one x_T). Both
    sources of spread, the seed and the finite sample, reach the interval; with k groups it spans about the range of
    the k group values. A statistic that returns a vector [V] gives a list of V Estimates (one bootstrap for all)."""
    if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive integers (rows per group); got {sizes!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(sizes), size=len(sizes))
        stats.append(np.mean([statistic(int(g), rng.integers(0, sizes[g], size=sizes[g])) for g in drawn], axis=0))
    low, high = np.quantile(np.array(stats), [(1 - level) / 2, (1 + level) / 2], axis=0)
    value = np.mean([statistic(g, np.arange(n)) for g, n in enumerate(sizes)], axis=0)
    if np.ndim(value) == 0:
        return Estimate(float(value), float(low), float(high), level)
    return [Estimate(float(v), float(lo), float(hi), level) for v, lo, hi in zip(value, low, high)]


def copy_rate(ratio: torch.Tensor, threshold: float = COPY_THRESHOLD, level: float = 0.95) -> Proportion:
    """Share of samples with d1 / d2 < threshold, with its Wilson interval."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1]; got {threshold}")
    return wilson_interval(int((ratio < threshold).sum()), len(ratio), level)


@dataclass(frozen=True)
class CopySummary:
    """One generator's samples against the training set: their nearest neighbours, the copy rate and the median
    nearest-neighbour distance per coordinate."""

    samples: torch.Tensor  # [B, D]
    neighbors: Neighbors  # the two nearest training points of each sample
    rate: Proportion  # share of samples with d1 / d2 < 1/3

    @property
    def d1(self) -> torch.Tensor:
        """[B] d1 / sqrt(D): distance to the nearest training point per coordinate."""
        return self.neighbors.d1 / math.sqrt(self.samples.shape[1])

    @property
    def median_d1(self) -> float:
        return float(self.d1.median())


def copy_summaries(samples: dict, train: torch.Tensor) -> dict[str, CopySummary]:
    """name -> CopySummary of samples[name] [B, D] against the training set train [N, D] (exact neighbours)."""
    out = {}
    for name, z in samples.items():
        nn = nearest_neighbors(z, train)
        out[name] = CopySummary(z, nn, copy_rate(nn.ratio))
    return out


def copy_rate_curve(ratio: torch.Tensor, thresholds) -> np.ndarray:
    """Copy rate at each threshold (how the verdict moves with the 1/3 convention)."""
    r = np.asarray(ratio.cpu(), dtype=np.float64)
    return np.array([(r < th).mean() for th in np.asarray(thresholds, dtype=np.float64)])


@dataclass(frozen=True)
class WeightCollapse:
    """How the empirical optimum's weights w(x_t, t) along reverse paths settle on one training point."""

    t: torch.Tensor  # [S] grid times of the path (t >= 1), decreasing
    entropy: torch.Tensor  # [S, B] H(w(x_t, t)) in nats: log n when uniform, 0 on one point
    decided: torch.Tensor  # [S] share of paths whose argmax_i w_i already is the training point they end on
    collapse_t: int  # the largest t at which the median entropy is below 0.1 nats (0: never)
    decided_t: int  # the largest t at which >= 90% of the paths point at their final training point (0: never)


class WeightRecorder:
    """A sampler callback (callback(i, t, xt, x0_hat)) that keeps, at each grid time t >= 1, the entropy and the argmax
    of `optimum`'s weights w(x_t, t) (an EmpiricalOptimum's weight_stats): [S, B] numbers, not the [S+1, B, D] paths
    of a samplers.Trajectory (2.5 GB per recorded tensor for 1000 CIFAR-10 paths of 100 steps in float64)."""

    def __init__(self, optimum):
        self.optimum = optimum
        self.t: list[int] = []
        self.entropy: list[torch.Tensor] = []  # [B] per grid time, on the CPU
        self.nearest: list[torch.Tensor] = []

    def __call__(self, i: int, t: int, xt: torch.Tensor, x0_hat: torch.Tensor | None = None) -> None:
        if int(t) >= 1:
            stats = self.optimum.weight_stats(xt.to(self.optimum.train.device), int(t))
            self.t.append(int(t))
            self.entropy.append(stats.entropy.cpu())
            self.nearest.append(stats.nearest.cpu())

    def collapse(self, final_index: torch.Tensor) -> WeightCollapse:
        """WeightCollapse of the recorded paths, final_index [B] the training point each path ends nearest to."""
        times, entropy = torch.tensor(self.t), torch.stack(self.entropy)
        decided = torch.stack([(n == final_index.cpu()).double() for n in self.nearest]).mean(1)
        collapse = times[entropy.median(1).values < 0.1]
        done = times[decided >= 0.9]
        return WeightCollapse(times, entropy, decided, int(collapse.max()) if len(collapse) else 0,
                              int(done.max()) if len(done) else 0)


def weight_collapse(optimum, t: torch.Tensor, xt: torch.Tensor, final_index: torch.Tensor) -> WeightCollapse:
    """WeightCollapse of paths xt [S+1, B, D] recorded at times t [S+1] (samplers.Trajectory, ending at t = 0) under
    `optimum` (an EmpiricalOptimum), final_index [B] the training point each path ends nearest to. At large sizes
    record with WeightRecorder instead (no paths kept)."""
    record = WeightRecorder(optimum)
    for s, x in zip(t.tolist(), xt):
        record(0, s, x)
    return record.collapse(final_index)


@torch.no_grad()
def relative_gap(denoiser, reference, xt: torch.Tensor, t) -> float:
    """E||eps_hat(x_t, t) - eps_ref(x_t, t)||^2 / E||eps_ref(x_t, t)||^2 over the rows of x_t (one time step t)."""
    ref = reference(xt, t).to(torch.float64)
    diff = denoiser(xt, t).to(torch.float64) - ref
    return float(diff.pow(2).sum() / ref.pow(2).sum())


def gap_on_forward_samples(denoiser, reference, x0: torch.Tensor, sched, times, generator: torch.Generator):
    """relative_gap at each t on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (eps drawn from `generator`)."""
    from ..diffusion.schedule import add_noise

    gaps = []
    for t in times:
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        gaps.append(relative_gap(denoiser, reference, add_noise(sched, x0.to(torch.float64), int(t), eps), int(t)))
    return np.array(gaps)


def gap_along_path(denoiser, reference, times, xt) -> np.ndarray:
    """relative_gap at each recorded point (t_k, x_{t_k}) of a reverse path (see samplers.Trajectory), t_k >= 1."""
    return np.array([relative_gap(denoiser, reference, x, int(t)) for t, x in zip(times, xt) if int(t) >= 1])


@torch.no_grad()
def objective_samples(objective, denoiser, x0: torch.Tensor, *, repeats: int = 8, seed: int = 0) -> np.ndarray:
    """Per-sample values of a training objective (`objective.loss(denoiser, x0, generator)`) over `repeats` passes
    through x0, with draws from a generator seeded by `seed`: two denoisers evaluated with the same seed see the
    same t and noise (common random numbers), so their difference has low variance."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([objective.loss(denoiser, x0, g).detach().cpu() for _ in range(repeats)]).double().numpy()


@torch.no_grad()
def denoising_losses(denoisers: dict, x0: torch.Tensor, sched, *, t_range: tuple[int, int], repeats: int,
                     generator: torch.Generator) -> dict[str, np.ndarray]:
    """name -> per-sample losses [repeats N] of ||eps_hat(x_t, t) - eps||^2 / D for each denoiser, t ~ U{t_range}
    (inclusive) and eps ~ N(0, I), the same (x0, t, eps) for every denoiser (common random numbers)."""
    from ..diffusion.schedule import add_noise

    lo, hi = t_range
    if not 1 <= lo <= hi <= sched.T:
        raise ValueError(f"t_range must satisfy 1 <= lo <= hi <= T = {sched.T}; got {t_range}")
    out = {name: [] for name in denoisers}
    x = x0.to(torch.float64)
    for _ in range(repeats):
        t = torch.randint(lo, hi + 1, (len(x),), generator=generator).to(x.device)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        xt = add_noise(sched, x, t, eps)
        for name, d in denoisers.items():
            out[name].append((d(xt, t).to(torch.float64) - eps).pow(2).mean(1).cpu())
    return {name: torch.cat(v).numpy() for name, v in out.items()}


@dataclass(frozen=True)
class GapProfile:
    """How far a denoiser is from a reference, per time step, in both parametrizations (means over the queries)."""

    t: np.ndarray  # [T'] time steps
    eps_rel: np.ndarray  # E||eps_hat - eps_ref||^2 / E||eps_ref||^2
    x0_abs: np.ndarray  # E||x0_hat - x0_ref||^2 / D, with x0 = (x_t - s eps) / a: an eps error weighed by s^2 / a^2
    x0_rel: np.ndarray  # E||x0_hat - x0_ref||^2 / E||x0_ref||^2

    def peak(self, which: str = "x0_abs") -> int:
        """The time step where the gap `which` is largest."""
        return int(self.t[int(np.argmax(getattr(self, which)))])


@torch.no_grad()
def gap_profile(denoiser, reference, x0: torch.Tensor, sched, times, generator: torch.Generator) -> GapProfile:
    """GapProfile of `denoiser` against `reference` on forward samples x_t of x0 at each t in `times`."""
    from ..diffusion.schedule import add_noise, x0_from_eps

    x = x0.to(torch.float64)
    eps_rel, x0_abs, x0_rel = [], [], []
    for t in times:
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        xt = add_noise(sched, x, int(t), eps)
        ref, hat = reference(xt, int(t)).to(torch.float64), denoiser(xt, int(t)).to(torch.float64)
        x0_ref, x0_hat = x0_from_eps(sched, xt, int(t), ref), x0_from_eps(sched, xt, int(t), hat)
        eps_rel.append(float((hat - ref).pow(2).sum() / ref.pow(2).sum()))
        x0_abs.append(float((x0_hat - x0_ref).pow(2).mean()))
        x0_rel.append(float((x0_hat - x0_ref).pow(2).sum() / x0_ref.pow(2).sum()))
    return GapProfile(np.asarray([int(t) for t in times]), np.array(eps_rel), np.array(x0_abs), np.array(x0_rel))


def loss_reduction_share(losses: np.ndarray) -> float:
    """1 - (L_model - L_opt) / (L_zero - L_opt) from columns [model, optimum, zero predictor] of per-sample losses:
    the share of the loss reduction the optimum achieves over predicting 0 that the model also achieves."""
    model, opt, zero = losses.mean(0)
    return float(1 - (model - opt) / (zero - opt))


def regression_slope(target: torch.Tensor, predictor: torch.Tensor, *, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> Estimate:
    """Least-squares slope through the origin, sum_b <y_b, p_b> / sum_b |p_b|^2, of target y [B, D] on predictor
    p [B, D], with a bootstrap CI over rows. Tweedie check: y = xi_{t,s}, p = E[eps | x_t] gives c_{t,s}."""
    if target.shape != predictor.shape or target.ndim != 2:
        raise ValueError(f"target and predictor must be [B, D] of one shape; got {tuple(target.shape)} and "
                         f"{tuple(predictor.shape)}")
    y, p = target.to(torch.float64), predictor.to(torch.float64)
    pairs = torch.stack([(y * p).sum(1), p.pow(2).sum(1)], 1).cpu().numpy()  # [B, 2]
    return bootstrap_ci(pairs, lambda v: float(v[:, 0].sum() / v[:, 1].sum()), n_boot=n_boot, level=level, seed=seed)


def spearman(x, y) -> float | None:
    """Spearman rank correlation of x and y; None when it is undefined (fewer than 3 points, or a constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)
