"""Layer 8: claim rows from measurements, one function per row: the rule that turns numbers into a verdict.

Each rule is stated in the row (`expected`) and tested (tests/test_verdicts.py) on a yardstick that lacks the
property the row claims (an S-blind denoiser, a generator that never saw S, samples of P) and must then fail, and on
one that has it. The thresholds are ours; the statements of paper rows are the paper's (results.PAPER_CLAIMS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .metrics import Estimate, Proportion, across_seeds
from .results import Claim, check_row, ours_row, paper_row


def _ci(e: Estimate | None):
    return None if e is None else (e.low, e.high)


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

    def fields(self) -> dict:
        return {"quality": f"{self.metric} {self.value:.3g} <= {self.yardstick_value:.3g} of {self.yardstick}",
                "quality_ok": self.passes}


@dataclass(frozen=True)
class Premise:
    """The premise of a conditional row, as measured: the row is evaluated only where it is met."""

    text: str  # e.g. "the net approximates eps* at n = 64 (C4 row 'approximates' holds: 0.9 [0.8, 1.0] > 0.5)"
    met: bool

    def fields(self) -> dict:
        return {"premise": self.text, "premise_met": bool(self.met)}


def image_gate(samples, train, heldout, *, seed: int = 0) -> QualityGate:
    """QualityGate of image samples (one [K, D] tensor per seed): their energy distance to the held-out images, mean
    over seeds, against that of K samples of an isotropic Gaussian fit of the training set (its mean image and pixel
    spread: a generator that knows nothing else)."""
    import torch

    from .generators import GaussianFit
    from .quality import energy_distance

    samples = list(samples)
    k = len(samples[0])
    crude = GaussianFit(std=float(train.std()))(train.cpu(), k, torch.Generator().manual_seed(seed))
    ref = heldout.cpu().to(torch.float64)
    value = sum(energy_distance(z.cpu().to(torch.float64), ref) for z in samples) / len(samples)
    return QualityGate("energy distance to held-out images", value,
                       "an isotropic Gaussian fit of S (mean image, pixel spread)", energy_distance(crude, ref))


def toy_gate(samples, data, *, seed: int = 0, level: float = 0.99) -> QualityGate:
    """QualityGate of 2-D samples of M training sets (generators.SetSamples, one per seed) from a distribution P of
    known density: the share of samples outside P's `level` highest-density region (log p below the (1 - level)
    quantile of log p over 20 000 samples of P), mean over sets and seeds, against that of samples of a Gaussian fit
    (mean and covariance) of each training set. On a ring of clusters a distance such as the energy distance lets
    well-scaled noise look as good as a fit of S; being on P's support does not."""
    import torch

    from .generators import GaussianFit

    samples = list(samples)
    g = torch.Generator().manual_seed(seed)
    cut = torch.quantile(data.log_prob(data.sample(20_000, g).to(torch.float64)), 1 - level)
    outside = lambda z: float((data.log_prob(z.to(torch.float64)) < cut).double().mean())  # noqa: E731
    value = sum(outside(z) for s in samples for z in s.z) / sum(len(s.z) for s in samples)
    K = samples[0].z.shape[1]
    crude = sum(outside(GaussianFit()(train.cpu(), K, g)) for train in samples[0].train) / len(samples[0].train)
    return QualityGate(f"share of samples outside P's {level:.0%} highest-density region", value,
                       "a Gaussian fit of each training set", crude)


def _conditions(premise: Premise | None = None, gate: QualityGate | None = None,
                flattened: bool | None = None) -> dict:
    out = {} if premise is None else premise.fields()
    out.update({} if gate is None else gate.fields())
    return out | ({} if flattened is None else {"flattened": bool(flattened)})


# --------------------------------------------------------------------------------------------------- chapter 1
def estimator_recovers_closed_form(check) -> Claim:
    """R1: the kNN interval covers 0.5 log(1 + 1/n) for all but at most one of the sizes (experiments.EstimatorCheck)."""
    covered, sizes = check.covered("knn"), len(check.sizes)
    return check_row("R1", f"sizes n in {list(check.sizes)} whose exact I(z; S) lies in the kNN 95% interval (1-D, "
                     f"M = {check.n_sets})", float(covered), None, f">= {sizes - 1} of {sizes}", covered >= sizes - 1)


def estimator_recovers_densities(check, std: float) -> Claim:
    """R2: at an intermediate value the kNN estimate and the exact-density value agree: their intervals overlap
    (experiments.DensityCheck)."""
    knn, exact = check.knn, check.exact
    return check_row("R2", f"kNN I(z; m) of a noisy copier (std {std:g}) minus the value from exact densities "
                     f"({exact.value:.3f})", knn.value - exact.value, (knn.low - exact.value, knn.high - exact.value),
                     "intervals of the two overlap", knn.low <= exact.high and exact.low <= knn.high)


def memorizer_saturates(estimate: Estimate, n_sets: int, what: str) -> Claim:
    """C1: a generator that copies its training set shows I(z; m) at the ceiling: lower end >= 0.9 log M."""
    ceiling = math.log(n_sets)
    return paper_row("C1", f"I(z; m) of {what}, M = {n_sets}", estimate.value, _ci(estimate),
                     f">= 0.9 log M = {0.9 * ceiling:.3f} (a memorizing generator saturates)",
                     estimate.low >= 0.9 * ceiling)


def learner_below_memorizer(per_seed: list[float], memorizer: Estimate, what: str, gate: QualityGate) -> Claim:
    """C1: a trained model that generates new data shows less I(z; m) than the memorizing optimum: the t interval
    across seeds of its per-seed I(z; m) lies below the optimum's interval; gated on sample quality (a generator of
    noise also carries no information about S)."""
    est = across_seeds(per_seed)
    return paper_row("C1", f"I(z; m) of {what}, one estimate per seed", est.value, _ci(est),
                     f"below the empirical optimum's ({memorizer.value:.3f}), intervals disjoint",
                     est.high < memorizer.low, len(per_seed), **_conditions(gate=gate))


def blind_reads_zero(estimate: Estimate, what: str, tolerance: float = 0.05) -> Claim:
    """C1: a generator that never looks at S shows I(z; m) of about 0: |value| <= tolerance and 0 in the interval."""
    return paper_row("C1", f"I(z; m) of {what} (ignores S)", estimate.value, _ci(estimate),
                     f"|I| <= {tolerance:g} nats and 0 in the interval (no dependence on S)",
                     abs(estimate.value) <= tolerance and estimate.low <= 0 <= estimate.high)


def tradeoff_along_training(along) -> Claim:
    """C6 (ch1): along training the dependence on S grows while the distance of the average generator to P falls:
    the grid I(z; m) rises from the first snapshot to the last while KL(P_z || P) falls, each change computed per
    seed and its t interval across seeds above (below) 0 (experiments.AlongTraining)."""
    mi, kl = across_seeds(along.mi_changes), across_seeds(along.marginal_changes)
    return paper_row("C6", f"change of I(z; m) from step {along.train_steps[0]} to {along.train_steps[-1]}, one per "
                     f"seed (grid plug-in; KL(P_z || P) changes by {kl.value:.3f} [{kl.low:.3f}, {kl.high:.3f}])",
                     mi.value, _ci(mi), "> 0 with its interval above 0 while the KL's interval lies below 0",
                     mi.low > 0 and kl.high < 0, along.seeds)


# --------------------------------------------------------------------------------------------------- chapter 2
def closed_form_exact(error: float) -> Claim:
    """C2: the empirical optimum in closed form agrees with a float64 brute force to 1e-8."""
    return paper_row("C2", "max |x0* kernel - float64 brute force| over t in {1, 10, 100, 500, 1000}", error, None,
                     "< 1e-8", error < 1e-8)


def sampler_copies(rate: Proportion, what: str, *, paper: bool) -> Claim:
    """C3: (almost) every sample is a copy of a training point: lower end of the Wilson interval >= 0.9. `paper`:
    a deterministic sampler, as the abstract says; else our extension to stochastic samplers."""
    metric = f"copy rate (d1/d2 < 1/3), {what}, {rate.total} samples"
    if paper:
        return paper_row("C3", metric, rate.value, _ci(rate), ">= 0.9 at the lower end of the interval",
                         rate.low >= 0.9)
    return Claim("C3", "ours", "Stochastic samplers with the empirical optimum memorize too.", metric, rate.value,
                 _ci(rate), ">= 0.9 at the lower end of the interval", bool(rate.low >= 0.9))


# --------------------------------------------------------------------------------------------------- chapter 3
def approximates_optimum(normalized: list[float], what: str, *, flattened: bool) -> Claim:
    """C4, the premise of the others: closer to the optimum than to an S-blind yardstick: the normalised share
    (share - share_blind) / (1 - share_blind), one per seed, has its t interval across seeds above 1/2. Its own
    premise is sufficient training, read as: the nets' learning curves (gap to eps* along the snapshots) flattened. It
    decides only a negative verdict: nets that approximate eps* before their curves flatten do so all the more after."""
    est = across_seeds(normalized)
    holds = est.low > 0.5
    premise = Premise("sufficient training: the gap to eps* flattened over the last snapshots" if flattened else
                      "sufficient training: the nets approximate eps* already" if holds else
                      "sufficient training: the gap to eps* was still falling at the end", flattened or holds)
    return paper_row("C4", f"share of the optimum's loss reduction achieved by {what}, normalised by the net of the "
                     "same budget trained on a disjoint set: (share - share_blind) / (1 - share_blind)", est.value,
                     _ci(est), "> 0.5 at the lower end of the interval across seeds (closer to eps* than to a net "
                     "that never saw S)", holds, len(normalized), **_conditions(premise, flattened=flattened))


def premise_of(approximates: Claim, n: int) -> Premise:
    """The premise of C4's other rows at training-set size n: the row 'approximates' holds there."""
    lo, hi = approximates.ci if approximates.ci else (approximates.value, approximates.value)
    return Premise(f"the row 'approximates eps*' holds at n = {n} (normalised share {approximates.value:.3g} "
                   f"[{lo:.3g}, {hi:.3g}], lower end above 0.5)", approximates.holds)


def generalizing(approximates: Claim, unseen: Claim, n: int) -> Premise:
    """The premise of C4's third row at size n: the slight difference can be critical to generalizing only for nets
    that approximate eps* and yet generate unseen data (both rows hold there)."""
    return Premise(f"the nets approximate eps* and generate unseen data at n = {n} (rows 'approximates eps*': "
                   f"{approximates.verdict}; 'generates unseen data': {unseen.verdict})",
                   approximates.holds and unseen.holds)


def generates_unseen(rates: list[Proportion], what: str, premise: Premise, gate: QualityGate) -> Claim:
    """C4: the trained model generates unseen data: its copy rate, one per seed, has a t interval across seeds whose
    upper end is at most 1/2 (mostly unseen data); evaluated where the nets approximate eps* (premise) and gated on
    sample quality (a generator of noise copies nothing)."""
    est = across_seeds([r.value for r in rates], bounds=(0.0, 1.0))
    return paper_row("C4", f"copy rate (d1/d2 < 1/3) of {what}, {rates[0].total} samples per seed", est.value,
                     _ci(est), "<= 0.5 at the upper end of the interval across seeds (mostly unseen data)",
                     est.high <= 0.5, len(rates), **_conditions(premise, gate))


def difference_is_critical(crossing_net, crossing_blind, what: str, premise: Premise) -> Claim:
    """C4: the slight difference decides: moving the net the share lambda of the way to eps* makes half its samples
    copies at a smaller lambda (found by bisection) than a net of the same budget that never saw S; the paired
    difference per seed (blind - net) has its t interval across seeds above 0; evaluated where the nets approximate
    eps* and generate unseen data (`generalizing`; elsewhere the crossings may be None: not computed). nan crossings (never half copies): not measurable."""
    diffs = [] if crossing_net is None else [b - a for a, b in zip(crossing_net, crossing_blind)]
    measurable = len(diffs) > 1 and all(math.isfinite(d) for d in diffs)
    est = across_seeds(diffs) if measurable else None
    return paper_row("C4", f"lambda at which (1 - lambda) eps_theta + lambda eps* makes half the samples copies "
                     f"(bisection), the disjoint-set net's minus the net's, paired by seed, {what}",
                     est.value if est else None, _ci(est), "> 0 at the lower end of the interval across seeds (the "
                     "net trained on S sits nearer to memorizing)", est is not None and est.low > 0, len(diffs) or None,
                     **_conditions(premise))


def tradeoff(correlations, what: str) -> Claim:
    """C6: the smaller the gap to the empirical optimum, the higher the copy rate: one Spearman correlation of gap and
    copy rate per seed (experiments.SeedCorrelations), its t interval across seeds below 0; groups whose copy rate
    never moved have no correlation and are named in the metric; none left: not measurable."""
    values = correlations.per_seed
    est = across_seeds(values, bounds=(-1.0, 1.0)) if len(values) > 1 else None
    dropped = f"; left out (copy rate or gap constant): {correlations.dropped}" if correlations.dropped else ""
    return paper_row("C6", f"Spearman correlation between relative gap to eps* and copy rate, one per seed, {what}"
                     f"{dropped}", est.value if est else None, _ci(est),
                     "< 0 with its interval across seeds below 0 (smaller gap, more copies)",
                     est is not None and est.high < 0, len(values) or None)


# --------------------------------------------------------------------------------------------------- chapter 4
def _c5_row(claim_id: str, ours: str | None, *args, **kwargs) -> Claim:
    """A paper row of claim_id, or (ours = its statement) our row under it: a variant of our reconstruction."""
    return paper_row(claim_id, *args, **kwargs) if ours is None else ours_row(claim_id, ours, *args, **kwargs)


def similar_model(ratios, bound: float, what: str, *, ours: str | None = None) -> Claim:
    """C5a: the new objective's net is about as close to the standard net as a rerun of the standard objective with
    other draws of t and noise (same initialisation and batches): the ratio of the two prediction differences, one
    per seed (experiments.similarity_ratios), has a geometric-mean t interval whose upper end lies below `bound`, the
    upper prediction bound of a further rerun-vs-rerun ratio (experiments.rerun_bound, from a second rerun)."""
    est = across_seeds(ratios, log=True)
    return _c5_row("C5a", ours, f"prediction difference new vs standard net divided by that of a standard rerun "
                   f"with other noise (same init and batches), geometric mean over seeds, {what}", est.value,
                   _ci(est), f"<= {bound:.3g} at the upper end (the 97.5% prediction bound of a rerun-vs-rerun "
                   "ratio: about as close as rerunning the standard objective)", est.high <= bound, len(ratios))


def similar_quality(claim_id: str, differences, scale: float, metric: str, what: str, *,
                    ours: str | None = None, flattened: bool | None = None) -> Claim:
    """C5a / C5b: sample quality about as good as the standard objective's: the difference new - standard of a
    distance to held-out data, one per seed (paired by x_T), has a t interval across seeds whose upper end is at most
    a quarter of `scale` = (the distance of a crude generator that knows only the mean image and the pixel spread,
    an isotropic Gaussian) - (the standard model's distance)."""
    if claim_id not in ("C5a", "C5b"):
        raise ValueError(f"claim_id must be C5a or C5b; got {claim_id!r}")
    est = across_seeds(differences)
    return _c5_row(claim_id, ours, f"{metric} to held-out images, new minus standard objective, one per seed, {what}",
                   est.value, _ci(est), f"<= a quarter of the way to an isotropic Gaussian (0.25 x {scale:.4g}) at "
                   "the upper end", scale > 0 and est.high <= 0.25 * scale, len(differences),
                   **_conditions(flattened=flattened))


def standard_copies(rates: list[Proportion], n: int) -> Premise:
    """The premise of "memorizes less" at size n: the standard net memorizes there (its copy rate, one per seed, has
    a t interval across seeds above 0): there is memorization to reduce."""
    est = across_seeds([r.value for r in rates], bounds=(0.0, 1.0))
    return Premise(f"the standard net copies at n = {n} (copy rate {est.value:.3g} [{est.low:.3g}, {est.high:.3g}], "
                   "lower end above 0)", est.low > 0)


def memorizes_less(differences, what: str, premise: Premise, gate: QualityGate, *, ours: str | None = None,
                   flattened: bool | None = None) -> Claim:
    """C5b: the new objective memorizes less: copy rate standard - new, one per seed (paired by x_T), with its t
    interval across seeds above 0; evaluated where the standard net copies and gated on the new net's sample quality
    (a generator of noise copies nothing)."""
    est = across_seeds(differences)
    return _c5_row("C5b", ours, f"copy rate, standard minus new objective, one per seed, {what}", est.value,
                   _ci(est), "> 0 with the interval across seeds above 0", est.low > 0, len(differences),
                   **_conditions(premise, gate, flattened))


def less_information(standard_minus_new, what: str, gate: QualityGate) -> Claim:
    """C5b: the new objective's samples depend less on the training set: I(z; m) of the standard minus the new
    objective's, one per seed (the same training sets), with its t interval across seeds above 0; gated on the new
    generator's sample quality (noise carries no information about S)."""
    est = across_seeds(standard_minus_new)
    return paper_row("C5b", f"I(z; m), standard minus new objective, one per seed, {what}", est.value, _ci(est),
                     "> 0 with the interval across seeds above 0", est.low > 0, len(standard_minus_new),
                     **_conditions(gate=gate))


def beyond_weighting(differences, what: str, gate: QualityGate) -> Claim:
    """C5b, ours: the new objective memorizes less than the standard loss with the same weighting of t
    (objectives.WeightedEpsLoss): copy rate control - new, one per seed, t interval above 0. If it fails while C5b's
    copy-rate row holds, the weighting of t, not the gap noise, explains the difference."""
    est = across_seeds(differences)
    return ours_row("C5b", "In our reconstruction, the forward-time objective memorizes less than the standard loss "
                    "weighted by lambda_t = E c_{t,s}^2 (its weighting of t without its noisier target).",
                    f"copy rate, weighted-loss control minus new objective, one per seed, {what}", est.value,
                    _ci(est), "> 0 with the interval across seeds above 0", est.low > 0, len(differences),
                    **_conditions(gate=gate))


def less_at_matched(differences, matched: str, what: str, gate: QualityGate) -> Claim:
    """C5b, ours: at the same `matched` quantity (the gap to eps*, or the standard denoising loss on held-out images;
    snapshot curves interpolated, experiments.rates_at_matched_gap) the new objective still copies less: copy rate
    standard - new, one per seed, t interval above 0; None (not measurable) when the ranges do not overlap on every
    seed."""
    measurable = differences is not None and len(differences) > 1
    est = across_seeds(differences) if measurable else None
    return ours_row("C5b", f"In our reconstruction, the forward-time objective memorizes less than the standard one "
                    f"at the same {matched} (not only because it trains slower).",
                    f"copy rate at matched {matched}, standard minus new, one per seed, {what}",
                    est.value if est else None, _ci(est), "> 0 with the interval across seeds above 0",
                    est is not None and est.low > 0, len(differences) if measurable else None,
                    **_conditions(gate=gate))


def candidate_minimiser_is_eps_star(deviation: float) -> Claim:
    """R3: in our reading, the forward-time objective's exact minimiser is eps* (relative deviation below 1e-8)."""
    return check_row("R3", "max relative deviation of the brute-force minimiser of our forward-time objective from "
                     "eps*", deviation, None, "< 1e-8", deviation < 1e-8)


def tweedie_holds(slopes) -> Claim:
    """R4: the Monte-Carlo slope's 95% interval covers c_{t,s} in at least 90% of the (t, s) pairs
    (experiments.TweedieSlope)."""
    covered = sum(w.covers for w in slopes)
    return check_row("R4", "(t, s) pairs whose 95% slope interval covers c_{t,s}", float(covered), None,
                     f">= 90% of {len(slopes)}", covered >= 0.9 * len(slopes))
