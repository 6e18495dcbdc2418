"""Schedule: abar against independent recomputations, the x_t / x0 / eps conversions, the sampler grid, input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.diffusion.schedule import (
    Schedule,
    add_noise,
    cosine_schedule,
    eps_from_x0,
    linear_schedule,
    timesteps,
    x0_from_eps,
)


# ---------------------------------------------------------------- linear schedule
def test_linear_abar_matches_independent_cumprod():
    s = linear_schedule()
    betas = np.linspace(1e-4, 0.02, 1000)  # numpy, float64
    ref = np.concatenate([[1.0], np.cumprod(1.0 - betas)])
    assert s.T == 1000
    assert s.betas.dtype == torch.float64 and s.abar.dtype == torch.float64
    assert s.abar.shape == (1001,)
    assert s.abar[0].item() == 1.0
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-14, atol=0)
    np.testing.assert_allclose(s.abar.numpy(), ref, rtol=1e-12, atol=0)


def test_linear_abar_matches_python_loop_small_T():
    s = linear_schedule(T=7, beta_start=0.01, beta_end=0.3)
    abar, ref = 1.0, [1.0]
    for k in range(7):
        abar *= 1 - (0.01 + k * (0.3 - 0.01) / 6)
        ref.append(abar)
    np.testing.assert_allclose(s.abar.numpy(), ref, rtol=1e-13)
    # beta_t sits at betas[t - 1]: abar_t / abar_{t-1} = 1 - beta_t
    np.testing.assert_allclose((s.abar[1:] / s.abar[:-1]).numpy(), (1 - s.betas).numpy(), rtol=1e-13)


def test_alpha_bar_and_sigma_index_abar(sched):
    t = torch.tensor([[0, 1], [500, 1000]])
    ab = sched.alpha_bar(t)
    assert ab.shape == (2, 2) and ab.dtype == torch.float64
    assert ab[0, 0].item() == 1.0
    assert ab[0, 1].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    assert ab[1, 1].item() == sched.abar[1000].item()
    np.testing.assert_allclose(sched.sigma(t).numpy(), np.sqrt(1 - ab.numpy()), rtol=1e-15)
    assert sched.alpha_bar(7).ndim == 0  # python int -> 0-d tensor


# ---------------------------------------------------------------- cosine schedule
def test_cosine_abar_near_cos2_formula_and_monotone():
    T, s = 1000, 0.008
    sch = cosine_schedule(T)
    t = np.arange(T + 1)
    f = np.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ref = f / f[0]
    ab = sch.abar.numpy()
    assert ab[0] == 1.0
    # clipping at max_beta only touches the very end (where abar is already ~0)
    np.testing.assert_allclose(ab[:-1], ref[:-1], rtol=1e-9, atol=1e-12)
    assert abs(ab[-1] - ref[-1]) < 1e-6
    assert np.all(np.diff(ab) < 0), "abar must be strictly decreasing"
    assert np.all(ab > 0) and ab[-1] < 1e-3
    assert float(sch.betas.max()) <= 0.999 + 1e-15


def test_cosine_max_beta_clip():
    sch = cosine_schedule(10, max_beta=0.5)
    assert float(sch.betas.max()) == pytest.approx(0.5)
    assert bool((sch.betas > 0).all())


# ---------------------------------------------------------------- conversions
def _ref_add_noise(x0, abar, eps):  # numpy float64, abar broadcast by hand
    return np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule])
@pytest.mark.parametrize("t", [0, 1, 37, 999, 1000])
def test_conversions_scalar_t_are_mutual_inverses(make, t, gen):
    sch = make()
    x0 = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    for tt in (t, torch.tensor(t)):
        xt = add_noise(sch, x0, tt, eps)
        ab = float(sch.abar[t])
        np.testing.assert_allclose(xt.numpy(), _ref_add_noise(x0.numpy(), ab, eps.numpy()), rtol=1e-14, atol=1e-14)
        if t > 0:  # eps_from_x0 is undefined at t = 0
            torch.testing.assert_close(eps_from_x0(sch, xt, tt, x0), eps, rtol=0, atol=1e-9)
        if t < sch.T or make is linear_schedule:  # cosine abar_T ~ 0: x0 is not recoverable there
            torch.testing.assert_close(x0_from_eps(sch, xt, tt, eps), x0, rtol=0, atol=1e-9)
    if t == 0:
        torch.testing.assert_close(add_noise(sch, x0, 0, eps), x0, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(6, 3), (6, 1, 4, 4)])
def test_conversions_per_sample_t_match_rowwise_scalar_t(sched, shape, gen):
    t = torch.tensor([1, 2, 50, 500, 999, 1000])
    x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    xt = add_noise(sched, x0, t, eps)
    assert xt.shape == shape
    for b in range(len(t)):
        ab = float(sched.abar[int(t[b])])
        np.testing.assert_allclose(xt[b].numpy(), _ref_add_noise(x0[b].numpy(), ab, eps[b].numpy()), rtol=1e-14,
                                   atol=1e-14)
        torch.testing.assert_close(xt[b:b + 1], add_noise(sched, x0[b:b + 1], int(t[b]), eps[b:b + 1]), rtol=0,
                                   atol=0)
    torch.testing.assert_close(eps_from_x0(sched, xt, t, x0), eps, rtol=0, atol=1e-9)
    torch.testing.assert_close(x0_from_eps(sched, xt, t, eps), x0, rtol=0, atol=1e-9)
    # the three are consistent: x0_from_eps(eps_from_x0(x0)) = x0 and vice versa for arbitrary (x_t, x0) pairs
    other = torch.randn(shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(x0_from_eps(sched, xt, t, eps_from_x0(sched, xt, t, other)), other, rtol=0, atol=1e-9)


def test_conversions_keep_dtype(sched, gen):
    x0 = torch.randn(3, 2, generator=gen)
    eps = torch.randn(3, 2, generator=gen)
    assert add_noise(sched, x0, torch.tensor([1, 2, 3]), eps).dtype == torch.float32


def test_float32_coefficients_keep_float32_precision_at_t1(sched):
    """sqrt(1 - abar_t) for a float32 x must be the float64 value rounded once (relative error ~1e-7).

    1 - abar_1 = 1e-4: rounding abar_1 to float32 *before* subtracting leaves 1.0000166e-4, so the noise scale is
    off by 8e-5 relative (1000x float32 resolution)."""
    x0 = torch.zeros(1, 1, dtype=torch.float32)
    eps = torch.ones(1, 1, dtype=torch.float32)
    xt = add_noise(sched, x0, 1, eps)
    exact = math.sqrt(1e-4)
    assert abs(xt.item() - exact) / exact < 1e-6
    # and the inverse: eps = (x_t - a x0) / s
    got = eps_from_x0(sched, torch.full((1, 1), 0.01, dtype=torch.float32), 1, x0).item()
    assert abs(got - 1.0) < 1e-6


# ---------------------------------------------------------------- sampler grid
@pytest.mark.parametrize("make,T", [(linear_schedule, 1000), (cosine_schedule, 50), (linear_schedule, 1)])
def test_timesteps_strictly_decreasing_T_to_1_then_0(make, T):
    sch = make(T)
    for steps in range(1, T + 1):
        g = timesteps(sch, steps)
        assert g.dtype == torch.long
        assert g.shape == (steps + 1,)
        assert int(g[0]) == T and int(g[-1]) == 0
        assert bool((g[1:] < g[:-1]).all()), f"steps={steps}: {g}"
        if steps >= 2:
            assert int(g[-2]) == 1
        assert int(g.min()) >= 0 and int(g.max()) <= T
    assert timesteps(sch, T).tolist() == list(range(T, -1, -1))
    assert timesteps(sch, 1).tolist() == [T, 0]


def test_timesteps_uniform_spacing_up_to_rounding(sched):
    for steps in (2, 3, 11, 50, 333, 999):
        gaps = -torch.diff(timesteps(sched, steps)[:-1])  # the last gap (1 -> 0) is the extra final step
        assert int(gaps.max()) - int(gaps.min()) <= 1, (steps, gaps.unique())
        assert abs(float(gaps.double().mean()) - 999 / (steps - 1)) < 1e-9


# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_timesteps_bad_steps(sched, steps):
    with pytest.raises(ValueError, match="steps"):
        timesteps(sched, steps)


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule])
def test_bad_T(make):
    with pytest.raises(ValueError, match="T must"):
        make(0)


@pytest.mark.parametrize("kwargs", [dict(beta_start=0.0), dict(beta_end=1.0), dict(beta_start=-0.1)])
def test_bad_betas(kwargs):
    with pytest.raises(ValueError, match="beta"):
        linear_schedule(**kwargs)


@pytest.mark.parametrize("betas", [torch.full((2, 3), 0.1), torch.tensor([0.1, float("nan")]), torch.tensor([0.1, 1.0])])
def test_schedule_rejects_bad_betas(betas):
    with pytest.raises(ValueError, match="betas"):
        Schedule("x", betas)


def test_alpha_bar_rejects_bad_t(sched):
    with pytest.raises(TypeError, match="t must"):
        sched.alpha_bar(1.5)
    with pytest.raises(TypeError, match="t must"):
        sched.alpha_bar(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="t must"):
        sched.alpha_bar(-1)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1000\]"):
        sched.alpha_bar(torch.tensor([3, 1001]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1000\]"):  # not a silent abar[-1]
        add_noise(sched, torch.zeros(2, 2), torch.tensor([-1, 5]), torch.zeros(2, 2))
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="t must"):
        add_noise(sched, x, 0.5, x)
    with pytest.raises(ValueError, match="t must"):
        x0_from_eps(sched, x, 2000, x)
