"""Metrics: exact nearest neighbours against brute force, the copy rate of the empirical optimum, bootstrap CIs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.data.datasets import load_dataset
from diffgen.diffusion.optimum import EmpiricalOptimum
from diffgen.diffusion.samplers import sample_ddim
from diffgen.measures.metrics import (
    COPY_THRESHOLD,
    Estimate,
    bootstrap_ci,
    copy_rate,
    copy_rate_curve,
    distinct_rows,
    nearest_neighbors,
)


def brute_knn(z: torch.Tensor, train: torch.Tensor, k: int):
    """All pairwise distances with explicit differences in float64, fully sorted."""
    d = (z.double()[:, None, :] - train.double()[None]).pow(2).sum(-1).sqrt()
    dist, idx = d.sort(dim=1, stable=True)
    return dist[:, :k], idx[:, :k]


@pytest.fixture(scope="module")
def cloud():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(53, 5, generator=g, dtype=torch.float64)
    z = torch.cat([1.3 * torch.randn(30, 5, generator=g, dtype=torch.float64),
                   train[[4, 17, 52]] + 1e-7 * torch.randn(3, 5, generator=g, dtype=torch.float64),  # near-copies
                   torch.full((1, 5), 40.0, dtype=torch.float64)])  # far away
    return train, z


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("tile", [1, 2, 7, 53, 4096])
def test_nearest_neighbors_equal_brute_force(cloud, k, tile):
    train, z = cloud
    nn = nearest_neighbors(z, train, k=k, tile=tile)
    dist, idx = brute_knn(z, train, k)
    assert nn.dist.shape == (len(z), k) and nn.index.shape == (len(z), k)
    assert nn.dist.dtype == torch.float64 and nn.index.dtype == torch.long
    assert torch.equal(nn.index, idx)
    torch.testing.assert_close(nn.dist, dist, rtol=1e-13, atol=0)
    torch.testing.assert_close(nn.d1, dist[:, 0], rtol=1e-13, atol=0)
    if k >= 2:
        torch.testing.assert_close(nn.ratio, dist[:, 0] / dist[:, 1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("tile", [1, 3, 4096])
def test_exact_copies_have_zero_distance(cloud, tile):
    train, _ = cloud
    pick = torch.tensor([0, 9, 52, 9])
    z = train[pick].clone()
    for k in (1, 2, 3):
        nn = nearest_neighbors(z, train, k=k, tile=tile)
        assert bool((nn.d1 == 0).all())
        assert torch.equal(nn.index[:, 0], pick)
        torch.testing.assert_close(nn.dist, brute_knn(z, train, k)[0], rtol=1e-13, atol=0)
    assert bool((nearest_neighbors(z, train, tile=tile).ratio == 0).all())
    # near-copies: the tiny distance survives (no cancellation to 0 or to sqrt(eps) * |x|)
    delta = 1e-9 * torch.ones(1, 5, dtype=torch.float64)
    nn = nearest_neighbors(train[3:4] + delta, train, tile=tile)
    assert int(nn.index[0, 0]) == 3
    assert float(nn.d1[0]) == pytest.approx(float(delta.norm()), rel=1e-6)


def test_float32_inputs(cloud):
    train, z = cloud
    nn = nearest_neighbors(z.float(), train.float(), k=2, tile=5)
    dist, idx = brute_knn(z.float(), train.float(), 2)
    assert torch.equal(nn.index, idx)
    torch.testing.assert_close(nn.dist, dist, rtol=1e-12, atol=0)


def test_nearest_neighbors_bad_inputs(cloud):
    train, z = cloud
    with pytest.raises(ValueError, match="k must"):
        nearest_neighbors(z, train, k=0)
    with pytest.raises(ValueError, match="k must"):
        nearest_neighbors(z, train, k=len(train) + 1)
    with pytest.raises(ValueError, match="agree in D"):
        nearest_neighbors(z[:, :3], train)
    with pytest.raises(ValueError, match="tile"):
        nearest_neighbors(z, train, tile=0)


# ---------------------------------------------------------------- the claim C3 check, small
def test_empirical_optimum_ddim_copies_digits_heldout_does_not(sched):
    ds = load_dataset("digits", 200, 0)
    heldout = load_dataset("digits", 200, 200).heldout  # same seed: the same 200 training images, 200 others
    assert torch.equal(load_dataset("digits", 200, 200).train, ds.train)
    opt = EmpiricalOptimum(ds.train, sched, dtype=torch.float64)
    x_T = torch.randn(100, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = sample_ddim(opt, x_T, sched, 50)
    nn = nearest_neighbors(z, ds.train)
    rate = copy_rate(nn.ratio)
    assert rate.value >= 0.95
    assert len(torch.unique(nn.index[:, 0])) > 20  # copies of many different images, not one
    nh = nearest_neighbors(heldout, ds.train)
    assert copy_rate(nh.ratio).value <= 0.05
    assert float(nh.d1.min()) > 0.5  # held-out digits are genuinely different images


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci_coverage():
    rng = np.random.default_rng(0)
    hits = 0
    reps = 200
    for r in range(reps):
        x = rng.exponential(2.0, size=100)  # skewed, true mean 2
        est = bootstrap_ci(x, n_boot=800, seed=r)
        assert est.low <= est.value <= est.high
        hits += est.low <= 2.0 <= est.high
    coverage = hits / reps
    assert 0.90 <= coverage <= 0.99, coverage  # nominal 0.95; binomial sd over 200 repetitions 0.015


def test_bootstrap_ci_interval_width_scales_like_standard_error():
    x = np.random.default_rng(1).normal(0, 1, size=400)
    est = bootstrap_ci(x, n_boot=2000)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert est.value == pytest.approx(x.mean())
    assert (est.high - est.low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    narrow = bootstrap_ci(x, n_boot=2000, level=0.5)
    assert est.low < narrow.low < narrow.high < est.high and narrow.level == 0.5


def test_bootstrap_ci_deterministic_in_seed_and_accepts_tensors():
    x = np.random.default_rng(2).normal(size=50)
    a, b = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3)
    assert (a.value, a.low, a.high) == (b.value, b.low, b.high)
    c = bootstrap_ci(x, seed=4)
    assert (a.low, a.high) != (c.low, c.high)
    t = bootstrap_ci(torch.from_numpy(x), seed=3)
    assert (t.value, t.low, t.high) == (a.value, a.low, a.high)
    med = bootstrap_ci(x, np.median, seed=3)
    assert med.value == pytest.approx(float(np.median(x)))
    assert isinstance(a, Estimate) and a.ci == [a.low, a.high]
    assert format(Estimate(0.5, 0.25, 0.75)) == "0.500 [0.250, 0.750]"


def test_bootstrap_ci_bad_inputs():
    with pytest.raises(ValueError):
        bootstrap_ci([])
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="level"):
            bootstrap_ci([1.0, 2.0], level=level)


# ---------------------------------------------------------------- copy rate
def test_copy_rate_is_share_below_threshold():
    ratio = torch.tensor([0.0, 0.1, 0.3, 1 / 3, 0.34, 0.5, 0.9, 1.0], dtype=torch.float64)
    est = copy_rate(ratio)
    assert COPY_THRESHOLD == pytest.approx(1 / 3)
    assert est.value == pytest.approx(3 / 8)  # strict: ratio == 1/3 is not a copy
    assert est.low <= est.value <= est.high
    assert copy_rate(ratio, threshold=1.0).value == pytest.approx(7 / 8)
    assert (est.count, est.total) == (3, 8) and format(est, ".2f").endswith("(3/8)")
    all_copies = copy_rate(torch.zeros(20, dtype=torch.float64))
    assert all_copies.value == all_copies.high == 1.0 and all_copies.low < 0.9  # the interval does not collapse
    for th in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="threshold"):
            copy_rate(ratio, threshold=th)


@pytest.mark.parametrize("count, total", [(0, 256), (1, 256), (128, 256), (255, 256), (256, 256), (3, 8), (0, 1)])
def test_wilson_interval_matches_scipy_and_covers(count, total):
    from scipy.stats import binomtest

    from diffgen.measures.metrics import wilson_interval

    ours = wilson_interval(count, total)
    ref = binomtest(count, total).proportion_ci(confidence_level=0.95, method="wilson")
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert ours.low <= ours.value <= ours.high and ours.high - ours.low > 0
    if count == 0:
        assert ours.low == 0 and ours.high > 0.01  # 0/256 is not [0, 0]


def test_wilson_interval_coverage_is_near_nominal():
    from diffgen.measures.metrics import wilson_interval

    rng = np.random.default_rng(0)
    p, n = 0.05, 200
    covered = np.mean([(lambda e: e.low <= p <= e.high)(wilson_interval(int(k), n)) for k in rng.binomial(n, p, 4000)])
    assert 0.92 <= covered <= 0.98


def test_wilson_interval_rejects_bad_counts():
    from diffgen.measures.metrics import wilson_interval

    for count, total in [(-1, 5), (6, 5), (0, 0), (1.5, 5)]:
        with pytest.raises(ValueError, match="count"):
            wilson_interval(count, total)


def test_copy_rate_curve_monotone_and_brute_force():
    ratio = torch.from_numpy(np.concatenate([np.random.default_rng(3).beta(0.5, 0.8, size=500), [0.25, 0.5, 0.5]]))
    th = np.sort(np.concatenate([np.linspace(0.01, 1.0, 57), [0.25, 0.5, 1 / 3]]))  # ties: strict "<", as copy_rate
    curve = copy_rate_curve(ratio, th)
    assert curve.shape == (60,)
    assert np.all(np.diff(curve) >= 0)
    brute = np.array([sum(1 for r in ratio.tolist() if r < x) / len(ratio) for x in th])
    np.testing.assert_allclose(curve, brute, rtol=0, atol=1e-15)
    assert copy_rate_curve(ratio, [COPY_THRESHOLD])[0] == pytest.approx(copy_rate(ratio).value)


def test_objective_samples_use_common_random_numbers_and_the_loss_share_is_exact():
    from diffgen.diffusion.objectives import EpsLoss
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.diffusion.schedule import linear_schedule
    from diffgen.measures.metrics import loss_reduction_share, objective_samples

    sched = linear_schedule()
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opt = EmpiricalOptimum(x0, sched, dtype=torch.float64)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    half = lambda x, t: 0.5 * opt(x, t)  # noqa: E731
    loss = EpsLoss(sched)
    a, b = objective_samples(loss, opt, x0, seed=3), objective_samples(loss, opt, x0, seed=3)
    assert a.shape == (8 * 64,) and np.array_equal(a, b)  # same seed, same draws
    cols = np.stack([objective_samples(loss, d, x0, seed=3) for d in (half, opt, zero)], axis=1)
    assert (cols[:, 1].mean() < cols[:, 0].mean() < cols[:, 2].mean())  # the optimum minimises the objective
    assert loss_reduction_share(np.stack([cols[:, 1], cols[:, 1], cols[:, 2]], 1)) == 1.0
    assert loss_reduction_share(np.stack([cols[:, 2], cols[:, 1], cols[:, 2]], 1)) == 0.0
    share = loss_reduction_share(cols)
    assert 0 < share < 1


def test_relative_gap_profiles_match_a_direct_computation():
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.diffusion.samplers import Trajectory, sample_ddim
    from diffgen.diffusion.schedule import add_noise, linear_schedule
    from diffgen.measures.metrics import gap_along_path, gap_on_forward_samples, relative_gap

    sched = linear_schedule()
    x0 = torch.randn(32, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    opt = EmpiricalOptimum(x0, sched, dtype=torch.float64)
    scaled = lambda x, t: 0.9 * opt(x, t)  # noqa: E731  relative gap exactly 0.01 everywhere
    gaps = gap_on_forward_samples(scaled, opt, x0, sched, [1, 50, 500], torch.Generator().manual_seed(2))
    assert np.allclose(gaps, 0.01)
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    shifted = lambda x, t: opt(x, t) + 0.1  # noqa: E731
    xt = add_noise(sched, x0, 50, eps)
    expected = float((0.1**2 * xt.numel()) / opt(xt, 50).pow(2).sum())
    assert relative_gap(shifted, opt, xt, 50) == pytest.approx(expected)
    rec = Trajectory()
    sample_ddim(opt, torch.randn(8, 4, dtype=torch.float64), sched, 5, callback=rec)
    t, xs, _ = rec.stacked()
    along = gap_along_path(scaled, opt, t, xs)
    assert len(along) == 5 and np.allclose(along, 0.01)  # the end point t = 0 is skipped


# ---------------------------------------------------------------- summaries used by the chapters
def test_copy_summaries_against_brute_force():
    from diffgen.measures.metrics import copy_summaries

    g = torch.Generator().manual_seed(0)
    train = torch.randn(20, 3, generator=g, dtype=torch.float64)
    copies = torch.cat([train[:5], train[5:10] + 1e-6])
    fresh = torch.randn(7, 3, generator=g, dtype=torch.float64) * 3
    out = copy_summaries({"copies": copies, "fresh": fresh}, train)
    assert out["copies"].rate.count == 10 and out["copies"].rate.total == 10
    d = torch.cdist(fresh, train).sort(1).values
    assert out["fresh"].rate.count == int((d[:, 0] / d[:, 1] < 1 / 3).sum())
    torch.testing.assert_close(out["fresh"].d1, d[:, 0] / math.sqrt(3))
    assert out["fresh"].median_d1 == pytest.approx(float((d[:, 0] / math.sqrt(3)).median()))


def test_weight_collapse_on_paths_that_sit_on_training_points(sched):
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.measures.metrics import weight_collapse

    train = torch.tensor([[0.0, 0.0], [5.0, 5.0]], dtype=torch.float64)
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64)
    t = torch.tensor([1000, 100, 10, 1, 0])
    a = sched.abar[t].sqrt()[:, None, None]
    xt = a * train[[0, 1, 1]][None].expand(5, 3, 2)  # each path sits exactly on its (scaled) point
    collapse = weight_collapse(opt, t, xt, torch.tensor([0, 1, 1]))
    assert torch.equal(collapse.t, t[:-1]) and collapse.entropy.shape == (4, 3)
    assert collapse.decided[-1] == 1.0 and collapse.collapse_t >= 10 and collapse.decided_t >= 10
    assert float(collapse.entropy[0].median()) > float(collapse.entropy[-1].median())


def test_weight_recorder_during_sampling_equals_weight_collapse_of_the_recorded_paths(sched):
    """The recorder keeps [S, B] numbers while the sampler runs; weight_collapse gets the same from the full paths."""
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.diffusion.samplers import Trajectory, sample_ddim
    from diffgen.measures.metrics import WeightRecorder, weight_collapse

    g = torch.Generator().manual_seed(0)
    train = torch.randn(12, 3, generator=g, dtype=torch.float64)
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64)
    x_T = torch.randn(9, 3, generator=g, dtype=torch.float64)
    paths, record = Trajectory(), WeightRecorder(opt)
    z = sample_ddim(opt, x_T, sched, 20, callback=lambda *a: (paths(*a), record(*a)))
    final = nearest_neighbors(z, train).index[:, 0]
    t, xt, _ = paths.stacked()
    expected, got = weight_collapse(opt, t, xt, final), record.collapse(final)
    assert torch.equal(got.t, expected.t) and torch.equal(got.t, t[:-1]) and len(record.entropy) == 20
    torch.testing.assert_close(got.entropy, expected.entropy, rtol=0, atol=0)
    assert torch.equal(got.decided, expected.decided) and got.decided[-1] == 1.0
    assert (got.collapse_t, got.decided_t) == (expected.collapse_t, expected.decided_t) and got.decided_t > 0


def test_hierarchical_bootstrap_spans_the_seeds_and_the_samples():
    from diffgen.measures.metrics import hierarchical_bootstrap

    rng = np.random.default_rng(0)
    groups = [rng.normal(mu, 1.0, 200) for mu in (0.0, 1.0, 2.0)]  # three seeds with different means
    est = hierarchical_bootstrap([200] * 3, lambda g, rows: float(groups[g][rows].mean()), n_boot=2000)
    assert est.value == pytest.approx(np.mean([g.mean() for g in groups]))
    # a resample of three seeds can be the lowest (or highest) seed three times (1/27 each): the interval reaches
    # about the extreme seeds, which a bootstrap over the pooled samples alone would not
    assert est.low < groups[0].mean() + 0.5 and est.high > groups[2].mean() - 0.5
    pooled = bootstrap_ci(np.concatenate(groups))
    assert est.high - est.low > 3 * (pooled.high - pooled.low)
    vector = hierarchical_bootstrap([200] * 3, lambda g, rows: np.array([groups[g][rows].mean(), 1.0]), n_boot=200)
    assert len(vector) == 2 and vector[1].value == vector[1].low == vector[1].high == 1.0
    with pytest.raises(ValueError, match="sizes must be a non-empty list"):
        hierarchical_bootstrap([], lambda g, rows: 0.0)


def test_across_seeds_in_log_space_is_the_geometric_mean():
    from diffgen.measures.metrics import across_seeds

    est = across_seeds([1.0, 4.0], log=True)
    assert est.value == pytest.approx(2.0) and est.low * est.high == pytest.approx(4.0)  # symmetric in log
    with pytest.raises(ValueError, match="positive"):
        across_seeds([1.0, -1.0], log=True)


def test_across_seeds_interval_stays_within_the_range_of_the_statistic():
    from diffgen.measures.metrics import across_seeds

    free = across_seeds([-1.0, -0.98, -1.0])  # a correlation near -1: the t interval alone leaves [-1, 1]
    cut = across_seeds([-1.0, -0.98, -1.0], bounds=(-1.0, 1.0))
    assert free.low < -1.0 and cut.low == -1.0 and cut.high == free.high and cut.value == free.value


def test_distinct_rows_exact():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    x[[7, 21, 33]] = x[2].clone()  # a triplicate of row 2
    x[30] = x[11].clone()
    x[12] = x[11] + 1e-15  # nearly equal: distinct
    keep = distinct_rows(x)
    expected = [i for i in range(40) if i not in (7, 21, 33, 30)]
    assert keep.tolist() == expected
    assert distinct_rows(torch.randn(5, 3, generator=g)).tolist() == [0, 1, 2, 3, 4]
    for tile in (1, 3, 7):  # rows reach the host a tile at a time; duplicates across tiles are still found
        assert distinct_rows(x, tile=tile).tolist() == expected


def test_distinct_rows_confirms_every_hash_match(monkeypatch):
    """Rows are compared, not only hashed: with every row hashing alike the answer is the same."""
    from diffgen.measures import metrics

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0], [3.0, 4.0]])
    monkeypatch.setattr(metrics, "hash", lambda raw: 0, raising=False)
    assert distinct_rows(x, tile=2).tolist() == [0, 1, 3]


def test_copy_of_a_duplicated_training_point_is_a_copy(cloud):
    """An exact copy of an image that S holds twice: d1 = d2 = 0 made the ratio 0/0 = NaN, counted as no copy; the
    second neighbour is now the nearest other image."""
    train, _ = cloud
    dup = torch.cat([train, train[4:5], train[9:10]])
    z = dup[[4, 9, 0]].clone()
    nn = nearest_neighbors(z, dup)
    assert not bool(nn.ratio.isnan().any()) and bool((nn.ratio == 0).all())
    assert nn.index[:, 0].tolist() == [4, 9, 0]
    other = nearest_neighbors(z, train)  # the same as against the set without the duplicates
    torch.testing.assert_close(nn.dist, other.dist, rtol=0, atol=0)
    assert copy_rate(nn.ratio).count == 3
    assert bool(nearest_neighbors(z, dup, distinct=False).ratio.isnan().any())  # the old 0/0
    with pytest.raises(ValueError, match="distinct rows"):
        nearest_neighbors(z, torch.cat([train[:1]] * 3), k=2)


@pytest.mark.parametrize("sides", [1, 2])
def test_equivalence_power_matches_a_simulation_and_the_seeds_it_takes(sides):
    """The exact power of the interval-inside-the-margin test against 40 000 simulated studies of k normal seeds,
    and seeds_for_power as the first k that reaches 80% (checked one k below)."""
    from scipy.stats import t as student

    from diffgen.measures.metrics import equivalence_power, seeds_for_power

    rng = np.random.default_rng(0)
    for k, margin, sd in [(5, 0.2, 0.1), (8, 0.1, 0.1), (3, 0.5, 0.1)]:
        x = rng.normal(0.0, sd, (40_000, k))
        half = student.ppf(0.975, k - 1) * x.std(1, ddof=1) / np.sqrt(k)
        inside = (x.mean(1) + half <= margin) & ((x.mean(1) - half >= -margin) if sides == 2 else True)
        assert equivalence_power(margin, sd, k, sides=sides) == pytest.approx(inside.mean(), abs=0.01)
    need = seeds_for_power(0.1, 0.1, sides=sides)
    assert equivalence_power(0.1, 0.1, need, sides=sides) >= 0.8 > equivalence_power(0.1, 0.1, need - 1, sides=sides)
    assert seeds_for_power(0.001, 1.0, most=50) == 50 and equivalence_power(0.1, 0.0, 2) == 1.0
    with pytest.raises(ValueError, match="sides 1 or 2"):
        equivalence_power(0.1, 0.1, 1)
