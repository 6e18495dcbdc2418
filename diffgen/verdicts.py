"""Layer 8: claim rows from measurements, one function per row: the rule that turns numbers into a verdict.

Each rule is stated in the row (`expected`) and tested (tests/test_verdicts.py) on a yardstick that lacks the
property the row claims (an S-blind denoiser, a generator that never saw S, samples of P) and must then fail, and on
one that has it. The thresholds are ours; the statements of paper rows are the paper's (results.PAPER_CLAIMS).
"""
from __future__ import annotations

import math

from .metrics import Estimate, Proportion, across_seeds
from .results import Claim, check_row, paper_row


def _ci(e: Estimate | None):
    return None if e is None else (e.low, e.high)


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


def learner_below_memorizer(estimate: Estimate, memorizer: Estimate, what: str, seeds: int | None) -> Claim:
    """C1: a trained model that generates new data shows less I(z; m) than the memorizing optimum, intervals
    disjoint."""
    return paper_row("C1", f"I(z; m) of {what}", estimate.value, _ci(estimate),
                     f"below the empirical optimum's ({memorizer.value:.3f}), intervals disjoint",
                     estimate.high < memorizer.low, seeds)


def blind_reads_zero(estimate: Estimate, what: str, tolerance: float = 0.05) -> Claim:
    """C1: a generator that never looks at S shows I(z; m) of about 0: |value| <= tolerance and 0 in the interval."""
    return paper_row("C1", f"I(z; m) of {what} (ignores S)", estimate.value, _ci(estimate),
                     f"|I| <= {tolerance:g} nats and 0 in the interval (no dependence on S)",
                     abs(estimate.value) <= tolerance and estimate.low <= 0 <= estimate.high)


def tradeoff_along_training(along) -> Claim:
    """C6 (ch1): along training the dependence on S grows while the distance of the average generator to P falls:
    the grid I(z; m) rises from the first snapshot to the last (interval above 0) while KL(P_z || P) falls (interval
    below 0) (experiments.AlongTraining)."""
    mi, kl = along.mi_change, along.marginal_change
    return paper_row("C6", f"change of I(z; m) from step {along.train_steps[0]} to {along.train_steps[-1]} (grid "
                     f"plug-in; KL(P_z || P) changes by {kl.value:.3f} [{kl.low:.3f}, {kl.high:.3f}])", mi.value,
                     _ci(mi), "> 0 with its interval above 0 while the KL's interval lies below 0",
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
def approximates_optimum(normalized: list[float], what: str) -> Claim:
    """C4: closer to the optimum than to an S-blind yardstick: the normalised share (share - share_blind) /
    (1 - share_blind), mean over seeds, has its interval across seeds above 1/2."""
    est = across_seeds(normalized) if len(normalized) > 1 else None
    value = sum(normalized) / len(normalized)
    return paper_row("C4", f"share of the optimum's loss reduction achieved by {what}, normalised by the net of the "
                     "same budget trained on a disjoint set: (share - share_blind) / (1 - share_blind)", value,
                     _ci(est), "> 0.5 at the lower end of the interval across seeds (closer to eps* than to a net "
                     "that never saw S)", est is not None and est.low > 0.5, len(normalized))


def generates_unseen(rate: Proportion, what: str, seeds: int | None) -> Claim:
    """C4: the trained model generates unseen data: at most half its samples are copies (upper end <= 0.5)."""
    return paper_row("C4", f"copy rate (d1/d2 < 1/3) of {what}, {rate.total} samples", rate.value, _ci(rate),
                     "<= 0.5 at the upper end (mostly unseen data)", rate.high <= 0.5, seeds)


def difference_is_critical(crossing_net: list[float], crossing_blind: list[float]) -> Claim:
    """C4: the slight difference decides: moving the net the share lambda of the way to eps* makes half its samples
    copies at a smaller lambda than a net of the same budget that never saw S; the paired difference across seeds
    (blind - net) has its interval above 0."""
    diffs = [b - a for a, b in zip(crossing_net, crossing_blind)]
    est = across_seeds(diffs) if len(diffs) > 1 else None
    return paper_row("C4", "lambda at which (1 - lambda) eps_theta + lambda eps* makes half the samples copies: the "
                     "disjoint-set net's minus the net's, paired by seed", sum(diffs) / len(diffs), _ci(est),
                     "> 0 at the lower end of the interval across seeds (the net trained on S sits nearer to "
                     "memorizing)", est is not None and est.low > 0, len(diffs))


def tradeoff(correlation: Estimate | None, what: str, seeds: int | None) -> Claim:
    """C6: the smaller the gap to the empirical optimum, the higher the copy rate: Spearman correlation of gap and
    copy rate with its interval below 0 (None: no variation of the copy rate, not measurable)."""
    return paper_row("C6", f"Spearman correlation between relative gap to eps* and copy rate, {what}",
                     None if correlation is None else correlation.value, _ci(correlation),
                     "< 0 with its interval below 0 (smaller gap, more copies)",
                     correlation is not None and correlation.high < 0, seeds)


# --------------------------------------------------------------------------------------------------- chapter 4
def similar_model(ratio: Estimate, what: str, seeds: int) -> Claim:
    """C5a: the new objective's net is about as close to the standard net as a rerun of the standard objective with
    other draws of t and noise (same initialisation and batches): the geometric mean over seeds of the ratio of the
    two prediction differences (experiments.similarity_ratios; metrics.across_seeds(log=True)) is at most 2. The
    point estimate decides, since the ratio of two reruns itself varies from seed to seed: a bound on the interval's
    upper end would fail a second rerun at a few seeds (tests/test_experiments.py: a second rerun holds, a net
    trained on other data fails)."""
    return paper_row("C5a", f"prediction difference new vs standard net divided by that of a standard rerun with "
                     f"other noise (same init and batches), geometric mean over seeds, {what}", ratio.value,
                     _ci(ratio), "<= 2 (about as close as rerunning the standard objective)", ratio.value <= 2, seeds)


def similar_quality(claim_id: str, difference: Estimate, scale: float, metric: str, what: str,
                    seeds: int) -> Claim:
    """C5a / C5b: sample quality about as good as the standard objective's: the difference new - standard of a
    distance to held-out data (hierarchical bootstrap over seeds and samples) is, at the upper end of its interval,
    at most a quarter of `scale` = (the distance of a crude generator that knows only the mean image and the pixel
    spread, an isotropic Gaussian) - (the standard model's distance)."""
    if claim_id not in ("C5a", "C5b"):
        raise ValueError(f"claim_id must be C5a or C5b; got {claim_id!r}")
    return paper_row(claim_id, f"{metric} to held-out images, new minus standard objective, {what}", difference.value,
                     _ci(difference), f"<= a quarter of the way to an isotropic Gaussian (0.25 x {scale:.4g}) at "
                     "the upper end", scale > 0 and difference.high <= 0.25 * scale, seeds)


def memorizes_less(difference: Estimate, what: str, seeds: int) -> Claim:
    """C5b: the new objective memorizes less: copy rate standard - new (paired by x_T within each seed, hierarchical
    bootstrap over seeds and pairs) with its interval above 0."""
    return paper_row("C5b", f"copy rate, standard minus new objective, {what}", difference.value, _ci(difference),
                     "> 0 with the interval above 0", difference.low > 0, seeds)


def less_information(new: Estimate, standard: Estimate, what: str, seeds: int) -> Claim:
    """C5b: the new objective's samples depend less on the training set: I(z; m) intervals disjoint, new lower."""
    return paper_row("C5b", f"I(z; m) of the new objective, {what}", new.value, _ci(new),
                     f"below the standard objective's interval [{standard.low:.3f}, {standard.high:.3f}]",
                     new.high < standard.low, seeds)


def beyond_weighting(difference: Estimate, what: str, seeds: int) -> Claim:
    """C5b, ours: the new objective memorizes less than the standard loss with the same weighting of t
    (objectives.WeightedEpsLoss): copy rate control - new with its interval above 0. If it fails while C5b's copy-rate
    row holds, the weighting of t, not the gap noise, explains the difference."""
    return Claim("C5b", "ours", "In our reconstruction, the forward-time objective memorizes less than the standard "
                 "loss weighted by lambda_t = E c_{t,s}^2 (its weighting of t without its noisier target).",
                 f"copy rate, weighted-loss control minus new objective, {what}", difference.value, _ci(difference),
                 "> 0 with the interval above 0", bool(difference.low > 0), seeds)


def less_at_matched_gap(difference: Estimate | None, what: str, seeds: int) -> Claim:
    """C5b, ours: at the same gap to eps* (the snapshot curves interpolated, experiments.rates_at_matched_gap) the new
    objective still copies less: copy rate standard - new across seeds with its interval above 0; None when the gap
    ranges do not overlap on every seed (not measurable)."""
    return Claim("C5b", "ours", "In our reconstruction, the forward-time objective memorizes less than the standard "
                 "one at the same distance to the empirical optimum (not only because it trains slower).",
                 f"copy rate at matched relative gap to eps*, standard minus new, {what}",
                 None if difference is None else difference.value, _ci(difference), "> 0 with the interval above 0",
                 difference is not None and difference.low > 0, seeds)


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
