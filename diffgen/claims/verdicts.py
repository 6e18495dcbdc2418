"""Claim rows from measurements, one function per row: the rule that turns numbers into a verdict.

Each rule is a list of comparisons (results.Comparison), stated in the row (`expected`) and recorded with their numbers
(`rule`), and tested (tests/test_verdicts.py) on a yardstick that lacks the property the row claims (an S-blind
denoiser, a generator that never saw S, samples of P) and must then fail, and on one that has it. The thresholds
and margins are ours, fixed before the measurement; the statements of paper rows are the paper's
(results.PAPER_CLAIMS).

Intervals: a number measured on k training seeds has the t interval across them; a rate has that interval widened
to the Wilson interval of the samples pooled over the seeds (never [0, 0] where every seed gives 0); a statistic
that is the same in every seed has no interval and the row says so.
"""
from __future__ import annotations

import math

import numpy as np

from ..measures.metrics import Estimate, Proportion, equivalence_power, seeds_for_power
from .gates import QualityGate, SeedStat, across, rates_across
from .prose import number
from .results import FLATTENED, Claim, Comparison, Condition, Equivalence, check_row, ours_row, paper_row

FLAT = 0.05  # a learning curve has flattened when its last interval falls by at most this share of its value
QUALITY_MARGIN = 0.1  # "similar" and "competitive" quality: new minus standard energy distance within this share of
# the isotropic Gaussian fit's distance to held-out images (at the chapter's largest n: the same margin at every n)
POWER = 0.8  # an equivalence test that fails is evidence only where its seeds had this power to pass a true 0
MOST_SEEDS = 1000  # the power calculation looks this far for the seeds that reach POWER
SIMILAR_RATIO = 1.25  # "a similar model": the new net's difference to the standard net within 1/1.25 .. 1.25 of a
# rerun's (fixed before the measurement)


def converged(fall: float, what: str = "every learning curve") -> Condition:
    """The premise 'sufficient training', as measured: `what` fell by at most FLAT of its value over the last
    interval of training (fall: the largest relative fall, training_curves.last_fall)."""
    return Condition(f"sufficient training: {what} flattened", fall <= FLAT,
                     (Comparison("largest relative fall over the last interval", fall, "<=", FLAT),))


def _row(claim_id: str, metric: str, value, ci, expected: str, tests, seeds: int | None = None, *,
         ours: str | None = None, **fields) -> Claim:
    """A paper row of claim_id, or (ours = its statement) our row under it; it holds where every test is met (a
    row without a value has none and cannot hold) and its premise and gate are met."""
    tests = tuple(tests)
    holds = bool(tests) and all(t.met for t in tests)
    fields = {k: v for k, v in fields.items() if v is not None}
    if ours is None:
        return paper_row(claim_id, metric, value, ci, expected, holds, seeds, rule=tests, **fields)
    return ours_row(claim_id, ours, metric, value, ci, expected, holds, seeds, rule=tests, **fields)


def _seed_row(claim_id: str, metric: str, stat: SeedStat | None, expected: str, tests, **fields) -> Claim:
    """A row measured on seeds: value, interval and its description from `stat` (None: not measurable)."""
    if stat is None:
        return _row(claim_id, metric, None, None, expected, (), None, **fields)
    return _row(claim_id, metric, stat.value, stat.ci, expected, tests, stat.k, interval=stat.interval, **fields)


def estimator_recovers_closed_form(check) -> Claim:
    """R1: the kNN interval covers 0.5 log(1 + 1/n) for all but at most one of the sizes
    (mutual_information.EstimatorCheck)."""
    covered, sizes = check.covered("knn"), len(check.sizes)
    return check_row("R1", f"sizes n in {list(check.sizes)} whose exact I(z; S) lies in the kNN 95% interval (1-D, "
                     f"M = {check.n_sets})", float(covered), None, f">= {sizes - 1} of {sizes}", covered >= sizes - 1,
                     rule=(Comparison("sizes covered", covered, ">=", sizes - 1),),
                     label="kNN recovers the closed form")


def estimator_recovers_densities(check, std: float) -> Claim:
    """R2: at an intermediate value the kNN estimate and the exact-density value agree: their intervals overlap
    (mutual_information.DensityCheck)."""
    knn, exact = check.knn, check.exact
    tests = (Comparison("lower end of the kNN interval", knn.low, "<=", exact.high, "upper end from exact densities"),
             Comparison("upper end of the kNN interval", knn.high, ">=", exact.low, "lower end from exact densities"))
    return check_row("R2", f"kNN I(z; m) of a noisy copier (std {std:g}) minus the value from exact densities "
                     f"({exact.value:.3f})", knn.value - exact.value, (knn.low - exact.value, knn.high - exact.value),
                     "intervals of the two overlap", all(t.met for t in tests), rule=tests,
                     interval="bootstrap over training sets", label="kNN recovers exact densities")


def memorizer_saturates(estimate: Estimate, n_sets: int, what: str) -> Claim:
    """C1: a generator that copies its training set shows I(z; m) at the ceiling: lower end >= 0.9 log M."""
    ceiling = 0.9 * math.log(n_sets)
    return _row("C1", f"I(z; m) of {what}, M = {n_sets}", estimate.value, (estimate.low, estimate.high),
                f">= 0.9 log M = {ceiling:.3f} at the lower end (a memorizing generator saturates)",
                [Comparison("lower end", estimate.low, ">=", ceiling, "0.9 log M")],
                interval="bootstrap over training sets",
                label="the optimum with DDIM saturates (nats)")


def learner_below_memorizer(per_seed: list[float], memorizer: Estimate, what: str, gate: QualityGate) -> Claim:
    """C1: a trained model that generates new data shows less I(z; m) than the memorizing optimum: the t interval
    across seeds of its per-seed I(z; m) lies below the optimum's interval; gated on sample quality (a generator of
    noise also carries no information about S)."""
    stat = across(per_seed)
    return _seed_row("C1", f"I(z; m) of {what}, one estimate per seed", stat,
                     f"below the empirical optimum's ({memorizer.value:.3f}), intervals disjoint",
                     [Comparison("upper end", stat.high, "<", memorizer.low, "lower end of the empirical optimum's")],
                     quality=gate.condition, label="trained nets below the optimum")


BLIND_MARGIN = 0.05  # nats: "reads 0" is an equivalence, the interval inside +/- this margin (fixed in advance)


def blind_reads_zero(estimate: Estimate, what: str, margin: float = BLIND_MARGIN) -> Claim:
    """C1: a generator that never looks at S shows I(z; m) of about 0: its interval lies inside [-margin, margin]
    nats (an equivalence test with a margin fixed in advance)."""
    return _row("C1", f"I(z; m) of {what} (ignores S)", estimate.value, (estimate.low, estimate.high),
                f"interval inside [-{margin:g}, {margin:g}] nats (no dependence on S)",
                [Comparison("lower end", estimate.low, ">=", -margin),
                 Comparison("upper end", estimate.high, "<=", margin)],
                interval="bootstrap over training sets", label="an S-blind generator reads 0")


def tradeoff_along_training(along) -> Claim:
    """C6, ours (ch1): along training, from the first snapshot whose samples pass the quality gate (the nets already
    generate data like P) to the last, the grid I(z; m) rises while KL(P_z || P) falls, each change per seed with
    its t interval across seeds above (below) 0 (mutual_information.AlongTraining). Training time moves both: this is
    not the paper's trade-off at equal time (ch3 measures that)."""
    statement = ("In our reconstruction, along training the samples come to depend more on S while their average "
                 "nears P. Training time moves both, so this is not a trade-off at equal training time.")
    if along.mi_changes is None:
        return _seed_row("C6", "change of I(z; m) along training (not measurable: no snapshot before the last passes "
                         "the quality gate)", None, "> 0 with its interval above 0 while the KL's lies below 0", (),
                         ours=statement, label="along training (2-D: change of I(z; m))")
    mi, kl = across(along.mi_changes), across(along.marginal_changes)
    return _seed_row("C6", f"change of I(z; m) from step {along.start_step} (the first snapshot whose samples pass "
                     f"the quality gate) to step {along.train_steps[-1]}, one per seed (grid plug-in; KL(P_z || P) "
                     f"changes by {kl.value:.3f} [{kl.low:.3f}, {kl.high:.3f}])", mi,
                     "> 0 with its interval above 0 while the KL's lies below 0",
                     [Comparison("lower end of the change in I(z; m)", mi.low, ">", 0),
                      Comparison("upper end of the change in KL(P_z || P)", kl.high, "<", 0)], ours=statement,
                     label="along training (2-D: change of I(z; m))")


def closed_form_exact(error: float) -> Claim:
    """C2: the empirical optimum in closed form agrees with a float64 brute force to 1e-8."""
    return _row("C2", "max |x0* kernel - float64 brute force| over t in {1, 10, 100, 500, 1000}", error, None,
                "< 1e-8", [Comparison("largest error", error, "<", 1e-8)], label="closed form = brute force")


def sampler_copies(rate: Proportion, what: str, *, paper: bool) -> Claim:
    """C3: (almost) every sample is a copy of a training point: lower end of the Wilson interval >= 0.9. `paper`:
    a deterministic sampler, as the abstract says; else our extension to stochastic samplers."""
    return _row("C3", f"copy rate (d1/d2 < 1/3), {what}, {rate.total} samples", rate.value, (rate.low, rate.high),
                ">= 0.9 at the lower end of the interval", [Comparison("lower end", rate.low, ">=", 0.9)],
                ours=None if paper else "Stochastic samplers with the empirical optimum memorize too.",
                interval=f"Wilson interval of the {rate.total} samples", label=f"{what.rsplit(', ', 1)[0]} copies")


def _regime(n: int, steps: int | None) -> dict:
    return {"n": n} if steps is None else {"n": n, "train_steps": steps}


def approximates_optimum(normalized: list[float], what: str, *, fall: float, n: int, steps: int | None = None) -> Claim:
    """C4, the premise of the others: closer to the optimum than to an S-blind yardstick: the normalised share
    (share - share_blind) / (1 - share_blind), one per seed, has its t interval across seeds above 1/2. Its own
    premise is sufficient training, read as: the nets' learning curve (gap to eps* along the snapshots, mean over
    seeds) fell by at most FLAT over its last interval (`fall`). It decides only a negative verdict: nets that
    approximate eps* before their curves flatten do so all the more after."""
    stat = across(normalized)
    rule = Comparison("lower end of the normalised share", stat.low, ">", 0.5)
    premise = Condition("sufficient training: the gap to eps* flattened, or the nets approximate eps* already",
                        fall <= FLAT or rule.met,
                        (Comparison("relative fall of the gap over the last interval", fall, "<=", FLAT), rule), "any")
    return _seed_row("C4", f"share of the optimum's loss reduction achieved by {what}, normalised by the net of the "
                     "same budget trained on a disjoint set: (share - share_blind) / (1 - share_blind)", stat,
                     "> 0.5 at the lower end of the interval across seeds (closer to eps* than to a net that never "
                     "saw S)", [rule], premise=premise, flattened=fall <= FLAT, regime=_regime(n, steps),
                     label=f"approximates eps* (n = {n})")


def premise_of(approximates: Claim, n: int) -> Condition:
    """The premise of C4's other rows at training-set size n: the row 'approximates' holds there."""
    return Condition(f"the nets approximate eps* at n = {n}", approximates.holds, approximates.rule)


def generalizing(approximates: Claim, unseen: Claim, n: int) -> Condition:
    """The premise of C4's third row at size n: the slight difference can be critical to generalizing only for nets
    that approximate eps* and yet generate unseen data (both rows hold there)."""
    tests = approximates.rule + unseen.rule + (unseen.quality.tests if unseen.quality else ())
    return Condition(f"the nets approximate eps* and generate unseen data at n = {n}",
                     approximates.holds and unseen.holds, tests)


def generates_unseen(rates: list[Proportion], what: str, premise: Condition, gate: QualityGate, n: int,
                     steps: int | None = None) -> Claim:
    """C4: the trained model generates unseen data: its copy rate, one per seed, has an interval (rates_across)
    whose upper end is at most 1/2 (mostly unseen data); evaluated where the nets approximate eps* (premise) and
    gated on sample quality (a generator of noise copies nothing)."""
    stat = rates_across(rates)
    return _seed_row("C4", f"copy rate (d1/d2 < 1/3) of {what}, {rates[0].total} samples per seed", stat,
                     "<= 0.5 at the upper end of the interval (mostly unseen data)",
                     [Comparison("upper end of the copy rate", stat.high, "<=", 0.5)], premise=premise,
                     quality=gate.condition,
                     regime=_regime(n, steps), label=f"generates unseen data (n = {n})")


def difference_is_critical(crossing_net, crossing_blind, what: str, premise: Condition, n: int,
                           steps: int | None = None) -> Claim:
    """C4: the slight difference decides: moving the net the share lambda of the way to eps* makes half its samples
    copies at a smaller lambda (found by bisection) than a net of the same budget that never saw S; the paired
    difference per seed (blind - net) has its t interval across seeds above 0; evaluated where the nets approximate
    eps* and generate unseen data (`generalizing`; elsewhere the crossings may be None: not computed). nan crossings
    (never half copies): not measurable."""
    diffs = [] if crossing_net is None else [b - a for a, b in zip(crossing_net, crossing_blind)]
    stat = across(diffs) if len(diffs) > 1 and all(math.isfinite(d) for d in diffs) else None
    why = "" if stat or crossing_net is None else " (not measurable: even eps* itself never makes half copies)"
    return _seed_row("C4", f"lambda at which (1 - lambda) eps_theta + lambda eps* makes half the samples copies "
                     f"(bisection), the disjoint-set net's minus the net's, paired by seed, {what}{why}", stat,
                     "> 0 at the lower end of the interval across seeds (the net trained on S sits nearer to "
                     "memorizing)", [Comparison("lower end", stat.low, ">", 0)] if stat else (), premise=premise,
                     regime=_regime(n, steps), label=f"the difference is critical (n = {n})")


def tradeoff_along(correlations, what: str) -> Claim:
    """C6, ours: along each net's training the smaller the gap to the empirical optimum, the higher the copy rate:
    one Spearman correlation of gap and copy rate per seed (trained_gap.SeedCorrelations), its t interval across
    seeds below 0; groups whose copy rate never moved have no correlation and are named in the metric; none left:
    not measurable. Training time moves gap and copy rate alike, so nearly any net passes: the paper's row compares
    nets at equal time (tradeoff_at_equal_time)."""
    values = correlations.per_seed
    stat = across(values, bounds=(-1.0, 1.0)) if len(values) > 1 else None
    dropped = f"; left out (copy rate or gap constant): {correlations.dropped}" if correlations.dropped else ""
    why = "" if stat else " (not measurable: the copy rate or the gap never moved along any group)"
    return _seed_row("C6", f"Spearman correlation between relative gap to eps* and copy rate, one per seed, {what}"
                     f"{dropped}{why}", stat, "< 0 with its interval across seeds below 0 (smaller gap, more copies)",
                     [Comparison("upper end", stat.high, "<", 0)] if stat else (),
                     ours="In our reconstruction, along one net's training the gap to eps* shrinks as the copy rate "
                          "grows. Training time moves both (the time confound): a net passes this by training "
                          "alone, so it is not the paper's trade-off.",
                     label="along training (gap vs copy rate: time confound)")


def tradeoff_at_equal_time(slopes, what: str) -> Claim:
    """C6: at the same training step, nets that sit closer to the empirical optimum copy more: per seed, the
    least-squares slope of the copy rate on log10 of the gap to eps* across model widths
    (trained_gap.WidthSlopes), its t interval across seeds below 0. Only widths whose samples pass the quality gate
    enter (a net of noise copies nothing); fewer than 3, or a copy rate that never moves: not measurable."""
    values = slopes.per_seed
    stat = across(values) if values is not None else None
    left = f"; left out (quality gate fails): widths {slopes.dropped}" if slopes.dropped else ""
    why = "" if stat else f" (not measurable: {slopes.reason})"
    widths = sorted(slopes.widths + slopes.dropped)
    return _seed_row("C6", f"slope of copy rate on log10 relative gap to eps* across widths {widths} at the "
                     f"same step, one per seed, {what}{left}{why}", stat,
                     "< 0 with its interval across seeds below 0 (closer to eps*, more copies, at equal time)",
                     [Comparison("upper end of the slope", stat.high, "<", 0)] if stat else (),
                     label="slope across widths, at equal time")


def nets_converged(convergence, members, what: str) -> Condition:
    """The premise 'sufficient training' of a trained-model row, per net: every one of `members` of a
    training_curves.Convergence had its gap to eps* and held-out loss move by at most its relative tolerance and its
    copy rate by at most its absolute tolerance over the last interval between snapshots."""
    members = list(members)
    done = int(convergence.converged[members].sum())
    first, last = convergence.interval
    return Condition(f"sufficient training: the curves of every net ({what}) flattened (gap and held-out loss within "
                     f"{convergence.relative:.0%}, copy rate within {convergence.absolute:g} over the last interval, "
                     f"steps {first} to {last})",
                     done == len(members), (Comparison(FLATTENED, done, ">=", len(members)),))


def _powered(premise: Condition, tests, design: Equivalence, k: int) -> Condition:
    """The premise of an equivalence row: its own (sufficient training) and, where the interval leaves the margin,
    seeds with the power (>= POWER) to have passed a true difference of 0: an underpowered test that fails is not
    evidence against the claim (an interval inside the margin is, at any power)."""
    if all(t.met for t in tests):
        return premise
    enough = f"{design.seeds_for_80} seeds give 80%" if design.seeds_for_80 < MOST_SEEDS else \
        f"not even {MOST_SEEDS - 1} seeds give 80%"
    power = Comparison(f"power of {k} seeds to pass a true difference of 0 ({enough})", design.power, ">=", POWER)
    statement = f"{premise.statement}, and seeds with the power to decide"
    if not premise.tests:
        return Condition(statement, premise.met and power.met)
    return Condition(statement, premise.met and power.met, premise.tests + (power,))


def similar_model(ratios, null_ratios, what: str, *, absolute: tuple[float, float], premise: Condition, n: int,
                  ours: str | None = None, margin: float = SIMILAR_RATIO) -> Claim:
    """C5a: the new objective's net is about as close to the standard net as reruns of the standard objective with
    other draws of t and noise (same initialisation and batches): the ratio of the two prediction differences, one
    per seed (new_objective.similarity_ratios, the rerun side averaged over the reruns), has a geometric-mean t
    interval inside [1/margin, margin], a margin fixed before the measurement (an equivalence test). The power of
    the seeds to pass a true ratio of 1 comes from the rerun-to-rerun spread (null_ratios: one rerun against the
    others, per seed). absolute: (the new net's, a rerun's) relative prediction difference to the standard net."""
    stat = across(ratios, log=True)
    spread = float(np.std(np.log(np.asarray(null_ratios, dtype=np.float64)), ddof=1))
    design = Equivalence(math.log(margin), spread, equivalence_power(math.log(margin), spread, len(ratios)),
                         seeds_for_power(math.log(margin), spread, most=MOST_SEEDS))
    tests = [Comparison("lower end", stat.low, ">=", 1 / margin), Comparison("upper end", stat.high, "<=", margin)]
    return _seed_row("C5a", f"prediction difference new vs standard net divided by that of standard reruns with "
                     f"other noise (same init and batches), geometric mean over seeds, {what} (absolute: "
                     f"{absolute[0]:.3g} against {absolute[1]:.3g} for a rerun)", stat,
                     f"inside [{1 / margin:.3g}, {margin:g}] (about as close to the standard net as a rerun)", tests,
                     ours=ours, premise=_powered(premise, tests, design, len(ratios)), equivalence=design,
                     regime={"n": n}, label=f"a similar model (n = {n})")


def quality_within(claim_id: str, differences, null_differences, margin: float, metric: str, what: str, *,
                   features: str, premise: Condition, n: int, two_sided: bool, ours: str | None = None) -> Claim:
    """C5a ("similar quality", two-sided) / C5b ("competitive quality", one-sided): the difference new - standard of
    a distance to held-out data, one per seed (paired by x_T), has a t interval inside [-margin, margin] (two-sided)
    or below margin (one-sided): an equivalence (non-inferiority) test with an absolute margin fixed before the
    measurement, the same at every n. Power from the rerun-to-standard differences (null_differences); the
    distance in classifier features stands beside it (`features`)."""
    if claim_id not in ("C5a", "C5b"):
        raise ValueError(f"claim_id must be C5a or C5b; got {claim_id!r}")
    stat = across(differences)
    spread = float(np.std(np.asarray(null_differences, dtype=np.float64), ddof=1))
    sides = 2 if two_sided else 1
    design = Equivalence(margin, spread, equivalence_power(margin, spread, len(differences), sides=sides),
                         seeds_for_power(margin, spread, sides=sides, most=MOST_SEEDS))
    tests = ([Comparison("lower end", stat.low, ">=", -margin)] if two_sided else []) + [
        Comparison("upper end", stat.high, "<=", margin)]
    band = f"inside [-{number(margin)}, {number(margin)}]" if two_sided else f"<= {number(margin)} at the upper end"
    return _seed_row(claim_id, f"{metric} to held-out images, new minus standard objective, one per seed, {what} "
                     f"({features})", stat, f"{band} (margin fixed before the measurement)", tests, ours=ours,
                     premise=_powered(premise, tests, design, len(differences)), equivalence=design, regime={"n": n},
                     label=f"{'similar' if two_sided else 'competitive'} quality (n = {n})")


def standard_copies(rates: list[Proportion], n: int, trained: Condition | None = None) -> Condition:
    """The premise of "memorizes less" at size n: the standard net memorizes there (its copy rate, one per seed,
    has an interval (rates_across) above 0): there is memorization to reduce; with `trained`, also sufficient
    training (every net's curves flattened)."""
    stat = rates_across(rates)
    tests = ((Comparison("lower end of the standard net's copy rate", stat.low, ">", 0),)
             + (trained.tests if trained else ()))
    what = f"the standard net copies at n = {n}" + (" and every net was trained sufficiently" if trained else "")
    return Condition(what, all(t.met for t in tests), tests)


def memorizes_less(differences, what: str, premise: Condition, gate: QualityGate, n: int, *,
                   ours: str | None = None) -> Claim:
    """C5b: the new objective memorizes less: copy rate standard - new, one per seed (paired by x_T), with its t
    interval across seeds above 0; evaluated where the standard net copies and the nets were trained sufficiently
    (premise) and gated on the new net's sample quality (a generator of noise copies nothing)."""
    stat = across(differences)
    return _seed_row("C5b", f"copy rate, standard minus new objective, one per seed, {what}", stat,
                     "> 0 with the interval across seeds above 0", [Comparison("lower end", stat.low, ">", 0)],
                     ours=ours,
                     premise=premise, quality=gate.condition, regime={"n": n}, label=f"memorizes less (n = {n})")


def less_information(standard_minus_new, what: str, gate: QualityGate, premise: Condition | None = None) -> Claim:
    """C5b: the new objective's samples depend less on the training set: I(z; m) of the standard minus the new
    objective's, one per seed (the same training sets), with its t interval across seeds above 0; evaluated where
    the nets were trained sufficiently (premise: nets_converged, as for the images' 'memorizes less') and gated on
    the new generator's sample quality (noise carries no information about S)."""
    stat = across(standard_minus_new)
    return _seed_row("C5b", f"I(z; m), standard minus new objective, one per seed, {what}", stat,
                     "> 0 with the interval across seeds above 0", [Comparison("lower end", stat.low, ">", 0)],
                     premise=premise, quality=gate.condition, label="less information about S (2-D)")


def beyond_weighting(differences, what: str, gate: QualityGate, premise: Condition | None = None) -> Claim:
    """C5b, ours: the new objective memorizes less than the standard loss with the same weighting of t
    (objectives.WeightedEpsLoss): copy rate control - new, one per seed, t interval above 0. If it fails while C5b's
    copy-rate row holds, the weighting of t, not the gap noise, explains the difference."""
    stat = across(differences)
    return _seed_row("C5b", f"copy rate, weighted-loss control minus new objective, one per seed, {what}", stat,
                     "> 0 with the interval across seeds above 0", [Comparison("lower end", stat.low, ">", 0)],
                     ours="In our reconstruction, the forward-time objective memorizes less than the standard loss "
                          "weighted by lambda_t = E c_{t,s}^2 (its weighting of t without its noisier target).",
                     premise=premise, quality=gate.condition, label="beyond the weighting of t")


def less_along_training(differences, what: str, gate: QualityGate, n: int) -> Claim:
    """C5b, ours (our reading of the revision's "optimization bias acts as a regularizer"): at equal steps during
    training the new objective copies less: per seed, the copy rate standard - new averaged over the snapshots
    before the last (new_objective.along_differences), t interval above 0. With 'memorizes less' at convergence, it
    tells a lasting effect from one of training speed."""
    stat = across(differences)
    return _seed_row("C5b", f"copy rate, standard minus new objective, mean over the snapshots before the last (equal "
                     f"steps), one per seed, {what}", stat, "> 0 with the interval across seeds above 0",
                     [Comparison("lower end", stat.low, ">", 0)],
                     ours="In our reading of the revision's 'optimization bias acts as a regularizer': while training, "
                          "at equal steps, the forward-time objective memorizes less than the standard one.",
                     quality=gate.condition, regime={"n": n}, label=f"copies less while training (n = {n})")


def less_at_matched(differences, matched: str, what: str, gate: QualityGate, n: int | None = None) -> Claim:
    """C5b, ours: at the same `matched` quantity (the gap to eps*, or the standard denoising loss on held-out images;
    at the furthest value both runs reach, snapshot curves interpolated, new_objective.rates_at_matched) the new
    objective still copies less: copy rate standard - new, one per seed, t interval above 0; None (not measurable)
    when the curves cannot be matched on every seed. `n`: the training-set size, where one was measured."""
    stat = across(differences) if differences is not None and len(differences) > 1 else None
    why = "" if stat else (" (not measurable: on some seed the two curves' ranges do not overlap or they move in "
                           "opposite directions)")
    return _seed_row("C5b", f"copy rate at matched {matched}, standard minus new, one per seed, {what}{why}", stat,
                     "> 0 with the interval across seeds above 0",
                     [Comparison("lower end", stat.low, ">", 0)] if stat else (),
                     ours=f"In our reconstruction, the forward-time objective memorizes less than the standard one "
                          f"at the same {matched} (not only because it trains slower).",
                     quality=gate.condition, regime={"n": n} if n else None,
                     label=f"copies less at matched {matched}" + (f" (n = {n})" if n else ""))


def candidate_minimiser_is_eps_star(deviation: float) -> Claim:
    """R3: in our reading, the forward-time objective's exact minimiser is eps* (relative deviation below 1e-8)."""
    return check_row("R3", "max relative deviation of the brute-force minimiser of our forward-time objective from "
                     "eps*", deviation, None, "< 1e-8", deviation < 1e-8,
                     rule=(Comparison("largest relative deviation", deviation, "<", 1e-8),),
                     label="its exact minimiser is eps*")


def tweedie_holds(slopes) -> Claim:
    """R4: the Monte-Carlo slope's 95% interval covers c_{t,s} in at least 90% of the (t, s) pairs
    (new_objective.TweedieSlope)."""
    covered = sum(w.covers for w in slopes)
    return check_row("R4", "(t, s) pairs whose 95% slope interval covers c_{t,s}", float(covered), None,
                     f">= 90% of {len(slopes)}", covered >= 0.9 * len(slopes),
                     rule=(Comparison("pairs covered", covered, ">=", 0.9 * len(slopes)),), label="Tweedie's slope")
