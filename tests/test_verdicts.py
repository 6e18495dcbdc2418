"""Every claim row discriminates: fed a yardstick that lacks the property (an S-blind denoiser, a generator that
never saw S, samples of P), its verdict is "fails"; fed one that has it, "holds"."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.chapters import generators, mutual_information, new_objective, trained_gap, training_curves
from diffgen.claims import gates, rowtext, verdicts
from diffgen.claims.results import Condition
from diffgen.data.datasets import eight_gaussians, load_dataset
from diffgen.diffusion.denoisers import Blend, GaussianDenoiser
from diffgen.diffusion.optimum import EmpiricalOptimum, SmoothedOptimum
from diffgen.diffusion.samplers import sample_ddim
from diffgen.measures import mi
from diffgen.measures.metrics import (
    Estimate,
    across_seeds,
    copy_rate,
    gap_on_forward_samples,
    nearest_neighbors,
    wilson_interval,
)

P = eight_gaussians()


@pytest.fixture(scope="module")
def draws(sched):
    kw = dict(n_sets=12, n_train=6, n_samples=200, seed=0)
    return {"copier": generators.draw_sets(P, generators.Copier(), **kw),
            "optimum": generators.draw_sets(P, generators.OptimumSampler(sched, 20), **kw),
            "gaussian fit": generators.draw_sets(P, generators.GaussianFit(std=0.5), **kw),
            "P itself": generators.draw_sets(P, generators.TrueDistribution(P), **kw)}


@pytest.fixture(scope="module")
def estimates(draws):
    return {name: mi.mi_knn(s.z, 3, n_boot=300) for name, s in draws.items()}


def test_c1_saturation_holds_for_a_copier_and_fails_for_a_generator_that_ignores_s(estimates):
    assert verdicts.memorizer_saturates(estimates["copier"], 12, "a copier").holds
    assert verdicts.memorizer_saturates(estimates["optimum"], 12, "the optimum").holds
    assert not verdicts.memorizer_saturates(estimates["P itself"], 12, "samples of P").holds
    assert not verdicts.memorizer_saturates(estimates["gaussian fit"], 12, "a Gaussian fit").holds


def test_c1_learner_below_memorizer_fails_for_another_memorizer_and_for_noise(estimates, draws):
    """One estimate per seed (here: per set of draws), gated on being on P's support: a Gaussian fit passes the rule
    and its own gate, a copier fails the rule, pure noise passes the rule and fails the gate."""
    def per_seed(gen):
        return [mi.mi_knn(generators.draw_sets(P, gen, n_sets=12, n_train=6, n_samples=200, seed=s).z, 3,
                          n_boot=10).value for s in (0, 1, 2)], \
            [generators.draw_sets(P, gen, n_sets=12, n_train=6, n_samples=200, seed=s) for s in (0, 1)]

    for gen, verdict in [(generators.GaussianFit(), "holds"), (generators.Copier(), "fails"),
                         (generators.PureNoise(), "fails (quality)")]:
        values, samples = per_seed(gen)
        row = verdicts.learner_below_memorizer(values, estimates["optimum"], "x", gates.toy_gate(samples, P))
        assert row.verdict == verdict and row.seeds == 3 and row.source == "abstract"


def test_c1_blind_reads_zero_fails_for_a_generator_that_depends_on_s(estimates):
    """An equivalence: the interval inside +/- 0.05 nats. Samples of P pass; a Gaussian fit of S and a copier depend
    on S and fail; an estimate of 0 too uncertain to exclude 0.1 nats fails too (no power, no verdict of 0)."""
    assert verdicts.blind_reads_zero(estimates["P itself"], "samples of P").holds
    assert not verdicts.blind_reads_zero(estimates["gaussian fit"], "a Gaussian fit").holds
    assert not verdicts.blind_reads_zero(estimates["copier"], "a copier").holds
    vague = verdicts.blind_reads_zero(Estimate(0.0, -0.1, 0.1), "an estimate too wide to tell")
    assert vague.verdict == "fails" and [t.met for t in vague.rule] == [False, False]


def test_r1_r2_estimator_checks_fail_for_a_wrong_estimate():
    check = mutual_information.estimator_check([1, 4], n_sets=30, n_samples=150, k=3, seed=0, jackknife_sets=6)
    assert verdicts.estimator_recovers_closed_form(check).id == "R1"
    shifted = mutual_information.EstimatorCheck(check.sizes, check.exact + 1.0, check.knn, check.grid, check.copier,
                                         check.independent, check.n_sets, check.jackknife)
    assert not verdicts.estimator_recovers_closed_form(shifted).holds  # an estimator 1 nat off is not validated
    good = mutual_information.DensityCheck(Estimate(1.0, 0.9, 1.1), Estimate(1.05, 1.0, 1.1))
    bad = mutual_information.DensityCheck(Estimate(1.5, 1.4, 1.6), Estimate(1.05, 1.0, 1.1))
    assert verdicts.estimator_recovers_densities(good, 0.5).holds
    assert not verdicts.estimator_recovers_densities(bad, 0.5).holds


def test_c6_along_training_needs_both_directions_and_is_ours():
    def along(mi_changes, kl_changes, start=100):
        return mutual_information.AlongTraining((10, 100, 1000), [], [], mi_changes, kl_changes, 3, start)

    rises, falls = [0.5, 0.4, 0.6], [-2.0, -1.8, -2.2]
    row = verdicts.tradeoff_along_training(along(rises, falls))
    assert row.holds and row.source == "ours" and "from step 100" in row.metric and "time" in row.statement
    assert not verdicts.tradeoff_along_training(along([0.1, -0.1, 0.0], falls)).holds  # I flat: no trade-off
    assert not verdicts.tradeoff_along_training(along(rises, [0.5, 0.3, 0.7])).holds  # KL rises too
    never = verdicts.tradeoff_along_training(along(None, None, None))  # no snapshot passed the gate before the last
    assert never.verdict == "not measurable" and never.value is None


def test_c2_and_c3_rows(sched):
    assert verdicts.closed_form_exact(1e-12).holds and not verdicts.closed_form_exact(3e-2).holds
    digits = load_dataset("digits", 60, 60, seed=0)
    x_T = torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = sample_ddim(EmpiricalOptimum(digits.train, sched, dtype=torch.float64), x_T, sched, 20)
    copies = copy_rate(nearest_neighbors(z, digits.train).ratio)
    fresh = copy_rate(nearest_neighbors(digits.heldout, digits.train).ratio)
    assert verdicts.sampler_copies(copies, "DDIM", paper=True).holds
    assert not verdicts.sampler_copies(fresh, "held-out images", paper=True).holds  # new data is not a copy
    ours = verdicts.sampler_copies(copies, "DDPM", paper=False)
    assert ours.source == "ours" and ours.id == "C3" and ours.holds


def test_c4_approximation_fails_for_s_blind_denoisers_and_holds_for_eps_star(sched):
    digits = load_dataset("digits", 60, 0, n_disjoint=60, seed=0)
    S, S2 = digits.train, digits.disjoint
    opt = EmpiricalOptimum(S, sched, dtype=torch.float64)
    blind_opt = EmpiricalOptimum(S2, sched, dtype=torch.float64)
    fit = GaussianDenoiser(S2.mean(0), torch.cov(S2.T) + 1e-3 * torch.eye(64, dtype=S2.dtype), sched)
    shares = [trained_gap.shares_by_band({"eps*": opt, "blind optimum": blind_opt, "fit": fit}, opt, S, sched,
                                         repeats=1, seed=s) for s in (0, 1)]
    norm = trained_gap.normalized_shares(shares, "eps*", yardstick="fit")[(1, sched.T)]
    flat, falling = 0.01, 0.2  # relative fall of the gap over the last interval
    assert verdicts.approximates_optimum(norm, "eps* itself", fall=flat, n=60).holds  # share 1: normalised 1
    blind = trained_gap.normalized_shares(shares, "blind optimum", yardstick="fit")[(1, sched.T)]
    assert verdicts.approximates_optimum(blind, "the optimum of S'", fall=flat, n=60).verdict == "fails"
    itself = trained_gap.normalized_shares(shares, "fit", yardstick="fit")[(1, sched.T)]
    assert not verdicts.approximates_optimum(itself, "the yardstick itself", fall=flat, n=60).holds  # normalised 0
    early = verdicts.approximates_optimum(norm, "eps* itself", fall=falling, n=60)
    assert early.verdict == "holds"  # already there: more training cannot undo it
    unfinished = verdicts.approximates_optimum(blind, "the optimum of S'", fall=falling, n=60, steps=300)
    assert unfinished.verdict == "premise not reached" and not unfinished.holds
    assert unfinished.regime == {"n": 60, "train_steps": 300} and early.regime == {"n": 60}
    assert verdicts.premise_of(unfinished, 60).met is False and verdicts.premise_of(early, 60).met


@pytest.fixture(scope="module")
def digits_split():
    return load_dataset("digits", 60, 240, n_disjoint=60, seed=0)


def _per_seed(gen, train, seeds=3, k=80):
    return torch.stack([gen(train, k, torch.Generator().manual_seed(s)) for s in range(seeds)])


def test_c4_unseen_holds_for_new_images_and_fails_for_copies_for_noise_and_without_its_premise(sched, digits_split):
    """Real generators: held-out digits are unseen and look like digits; the empirical optimum with DDIM copies; pure
    noise copies nothing but is no closer to digits than an isotropic Gaussian fit, so it fails for quality."""
    S, held = digits_split.train, digits_split.heldout
    reached = Condition("the nets approximate eps*", True)
    candidates = {"holds": held[:240].reshape(3, 80, -1), "fails": _per_seed(generators.OptimumSampler(sched, 20), S),
                  "fails (quality)": _per_seed(generators.PureNoise(), S)}
    for verdict, z in candidates.items():
        rates = trained_gap.member_copy_rates(z, [S] * 3)
        row = verdicts.generates_unseen(rates, "x", reached, gates.image_gate(z, S, held), len(S))
        assert row.verdict == verdict and row.seeds == 3
    z = candidates["holds"]
    row = verdicts.generates_unseen(trained_gap.member_copy_rates(z, [S] * 3), "x",
                                    Condition("the nets approximate eps*", False), gates.image_gate(z, S, held),
                                    len(S))
    assert row.verdict == "premise not reached" and row.value is not None  # measured, not evaluated
    # held-out digits copy nothing in every seed: the interval is the pooled Wilson one, never [0, 0]
    fresh = verdicts.generates_unseen(trained_gap.member_copy_rates(candidates["holds"], [S] * 3), "x", reached,
                                      gates.image_gate(candidates["holds"], S, held), len(S))
    assert fresh.value == 0 and fresh.ci[1] > 0 and "pooled" in fresh.interval


def _stacked(denoisers, K):
    """One flat denoiser of [M K, D] rows from M denoisers (member m: rows m K .. m K + K - 1)."""
    def denoise(x, t):
        return torch.cat([d(x[m * K:(m + 1) * K], t[m * K:(m + 1) * K]).to(x.dtype) for m, d in enumerate(denoisers)])
    return denoise


def test_c4_critical_bisects_and_flips_for_the_yardstick_itself(sched, digits_split):
    """A denoiser near eps* (the smoothed optimum of S) crosses half copies at a smaller lambda than one that never
    saw S (the Gaussian denoiser of S'); the S-blind denoiser against itself gives differences 0: fails."""
    S, S2 = digits_split.train, digits_split.disjoint
    opt = EmpiricalOptimum(S, sched, dtype=torch.float64)
    near = SmoothedOptimum(S, sched, 0.3, dtype=torch.float64)
    far = GaussianDenoiser(S2.mean(0), torch.cov(S2.T) + 1e-3 * torch.eye(64, dtype=S2.dtype), sched)
    K, reached = 48, Condition("the nets approximate eps*", True)
    cross = [trained_gap.blend_crossings(_stacked([near, far], K), 2, opt,
                                         torch.randn(K, 64, generator=torch.Generator().manual_seed(s),
                                                     dtype=torch.float64), S, sched, 20, iterations=6)
             for s in range(3)]
    assert all(0 <= c[0] < c[1] <= 1 for c in cross)
    assert verdicts.difference_is_critical([c[0] for c in cross], [c[1] for c in cross], "x", reached, 60).holds
    row = verdicts.difference_is_critical([c[1] for c in cross], [c[1] for c in cross], "x", reached, 60)
    assert row.verdict == "fails" and row.value == 0 and row.ci is None  # the same 0 in every seed: no interval
    assert "the same value in all 3 seeds" in row.interval
    # the premise of "critical to generalizing": nets that approximate eps* and yet generate unseen data. Real
    # generators: held-out digits (unseen) meet it; the empirical optimum with DDIM (it copies) and pure noise (it
    # copies nothing but fails the quality gate) do not, and the row then reads "premise not reached"
    held, holds = digits_split.heldout, verdicts.approximates_optimum([0.9, 0.95, 0.92], "x", fall=0.0, n=60)
    generated = {True: held[:240].reshape(3, 80, -1), False: _per_seed(generators.OptimumSampler(sched, 20), S),
                 None: _per_seed(generators.PureNoise(), S)}  # met: True, False, False (quality)
    unseen = {key: verdicts.generates_unseen(trained_gap.member_copy_rates(z, [S] * 3), "x", reached,
                                             gates.image_gate(z, S, held), len(S)) for key, z in generated.items()}
    for key, row in unseen.items():
        premise = verdicts.generalizing(holds, row, len(S))
        assert premise.met is bool(key), row.verdict
        moot = verdicts.difference_is_critical(None, None, "x", premise, len(S))
        assert key or (moot.verdict == "premise not reached" and not all(t.met for t in moot.premise.tests))
    blind = verdicts.approximates_optimum([0.1, 0.2, 0.15], "an S-blind net", fall=0.0, n=60)  # it fails
    assert not verdicts.generalizing(blind, unseen[True], len(S)).met


@pytest.fixture(scope="module")
def blend_points(sched, digits_split):
    """(gap to eps*, copy rate) of denoisers of a family, one per (value, seed): point(family, values, seeds)."""
    S, S2 = digits_split.train, digits_split.disjoint
    opt = EmpiricalOptimum(S, sched, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = S[torch.randint(len(S), (32,), generator=g)]

    def point(denoiser, seed):
        x_T = torch.randn(40, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        rate = copy_rate(nearest_neighbors(sample_ddim(denoiser, x_T, sched, 20), S).ratio).value
        return float(gap_on_forward_samples(denoiser, opt, x0, sched, (10, 100), g).mean()), rate

    def points(family, values, seeds=(0, 1, 2)):
        """gaps and rates as [values, seeds] arrays."""
        measured = [[point(family(v), r) for r in seeds] for v in values]
        return [[p[0] for p in row] for row in measured], [[p[1] for p in row] for row in measured]

    far = GaussianDenoiser(S2.mean(0), torch.cov(S2.T) + 1e-3 * torch.eye(64, dtype=S2.dtype), sched)
    blind = lambda h: GaussianDenoiser(S2.mean(0), torch.cov(S2.T) + h * torch.eye(64, dtype=S2.dtype),  # noqa: E731
                                       sched)
    return {"blends": points(lambda w: Blend(far, opt, w), (0.2, 0.5, 0.8, 0.9, 0.97)),
            "blind": points(blind, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1))}


def test_c6_along_training_from_per_seed_correlations(blend_points):
    """Snapshots of denoisers moved towards eps* (more weight: smaller gap, more copies) trade; S-blind denoisers of
    varying smoothing never copy, so their groups are dropped and named, and the row is not measurable. The row is
    ours: time moves gap and copy rate alike."""
    def correlations(gaps, rates):
        flat = [(r, g, v) for gs, vs in zip(gaps, rates) for r, (g, v) in enumerate(zip(gs, vs))]
        return trained_gap.correlations_by_seed([r for r, _, _ in flat], [60] * len(flat), [g for _, g, _ in flat],
                                                [v for _, _, v in flat])

    c = correlations(*blend_points["blends"])
    assert len(c.per_seed) == 3 and not c.dropped
    row = verdicts.tradeoff_along(c, "blends")
    assert row.holds and row.source == "ours" and "time confound" in row.statement
    c = correlations(*blend_points["blind"])
    assert c.per_seed == [] and c.dropped == [60]
    row = verdicts.tradeoff_along(c, "S-blind denoisers")
    assert row.verdict == "not measurable" and "left out (copy rate or gap constant): [60]" in row.metric


def test_c6_at_equal_time_from_per_seed_slopes_across_widths(blend_points):
    """Five members of one family at the same 'training time': blends nearer and nearer to eps* copy more, so the
    slope of copy rate on log gap is negative in every seed: holds. The same numbers with the pairing reversed
    (closer members copying less): fails. Members that fail the quality gate are left out, and with fewer than 3
    left the row is not measurable; S-blind denoisers never copy: not measurable."""
    gaps, rates = blend_points["blends"]
    widths, every = [8, 16, 32, 64, 128], [True] * 5
    row = verdicts.tradeoff_at_equal_time(trained_gap.width_slopes(widths, gaps, rates, every), "blends")
    assert row.holds and row.source == "revision" and row.seeds == 3 and row.value < 0
    flipped = verdicts.tradeoff_at_equal_time(trained_gap.width_slopes(widths, gaps, rates[::-1], every), "reversed")
    assert flipped.verdict == "fails" and flipped.value > 0
    assert not rowtext.undecided(flipped)  # refuted by real blends, not "not shown, not refuted"
    gated = trained_gap.width_slopes(widths, gaps, rates, [True, False, False, False, True])
    assert gated.dropped == [16, 32, 64] and gated.per_seed is None
    row = verdicts.tradeoff_at_equal_time(gated, "mostly noise")
    assert row.verdict == "not measurable" and "widths [16, 32, 64]" in row.metric and "3 needed" in row.metric
    row = verdicts.tradeoff_at_equal_time(trained_gap.width_slopes(widths, *blend_points["blind"], every), "blind")
    assert row.verdict == "not measurable" and "the copy rate is the same at every width" in row.metric


# --------------------------------------------------------------------------------------------------- chapter 4
TRAINED = Condition("sufficient training", True)


def test_c5a_similar_model_is_an_equivalence_with_a_fixed_margin_and_its_power():
    """(On trained nets, a third rerun against a net on other data: tests/test_experiments.py.) Ratios near 1 with a
    tight rerun spread pass, with high power; a net on S' (40 times as far) fails; reruns that scatter widely leave
    the interval outside the margin, and the row says how little power its seeds had and how many would do."""
    null = [1.03, 0.97, 1.05, 0.96, 1.01, 0.99, 1.02, 0.98]
    near = verdicts.similar_model([1.02, 0.98, 1.05, 0.97, 1.01], null, "reruns", absolute=(0.011, 0.010),
                                  premise=TRAINED, n=40)
    assert near.holds and near.equivalence.power > 0.95 and near.equivalence.seeds_for_80 <= 5
    assert near.rule[0].threshold == pytest.approx(0.8) and near.rule[1].threshold == 1.25
    far = verdicts.similar_model([30.0, 58.0, 48.0, 40.0, 35.0], null, "a net on S'", absolute=(0.4, 0.01),
                                 premise=TRAINED, n=40)
    assert far.verdict == "fails" and not far.rule[1].met
    scatter = [0.6, 1.6, 0.8, 1.4, 1.0]
    wide = verdicts.similar_model(scatter, scatter + [1.3, 0.7], "scattered seeds", absolute=(0.01, 0.01),
                                  premise=verdicts.converged(0.01), n=40)
    assert wide.ci[1] > 1.25 and wide.equivalence.power < 0.5 and wide.equivalence.seeds_for_80 > 5
    assert wide.verdict == "premise not reached"  # too few seeds to have passed even a true 1: no evidence
    assert "power of 5 seeds" in wide.premise.tests[-1].what
    early = verdicts.similar_model([30.0, 58.0, 48.0, 40.0, 35.0], null, "x", absolute=(0.4, 0.01),
                                   premise=verdicts.converged(0.2), n=40)
    assert early.verdict == "premise not reached"  # measured before convergence: not a failure of the claim
    variant = verdicts.similar_model([1.0, 1.1], null, "a variant", ours="our variant is similar",
                                     absolute=(0.01, 0.01), premise=TRAINED, n=40)
    assert variant.source == "ours" and variant.statement == "our variant is similar"


def test_c5_quality_is_an_equivalence_with_an_absolute_margin():
    """Other real digits are as good as real digits (holds, two-sided and one-sided); an isotropic Gaussian is
    not (fails); a 'new' objective far better than the standard one is competitive (one-sided) but not similar
    (two-sided). The margin is absolute: the same rule at any n."""
    from diffgen.measures.quality import energy_distance

    digits = load_dataset("digits", 1500, 297, seed=0)
    g = torch.Generator().manual_seed(0)
    real = [digits.train[torch.randint(1500, (300,), generator=g)] for _ in range(15)]  # "seeds": std, new, rerun
    crude = [generators.GaussianFit(std=float(digits.train.std()))(digits.train, 300, torch.Generator().manual_seed(k))
             for k in range(5)]
    energy = lambda z: energy_distance(z, digits.heldout)  # noqa: E731
    margin = verdicts.QUALITY_MARGIN * energy(crude[0])
    diffs = lambda new, std: [energy(a) - energy(b) for a, b in zip(new, std)]  # noqa: E731
    null = diffs(real[10:], real[:5])
    row = lambda claim, new, std, two: verdicts.quality_within(claim, diffs(new, std), null, margin,  # noqa: E731
                                                               "energy distance", "x", features="f",
                                                               premise=TRAINED, n=40, two_sided=two)
    assert row("C5a", real[5:10], real[:5], True).holds and row("C5b", real[5:10], real[:5], False).holds
    assert row("C5a", crude, real[:5], True).verdict == "fails" and row("C5b", crude, real[:5], False).verdict == "fails"
    better = row("C5b", real[:5], crude, False)  # the standard side is the Gaussian: the new one is far better
    assert better.holds and row("C5a", real[:5], crude, True).verdict == "fails"
    assert better.equivalence.margin == margin and better.equivalence.power > 0.8
    with pytest.raises(ValueError, match="C5a or C5b"):
        verdicts.quality_within("C5", [0.0, 0.1], null, margin, "e", "x", features="f", premise=TRAINED, n=40,
                                two_sided=True)


def test_c5b_memorization_rows_flip_for_copies_for_noise_and_where_the_standard_net_does_not_copy(sched,
                                                                                                  digits_split):
    """Real generators on digits, one draw per "seed": the empirical optimum (copies) as the standard net; held-out
    digits (unseen, real) and pure noise (unseen, nothing like digits) as the new objective's."""
    S, held = digits_split.train, digits_split.heldout
    optimum = _per_seed(generators.OptimumSampler(sched, 20), S)
    unseen, noise = held[:240].reshape(3, 80, -1), _per_seed(generators.PureNoise(), S)
    rates = lambda z: trained_gap.member_copy_rates(z, [S] * 3)  # noqa: E731
    differ = lambda a, b: [ra.value - rb.value for ra, rb in zip(rates(a), rates(b))]  # noqa: E731
    copies = verdicts.standard_copies(rates(optimum), len(S), TRAINED)
    assert copies.met and not verdicts.standard_copies(rates(unseen), len(S)).met
    assert not verdicts.standard_copies(rates(optimum), len(S), verdicts.converged(0.3)).met  # still learning
    row = lambda std, new, premise: verdicts.memorizes_less(differ(std, new), "x", premise,  # noqa: E731
                                                            gates.image_gate(new, S, held), len(S))
    assert row(optimum, unseen, copies).verdict == "holds"
    assert row(optimum, noise, copies).verdict == "fails (quality)"
    assert row(unseen, optimum, copies).verdict == "fails"
    assert row(unseen, unseen, verdicts.standard_copies(rates(unseen), len(S))).verdict == "premise not reached"
    control = verdicts.beyond_weighting(differ(optimum, unseen), "x", gates.image_gate(unseen, S, held))
    assert control.holds and control.source == "ours"
    assert verdicts.beyond_weighting(differ(optimum, noise), "x",
                                     gates.image_gate(noise, S, held)).verdict == "fails (quality)"


def test_c5b_matched_comparisons_flip_between_a_copier_and_an_equal_curve(digits_split):
    """Curves along training (relative gap or held-out loss, copy rate) per seed: a standard run that copies more at
    the same gap holds; the same curve against itself fails; ranges that do not overlap are not measurable."""
    S, held = digits_split.train, digits_split.heldout
    gate = gates.image_gate(held[:240].reshape(3, 80, -1), S, held)
    standard = [([1.0, 0.1, 0.01], [0.0, 0.5 + 0.05 * k, 1.0]) for k in range(3)]
    slower = [([1.0, 0.3, 0.1], [0.0, 0.05, 0.1 + 0.02 * k]) for k in range(3)]
    diff = lambda a, b: [ra - rb for _, ra, rb in  # noqa: E731
                         (new_objective.rates_at_matched(*x, *y) for x, y in zip(a, b))]
    assert verdicts.less_at_matched(diff(standard, slower), "gap to eps*", "a copier", gate).holds
    jitter = [-0.02, 0.01, -0.005]  # the same curve up to noise: mean difference > 0, interval across 0
    same = diff(slower, [(g, [r + e for r in rates]) for e, (g, rates) in zip(jitter, slower)])
    assert sum(same) > 0 and not verdicts.less_at_matched(same, "gap to eps*", "itself", gate).holds
    unmeasurable = verdicts.less_at_matched(None, "held-out loss", "no overlap", gate)
    assert unmeasurable.value is None and not unmeasurable.holds and unmeasurable.id == "C5b"
    at_size = verdicts.less_at_matched(diff(standard, slower), "gap to eps*", "a copier", gate, 40)
    assert at_size.regime == {"n": 40} and at_size.label == "copies less at matched gap to eps* (n = 40)"
    assert unmeasurable.regime is None and unmeasurable.label == "copies less at matched held-out loss"


def test_r3_fails_for_another_reading_and_r4_for_a_wrong_coefficient(sched):
    from diffgen.diffusion.denoisers import NoisyPointOptimum
    from diffgen.diffusion.objectives import ForwardTimeLoss
    from diffgen.diffusion.schedule import add_noise

    train = load_dataset("digits", 10, seed=0).train
    g = torch.Generator().manual_seed(0)
    ours = new_objective.forward_time_minimiser_error(ForwardTimeLoss(sched, "one"), train, sched, (10, 300),
                                                    n_probe=4, generator=g)
    assert verdicts.candidate_minimiser_is_eps_star(ours).holds
    # the noisy-point reading: the optimum over one finite set of intermediate states, which is not eps*
    noisy = NoisyPointOptimum.draw(train, sched, 50, g, dtype=torch.float64)
    optimum = EmpiricalOptimum(train, sched, dtype=torch.float64)
    xt = add_noise(sched, train[:4], 100, torch.randn(4, 64, generator=g, dtype=torch.float64))
    other = float((noisy(xt, 100) - optimum(xt, 100)).norm() / optimum(xt, 100).norm())
    assert not verdicts.candidate_minimiser_is_eps_star(other).holds
    slopes = new_objective.tweedie_slopes(train, sched, [(50, 49), (200, 199), (600, 300)], n_mc=2048, generator=g,
                                        seed=0)
    assert verdicts.tweedie_holds(slopes).holds
    standard = [new_objective.TweedieSlope(w.t, w.s, 1.0, w.slope) for w in slopes]  # the standard loss's c = 1
    row = verdicts.tweedie_holds(standard)
    assert not row.holds and row.value == 0


def test_c5b_less_information_holds_for_p_against_the_optimum_and_fails_for_noise(sched):
    """Per-seed I(z; m) on the same training sets: the empirical optimum (memorizes) as the standard objective; P's
    own samples (ignore S, on P's support) and pure noise (ignore S, off it) as the new one."""
    def draw(gen, s):
        return generators.draw_sets(P, gen, n_sets=12, n_train=6, n_samples=150, seed=s)

    runs = {name: [draw(gen, s) for s in (0, 1, 2)] for name, gen in [
        ("optimum", generators.OptimumSampler(sched, 20)), ("P", generators.TrueDistribution(P)),
        ("noise", generators.PureNoise())]}
    info = {name: [mi.mi_knn(d.z, 3, n_boot=10).value for d in draws] for name, draws in runs.items()}
    row = lambda std, new: verdicts.less_information([a - b for a, b in zip(info[std], info[new])], "x",  # noqa: E731
                                                     gates.toy_gate(runs[new], P))
    assert row("optimum", "P").verdict == "holds" and row("optimum", "P").source == "revision"
    assert row("optimum", "noise").verdict == "fails (quality)"
    assert row("P", "optimum").verdict == "fails" and row("optimum", "optimum").verdict == "fails"
    unconverged = verdicts.nets_converged(  # the premise: nets whose curves still moved are not read
        training_curves.Convergence(np.array([0.2, 0.0]), np.zeros(2), np.zeros(2), 0.05, 0.05, (795, 2000)),
        [0, 1], "standard and new, 2-D")
    waiting = verdicts.less_information([a - b for a, b in zip(info["optimum"], info["P"])], "x",
                                        gates.toy_gate(runs["P"], P), premise=unconverged)
    assert waiting.verdict == "premise not reached" and waiting.rule_holds
