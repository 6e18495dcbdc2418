"""The chapters' measurements (diffgen.experiments) on cases whose answer is known: the optimum scored against itself,
S-blind denoisers, copiers, closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen import experiments
from diffgen.data import eight_gaussians, load_dataset
from diffgen.denoisers import EmpiricalOptimum, GaussianDenoiser
from diffgen.models import PlainMLPConfig
from diffgen.train import TrainConfig, train_ensemble
from diffgen.generators import training_sets
from diffgen.objectives import EpsLoss, ForwardTimeLoss


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
    assert experiments.spearman([1, 2], [3, 4]) is None
    assert experiments.spearman([1, 2, 3], [5, 5, 5]) is None
    assert experiments.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert experiments.spearman([1, 2, 3, 4], [3, 2, 1, 0]) == pytest.approx(-1.0)


def test_loss_share_is_one_for_the_optimum_and_zero_for_the_zero_predictor(sched, digits):
    opt = EmpiricalOptimum(digits.train, sched, dtype=torch.float64)
    same = experiments.loss_share(EpsLoss(sched), opt, opt, digits.train, repeats=2, seed=0, n_boot=50)
    assert same.value == pytest.approx(1.0)
    zero = experiments.loss_share(EpsLoss(sched), lambda x, t: torch.zeros_like(x), opt, digits.train, repeats=2,
                                  seed=0, n_boot=50)
    assert zero.value == pytest.approx(0.0, abs=1e-12)
    other = load_dataset("digits", 40, 0, seed=1).train  # a denoiser that never saw S lands in between
    part = experiments.loss_share(EpsLoss(sched), blind(other, sched), opt, digits.train, repeats=2, seed=0, n_boot=50)
    assert 0.3 < part.value < 1.0


def test_memorization_along_training_tells_a_copier_from_a_blind_denoiser(sched, digits):
    x_T = torch.randn(32, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opt = EmpiricalOptimum(digits.train, sched, dtype=torch.float64)
    other = load_dataset("digits", 40, 0, seed=1).train
    rows = experiments.memorization_along_training({40: FixedRun(opt), 20: FixedRun(blind(other, sched), (5,))},
                                                   digits.train, x_T, sched, 10, probes=16)
    assert [(r.n, r.train_step) for r in rows] == [(40, 10), (40, 20), (20, 5)]
    assert rows[0].rate.value == 1.0 and rows[0].gap == pytest.approx(0.0, abs=1e-20)
    assert rows[2].rate.value < 0.5 and rows[2].gap > 0.01 and rows[2].d1.shape == (32,)


def test_window_swap_copies_when_the_optimum_holds_the_last_steps(sched, digits):
    x_T = torch.randn(32, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opt = EmpiricalOptimum(digits.train, sched, dtype=torch.float64)
    net = blind(load_dataset("digits", 40, 0, seed=1).train, sched)
    swap = experiments.window_swap(net, opt, [(1, 10), (601, 1000)], x_T, digits.train, sched, 20)
    assert swap[1, 10]["optimum inside"].value == 1.0  # the last step projects onto a training point
    assert swap[601, 1000]["optimum inside"].value < 0.5  # the blind denoiser finishes: new images
    assert swap[601, 1000]["net inside"].value == 1.0


def test_estimator_check_recovers_the_closed_form_and_the_extremes():
    check = experiments.estimator_check([1, 4], n_sets=40, n_samples=200, k=3, seed=0)
    np.testing.assert_allclose(check.exact, [0.5 * math.log(2), 0.5 * math.log(1.25)])
    assert check.covered("knn") >= 1 and check.max_error < 0.1
    assert abs(check.copier[0].value - math.log(40)) < 0.02
    assert abs(check.independent[0].value) < 0.05


def test_mi_along_training_and_set_samples_of_an_ensemble(sched, tmp_path):
    P = eight_gaussians()
    sets = training_sets(P, n_sets=4, n_train=3, seed=0)
    run = train_ensemble(PlainMLPConfig(hidden=16, depth=1, time_dim=8), EpsLoss(sched), sets, (2,),
                         TrainConfig(train_steps=30, batch_size=8, warmup=5, checkpoint_every=30, snapshots=(10, 20)),
                         device="cpu", cache_dir=tmp_path, progress=False)
    along = experiments.mi_along_training(run, sets, sched, n_samples=30, steps=5, k=3, seed=0)
    assert along.train_steps == (10, 20, 30) and len(along.mi) == len(along.copy) == 3
    assert all(c.total == 4 * 30 for c in along.copy)
    samples = experiments.set_samples(run, sets, sched, n_samples=30, steps=5, seed=0)
    assert samples.z.shape == (4, 30, 2) and torch.equal(samples.z, run.sample(30, sched, 30, steps=5, seed=0))


def test_forward_time_minimiser_is_eps_star_and_tweedie_slopes_are_c(sched, digits):
    g = torch.Generator().manual_seed(0)
    assert experiments.forward_time_minimiser_error(ForwardTimeLoss(sched, "uniform"), digits.train[:10], sched,
                                                    (10, 300), n_probe=4, generator=g) < 1e-10
    slopes = experiments.tweedie_slopes(digits.train, sched, [(50, 0), (50, 49), (600, 300)], n_mc=2048, generator=g,
                                        seed=0)
    assert [(w.t, w.s) for w in slopes] == [(50, 0), (50, 49), (600, 300)] and slopes[0].c == pytest.approx(1.0)
    assert all(abs(w.slope.value - w.c) < 0.05 for w in slopes)


def test_noisy_point_rows_move_away_from_the_training_set_as_s_grows(sched, digits):
    x_T = torch.randn(24, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = experiments.noisy_point_rows(digits.train, sched, [1, 300], x_T, 10, seed=0)
    assert [r.s for r in rows] == [1, 300]
    assert rows[0].h == pytest.approx(((1 - float(sched.abar[1])) / float(sched.abar[1])) ** 0.5)
    assert rows[0].rate.value == 1.0 and rows[0].d1 < rows[1].d1
