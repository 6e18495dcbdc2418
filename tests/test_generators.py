"""Generators built on a training set (diffgen.chapters.generators): per-set seeding, the Gaussian fit, copiers, the optimum
and the true score driven by DDIM, the noisy-point optimum and trained networks as generators."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.chapters import generators
from diffgen.data.datasets import eight_gaussians, gaussian
from diffgen.diffusion.models import MLPConfig
from diffgen.diffusion.objectives import EpsLoss

P1 = gaussian(1)  # N(0, 1)
MEAN_GEN = generators.GaussianFit(std=1.0)  # z ~ N(mean(S), 1)


def brute_d2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances with explicit differences, all pairs at once."""
    return (a.double()[:, None, :] - b.double()[None]).pow(2).sum(-1)


def test_draw_sets_is_seeded_per_set():
    a = generators.draw_sets(P1, MEAN_GEN, n_sets=3, n_train=4, n_samples=10, seed=0)
    b = generators.draw_sets(P1, MEAN_GEN, n_sets=5, n_train=4, n_samples=10, seed=0)
    assert torch.equal(a.z, b.z[:3]) and torch.equal(a.train, b.train[:3])
    assert (a.n_sets, a.n_samples, a.n_train, a.dim) == (3, 10, 4, 1)
    assert not torch.equal(a.z, generators.draw_sets(P1, MEAN_GEN, n_sets=3, n_train=4, n_samples=10, seed=1).z)
    copies = generators.draw_sets(P1, generators.Copier(), n_sets=2, n_train=3, n_samples=20, seed=0)
    assert bool((brute_d2(copies.z[1], copies.train[1]).min(1).values == 0).all())
    assert len(copies.z[1].unique()) == 3  # uniform over the training points, not one of them


def test_gaussian_fit_is_the_maximum_likelihood_gaussian_and_samples_it():
    train = torch.randn(1, 7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, cov = generators.GaussianFit().params(train)
    torch.testing.assert_close(mean[0], train[0].mean(0))
    torch.testing.assert_close(cov[0], torch.from_numpy(np.cov(train[0].numpy().T, bias=True)))
    z = generators.GaussianFit()(train[0], 40_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov[0], atol=0.03, rtol=0)
    _, fixed = generators.GaussianFit(std=0.5).params(train)
    torch.testing.assert_close(fixed[0], 0.25 * torch.eye(2, dtype=torch.float64))


def test_optimum_sampler_copies_training_points(sched):
    s = generators.draw_sets(eight_gaussians(), generators.OptimumSampler(sched, steps=20), n_sets=2, n_train=4, n_samples=12,
                     seed=0)
    d1 = brute_d2(s.z[0], s.train[0]).min(1).values.sqrt()
    assert float(d1.max()) < 0.05  # deterministic sampler + empirical optimum: copies (claim C3)
    smooth = generators.OptimumSampler(sched, steps=20, eta=1.0, bandwidth=0.3)  # stochastic, smoothed: no copies
    s = generators.draw_sets(eight_gaussians(), smooth, n_sets=2, n_train=4, n_samples=12, seed=0)
    assert float(brute_d2(s.z[0], s.train[0]).min(1).values.sqrt().median()) > 0.05


def test_training_sets_are_the_sets_draw_sets_uses():
    s = generators.draw_sets(eight_gaussians(), generators.Copier(), n_sets=4, n_train=5, n_samples=3, seed=7)
    assert torch.equal(generators.training_sets(eight_gaussians(), n_sets=4, n_train=5, seed=7), s.train)


def test_true_score_sampler_ignores_the_training_set_and_samples_p(sched):
    P = eight_gaussians()
    sampler = generators.TrueScoreSampler(P, sched, steps=50)
    train_a, train_b = torch.zeros(3, 2, dtype=torch.float64), torch.ones(9, 2, dtype=torch.float64)
    za = sampler(train_a, 4000, torch.Generator().manual_seed(0))
    assert torch.equal(za, sampler(train_b, 4000, torch.Generator().manual_seed(0)))  # S is never read
    # samples lie on P's components: distance to the nearest mean ~ std * chi_2 (mean std * sqrt(pi/2) = 0.188)
    d = brute_d2(za, P.means).min(1).values.sqrt()
    assert abs(float(d.mean()) - P.std * math.sqrt(math.pi / 2)) < 0.02
    counts = torch.bincount(brute_d2(za, P.means).argmin(1), minlength=8).double() / len(za)
    assert float((counts - 1 / 8).abs().max()) < 0.03  # equal mass on the eight components
    with pytest.raises(ValueError, match="equal weights"):
        generators.TrueScoreSampler(type(P)(P.means, P.std, torch.arange(1.0, 9.0, dtype=torch.float64) / 36), sched)


def test_noisy_point_sampler_returns_noisy_training_points(sched):
    """DDIM under the optimum of the noisy points u_j = x_j + h_s e_j (drawn first from the generator) ends on the
    u_j, at about h_s sqrt(D) from the clean training points: noisy copies."""
    from diffgen.diffusion.denoisers import NoisyPointOptimum

    train = eight_gaussians().sample(6, torch.Generator().manual_seed(0))
    for s in (5, 150):
        z = generators.NoisyPointSampler(sched, s, steps=40)(train, 64, torch.Generator().manual_seed(1))
        noisy = NoisyPointOptimum.draw(train, sched, s, torch.Generator().manual_seed(1)).train
        h = ((1 - float(sched.abar[s])) / float(sched.abar[s])) ** 0.5
        to_noisy = brute_d2(z, noisy).min(1).values.sqrt()
        to_clean = brute_d2(z, train).min(1).values.sqrt()
        assert float(to_noisy.median()) < 0.05 * h, (s, h)
        assert 0.3 * h * 2**0.5 < float(to_clean.median()) < 3 * h * 2**0.5, (s, h)


def test_trained_sampler_trains_through_the_cache_and_samples(sched, tmp_path, monkeypatch):
    from diffgen.diffusion.fit import TrainConfig

    monkeypatch.setenv("DIFFGEN_CACHE", str(tmp_path))
    gen = generators.TrainedSampler(MLPConfig(hidden=32, depth=1), EpsLoss(sched),
                                    TrainConfig(train_steps=30, batch_size=16, checkpoint_every=30), sched, steps=10,
                                    device="cpu")
    train = eight_gaussians().sample(4, torch.Generator().manual_seed(0))
    z = gen(train, 20, torch.Generator().manual_seed(1))
    assert z.shape == (20, 2) and bool(torch.isfinite(z).all())
    assert len(list((tmp_path / "train").glob("*.pt"))) == 1
    torch.testing.assert_close(gen(train, 20, torch.Generator().manual_seed(1)), z)  # loaded: the same net


@pytest.mark.parametrize("call, match", [
    (lambda: generators.draw_sets(P1, MEAN_GEN, n_sets=0, n_train=2, n_samples=3), "n_sets must be"),
    (lambda: generators.draw_sets(P1, lambda S, K, g: S, n_sets=2, n_train=2, n_samples=3), "generator must return"),
    (lambda: generators.draw_sets(P1, generators.GaussianFit(), n_sets=2, n_train=1, n_samples=3), "needs n > D"),
])
def test_invalid_arguments_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
