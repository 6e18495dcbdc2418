"""Chapter 4's measurements: the forward-time objective's minimiser, Tweedie slopes, noisy intermediate states,
the similarity ratio, and differences between objectives at equal steps, matched gap or matched held-out loss."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion.optimum import EmpiricalOptimum
from ..diffusion.samplers import sample_ddim
from ..diffusion.schedule import Schedule
from ..measures.metrics import Estimate, Proportion, copy_rate, nearest_neighbors
from .training_curves import ObjectiveCurves, Probe, relative_differences


def forward_time_minimiser_error(objective, train: torch.Tensor, sched: Schedule, times, *, n_probe: int,
                                 generator: torch.Generator) -> float:
    """max over t of |minimiser - eps*| / |eps*| on forward draws of n_probe training points: the brute-force pointwise
    minimiser of the forward-time objective (denoisers.forward_time_minimiser, explicit Gaussian conditioning)
    against the empirical optimum."""
    from ..diffusion.denoisers import forward_time_minimiser
    from ..diffusion.objectives import forward_draw

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
    from ..diffusion.objectives import forward_draw, forward_time_coef
    from ..measures.metrics import regression_slope

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
    from ..diffusion.denoisers import NoisyPointOptimum

    rows = []
    for s in s_values:
        npo = NoisyPointOptimum.draw(train, sched, s, torch.Generator().manual_seed(seed), dtype=torch.float64)
        nn = nearest_neighbors(sample_ddim(npo.to(x_T.device), x_T, sched, steps), train)
        rows.append(NoisyPointRow(s, npo.noise_var**0.5, copy_rate(nn.ratio),
                                  float(nn.d1.median()) / math.sqrt(train.shape[1])))
    return rows


def similarity_ratios(model, standard, reruns: list, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
    """([M] ratios, [R, M] null ratios): mean over t of the relative difference model vs standard, divided by the mean
    of that of the R reruns (ensemble.Ensemble each, same initialisation and batches, other draws of t and noise) vs
    standard; 1 when the objective moves the net as much as rerunning the standard objective does. The null ratios
    are each rerun's own ratio against the others' mean: how much that unit varies between reruns (R >= 2)."""
    if len(reruns) < 2:
        raise ValueError(f"similarity_ratios needs at least two reruns (their spread is the null); got {len(reruns)}")
    unit = np.stack([relative_differences(r, probe, standard).mean(1) for r in reruns])  # [R, M]
    own = relative_differences(model, probe, standard).mean(1)
    null = np.stack([unit[j] / np.delete(unit, j, axis=0).mean(0) for j in range(len(reruns))])
    return own / unit.mean(0), null


def rates_at_matched(progress_a, rate_a, progress_b, rate_b) -> tuple[float, float, float] | None:
    """(v, rate of a at v, rate of b at v) at the furthest value of a measure of progress that both runs reach: for a
    measure that falls along training (the gap to eps*) the smallest value both reach, v = max(min a, min b); for one
    that rises (the held-out loss of a net that memorizes) the largest, v = min(max a, max b). Each rate interpolated
    along its snapshots in log v. None when the two runs move in opposite directions or v lies outside a run's range
    (a run whose first snapshot is already past v cannot be read there). Which way a run moves: its last snapshot
    against its first. (Taking the smallest value of a rising measure would match the runs at their first snapshots,
    before either copies anything.)"""
    def at(values, rates, v):
        order = np.argsort(values)
        vs, rs = np.log(np.asarray(values, dtype=float)[order]), np.asarray(rates, dtype=float)[order]
        return float(np.interp(math.log(v), vs, rs)) if vs[0] <= math.log(v) <= vs[-1] else None

    falls = [float(p[-1]) < float(p[0]) for p in (progress_a, progress_b)]
    if falls[0] != falls[1]:
        return None
    v = max(float(np.min(progress_a)), float(np.min(progress_b))) if falls[0] else \
        min(float(np.max(progress_a)), float(np.max(progress_b)))
    a, b = at(progress_a, rate_a, v), at(progress_b, rate_b, v)
    return None if a is None or b is None else (v, a, b)


def along_differences(a: ObjectiveCurves, b: ObjectiveCurves, members, members_b=None) -> list[float]:
    """Copy rate of a minus b averaged over the snapshots before the last (the two trained alike, at equal steps), one
    per member (members_b: b's, paired; default the same): how much less b copies while training."""
    return [float((a.rate[m, :-1] - b.rate[mb, :-1]).mean()) for m, mb in zip(members, members_b or members)]


def member_energies(samples: torch.Tensor, members, reference: torch.Tensor) -> list[float]:
    """Energy distance of each of `members`' samples (samples [M, K, D]) to the reference images."""
    from ..measures.quality import energy_distance

    ref = reference.cpu().to(torch.float64)
    return [energy_distance(samples[m].to(torch.float64), ref) for m in members]


def rate_differences(a, b, members, members_b=None) -> list[float]:
    """Final copy rate of ObjectiveCurves a minus b, one per member (members_b: b's members paired with `members`,
    default the same; paired members sample from the same x_T)."""
    return [float(a.rate[m, -1] - b.rate[mb, -1]) for m, mb in zip(members, members_b or members)]


def matched_differences(a, b, members, along: str = "gap", members_b=None) -> list[float] | None:
    """Copy rate of ObjectiveCurves a minus b at the same value of `along` ('gap': the gap to eps*; 'heldout_loss':
    the standard loss on held-out images), one per member (members_b: b's, paired; default the same) from
    rates_at_matched on its snapshot curves; None when some member's two curves cannot be matched."""
    out = []
    for m, mb in zip(members, members_b or members):
        matched = rates_at_matched(getattr(a, along)[m], a.rate[m], getattr(b, along)[mb], b.rate[mb])
        if matched is None:
            return None
        out.append(matched[1] - matched[2])
    return out
