"""Chapter 3's measurements: the share of the loss the optimum explains per noise band, blends and switches
between a net and the optimum, snapshots along training, and the trade-off across widths and seeds."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion.denoisers import Blend, ClippedX0, GaussianDenoiser, TimeSwitch
from ..diffusion.optimum import EmpiricalOptimum
from ..diffusion.samplers import sample_ddim
from ..diffusion.schedule import Schedule
from ..measures.metrics import (
    Estimate,
    Proportion,
    bootstrap_ci,
    copy_rate,
    denoising_losses,
    loss_reduction_share,
    nearest_neighbors,
    objective_samples,
    spearman,
    wilson_interval,
)


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


def blend_crossings(net, members: int, optimum, x_T: torch.Tensor, train: torch.Tensor, sched: Schedule, steps, *,
                    level: float = 0.5, iterations: int = 8, clip: tuple[float, float] | None = None) -> np.ndarray:
    """[M]: for each of M members of a flat denoiser `net` of [M K, D] rows (member m: rows m K .. m K + K - 1, e.g.
    ensemble.Ensemble.denoiser()), the smallest weight lambda in [0, 1] at which DDIM samples of
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
