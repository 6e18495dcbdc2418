"""The chapters' measurements (diffgen.chapters.mutual_information) on cases whose answer is known: the optimum scored against itself,
S-blind denoisers, copiers, closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.chapters import mutual_information, new_objective, trained_gap, training_curves
from diffgen.chapters.generators import training_sets
from diffgen.claims import verdicts
from diffgen.claims.results import Condition
from diffgen.data.datasets import eight_gaussians, load_dataset
from diffgen.diffusion.denoisers import GaussianDenoiser
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import PlainMLPConfig
from diffgen.diffusion.objectives import EpsLoss, ForwardTimeLoss
from diffgen.diffusion.optimum import EmpiricalOptimum
from diffgen.diffusion.train import train_ensemble
from diffgen.measures.metrics import across_seeds, copy_rate, nearest_neighbors


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 40, 40, seed=0)


class FixedRun:
    """A stand-in for train.TrainResult whose every snapshot is the same denoiser."""

    def __init__(self, denoiser, steps=(10, 20)):
        self.denoiser, self.snapshot_steps = denoiser, list(steps)

    def model_at(self, step):
        return self.denoiser


def blind(train: torch.Tensor, sched):
    """The Gaussian denoiser of a disjoint set: it never saw `train`."""
    return GaussianDenoiser(train.mean(0), torch.cov(train.T) + 1e-3 * torch.eye(train.shape[1]), sched)


def test_spearman_is_none_when_undefined_and_signed_otherwise():
    assert trained_gap.spearman([1, 2], [3, 4]) is None
    assert trained_gap.spearman([1, 2, 3], [5, 5, 5]) is None
    assert trained_gap.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert trained_gap.spearman([1, 2, 3, 4], [3, 2, 1, 0]) == pytest.approx(-1.0)


def test_loss_share_is_one_for_the_optimum_and_zero_for_the_zero_predictor(sched, digits):
    opt = EmpiricalOptimum(digits.train, sched, dtype=torch.float64)
    same = trained_gap.loss_share(EpsLoss(sched), opt, opt, digits.train, repeats=2, seed=0, n_boot=50)
    assert same.value == pytest.approx(1.0)
    zero = trained_gap.loss_share(EpsLoss(sched), lambda x, t: torch.zeros_like(x), opt, digits.train, repeats=2,
                                  seed=0, n_boot=50)
    assert zero.value == pytest.approx(0.0, abs=1e-12)
    other = load_dataset("digits", 40, 0, seed=1).train  # a denoiser that never saw S lands in between
    part = trained_gap.loss_share(EpsLoss(sched), blind(other, sched), opt, digits.train, repeats=2, seed=0, n_boot=50)
    assert 0.3 < part.value < 1.0


def test_shares_by_band_and_their_normalisation(sched, digits):
    opt = EmpiricalOptimum(digits.train, sched, dtype=torch.float64)
    fit = blind(load_dataset("digits", 40, 0, seed=1).train, sched)
    shares = trained_gap.shares_by_band({"eps*": opt, "fit": fit}, opt, digits.train, sched, repeats=1, seed=0)
    assert list(shares) == [*trained_gap.BANDS, (1, 1000)]
    assert all(band["eps*"] == pytest.approx(1.0) for band in shares.values())
    assert shares[(101, 1000)]["fit"] > shares[(1, 10)]["fit"]  # every denoiser is good at high noise
    assert trained_gap.normalized_share(1.0, 0.8) == 1.0 and trained_gap.normalized_share(0.8, 0.8) == 0.0
    norm = trained_gap.normalized_shares([shares, shares], "eps*", "fit")
    assert norm[(1, 1000)] == [pytest.approx(1.0)] * 2


def test_blend_curve_and_prefix_switch_move_from_the_net_to_the_optimum(sched, digits):
    x_T = torch.randn(32, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opt = EmpiricalOptimum(digits.train, sched, dtype=torch.float64)
    net = blind(load_dataset("digits", 40, 0, seed=1).train, sched)
    rates = trained_gap.blend_curve(net, opt, [0.0, 0.5, 1.0], x_T, digits.train, sched, 20)
    assert rates[0].value < 0.5 and rates[-1].value == 1.0
    assert trained_gap.crossing([0.0, 0.5, 1.0], rates) is not None
    prefix = trained_gap.prefix_switch(net, opt, [1000, 1], x_T, digits.train, sched, 20)
    assert prefix[0].value < 0.5 and prefix[1].value == 1.0  # the optimum until t = 1: a copy


def test_crossing_interpolates_the_first_passage():
    assert trained_gap.crossing([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.5)
    assert trained_gap.crossing([0.0, 0.5, 1.0], [0.6, 0.9, 1.0]) == 0.0  # already above at the first point
    assert trained_gap.crossing([0.0, 0.5, 1.0], [0.0, 0.1, 0.2]) is None
    assert trained_gap.crossing([1000, 100, 10], [0.0, 0.2, 0.8]) == pytest.approx(100 - 90 * 0.5)


def test_noisy_copier_check_agrees_with_exact_densities():
    check = mutual_information.noisy_copier_check(eight_gaussians(), 0.5, n_sets=12, n_train=6, n_samples=300, k=3, seed=0)
    assert 0.2 < check.exact.value < math.log(12) - 0.2  # an intermediate value
    assert abs(check.knn.value - check.exact.value) < 0.15


def test_estimator_check_recovers_the_closed_form_and_the_extremes():
    check = mutual_information.estimator_check([1, 4], n_sets=40, n_samples=200, k=3, seed=0, jackknife_sets=8)
    boot, jack = check.jackknife
    assert boot.low <= boot.value <= boot.high and jack.low <= jack.value <= jack.high
    np.testing.assert_allclose(check.exact, [0.5 * math.log(2), 0.5 * math.log(1.25)])
    assert check.covered("knn") >= 1 and check.max_error < 0.1
    assert abs(check.copier[0].value - math.log(40)) < 0.02
    assert abs(check.independent[0].value) < 0.05


def test_mi_along_training_and_set_samples_of_an_ensemble(sched, tmp_path):
    from diffgen.measures import mi

    P = eight_gaussians()
    sets = training_sets(P, n_sets=4, n_train=3, seed=0)
    run = train_ensemble(PlainMLPConfig(hidden=16, depth=1, time_dim=8), EpsLoss(sched), list(sets) * 2, (2,),
                         TrainConfig(train_steps=30, batch_size=8, warmup=5, checkpoint_every=30, snapshots=(10, 20)),
                         seeds=(0,) * 4 + (1,) * 4, device="cpu", cache_dir=tmp_path, progress=False)
    edges = mi.uniform_edges(-3, 3, 4, dim=2)
    along = mutual_information.mi_along_training(run, sets, sched, n_samples=30, steps=5, k=3, seed=0, edges=edges,
                                          mass=mi.grid_mass(P, edges))
    assert along.train_steps == (10, 20, 30) and len(along.mi) == len(along.copy) == 3 and along.seeds == 2
    assert all(c.total == 2 * 4 * 30 for c in along.copy)  # pooled over the seeds
    first = run.sample(10, sched, 30, steps=5, seed=0).reshape(2, 4, 30, 2)
    last = run.sample(30, sched, 30, steps=5, seed=0).reshape(2, 4, 30, 2)
    for r in range(2):  # one change per seed, from that seed's samples alone
        change = mi.grid_split_change(first[r], last[r], edges, mi.grid_mass(P, edges), n_boot=1)
        assert along.mi_changes[r] == pytest.approx(change[0].value) and along.marginal_changes[r] == pytest.approx(
            change[1].value)
    second = mutual_information.set_samples(run, sets, sched, n_samples=30, steps=5, seed=0, seed_number=1)
    assert second.z.shape == (4, 30, 2) and torch.equal(second.z, run.sample(None, sched, 30, steps=5, seed=0)[4:])
    values, per_seed = mutual_information.mi_over_seeds(run, sets, sched, n_samples=30, steps=5, k=3, seed=0)
    assert len(per_seed) == 2 and torch.equal(per_seed[1].z, second.z)
    assert values == pytest.approx([float(mi.mi_knn_terms(s.z, 3).mean()) for s in per_seed], abs=1e-12)


def test_forward_time_minimiser_is_eps_star_and_tweedie_slopes_are_c(sched, digits):
    g = torch.Generator().manual_seed(0)
    assert new_objective.forward_time_minimiser_error(ForwardTimeLoss(sched, "uniform"), digits.train[:10], sched,
                                                    (10, 300), n_probe=4, generator=g) < 1e-10
    slopes = new_objective.tweedie_slopes(digits.train, sched, [(50, 0), (50, 49), (600, 300)], n_mc=2048, generator=g,
                                        seed=0)
    assert [(w.t, w.s) for w in slopes] == [(50, 0), (50, 49), (600, 300)] and slopes[0].c == pytest.approx(1.0)
    assert all(abs(w.slope.value - w.c) < 0.05 for w in slopes)


def test_noisy_point_rows_move_away_from_the_training_set_as_s_grows(sched, digits):
    x_T = torch.randn(24, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = new_objective.noisy_point_rows(digits.train, sched, [1, 300], x_T, 10, seed=0)
    assert [r.s for r in rows] == [1, 300]
    assert rows[0].h == pytest.approx(((1 - float(sched.abar[1])) / float(sched.abar[1])) ** 0.5)
    assert rows[0].rate.value == 1.0 and rows[0].d1 < rows[1].d1


@pytest.fixture(scope="module")
def objective_runs(sched, tmp_path_factory):
    """Tiny 2-D ensembles, members (set, seed): the standard objective, a rerun with other draws, a net on disjoint
    sets, and a net trained ten times shorter."""
    cache = tmp_path_factory.mktemp("cache")
    data = training_sets(eight_gaussians(), n_sets=2, n_train=6, seed=0)
    disjoint = training_sets(eight_gaussians(), n_sets=2, n_train=6, seed=1)
    sets, seeds = [data[0], data[0], data[1]], (0, 1, 2)
    cfg = TrainConfig(train_steps=400, batch_size=64, checkpoint_every=100)
    kw = dict(seeds=seeds, device="cpu", cache_dir=cache, progress=False)
    net = PlainMLPConfig(hidden=32, depth=2, time_dim=16)
    return sets, {
        "standard": train_ensemble(net, EpsLoss(sched), sets, (2,), cfg, **kw),
        "rerun": train_ensemble(net, EpsLoss(sched), sets, (2,), cfg, streams=(1, 1, 1), **kw),
        "rerun 2": train_ensemble(net, EpsLoss(sched), sets, (2,), cfg, streams=(2, 2, 2), **kw),
        "rerun 3": train_ensemble(net, EpsLoss(sched), sets, (2,), cfg, streams=(3, 3, 3), **kw),
        "disjoint": train_ensemble(net, EpsLoss(sched), [disjoint[0], disjoint[0], disjoint[1]], (2,), cfg, **kw),
    }


def test_probe_gaps_are_zero_for_eps_star_and_differences_zero_for_the_model_itself(sched, objective_runs):
    sets, runs = objective_runs
    probe = training_curves.member_probe(sets, sched, (1, 10, 100, 1000), n_probe=32, seed=0)
    assert probe.xt.shape == (3, 4, 32, 2) and torch.equal(probe.xt[0], probe.xt[1])  # one set, one probe

    class Optimum:  # eps* of each member's set, as an ensemble
        state = {"w": torch.zeros(3)}

        def __call__(self, x, t):
            return torch.stack([EmpiricalOptimum(s, sched, dtype=torch.float64)(x[m].double(), t[m])
                                for m, s in enumerate(sets)])

    assert np.abs(training_curves.relative_differences(Optimum(), probe)).max() < 1e-10
    model = runs["standard"].model_at()
    assert np.all(training_curves.relative_differences(model, probe, model) == 0)
    gaps = training_curves.relative_differences(model, probe)
    assert gaps.shape == (3, 4) and np.all(gaps > 0)


def test_similarity_ratio_is_near_one_for_a_rerun_and_large_for_a_net_on_other_data(sched, objective_runs):
    """The unit of "a similar model" is the mean difference of two reruns to the standard net; a third rerun sits
    near 1 in it, a net trained on other data far above; the C5a row flips between them (3 members stand for
    seeds)."""
    sets, runs = objective_runs
    probe = training_curves.member_probe(sets, sched, (10, 100, 500), n_probe=64, seed=0)
    at = lambda name: runs[name].model_at()  # noqa: E731
    reruns = [at("rerun"), at("rerun 2")]
    rerun, null = new_objective.similarity_ratios(at("rerun 3"), at("standard"), reruns, probe)
    other, _ = new_objective.similarity_ratios(at("disjoint"), at("standard"), reruns, probe)
    assert null.shape == (2, 3) and np.allclose(np.log(null[0]), -np.log(null[1]))  # with two reruns: x and 1/x
    assert np.all(rerun < 3) and np.all(other > 3 * rerun)
    row = lambda ratios, what: verdicts.similar_model(ratios, null.ravel(), what, absolute=(0.1, 0.1),  # noqa: E731
                                                      premise=Condition("trained", True), n=6, margin=2.0)
    assert row(rerun, "a third rerun").holds  # the C5a row flips
    assert row(other, "a net on disjoint sets").verdict in ("fails", "premise not reached")
    assert not row(other, "a net on disjoint sets").holds
    with pytest.raises(ValueError, match="at least two reruns"):
        new_objective.similarity_ratios(at("rerun 3"), at("standard"), reruns[:1], probe)


def test_objective_curves_measure_every_member_at_every_snapshot(sched, objective_runs, tmp_path):
    from diffgen.measures.quality import ClassifierConfig, digits_classifier

    sets, runs = objective_runs
    digits = load_dataset("digits", 40, 40, seed=0)
    clf = digits_classifier(ClassifierConfig(hidden=32, features=8, train_steps=30), device="cpu", cache_dir=tmp_path)
    sets64 = [digits.train[:12], digits.train[:12], digits.train[12:30]]
    run = train_ensemble(PlainMLPConfig(hidden=16, depth=1, time_dim=8), EpsLoss(sched), sets64, (64,),
                         TrainConfig(train_steps=40, batch_size=16, checkpoint_every=20), seeds=(0, 1, 0),
                         device="cpu", cache_dir=tmp_path, progress=False)
    probe = training_curves.member_probe(sets64, sched, (10, 500), n_probe=16, seed=0)
    c = training_curves.objective_curves(run, sets64, digits.heldout, clf, sched, probe, n_samples=20, steps=5, seed=0)
    assert c.train_steps == (20, 40) and c.rate.shape == c.kid.shape == c.gap.shape == c.heldout_loss.shape == (3, 2)
    assert c.samples.shape == (3, 20, 64) and c.ratios.shape == (3, 20)
    assert np.all((0 <= c.rate) & (c.rate <= 1)) and np.all(c.gap > 0)
    last = run.model_at(40)
    assert np.allclose(c.heldout_loss[:, 1], training_curves.heldout_losses(last, digits.heldout, sched, seed=0))
    assert [r.value for r in c.rates(range(3))] == pytest.approx(c.rate[:, 1].tolist())
    blind = training_curves.objective_curves(run, sets64, digits.heldout, None, sched, probe, n_samples=20, steps=5, seed=0)
    assert blind.kid is None and np.array_equal(blind.rate, c.rate)  # no classifier: the same, without KID
    rows = trained_gap.snapshot_rows(c, {0: (12, 0), 2: (18, 0)})
    assert [(r.n, r.train_step) for r in rows] == [(12, 20), (12, 40), (18, 20), (18, 40)]
    assert rows[1].rate.total == 20 and rows[1].rate.value == pytest.approx(c.rate[0, 1])
    assert rows[3].gap == c.gap[2, 1] and rows[3].d1.shape == (20,) and rows[2].d1.shape == (0,)
    assert np.allclose(rows[3].d1, nearest_neighbors(c.samples[2], sets64[2]).d1.numpy() / 8)
    first = training_curves.select_members(last, [2, 0])
    assert first.n_members == 2 and all(torch.equal(v[0], last.state[k][2]) for k, v in first.state.items())


def test_convergence_of_a_net_that_stopped_moving_is_exact_whatever_the_samples_along(sched, objective_runs):
    """A net whose last two snapshots hold the same weights has converged: every curve moves by exactly 0 over the
    last interval, also where the snapshots before sample fewer points (n_samples_along): the last two sample
    n_samples from the same x_T. (Sampled with 16 points against 64, the copy rate moved by the draw alone.)"""
    sets, runs = objective_runs
    run = runs["standard"]

    class Stopped:  # the run, its last snapshot shown twice (at step 399 and at 400)
        n_members, snapshot_steps = run.n_members, [100, 399, 400]

        def sample(self, step, *args, **kwargs):
            return run.sample(400 if step == 399 else step, *args, **kwargs)

        def model_at(self, step):
            return run.model_at(400 if step == 399 else step)

    heldout = eight_gaussians().sample(64, torch.Generator().manual_seed(5)).float()
    probe = training_curves.member_probe(sets, sched, (10, 500), n_probe=16, seed=0)
    c = training_curves.objective_curves(Stopped(), sets, heldout, None, sched, probe, n_samples=64, steps=10,
                                         seed=0, n_samples_along=16)
    assert 0 < c.rate[:, -1].mean() < 1  # copies some samples, not all: a rate the draw could move
    moved = training_curves.convergence(c)
    assert np.all(moved.rate_change == 0) and np.all(moved.gap_fall == 0) and np.all(moved.loss_change == 0)
    assert moved.converged.all()

    class Learning(Stopped):  # the flip: the same nets between steps 100 and 200, still learning
        snapshot_steps = [100, 200]

    early = training_curves.objective_curves(Learning(), sets, heldout, None, sched, probe, n_samples=64, steps=10,
                                             seed=0, n_samples_along=16)
    assert not training_curves.convergence(early).converged.all()
    along = run.sample(400, sched, 16, steps=10, seed=0)  # what the second-to-last snapshot sampled before
    assert [copy_rate(nearest_neighbors(along[m], sets[m]).ratio).value for m in range(3)] != c.rate[:, -1].tolist()


def test_joined_convergence_counts_the_members_of_every_part_in_order():
    """Two ensembles' Convergence as one (the 2-D nets of two objectives behind one premise); parts measured over
    other intervals or tolerances are refused."""
    from diffgen.chapters.training_curves import Convergence, joined

    a = Convergence(np.array([0.0, 0.2]), np.zeros(2), np.zeros(2), 0.05, 0.05, (795, 2000))
    b = Convergence(np.array([0.01]), np.zeros(1), np.array([0.1]), 0.05, 0.05, (795, 2000))
    both = joined(a, b)
    assert both.converged.tolist() == [True, False, False] and both.interval == (795, 2000)
    with pytest.raises(ValueError, match="same tolerances and last interval"):
        joined(a, Convergence(np.zeros(1), np.zeros(1), np.zeros(1), 0.05, 0.05, (1670, 2000)))


def test_heldout_losses_use_common_draws_and_rank_the_optimum_first(sched, digits):
    """The standard loss on held-out images: eps* of the held-out set itself beats the zero predictor, with the same
    (x0, t, eps) draws for every member."""
    class Members:  # a stand-in ensemble of two denoisers: eps* of the held-out set and the zero predictor
        n_members = 2
        state = {"w": torch.zeros(2)}

        def __call__(self, x, t):
            opt = EmpiricalOptimum(digits.heldout, sched, dtype=torch.float64)
            return torch.stack([opt(x[0].double(), t[0]).float(), torch.zeros_like(x[1])])

    losses = training_curves.heldout_losses(Members(), digits.heldout, sched, repeats=2, seed=0)
    assert losses[1] == pytest.approx(1.0, abs=0.1) and losses[0] < 0.5 * losses[1]
    assert np.array_equal(losses, training_curves.heldout_losses(Members(), digits.heldout, sched, repeats=2, seed=0))


def test_rates_at_matched_progress_interpolate_in_log_and_refuse_to_extrapolate():
    gap_a, rate_a = [1.0, 0.1, 0.01], [0.0, 0.5, 1.0]  # the standard run: closer, and copying more
    gap_b, rate_b = [1.0, 0.3, 0.1], [0.0, 0.1, 0.2]
    g, a, b = new_objective.rates_at_matched(gap_a, rate_a, gap_b, rate_b)
    assert g == pytest.approx(0.1) and a == pytest.approx(0.5) and b == pytest.approx(0.2)
    _, a, _ = new_objective.rates_at_matched(gap_a, rate_a, [1.0, 10 ** -0.5], [0.0, 0.1])
    assert a == pytest.approx(0.25)  # halfway between 1 and 0.1 in log gap
    assert new_objective.rates_at_matched([0.05, 0.01], [0.9, 1.0], gap_b, rate_b) is None  # a starts below g


def test_a_rising_measure_of_progress_is_matched_where_both_runs_got_furthest():
    """The held-out loss of a net that memorizes rises along training: the two runs are compared at the largest
    value both reach, not at the smallest (their first snapshots, where neither copies: a difference of 0 whatever
    the runs do). The flip: the same curves read as falling would match at the start."""
    loss_a, rate_a = [0.2, 0.3, 0.4], [0.0, 0.4, 0.8]  # the standard run: its held-out loss rises as it copies
    loss_b, rate_b = [0.2, 0.25, 0.3], [0.0, 0.1, 0.2]  # the new run, behind it
    v, a, b = new_objective.rates_at_matched(loss_a, rate_a, loss_b, rate_b)
    assert v == pytest.approx(0.3) and a == pytest.approx(0.4) and b == pytest.approx(0.2)
    start = new_objective.rates_at_matched(loss_a[::-1], rate_a[::-1], loss_b[::-1], rate_b[::-1])
    assert start[0] == pytest.approx(0.2) and start[1] == start[2] == 0  # read as falling: matched at the start
    assert new_objective.rates_at_matched(loss_a, rate_a, [1.0, 0.5], [0.0, 0.1]) is None  # opposite directions


def test_still_falling():
    assert training_curves.still_falling([1.0, 0.5, 0.4]) == pytest.approx(0.2)
    assert training_curves.still_falling([1.0, 0.5, 0.49]) is None
    assert training_curves.still_falling([1.0, 0.5, 0.7]) is None
    with pytest.raises(ValueError, match="at least two"):
        training_curves.still_falling([1.0])
