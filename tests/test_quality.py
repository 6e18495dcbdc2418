"""Sample-quality distances against independent references (scipy, brute force, Gaussian closed forms) and the
cached digits classifier."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from diffgen.measures.quality import (
    ClassifierConfig,
    digits_classifier,
    energy_distance,
    frechet_distance,
    gaussian_frechet,
    median_bandwidth,
    mmd2,
)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_pairs(a, b, fn, same):
    vals = [fn(float(((a[i] - b[j]) ** 2).sum())) for i in range(len(a)) for j in range(len(b))
            if not (same and i == j)]
    return sum(vals) / len(vals)


def test_energy_distance_v_statistic_is_scipys_squared_in_1d():
    x, y = _randn(50, 1, seed=1), _randn(70, 1, seed=2) * 1.5 + 0.3
    ref = scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2
    assert energy_distance(x, y, unbiased=False) == pytest.approx(ref, rel=1e-10)


def test_energy_distance_and_mmd_equal_brute_force():
    x, y = _randn(23, 5, seed=1), _randn(31, 5, seed=2) + 0.2
    dist = lambda d2: d2 ** 0.5  # noqa: E731
    ref = 2 * _brute_pairs(x, y, dist, False) - _brute_pairs(x, x, dist, True) - _brute_pairs(y, y, dist, True)
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-10)
    h = 1.7
    k = lambda d2: np.exp(-d2 / (2 * h * h))  # noqa: E731
    ref = _brute_pairs(x, x, k, True) + _brute_pairs(y, y, k, True) - 2 * _brute_pairs(x, y, k, False)
    assert mmd2(x, y, h) == pytest.approx(ref, rel=1e-10)
    assert mmd2(x, y, h) == pytest.approx(mmd2(y, x, h), rel=1e-12)


def test_distances_invariant_to_rigid_motions_and_detect_shifts():
    x, y = _randn(200, 4, seed=1), _randn(200, 4, seed=2)
    q = torch.linalg.qr(_randn(4, 4, seed=3))[0]
    move = lambda v: v @ q.T + 5.0  # noqa: E731
    h = median_bandwidth(x, y)
    assert energy_distance(move(x), move(y)) == pytest.approx(energy_distance(x, y), rel=1e-9, abs=1e-12)
    assert mmd2(move(x), move(y), h) == pytest.approx(mmd2(x, y, h), rel=1e-9, abs=1e-12)
    same, shifted = energy_distance(x, y), energy_distance(x, y + 1.0)
    assert abs(same) < 0.05 < shifted
    assert abs(mmd2(x, y, h)) < 0.01 < mmd2(x, y + 1.0, h)


def test_gaussian_frechet_closed_forms():
    mu1, mu2 = _randn(6, seed=1), _randn(6, seed=2)
    a = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 4.0], dtype=torch.float64)
    b = torch.tensor([1.5, 1.0, 0.2, 3.0, 2.1, 1.0], dtype=torch.float64)
    ref = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())  # commuting (diagonal) covariances
    assert gaussian_frechet(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(ref, rel=1e-10)
    # general covariances: against scipy's sqrtm of C1 C2 (a different route to the same trace)
    m1, m2 = _randn(6, 6, seed=4), _randn(6, 6, seed=5)
    c1, c2 = m1 @ m1.T + 0.1 * torch.eye(6), m2 @ m2.T
    cross = np.real(np.trace(scipy.linalg.sqrtm(c1.numpy() @ c2.numpy())))
    ref = float((mu1 - mu2).pow(2).sum() + c1.trace() + c2.trace()) - 2 * cross
    assert gaussian_frechet(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)
    assert gaussian_frechet(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples():
    x, y = _randn(400, 3, seed=1), _randn(300, 3, seed=2)
    delta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert frechet_distance(x, y + delta) - frechet_distance(x, y) == pytest.approx(
        float(((x.mean(0) - y.mean(0) - delta).pow(2).sum() - (x.mean(0) - y.mean(0)).pow(2).sum())), rel=1e-9)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_bad_inputs_raise_one_clear_error():
    x = _randn(10, 3)
    with pytest.raises(ValueError, match="must agree in D"):
        energy_distance(x, _randn(10, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd2(x, x[:1], 1.0)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        mmd2(x, x, 0.0)
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        ClassifierConfig(hidden=0)
    with pytest.raises(ValueError, match="test_share"):
        ClassifierConfig(test_share=1.0)


def test_digits_classifier_trains_caches_and_reloads(tmp_path):
    cfg = ClassifierConfig(hidden=64, train_steps=250)
    first = digits_classifier(cfg, device="cpu", cache_dir=tmp_path)
    assert not first.from_cache and first.accuracy > 0.9
    x = _randn(5, 64).clamp(-1, 1)
    again = digits_classifier(cfg, device="cpu", cache_dir=tmp_path)
    assert again.from_cache and again.accuracy == first.accuracy
    torch.testing.assert_close(again.features(x), first.features(x), rtol=0, atol=0)
    many = _randn(70, 64, seed=4).clamp(-1, 1)
    whole = first.features(many)
    object.__setattr__(first, "BATCH", 16)  # the images in batches of 16: the same features
    torch.testing.assert_close(first.features(many), whole, rtol=1e-5, atol=1e-5)  # float32 net: rounding only
    assert first.features(x).shape == (5, cfg.features) and first.features(x).dtype == torch.float64
    path = next((tmp_path / "quality").glob("*.pt"))
    path.write_bytes(path.read_bytes()[:100])  # truncated: rebuilt, same numbers (same seed)
    with pytest.warns(RuntimeWarning, match="deleting unusable artifact"):
        rebuilt = digits_classifier(cfg, device="cpu", cache_dir=tmp_path)
    assert not rebuilt.from_cache and rebuilt.accuracy == first.accuracy
    with pytest.raises(ValueError, match="x must be digits images"):
        first.features(_randn(3, 10))


def test_kid_standardized_is_invariant_to_the_feature_scale():
    """A classifier's features come at any scale; standardized by the reference's spread, KID does not see it."""
    from diffgen.measures.quality import kid

    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(30, 4, generator=g, dtype=torch.float64) + 0.5, torch.randn(40, 4, generator=g, dtype=torch.float64)
    assert kid(100 * x, 100 * y, standardize=True) == pytest.approx(kid(x, y, standardize=True), rel=1e-9)
    assert kid(100 * x, 100 * y) > 1e3 * abs(kid(x, y))  # raw: the cubic kernel blows up with the scale


def test_kid_equals_a_brute_force_double_loop():
    from diffgen.measures.quality import kid

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64) + 1
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert kid(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_for_equal_distributions_and_grows_with_a_shift():
    from diffgen.measures.quality import kid

    g = torch.Generator().manual_seed(4)
    same = [kid(torch.randn(20, 4, generator=g), torch.randn(30, 4, generator=g)) for _ in range(400)]
    mean, se = float(np.mean(same)), float(np.std(same) / math.sqrt(len(same)))
    assert abs(mean) < 3 * se  # unbiased: no offset at small sizes (the Frechet distance has one)
    assert kid(torch.randn(20, 4, generator=g) + 1, torch.randn(30, 4, generator=g)) > 10 * np.std(same)


def test_image_classifier_on_fixture_cifar_files(tmp_path):
    """The CNN feature network of file data sets: labels from the official files, the test split for the accuracy,
    the cache keyed on config and data."""
    from diffgen.data.datasets import labelled_splits
    from diffgen.data.fixtures import write_cifar10
    from diffgen.measures.quality import IMAGE_CLASSIFIER, image_classifier

    batches = write_cifar10(tmp_path / "data", n=10)
    data = labelled_splits("cifar10", data_dir=tmp_path / "data")
    assert data.shape == (3, 32, 32) and data.x_fit.shape == (50, 3072) and data.x_test.shape == (10, 3072)
    assert sorted(data.y_test.tolist()) == sorted(batches["test_batch"][1].tolist())  # the test split's labels
    assert float(data.x_fit.min()) >= -1 and float(data.x_fit.max()) <= 1 and data.x_fit.dtype == torch.float32
    cfg = ClassifierConfig(hidden=4, features=8, train_steps=5, batch_size=16)
    clf = image_classifier(data, cfg, device="cpu", cache_dir=tmp_path)
    assert clf.features(data.x_test).shape == (10, 8) and 0 <= clf.accuracy <= 1 and not clf.from_cache
    again = image_classifier(data, cfg, device="cpu", cache_dir=tmp_path)
    assert again.from_cache and torch.equal(again.features(data.x_test), clf.features(data.x_test))
    with pytest.raises(ValueError, match=r"must be cifar10 images \[B, 3072\]"):
        clf.features(data.x_test[:, :64])
    assert IMAGE_CLASSIFIER.batch_size is not None  # real data sets never train full batch
    with pytest.raises(ValueError, match="'celeba' has no class labels"):
        labelled_splits("celeba", data_dir=tmp_path)


def _median_by_sorting(x, y):
    """Every pairwise distance from explicit differences, i < j, sorted: the lower middle one."""
    z = torch.cat([x, y])
    d = torch.stack([((z[i] - z[j]) ** 2).sum().sqrt() for i in range(len(z)) for j in range(i + 1, len(z))])
    return float(d.sort().values[(len(d) - 1) // 2])


@pytest.mark.parametrize("cap, bins", [(10 ** 9, 4096), (40, 4), (1, 2)])  # one pass; several; down to one value
def test_median_bandwidth_is_the_exact_median_in_any_number_of_passes(cap, bins):
    x, y = _randn(23, 5, seed=1), _randn(18, 5, seed=2) + 0.4  # 820 distances
    ref = _median_by_sorting(x, y)
    assert median_bandwidth(x, y, cap=cap, bins=bins) == pytest.approx(ref, rel=1e-12)
    z = torch.cat([x, y])
    old = float(torch.cdist(z, z)[torch.triu_indices(len(z), len(z), 1).unbind()].median())  # the former [N, N] way
    assert median_bandwidth(x, y, cap=cap, bins=bins) == pytest.approx(old, rel=1e-12)
    dup = torch.cat([x[:3]] * 12)  # 36 rows, 3 distinct: 594 of the 630 distances are exact zeros or repeats
    assert median_bandwidth(dup, dup[:1], cap=cap, bins=bins) == _median_by_sorting(dup, dup[:1])
    odd = _randn(4, 2, seed=5)  # 6 pairs of 4 rows, then 10 of 5: the lower middle one for an even count
    assert median_bandwidth(odd, odd[:1] + 3, cap=cap, bins=bins) == pytest.approx(
        _median_by_sorting(odd, odd[:1] + 3), rel=1e-12)


def test_pairwise_means_are_the_same_in_tiles_of_a_few_pairs(monkeypatch):
    from diffgen.measures import quality
    from diffgen.measures.quality import kid

    x, y = _randn(23, 5, seed=1), _randn(31, 5, seed=2) + 0.2
    whole = (energy_distance(x, y), mmd2(x, y, 1.3), kid(x, y), median_bandwidth(x, y))
    monkeypatch.setattr(quality, "PAIRS", 40)  # one row of 31 or 54 pairs per tile
    tiled = (energy_distance(x, y), mmd2(x, y, 1.3), kid(x, y), median_bandwidth(x, y))
    assert tiled == pytest.approx(whole, rel=1e-12)
