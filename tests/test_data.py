"""Datasets: shapes, seeding, disjoint splits, digits scaling, errors, and the exact Gaussian-mixture density."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.data.datasets import DATASETS, DIGITS_SIZE, GaussianMixture, eight_gaussians, load_dataset


def _raw_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float64)  # [1797, 64], integers 0..16


@pytest.mark.parametrize("name", DATASETS)
def test_shapes_and_dtype(name):
    ds = load_dataset(name, 50, 20, seed=3)
    d = 64 if name == "digits" else 2
    assert ds.name == name and ds.seed == 3
    assert ds.train.shape == (50, d) and ds.heldout.shape == (20, d)
    assert ds.dim == d
    assert ds.shape == ((1, 8, 8) if name == "digits" else (2,))
    assert math.prod(ds.shape) == d
    assert ds.is_image == (name == "digits")
    assert ds.train.dtype == torch.float64 and ds.heldout.dtype == torch.float64
    assert bool(torch.isfinite(ds.train).all()) and bool(torch.isfinite(ds.heldout).all())
    assert load_dataset(name, 5, seed=3).heldout.shape == (0, d)
    ds32 = load_dataset(name, 50, 20, seed=3, dtype=torch.float32)
    assert ds32.train.dtype == torch.float32
    torch.testing.assert_close(ds32.train, ds.train.float())


@pytest.mark.parametrize("name", DATASETS)
def test_deterministic_in_seed_and_different_across_seeds(name):
    a, b = load_dataset(name, 40, 10, seed=7), load_dataset(name, 40, 10, seed=7)
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout, b.heldout)
    c = load_dataset(name, 40, 10, seed=8)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.heldout, c.heldout)
    # independent of the global RNG
    torch.manual_seed(0)
    d = load_dataset(name, 40, 10, seed=7)
    torch.manual_seed(99)
    torch.rand(10)
    assert torch.equal(d.train, a.train)


@pytest.mark.parametrize("name", DATASETS)
def test_train_heldout_disjoint(name):
    ds = load_dataset(name, 300, 200, seed=1)
    diff = (ds.train[:, None, :] - ds.heldout[None, :, :]).abs().amax(-1)  # [N, M], 0 iff identical rows
    assert bool((diff > 0).all()), "a held-out row is identical to a training row"
    # no duplicates inside a split either
    within = (ds.train[:, None, :] - ds.train[None, :, :]).abs().amax(-1)
    assert int((within == 0).sum()) == len(ds.train)


def test_digits_split_draws_distinct_source_images():
    raw = _raw_digits()
    assert len(np.unique(raw, axis=0)) == DIGITS_SIZE  # precondition: sklearn's digits has no duplicate images,
    index = {row.tobytes(): i for i, row in enumerate(raw / 8.0 - 1.0)}  # so a row identifies its source index
    ds = load_dataset("digits", 1000, DIGITS_SIZE - 1000, seed=5)
    tr = [index[r.tobytes()] for r in ds.train.numpy()]
    ho = [index[r.tobytes()] for r in ds.heldout.numpy()]
    assert len(set(tr)) == 1000 and len(set(ho)) == DIGITS_SIZE - 1000
    assert not set(tr) & set(ho)
    assert sorted(tr + ho) == list(range(DIGITS_SIZE))  # the full split is a permutation of the images
    assert tr[:20] != list(range(20))  # shuffled, not the file order


def test_digits_scaling_and_shape():
    ds = load_dataset("digits", 400, 100, seed=0)
    x = torch.cat([ds.train, ds.heldout])
    assert ds.shape == (1, 8, 8)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # pixels 0..16 -> p / 8 - 1: every value is on that grid
    k = (x + 1) * 8
    assert torch.equal(k, k.round())
    # an image reshaped to (1, 8, 8) is the sklearn image (row-major)
    raw = _raw_digits()
    img = ds.train[0].reshape(ds.shape).numpy()
    match = np.flatnonzero((np.abs(raw / 8.0 - 1.0 - ds.train[0].numpy()).max(1) == 0))
    assert len(match) == 1
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(img[0], load_digits().images[match[0]] / 8.0 - 1.0)


def test_toy_distributions_look_right():
    n = 4000
    gmm = load_dataset("gmm", n, seed=0).train
    means = eight_gaussians().means
    d = torch.cdist(gmm, means).min(1).values
    assert float(d.max()) < 6 * 0.15  # every point within 6 std of a component mean
    counts = torch.bincount(torch.cdist(gmm, means).argmin(1), minlength=8).double() / n
    assert float((counts - 1 / 8).abs().max()) < 0.03  # equal weights
    circle = load_dataset("circle", n, seed=0).train
    r = circle.norm(dim=1)
    assert abs(float(r.mean()) - 2.0) < 0.01 and abs(float(r.std()) - 0.05) < 0.01
    assert float(circle.mean(0).abs().max()) < 0.15
    moons = load_dataset("moons", n, seed=0).train
    assert float(moons.mean(0).abs().max()) < 0.1  # roughly centred
    assert 0.5 < float(moons.std(0).min()) and float(moons.std(0).max()) < 1.5  # roughly unit scale


# ---------------------------------------------------------------- errors
def test_unknown_name():
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("cifar10", 10)


def test_too_many_digits():
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("digits", DIGITS_SIZE, 1)
    with pytest.raises(ValueError, match="n_heldout"):
        load_dataset("digits", 1000, 1000)
    load_dataset("digits", DIGITS_SIZE - 1, 1)  # exactly all of them is fine


@pytest.mark.parametrize("n_train", [0, -1, 2.5, "10"])
def test_bad_n_train(n_train):
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("gmm", n_train)


@pytest.mark.parametrize("n_heldout", [-1, 1.0])
def test_bad_n_heldout(n_heldout):
    with pytest.raises(ValueError, match="n_heldout"):
        load_dataset("moons", 10, n_heldout)


# ---------------------------------------------------------------- Gaussian mixture
def _ref_log_prob(x: np.ndarray, means: np.ndarray, std: float, weights: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(x; mu_k, std^2 I), float64, explicit differences."""
    d = x.shape[1]
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    comp = np.log(weights)[None] - sq / (2 * std**2) - d / 2 * math.log(2 * math.pi * std**2)  # [B, K]
    top = comp.max(1, keepdims=True)
    return top[:, 0] + np.log(np.exp(comp - top).sum(1))


def test_eight_gaussians_parameters():
    g = eight_gaussians()
    assert g.means.shape == (8, 2)
    np.testing.assert_allclose(g.means.norm(dim=1).numpy(), 2.0, rtol=1e-14)
    np.testing.assert_allclose(g.means[2].numpy(), [0.0, 2.0], atol=1e-14)
    assert g.std == 0.15 and float(g.weights.sum()) == pytest.approx(1.0)


def test_gmm_log_prob_integrates_to_one_on_grid():
    g = eight_gaussians()
    h = 0.02
    ax = torch.arange(-3.5, 3.5 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    total = float(g.log_prob(pts).exp().sum()) * h * h
    assert total == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("gmm", [
    eight_gaussians(),
    GaussianMixture(means=torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.5, 0.0], [-1.0, -1.0, 3.0]], dtype=torch.float64),
                    std=0.7, weights=torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)),
])
def test_gmm_log_prob_matches_formula(gmm, gen):
    x = 2.5 * torch.randn(200, gmm.means.shape[1], generator=gen, dtype=torch.float64)
    ref = _ref_log_prob(x.numpy(), gmm.means.numpy(), gmm.std, gmm.weights.numpy())
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), ref, rtol=1e-10, atol=1e-10)
    # float32 queries are promoted, not rejected
    np.testing.assert_allclose(gmm.log_prob(x.float()).numpy(), _ref_log_prob(x.float().double().numpy(),
                               gmm.means.numpy(), gmm.std, gmm.weights.numpy()), rtol=1e-9, atol=1e-9)


def test_gmm_sample_moments(gen):
    gmm = GaussianMixture(means=torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.0]], dtype=torch.float64),
                          std=0.3, weights=torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    n = 40000
    x = gmm.sample(n, gen)
    assert x.shape == (n, 2) and x.dtype == torch.float64
    w, mu = gmm.weights, gmm.means
    mean = w @ mu
    cov = gmm.std**2 * torch.eye(2, dtype=torch.float64) + (mu * w[:, None]).T @ mu - torch.outer(mean, mean)
    se_mean = (cov.diagonal() / n).sqrt()
    assert bool(((x.mean(0) - mean).abs() < 5 * se_mean).all())
    assert float((torch.cov(x.T) - cov).abs().max()) < 0.05
    # deterministic given the generator
    assert torch.equal(gmm.sample(10, torch.Generator().manual_seed(3)), gmm.sample(10, torch.Generator().manual_seed(3)))
