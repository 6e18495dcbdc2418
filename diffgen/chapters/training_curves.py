"""Learning curves of an ensemble of nets, shared by chapters 3 and 4: the gap to eps* on a probe, held-out
losses, the copy rate along training, and when a curve has flattened (`convergence`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion.optimum import EmpiricalOptimum
from ..diffusion.schedule import Schedule
from ..measures.metrics import Proportion, copy_rate, nearest_neighbors


@dataclass(frozen=True)
class Probe:
    """Forward samples x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps of each member's training images at fixed times,
    with the empirical optimum of that member's set there: where gaps and prediction differences are measured."""

    times: tuple[int, ...]
    xt: torch.Tensor  # [M, len(times), B, D] float64
    eps_star: torch.Tensor  # [M, len(times), B, D] float64: eps* of member m's training set at (x_t, t)


def member_probe(sets: list[torch.Tensor], sched: Schedule, times, *, n_probe: int, seed: int) -> Probe:
    """Probe for members trained on sets[m] [n_m, D]; members with equal sets get equal probes (same seed)."""
    from ..diffusion.schedule import add_noise

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
    (other None: the gap to the optimum) or the prediction of the ensemble `other` (ensemble.Ensemble, member by
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
    last two (the curves cost less); the last two keep n_samples from the same x_T, so that the copy rate's change
    between them, which `convergence` reads, is the net's and not the draw's (the rows read the last)."""
    from ..measures.quality import kid

    ref = None if features is None else features.features(heldout)
    standardize = not getattr(features, "inception", False)  # a classifier's features: KID on the reference's scale
    M, snaps = ensemble.n_members, ensemble.snapshot_steps
    rate, kids, gap, loss = (np.zeros((M, len(snaps))) for _ in range(4))
    for j, step in enumerate(snaps):
        k = n_samples if n_samples_along is None or j >= len(snaps) - 2 else n_samples_along
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
    """The ensemble.Ensemble of `members` (indices) of `ensemble`: the same architecture with their states only."""
    index = torch.as_tensor(list(members), dtype=torch.long)
    return type(ensemble)(ensemble.base, {k: v[index.to(v.device)] for k, v in ensemble.state.items()})


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


def heldout_losses(ensemble, heldout: torch.Tensor, sched: Schedule, *, repeats: int = 2, seed: int = 0) -> np.ndarray:
    """[M]: the standard denoising loss E_{t, eps} ||eps_m(x_t, t) - eps||^2 / D of each member of a ensemble.Ensemble
    on the held-out images, every member on the same (x0, t, eps) draws (common random numbers), t ~ U{1..T}."""
    from ..diffusion.schedule import add_noise

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
    its last interval falls by at most `tolerance` of its value (training_curves.last_fall)."""
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
    interval: tuple[int, int]  # the training steps of the last two snapshots

    @property
    def converged(self) -> np.ndarray:
        """[M] bool."""
        return (self.gap_fall <= self.relative) & (self.loss_change <= self.relative) & \
            (self.rate_change <= self.absolute)


def convergence(curves: ObjectiveCurves, *, relative: float = 0.05, absolute: float = 0.05) -> Convergence:
    """Convergence of every member of an ObjectiveCurves from its last two snapshots (gap and held-out loss on common
    draws, the copy rate on samples from the same x_T: objective_curves)."""
    g, l, r = curves.gap[:, -2:], curves.heldout_loss[:, -2:], curves.rate[:, -2:]
    return Convergence((g[:, 0] - g[:, 1]) / np.abs(g[:, 0]), np.abs(l[:, 1] - l[:, 0]) / np.abs(l[:, 0]),
                       np.abs(r[:, 1] - r[:, 0]), relative, absolute, tuple(curves.train_steps[-2:]))


def joined(*parts: Convergence) -> Convergence:
    """The Convergence of the members of several ensembles together, in order (same tolerances and last interval:
    nets trained alike, e.g. one per objective)."""
    first = parts[0]
    if any((p.relative, p.absolute, p.interval) != (first.relative, first.absolute, first.interval) for p in parts):
        raise ValueError("joined needs Convergence parts with the same tolerances and last interval; got "
                         + ", ".join(f"{p.relative}/{p.absolute} over {p.interval}" for p in parts))
    return Convergence(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("gap_fall", "loss_change",
                                                                                  "rate_change")),
                       first.relative, first.absolute, first.interval)
