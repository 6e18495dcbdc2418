"""Samplers: exactness on a single training point, convergence to the exact Gaussian flow map, DDPM = DDIM(eta=1),
the output distribution of stochastic samplers, per-sample seeding, callbacks and input checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffgen.base.util import randn, sample_generators, sample_normal, sample_seeds
from diffgen.diffusion.denoisers import GaussianDenoiser
from diffgen.diffusion.optimum import EmpiricalOptimum
from diffgen.diffusion.samplers import Trajectory, sample_ddim, sample_ddpm, sample_ode
from diffgen.diffusion.schedule import timesteps

MEAN = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
_A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.15]], dtype=torch.float64)
COV = _A @ _A.T  # non-isotropic, not axis-aligned
EYE = torch.eye(3, dtype=torch.float64)


@pytest.fixture(scope="module")
def gauss(sched):
    return GaussianDenoiser(MEAN, COV, sched)


def _run(kind, den, x_T, sched, steps, gens=None, callback=None):
    if kind == "ddim0":
        return sample_ddim(den, x_T, sched, steps, callback=callback)
    if kind == "ddim.5":
        return sample_ddim(den, x_T, sched, steps, eta=0.5, generators=gens, callback=callback)
    if kind == "ddim1":
        return sample_ddim(den, x_T, sched, steps, eta=1.0, generators=gens, callback=callback)
    if kind == "ddpm":
        return sample_ddpm(den, x_T, sched, steps, generators=gens, callback=callback)
    if kind == "ddpm-post":
        return sample_ddpm(den, x_T, sched, steps, generators=gens, variance="posterior", callback=callback)
    if kind == "ode":
        return sample_ode(den, x_T, sched, steps, callback=callback)
    raise AssertionError(kind)


KINDS = ["ddim0", "ddim.5", "ddim1", "ddpm", "ddpm-post", "ode"]


# ---------------------------------------------------------------- single training point
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_single_training_point_is_returned(sched, kind, steps):
    x1 = torch.tensor([[0.7, -0.2, 1.3, -2.0]], dtype=torch.float64)
    opt = EmpiricalOptimum(x1, sched, dtype=torch.float64)
    gens = sample_generators(0, 6)
    x_T = 3 * randn(gens, 4)
    z = _run(kind, opt, x_T, sched, steps, gens)
    assert z.shape == (6, 4) and z.dtype == torch.float64
    torch.testing.assert_close(z, x1.expand(6, 4), rtol=0, atol=1e-9)


def test_single_step_ddim_returns_x0_hat(gauss, sched, gen):
    x_T = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(sample_ddim(gauss, x_T, sched, 1), gauss.x0_hat(x_T, sched.T), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- one step by hand


def test_one_step_formulas_by_hand(gauss, sched):
    """The first step T -> t' of each sampler, recomputed from the papers' formulas (DDIM eq. 12, DDPM posterior)."""
    gens = sample_generators(3, 4)
    x_T = randn(gens, 3)
    grid = timesteps(sched, 5)
    T, t1 = int(grid[0]), int(grid[1])
    ab, ab1 = float(sched.abar[T]), float(sched.abar[t1])
    x0 = gauss.x0_hat(x_T, T)
    eps = (x_T - ab**0.5 * x0) / (1 - ab) ** 0.5
    z = sample_normal(sample_seeds(gens), 0, 3)  # the noise of step 0: a function of each sample's seed
    for kind in ("ddim0", "ddim.5", "ddpm", "ddpm-post"):
        traj = Trajectory()
        _run(kind, gauss, x_T, sched, 5, gens, traj)
        got = traj.xt[1]
        if kind.startswith("ddim"):
            eta = 0.0 if kind == "ddim0" else 0.5
            sig = eta * ((1 - ab1) / (1 - ab)) ** 0.5 * (1 - ab / ab1) ** 0.5
            ref = ab1**0.5 * x0 + (1 - ab1 - sig**2) ** 0.5 * eps + sig * z
        else:
            alpha = ab / ab1
            beta = 1 - alpha
            mu = ab1**0.5 * beta / (1 - ab) * x0 + alpha**0.5 * (1 - ab1) / (1 - ab) * x_T
            var = beta if kind == "ddpm" else (1 - ab1) / (1 - ab) * beta
            ref = mu + var**0.5 * z
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10, msg=kind)
    # Heun: one Euler predictor then the trapezoid in y = x / sqrt(abar), sigma = sqrt((1 - abar) / abar)
    traj = Trajectory()
    sample_ode(gauss, x_T, sched, 5, callback=traj)
    s0, s1 = ((1 - ab) / ab) ** 0.5, ((1 - ab1) / ab1) ** 0.5
    y = x_T / ab**0.5
    y_pred = y + (s1 - s0) * eps
    eps1 = gauss(ab1**0.5 * y_pred, t1)
    torch.testing.assert_close(traj.xt[1], ab1**0.5 * (y + (s1 - s0) * 0.5 * (eps + eps1)), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- convergence to the exact flow map
def test_ddim_converges_to_exact_flow_map_and_heun_beats_it(gauss, sched):
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gauss.flow_map(x_T, sched.T, 0)

    def err(z):
        return float((z - exact).norm(dim=1).max())

    ddim = {s: err(sample_ddim(gauss, x_T, sched, s)) for s in (10, 100, 1000)}
    assert ddim[100] < 0.2 * ddim[10] and ddim[1000] < 0.2 * ddim[100], ddim  # first order: ~10x per 10x steps
    assert ddim[1000] < 0.02
    for s in (30, 100):
        heun = err(sample_ode(gauss, x_T, sched, s))
        assert heun < 0.15 * err(sample_ddim(gauss, x_T, sched, s)), (s, heun)
    assert err(sample_ode(gauss, x_T, sched, 100)) < 5e-3


# ---------------------------------------------------------------- DDPM(posterior) = DDIM(eta = 1)
@pytest.mark.parametrize("steps", [1, 3, 20, 100])
def test_ddpm_posterior_equals_ddim_eta1(gauss, sched, steps):
    x_T = randn(sample_generators(9, 8), 3)
    a = sample_ddpm(gauss, x_T, sched, steps, generators=sample_generators(5, 8), variance="posterior")
    b = sample_ddim(gauss, x_T, sched, steps, eta=1.0, generators=sample_generators(5, 8))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # and the DDPM default ("beta" variance) is a different sampler
    c = sample_ddpm(gauss, x_T, sched, steps, generators=sample_generators(5, 8))
    if steps > 1:
        assert float((c - a).abs().max()) > 1e-3


def test_ddpm_default_steps_is_T(sched):
    x1 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    calls = []
    z = sample_ddpm(EmpiricalOptimum(x1, sched, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64), sched,
                    generators=sample_generators(0, 2), callback=lambda i, t, x, x0: calls.append(t))
    assert calls == list(range(sched.T, -1, -1))
    torch.testing.assert_close(z, x1.expand(2, 2), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- output distribution
def _exact_output_moments(kind, sched, steps, m, C):
    """Every sampler is affine-Gaussian for Gaussian data (x0_hat is affine in x_t): x' = P x + q + sigma z.
    Propagate the mean and covariance exactly through the grid, written independently in matrix form."""
    grid = timesteps(sched, steps)
    for i in range(steps):
        t, tn = int(grid[i]), int(grid[i + 1])
        ab, abn = sched.abar[t], sched.abar[tn]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        M = a * COV @ torch.linalg.inv(ab * COV + (1 - ab) * EYE)  # x0_hat = M x + b0
        b0 = MEAN - a * M @ MEAN
        E, e0 = (EYE - a * M) / s, -a * b0 / s  # eps_hat = E x + e0
        if kind.startswith("ddim"):
            eta = {"ddim0": 0.0, "ddim.5": 0.5, "ddim1": 1.0}[kind]
            var = eta**2 * (1 - abn) / (1 - ab) * (1 - ab / abn)
            ce = (1 - abn - var).sqrt()
            P, q = abn.sqrt() * M + ce * E, abn.sqrt() * b0 + ce * e0
        else:
            alpha = ab / abn
            beta = 1 - alpha
            P = (abn.sqrt() * beta * M + alpha.sqrt() * (1 - abn) * EYE) / (1 - ab)
            q = abn.sqrt() * beta * b0 / (1 - ab)
            var = 0.0 if tn == 0 else (beta if kind == "ddpm" else (1 - abn) / (1 - ab) * beta)
        m, C = P @ m + q, P @ C @ P.T + var * EYE
    return m, C


@pytest.mark.parametrize("kind", ["ddpm", "ddpm-post", "ddim.5", "ddim0"])
def test_sample_distribution_matches_gaussian(gauss, sched, kind):
    n, steps = 3000, 100
    gens = sample_generators(2024, n)
    abT = sched.abar[sched.T]
    mT, CT = abT.sqrt() * MEAN, abT * COV + (1 - abT) * EYE  # the exact marginal at T
    x_T = mT + randn(gens, 3) @ torch.linalg.cholesky(CT).T
    z = _run(kind, gauss, x_T, sched, steps, gens)
    m_hat, C_hat = z.mean(0), torch.cov(z.T)
    m_ref, C_ref = _exact_output_moments(kind, sched, steps, mT, CT)
    # (1) the sampler is the discretisation it claims to be: Monte-Carlo moments = exactly propagated moments
    se_m = (C_ref.diagonal() / n).sqrt()
    se_C = ((C_ref.diagonal()[:, None] * C_ref.diagonal()[None] + C_ref**2) / (n - 1)).sqrt()
    assert bool(((m_hat - m_ref).abs() < 5 * se_m).all()), (m_hat, m_ref)
    assert bool(((C_hat - C_ref).abs() < 5 * se_C).all()), (C_hat, C_ref)
    # (2) and that discretisation samples N(mean, cov): exact mean, covariance within a small discretisation bias
    # (100 steps: the posterior-variance samplers under-disperse by up to ~7% of the largest entry; 1000 steps: <1%)
    torch.testing.assert_close(m_ref, MEAN, rtol=0, atol=1e-10)
    bias = 0.1 * float(COV.abs().max())
    assert float((C_ref - COV).abs().max()) < bias
    # (3) directly against the target, allowing sampling error plus that bias
    assert bool(((m_hat - MEAN).abs() < 5 * se_m).all())
    assert bool(((C_hat - COV).abs() < 5 * se_C + bias).all())


# ---------------------------------------------------------------- per-sample seeding
@pytest.mark.parametrize("kind", ["ddpm", "ddim.5", "ddim0", "ode"])
def test_sample_i_independent_of_batch(gauss, sched, kind):
    B, seed = 7, 77
    gens = sample_generators(seed, B)
    batch = _run(kind, gauss, randn(gens, 3), sched, 20, gens)
    for i in (0, 3, 6):
        g1 = sample_generators(seed, 1, offset=i)
        alone = _run(kind, gauss, randn(g1, 3), sched, 20, g1)
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-12, atol=1e-12)
    # different samples really are different, and a different seed gives different samples
    assert float(torch.pdist(batch).min()) > 1e-3
    g2 = sample_generators(seed + 1, B)
    assert float((_run(kind, gauss, randn(g2, 3), sched, 20, g2) - batch).abs().max()) > 1e-3


def test_sample_generators_streams():
    a = randn(sample_generators(5, 4), 6)
    b = randn(sample_generators(5, 2, offset=2), 6)
    torch.testing.assert_close(a[2:], b, rtol=0, atol=0)
    c = randn(sample_generators(6, 4), 6)
    assert not torch.equal(a, c)
    # (seed, i) and (seed + 1, i - 1) must not collide
    assert not torch.equal(randn(sample_generators(5, 1, offset=1), 6), randn(sample_generators(6, 1, offset=0), 6))


# ---------------------------------------------------------------- callbacks
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_callback_and_trajectory(gauss, sched, kind, steps):
    B = 3
    gens = sample_generators(1, B)
    x_T = randn(gens, 3)
    seen = []
    traj = Trajectory()

    def cb(i, t, xt, x0):
        seen.append((i, int(t)))
        traj(i, t, xt, x0)

    z = _run(kind, gauss, x_T, sched, steps, gens, cb)
    assert len(seen) == steps + 1
    assert [i for i, _ in seen] == list(range(steps + 1))
    assert [t for _, t in seen] == timesteps(sched, steps).tolist()
    ts = [t for _, t in seen]
    assert all(a > b for a, b in zip(ts, ts[1:])) and ts[0] == sched.T and ts[-1] == 0
    t, xt, x0 = traj.stacked()
    assert t.shape == (steps + 1,) and xt.shape == (steps + 1, B, 3) and x0.shape == (steps + 1, B, 3)
    torch.testing.assert_close(xt[0], x_T, rtol=0, atol=0)
    torch.testing.assert_close(xt[-1], z, rtol=0, atol=0)
    torch.testing.assert_close(x0[-1], z, rtol=0, atol=0)
    # x0_hat recorded at each grid time is the denoiser's prediction at that state
    for k in range(steps):
        torch.testing.assert_close(x0[k], gauss.x0_hat(xt[k], int(t[k])), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- input checks
def test_bad_inputs(gauss, sched):
    x = torch.zeros(2, 3, dtype=torch.float64)
    gens = sample_generators(0, 2)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta"):
            sample_ddim(gauss, x, sched, 10, eta=eta, generators=gens)
    with pytest.raises(ValueError, match="generators"):
        sample_ddim(gauss, x, sched, 10, eta=0.3)
    with pytest.raises(ValueError, match="x_T"):
        sample_ddim(gauss, torch.zeros(3, dtype=torch.float64), sched, 10)
    with pytest.raises(ValueError, match="x_T"):
        sample_ode(gauss, torch.zeros(1, 2, 3, dtype=torch.float64), sched, 10)
    for steps in (0, sched.T + 1):
        with pytest.raises(ValueError, match="steps"):
            sample_ddim(gauss, x, sched, steps)
        with pytest.raises(ValueError, match="steps"):
            sample_ode(gauss, x, sched, steps)
        with pytest.raises(ValueError, match="steps"):
            sample_ddpm(gauss, x, sched, steps, generators=gens)
    with pytest.raises(ValueError, match="variance"):
        sample_ddpm(gauss, x, sched, 10, generators=gens, variance="large")


def test_dtype_argument(gauss, sched):
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))  # float32 input
    z64 = sample_ddim(gauss, x_T, sched, 10)
    z32 = sample_ddim(gauss, x_T, sched, 10, dtype=torch.float32)
    assert z64.dtype == torch.float64 and z32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), z64, rtol=0, atol=1e-3)


# ---------------------------------------------------------------- counter-based per-sample noise
def _reference_normal(seed: int, draw: int, j: int) -> float:
    """_util.sample_normal's coordinate j, written with Python integers: splitmix64 (Steele et al. 2014) of the
    stream seeded with splitmix64(seed + (draw + 1) G), outputs 2k + 1 and 2k + 2 (k = j // 2), then Box-Muller."""
    mask, gamma = (1 << 64) - 1, 0x9E3779B97F4A7C15

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    stream = mix((seed + (draw + 1) * gamma) & mask)
    k = j // 2
    u1, u2 = (((mix((stream + (2 * k + n) * gamma) & mask) >> 11) + 0.5) / 2**53 for n in (1, 2))
    radius, angle = math.sqrt(-2 * math.log(u1)), 2 * math.pi * u2
    return radius * (math.cos(angle) if j % 2 == 0 else math.sin(angle))


def test_sample_normal_is_splitmix64_and_box_muller():
    seeds = [0, 1, 2**62 + 12345, -(2**63), 77]  # the int64 bits of any 64-bit seed
    z = sample_normal(torch.tensor(seeds), 3, 5)
    assert z.shape == (5, 5) and z.dtype == torch.float64
    for b, seed in enumerate(seeds):
        for j in range(5):
            assert float(z[b, j]) == pytest.approx(_reference_normal(seed % 2**64, 3, j), rel=1e-12, abs=1e-12)
    assert sample_normal(torch.tensor(seeds), 3, 5, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="draw must be >= 0"):
        sample_normal(torch.tensor(seeds), -1, 5)


def test_sample_normal_depends_on_seed_draw_and_coordinate_only():
    seeds = sample_seeds(sample_generators(4, 9))
    full = sample_normal(seeds, 7, 11)
    torch.testing.assert_close(sample_normal(seeds[3:6], 7, 11), full[3:6], rtol=0, atol=0)  # any batch
    torch.testing.assert_close(sample_normal(seeds[[8, 0]], 7, 11), full[[8, 0]], rtol=0, atol=0)  # any order
    torch.testing.assert_close(sample_normal(seeds, 7, 4), full[:, :4], rtol=0, atol=0)  # any width
    assert sample_normal(seeds, 8, 11).sub(full).abs().min() > 0  # another draw: other numbers
    # the seeds are those of sample_generators: sample i of seed s, whatever the offset it was made with
    torch.testing.assert_close(sample_seeds(sample_generators(4, 3, offset=6)), seeds[6:], rtol=0, atol=0)


def test_sample_normal_is_standard_normal_and_independent_across_samples_steps_and_coordinates():
    from scipy import stats

    seeds = sample_seeds(sample_generators(0, 2000))
    z = sample_normal(seeds, 0, 100)  # 200 000 numbers
    flat = z.flatten().numpy()
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    n = flat.size
    assert abs(flat.mean()) < 5 / n**0.5 and abs(flat.var() - 1) < 5 * (2 / n) ** 0.5
    assert abs(stats.skew(flat)) < 5 * (6 / n) ** 0.5 and abs(stats.kurtosis(flat)) < 5 * (24 / n) ** 0.5
    nxt = sample_normal(seeds, 1, 100)
    pairs = {"next step": (z, nxt), "next sample": (z[:-1], z[1:]), "Box-Muller partner": (z[:, 0::2], z[:, 1::2]),
             "partner, squared": (z[:, 0::2] ** 2, z[:, 1::2] ** 2), "next coordinate": (z[:, 1:-1:2], z[:, 2::2])}
    for name, (a, b) in pairs.items():
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(r) < 5 / a.numel() ** 0.5, (name, r)
