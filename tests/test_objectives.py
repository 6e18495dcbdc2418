"""The forward-time objective: its closed-form optimum is eps* (brute force), Tweedie's identity (exact and Monte
Carlo), the finite-intermediate-set optimum (brute force; it returns noisy points), and training reduces the loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.base.cache import config_key
from diffgen.data.datasets import load_dataset
from diffgen.diffusion.denoisers import NoisyPointOptimum, forward_time_minimiser
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig
from diffgen.diffusion.objectives import EpsLoss, ForwardTimeLoss, WeightedEpsLoss, forward_draw, forward_time_coef
from diffgen.diffusion.optimum import EmpiricalOptimum
from diffgen.diffusion.samplers import sample_ddim
from diffgen.diffusion.schedule import add_noise, linear_schedule
from diffgen.diffusion.train import train
from diffgen.measures.metrics import nearest_neighbors, objective_samples, regression_slope
from diffgen.measures.mi import gaussian_channel_mi, mi_mean_generator

GAP_CONFIGS = [("uniform", None), ("uniform", 3), ("one", None), ("full", None)]


@pytest.fixture(scope="module")
def points():
    return torch.randn(9, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _queries(train, sched, t, n=12, seed=1):
    g = torch.Generator().manual_seed(seed + t)
    x0 = train[torch.randint(len(train), (n,), generator=g)]
    return add_noise(sched, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))


def _posterior_xi(train, sched, x, t, s):
    """Reference E[xi_{t,s} | x_t = x], data uniform on train: the joint Gaussian (xi, x_t) given x0 = x_i written
    out as a 2-block covariance and conditioned with a linear solve, then averaged over the posterior of x_i."""
    abar_t, abar_s = float(sched.abar[t]), float(sched.abar[s])
    r = abar_t / abar_s
    # x_t = sqrt(abar_t) x0 + sqrt(r (1 - abar_s)) eps_s + sqrt(1 - r) xi  (per coordinate)
    cov = torch.tensor([[1.0, (1 - r) ** 0.5], [(1 - r) ** 0.5, r * (1 - abar_s) + (1 - r)]], dtype=torch.float64)
    gain = cov[0, 1] / cov[1, 1]
    diff = x[:, None, :] - abar_t**0.5 * train[None]  # [B, N, D]
    w = torch.softmax(-diff.pow(2).sum(-1) / (2 * cov[1, 1]), 1)
    return gain * torch.einsum("bn,bnd->bd", w, diff)


# ------------------------------------------------------------------------------- the closed-form optimum
@pytest.mark.parametrize("gap,max_gap", GAP_CONFIGS)
@pytest.mark.parametrize("t", [1, 2, 7, 60, 400, 1000])
def test_forward_time_optimum_is_eps_star(points, sched, gap, max_gap, t):
    obj = ForwardTimeLoss(sched, gap, max_gap)
    x = _queries(points, sched, t)
    eps_star = EmpiricalOptimum(points, sched, dtype=torch.float64, fused=False)(x, t)
    minimiser = forward_time_minimiser(points, sched, x, t, obj.gap_probs(t))
    torch.testing.assert_close(minimiser, eps_star, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t,s", [(1, 0), (10, 9), (100, 50), (500, 1), (1000, 999), (1000, 0)])
def test_tweedie_identity_exact(points, sched, t, s):
    """E[xi_{t,s} | x_t] = c_{t,s} E[eps | x_t] with E[xi | x_t] from the explicit joint Gaussian."""
    x = _queries(points, sched, t)
    eps_star = EmpiricalOptimum(points, sched, dtype=torch.float64, fused=False)(x, t)
    c = float(forward_time_coef(sched, t, s))
    torch.testing.assert_close(_posterior_xi(points, sched, x, t, s), c * eps_star, rtol=1e-9, atol=1e-10)
    assert c == pytest.approx(1.0) if s == 0 else c < 1


@pytest.mark.parametrize("t,s", [(100, 50), (300, 299), (800, 100), (30, 3)])
def test_tweedie_regression_slope_monte_carlo(points, sched, t, s):
    """The least-squares slope of xi_{t,s} on eps*(x_t, t) over forward draws is c_{t,s}; that of eps is 1."""
    g = torch.Generator().manual_seed(t + s)
    n = 20000
    x0 = points[torch.randint(len(points), (n,), generator=g)]
    d = forward_draw(sched, x0, torch.full((n,), t), torch.full((n,), s), g)
    eps_star = EmpiricalOptimum(points, sched, dtype=torch.float64, fused=False)(d.xt, t)
    c = float(forward_time_coef(sched, t, s))
    for target, expected in ((d.xi, c), (d.eps, 1.0)):
        est = regression_slope(target, eps_star, n_boot=300)
        half = (est.high - est.low) / 2
        assert abs(est.value - expected) < 2.5 * half + 1e-12, (est, expected)
        assert half < 0.02 * expected + 0.01  # the check has power: a wrong c (e.g. sqrt(1 - r)) is far outside


def test_forward_draw_is_the_forward_process(points, sched):
    g = torch.Generator().manual_seed(3)
    x0 = points[torch.randint(len(points), (64,), generator=g)]
    t = torch.randint(2, 1001, (64,), generator=g)
    s = (torch.rand(64, generator=g) * t).long().clamp(max=t - 1)
    d = forward_draw(sched, x0, t, s, g)
    torch.testing.assert_close(d.xt, add_noise(sched, x0, t, d.eps), rtol=0, atol=1e-12)
    a_s = sched.abar[s][:, None]
    eps_s = (d.xs - a_s.sqrt() * x0) / (1 - a_s).sqrt().clamp(min=1e-300)
    assert bool((eps_s[s > 0].abs() < 10).all())
    torch.testing.assert_close(d.c[:, 0], forward_time_coef(sched, t, s), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="0 <= s < t"):
        forward_draw(sched, x0, t, t, g)


def test_full_gap_is_the_standard_objective(points, sched):
    net = lambda x, t: 0.3 * x + 1e-3 * t[:, None].double()  # noqa: E731
    a = EpsLoss(sched).loss(net, points, torch.Generator().manual_seed(5))
    b = ForwardTimeLoss(sched, "full").loss(net, points, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = ForwardTimeLoss(sched, "one").loss(net, points, torch.Generator().manual_seed(5))
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("gap,max_gap", GAP_CONFIGS)
def test_draw_times_follow_gap_probs(gap, max_gap):
    small = linear_schedule(T=6)
    obj = ForwardTimeLoss(small, gap, max_gap)
    t, s = obj.draw_times(120000, torch.Generator().manual_seed(0))
    assert bool(((s >= 0) & (s < t)).all())
    for tt in range(1, 7):
        p = obj.gap_probs(tt)
        assert p.sum().item() == pytest.approx(1.0)
        counts = torch.bincount(s[t == tt], minlength=tt).double()
        freq = counts / counts.sum()
        sd = (p * (1 - p) / counts.sum()).sqrt()
        assert bool(((freq - p).abs() <= 5 * sd + 1e-12).all()), (tt, freq, p)


def test_forward_time_config_is_hashable_printable_and_validated(sched):
    a, b = ForwardTimeLoss(sched), ForwardTimeLoss(sched, "uniform")
    assert config_key(a) == config_key(b) != config_key(ForwardTimeLoss(sched, "one"))
    assert config_key(ForwardTimeLoss(sched, max_gap=10)) != config_key(a) != config_key(EpsLoss(sched))
    assert "gap='uniform'" in repr(a)
    with pytest.raises(ValueError, match="gap must be one of uniform, one, full"):
        ForwardTimeLoss(sched, "log")
    with pytest.raises(ValueError, match="max_gap"):
        ForwardTimeLoss(sched, "uniform", 0)
    with pytest.raises(ValueError, match="max_gap applies"):
        ForwardTimeLoss(sched, "one", 5)
    with pytest.raises(ValueError, match="x0 must have shape"):
        a.loss(lambda x, t: x, torch.zeros(3), torch.Generator())
    with pytest.raises(ValueError, match="t must be an integer"):
        a.gap_probs(0)


# ------------------------------------------------------------------ the finite intermediate set (noisy points)
def _noisy_reference(noisy, sched, x, t, s):
    """E_Y[xi_{t,s} | x_t = x] / c_{t,s} by brute force over y_j = sqrt(abar_s) u_j: x_t ~ N(sqrt(r) y_j, (1 - r) I)."""
    abar_t, abar_s = float(sched.abar[t]), float(sched.abar[s])
    r = abar_t / abar_s
    ys = abar_s**0.5 * noisy
    diff = x[:, None, :] - r**0.5 * ys[None]
    w = torch.softmax(-diff.pow(2).sum(-1) / (2 * (1 - r)), 1)
    post_xi = torch.einsum("bn,bnd->bd", w, diff) / (1 - r) ** 0.5
    return post_xi / ((1 - r) / (1 - abar_t)) ** 0.5


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("t", [21, 40, 200, 1000])
def test_noisy_point_optimum_matches_brute_force(points, sched, t, fused):
    s = 20
    opt = NoisyPointOptimum.draw(points, sched, s, torch.Generator().manual_seed(2), dtype=torch.float64, fused=fused)
    torch.testing.assert_close(opt.noise_var, (1 - float(sched.abar[s])) / float(sched.abar[s]))
    x = _queries(opt.train, sched, t)
    torch.testing.assert_close(opt(x, t), _noisy_reference(opt.train, sched, x, t, s), rtol=1e-8, atol=1e-8)


def test_noisy_point_optimum_below_s_is_the_optimum_of_the_noisy_points(points, sched):
    opt = NoisyPointOptimum.draw(points, sched, 50, torch.Generator().manual_seed(2), dtype=torch.float64, fused=False)
    plain = EmpiricalOptimum(opt.train, sched, dtype=torch.float64, fused=False)
    for t in (1, 25, 50):
        x = _queries(opt.train, sched, t)
        torch.testing.assert_close(opt(x, t), plain(x, t), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="s must be an integer"):
        NoisyPointOptimum(points, sched, 0)
    with pytest.raises(ValueError, match="s must be an integer"):
        NoisyPointOptimum.draw(points, sched, 1000, torch.Generator())


def test_noisy_point_optimum_returns_noisy_points_not_training_points(sched):
    """DDIM under the finite-intermediate-set optimum lands on the noisy points u_j; their distance to S is
    concentrated at the noise scale h_s sqrt(D) (the clean optimum lands on S itself)."""
    d, n, s = 32, 40, 60
    g = torch.Generator().manual_seed(0)
    train = torch.randn(n, d, generator=g, dtype=torch.float64)
    opt = NoisyPointOptimum.draw(train, sched, s, g, dtype=torch.float64, fused=False)
    x_T = torch.randn(300, d, generator=g, dtype=torch.float64)
    z = sample_ddim(opt, x_T, sched, 50)
    assert float(nearest_neighbors(z, opt.train, 1).d1.max()) < 1e-6  # copies of noisy points
    to_s = nearest_neighbors(z, train, 1).d1 / math.sqrt(opt.noise_var * d)
    assert 0.95 < float(to_s.median()) < 1.05 and float(to_s.min()) > 0.6 and float(to_s.max()) < 1.4
    clean = sample_ddim(EmpiricalOptimum(train, sched, dtype=torch.float64), x_T, sched, 50)
    assert float(nearest_neighbors(clean, train, 1).d1.max()) < 1e-3


def test_gaussian_channel_bound_closed_forms():
    # z = mean(S) + tau xi, S ~ N(0, 1)^n: a Gaussian channel with input variance 1/n (mi.mi_mean_generator)
    for n, tau in ((1, 1.0), (8, 0.5), (100, 2.0)):
        assert gaussian_channel_mi(torch.eye(3) / n, tau**2) == pytest.approx(mi_mean_generator(n, noise_std=tau,
                                                                                                  dim=3))
    rot = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    diag = torch.diag(torch.tensor([0.1, 1.0, 2.0, 5.0], dtype=torch.float64))
    assert gaussian_channel_mi(rot @ diag @ rot.T, 0.3) == pytest.approx(
        0.5 * sum(math.log1p(v / 0.3) for v in (0.1, 1.0, 2.0, 5.0)))
    with pytest.raises(ValueError, match="noise_var"):
        gaussian_channel_mi(diag, 0.0)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("gap", ["uniform", "one"])
def test_training_with_the_forward_time_objective_reduces_its_loss(tmp_path, gap):
    sched = linear_schedule()
    ds = load_dataset("digits", 64)
    obj = ForwardTimeLoss(sched, gap)
    cfg = TrainConfig(train_steps=300, batch_size=64, warmup=20)
    run = train(MLPConfig(hidden=64, depth=2), obj, ds.train, ds.shape, cfg, device="cpu", cache_dir=tmp_path,
                progress=False)
    assert np.isfinite(run.losses).all() and abs(run.losses[:3].mean() - 1.0) < 0.1  # eps_hat = 0: E|xi|^2 / D = 1
    untrained = objective_samples(obj, lambda x, t: torch.zeros_like(x), ds.train, repeats=16).mean()
    trained = objective_samples(obj, run.model, ds.train.float(), repeats=16).mean()
    # the floor is 1 - E c^2 |eps*|^2 / D: far below 1 for uniform gaps, only slightly below for gap 1 (c small)
    assert trained < untrained - (0.1 if gap == "uniform" else 0.002), (trained, untrained)
    again = train(MLPConfig(hidden=64, depth=2), obj, ds.train, ds.shape, cfg, device="cpu", cache_dir=tmp_path,
                  progress=False)
    assert again.from_cache and np.array_equal(again.losses, run.losses)


def test_signal_share_is_the_mean_squared_coefficient(sched):
    assert EpsLoss(sched) is not None and ForwardTimeLoss(sched, "full").signal_share(500) == pytest.approx(1.0)
    t = 40
    c2 = forward_time_coef(sched, t, torch.arange(t)) ** 2
    assert ForwardTimeLoss(sched, "uniform").signal_share(t) == pytest.approx(float(c2.mean()))
    assert ForwardTimeLoss(sched, "one").signal_share(t) == pytest.approx(float(c2[-1]))
    assert ForwardTimeLoss(sched, "one").signal_share(sched.T) < 0.05  # gap 1 at t = T: almost all noise


def test_weighted_control_is_the_standard_loss_at_lambda_one_and_weights_by_the_signal_share(sched):
    x0 = torch.randn(32, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = lambda x, t: 0.3 * x + 1e-3 * t[:, None]  # noqa: E731
    loss = lambda objective: objective.loss(model, x0, torch.Generator().manual_seed(5))  # noqa: E731
    full = WeightedEpsLoss(ForwardTimeLoss(sched, "full"))
    assert torch.equal(full.weights, torch.ones(sched.T, dtype=torch.float64))
    torch.testing.assert_close(loss(full), loss(EpsLoss(sched)), rtol=0, atol=0)
    one = WeightedEpsLoss(ForwardTimeLoss(sched, "one"))
    assert one.weights[9] == pytest.approx(ForwardTimeLoss(sched, "one").signal_share(10))
    assert one.weights[0] == pytest.approx(1.0) and one.weights.mean() == pytest.approx(0.0196, abs=1e-3)
    t = one.draw(x0, torch.Generator().manual_seed(5))["t"]  # the same draws as EpsLoss
    torch.testing.assert_close(loss(one), one.weights[t - 1] * loss(EpsLoss(sched)))
    uniform = WeightedEpsLoss(ForwardTimeLoss(sched, "uniform"))
    assert uniform.weights[9] == pytest.approx(0.637, abs=1e-3)  # E_{s|t=10} c^2 for s uniform below t
    assert config_key(one) != config_key(uniform)
