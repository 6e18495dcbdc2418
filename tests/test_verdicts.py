"""Every claim row discriminates: fed a yardstick that lacks the property (an S-blind denoiser, a generator that
never saw S, samples of P), its verdict is "fails"; fed one that has it, "holds"."""
from __future__ import annotations

import math

import pytest
import torch

from diffgen import experiments, generators, mi, verdicts
from diffgen.data import eight_gaussians, load_dataset
from diffgen.denoisers import EmpiricalOptimum, GaussianDenoiser
from diffgen.metrics import Estimate, across_seeds, copy_rate, nearest_neighbors, wilson_interval
from diffgen.samplers import sample_ddim

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


def test_c1_learner_below_memorizer_fails_for_another_memorizer(estimates):
    assert verdicts.learner_below_memorizer(estimates["gaussian fit"], estimates["optimum"], "fit", None).holds
    row = verdicts.learner_below_memorizer(estimates["copier"], estimates["optimum"], "a copier", 3)
    assert not row.holds and row.seeds == 3 and row.source == "abstract"


def test_c1_blind_reads_zero_fails_for_a_generator_that_depends_on_s(estimates):
    assert verdicts.blind_reads_zero(estimates["P itself"], "samples of P").holds
    assert not verdicts.blind_reads_zero(estimates["gaussian fit"], "a Gaussian fit").holds
    assert not verdicts.blind_reads_zero(estimates["copier"], "a copier").holds


def test_r1_r2_estimator_checks_fail_for_a_wrong_estimate():
    check = experiments.estimator_check([1, 4], n_sets=30, n_samples=150, k=3, seed=0, jackknife_sets=6)
    assert verdicts.estimator_recovers_closed_form(check).id == "R1"
    shifted = experiments.EstimatorCheck(check.sizes, check.exact + 1.0, check.knn, check.grid, check.copier,
                                         check.independent, check.n_sets, check.jackknife)
    assert not verdicts.estimator_recovers_closed_form(shifted).holds  # an estimator 1 nat off is not validated
    good = experiments.DensityCheck(Estimate(1.0, 0.9, 1.1), Estimate(1.05, 1.0, 1.1))
    bad = experiments.DensityCheck(Estimate(1.5, 1.4, 1.6), Estimate(1.05, 1.0, 1.1))
    assert verdicts.estimator_recovers_densities(good, 0.5).holds
    assert not verdicts.estimator_recovers_densities(bad, 0.5).holds


def test_c6_along_training_needs_both_directions():
    def along(mi_change, kl_change):
        return experiments.AlongTraining((10, 100), [], [], mi_change, kl_change, 3)

    rises, falls = Estimate(0.5, 0.3, 0.7), Estimate(-2.0, -2.5, -1.5)
    assert verdicts.tradeoff_along_training(along(rises, falls)).holds
    assert not verdicts.tradeoff_along_training(along(Estimate(0.0, -0.1, 0.1), falls)).holds  # I flat: no trade-off
    assert not verdicts.tradeoff_along_training(along(rises, Estimate(0.5, 0.3, 0.7))).holds  # KL rises too


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
    shares = [experiments.shares_by_band({"eps*": opt, "blind optimum": blind_opt, "fit": fit}, opt, S, sched,
                                         repeats=1, seed=s) for s in (0, 1)]
    norm = experiments.normalized_shares(shares, "eps*", yardstick="fit")[(1, sched.T)]
    assert verdicts.approximates_optimum(norm, "eps* itself").holds  # share 1: normalised 1
    blind = experiments.normalized_shares(shares, "blind optimum", yardstick="fit")[(1, sched.T)]
    assert not verdicts.approximates_optimum(blind, "the optimum of S'").holds
    itself = experiments.normalized_shares(shares, "fit", yardstick="fit")[(1, sched.T)]
    assert not verdicts.approximates_optimum(itself, "the yardstick itself").holds  # normalised 0


def test_c4_unseen_and_critical_rows():
    assert verdicts.generates_unseen(wilson_interval(3, 256), "a net", 3).holds
    assert not verdicts.generates_unseen(wilson_interval(256, 256), "the optimum", None).holds
    assert verdicts.difference_is_critical([0.2, 0.25, 0.22], [0.6, 0.55, 0.7]).holds
    assert not verdicts.difference_is_critical([0.6, 0.55, 0.7], [0.6, 0.55, 0.7]).holds  # the yardstick itself
    assert not verdicts.difference_is_critical([0.3], [0.9]).holds  # one seed: no interval, no verdict


def test_c6_tradeoff_needs_a_negative_correlation_with_its_interval():
    gap = [0.1 * k for k in range(1, 13)]
    copies = [1.0 - 0.08 * k for k in range(1, 13)]  # smaller gap, more copies
    trend = experiments.spearman_interval(gap, copies, n_boot=200)
    assert verdicts.tradeoff(trend, "a monotone learner", 3).holds
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(12, generator=gen).tolist()
    assert not verdicts.tradeoff(experiments.spearman_interval(gap, noise, n_boot=200), "noise", 3).holds
    unmeasurable = verdicts.tradeoff(None, "a constant copy rate", 3)
    assert unmeasurable.value is None and not unmeasurable.holds


# --------------------------------------------------------------------------------------------------- chapter 4
def test_c5a_similar_model_on_the_geometric_mean_of_the_ratios():
    """(On trained nets, a rerun against a net on other data: tests/test_experiments.py, similarity ratios.)"""
    assert verdicts.similar_model(across_seeds([1.2, 1.7, 1.4], log=True), "reruns", 3).holds
    assert not verdicts.similar_model(across_seeds([30.0, 58.0, 48.0], log=True), "a net on S'", 3).holds
    row = verdicts.similar_model(across_seeds([1.0, 4.0], log=True), "two seeds", 2)
    assert row.value == pytest.approx(2.0) and row.holds and row.ci[0] < 1 < 4 < row.ci[1]


def test_c5_quality_holds_for_other_real_digits_and_fails_for_an_isotropic_gaussian(tmp_path):
    from diffgen.quality import ClassifierConfig, digits_classifier, distance_differences, energy_distance

    digits = load_dataset("digits", 1200, 300, seed=0)
    clf = digits_classifier(ClassifierConfig(hidden=64, features=16, train_steps=300), device="cpu",
                            cache_dir=tmp_path)
    real = [digits.train[k * 256:(k + 1) * 256] for k in range(4)]
    crude = [generators.GaussianFit(std=float(digits.train.std()))(digits.train, 256, torch.Generator().manual_seed(k))
             for k in range(2)]
    scale = energy_distance(crude[0], digits.heldout) - energy_distance(real[0], digits.heldout)
    energy = lambda a, b: distance_differences(a, b, digits.heldout, clf, 4.0, n_boot=100)["energy"]  # noqa: E731
    assert verdicts.similar_quality("C5a", energy(real[:2], real[2:]), scale, "energy", "other digits", 2).holds
    assert not verdicts.similar_quality("C5a", energy(real[:2], crude), scale, "energy", "isotropic", 2).holds
    assert not verdicts.similar_quality("C5b", energy(real[:2], real[2:]), -scale, "energy", "no scale", 2).holds
    with pytest.raises(ValueError, match="C5a or C5b"):
        verdicts.similar_quality("C5", energy(real[:2], real[2:]), scale, "energy", "x", 2)


def test_c5b_memorization_rows_flip_with_the_copier(draws):
    """Copy ratios of real generators, one training set per "seed": the empirical optimum (copies) against fresh
    samples of P (which copy only by chance), paired by sample index."""
    from diffgen.metrics import paired_rate_difference_across_seeds

    def ratios(name):
        s = draws[name]
        return [nearest_neighbors(s.z[m], s.train[m]).ratio for m in range(3)]

    optimum, fresh = ratios("optimum"), ratios("P itself")
    differ = paired_rate_difference_across_seeds(optimum, fresh)
    assert verdicts.memorizes_less(differ, "P against the optimum", 3).holds
    assert not verdicts.memorizes_less(paired_rate_difference_across_seeds(fresh, optimum), "reversed", 3).holds
    assert not verdicts.memorizes_less(paired_rate_difference_across_seeds(fresh, fresh), "itself", 3).holds
    row = verdicts.beyond_weighting(differ, "P against the optimum", 3)
    assert row.holds and row.source == "ours"
    assert not verdicts.beyond_weighting(paired_rate_difference_across_seeds(fresh, fresh), "itself", 3).holds


def test_c5b_matched_gap_flips_between_a_copier_and_an_equal_curve():
    """Curves along training (relative gap, copy rate) per seed: a standard run that copies more at the same gap
    holds; the same curve against itself fails; ranges that do not overlap are not measurable."""
    standard = [([1.0, 0.1, 0.01], [0.0, 0.5 + 0.05 * k, 1.0]) for k in range(3)]
    slower = [([1.0, 0.3, 0.1], [0.0, 0.05, 0.1 + 0.02 * k]) for k in range(3)]
    diff = lambda a, b: across_seeds([ra - rb for _, ra, rb in  # noqa: E731
                                      (experiments.rates_at_matched_gap(*x, *y) for x, y in zip(a, b))])
    assert verdicts.less_at_matched_gap(diff(standard, slower), "a copier", 3).holds
    jitter = [-0.02, 0.01, -0.005]  # the same curve up to noise: mean difference > 0, interval across 0
    same = diff(slower, [(g, [r + e for r in rates]) for e, (g, rates) in zip(jitter, slower)])
    assert same.value > 0 and not verdicts.less_at_matched_gap(same, "itself", 3).holds
    unmeasurable = verdicts.less_at_matched_gap(None, "no overlap", 3)
    assert unmeasurable.value is None and not unmeasurable.holds and unmeasurable.id == "C5b"


def test_r3_fails_for_another_reading_and_r4_for_a_wrong_coefficient(sched):
    from diffgen.denoisers import NoisyPointOptimum
    from diffgen.objectives import ForwardTimeLoss
    from diffgen.schedule import add_noise

    train = load_dataset("digits", 10, seed=0).train
    g = torch.Generator().manual_seed(0)
    ours = experiments.forward_time_minimiser_error(ForwardTimeLoss(sched, "one"), train, sched, (10, 300),
                                                    n_probe=4, generator=g)
    assert verdicts.candidate_minimiser_is_eps_star(ours).holds
    # the noisy-point reading: the optimum over one finite set of intermediate states, which is not eps*
    noisy = NoisyPointOptimum.draw(train, sched, 50, g, dtype=torch.float64)
    optimum = EmpiricalOptimum(train, sched, dtype=torch.float64)
    xt = add_noise(sched, train[:4], 100, torch.randn(4, 64, generator=g, dtype=torch.float64))
    other = float((noisy(xt, 100) - optimum(xt, 100)).norm() / optimum(xt, 100).norm())
    assert not verdicts.candidate_minimiser_is_eps_star(other).holds
    slopes = experiments.tweedie_slopes(train, sched, [(50, 49), (200, 199), (600, 300)], n_mc=2048, generator=g,
                                        seed=0)
    assert verdicts.tweedie_holds(slopes).holds
    standard = [experiments.TweedieSlope(w.t, w.s, 1.0, w.slope) for w in slopes]  # the standard loss's c = 1
    row = verdicts.tweedie_holds(standard)
    assert not row.holds and row.value == 0


def test_c5b_less_information_holds_for_p_against_a_copier(estimates):
    row = verdicts.less_information(estimates["P itself"], estimates["copier"], "P vs a copier", 1)
    assert row.holds and row.source == "revision"
    assert not verdicts.less_information(estimates["copier"], estimates["P itself"], "reversed", 1).holds
    assert not verdicts.less_information(estimates["copier"], estimates["copier"], "itself", 1).holds
