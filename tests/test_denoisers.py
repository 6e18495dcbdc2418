"""EmpiricalOptimum against a float64 brute-force softmax; the exact Gaussian denoiser and its flow map."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from diffgen.diffusion.denoisers import GaussianDenoiser
from diffgen.diffusion.optimum import EmpiricalOptimum, x0_star_reference
from diffgen.diffusion.schedule import add_noise

TIMES = [1, 10, 100, 500, 1000]
N, D = 37, 4  # N is not a multiple of any tile size used below


# ---------------------------------------------------------------- the brute-force reference
def ref_weights(train: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sched) -> torch.Tensor:
    """w_i(x, t) = softmax_i(-||x - sqrt(abar) x_i||^2 / (2 (1 - abar))), float64, explicit differences per pair."""
    train, x = train.double(), x.double()
    t = torch.as_tensor(t).expand(len(x))
    abar = sched.abar[t][:, None]  # [B, 1]
    diff = x[:, None, :] - abar.sqrt()[..., None] * train[None]  # [B, N, D]
    logits = -(diff * diff).sum(-1) / (2 * (1 - abar))
    return torch.softmax(logits, dim=1)


def ref_x0_eps(train, x, t, sched):
    w = ref_weights(train, x, t, sched)
    x0 = w @ train.double()
    abar = sched.abar[torch.as_tensor(t).expand(len(x))][:, None]
    return x0, (x.double() - abar.sqrt() * x0) / (1 - abar).sqrt()


@pytest.fixture(scope="module")
def train():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def queries(train, t, sched, n=24, seed=1):
    """Forward-process samples from training points, plus some arbitrary points (including far-ish ones)."""
    g = torch.Generator().manual_seed(seed + t)
    idx = torch.randint(len(train), (n,), generator=g)
    xt = add_noise(sched, train[idx], t, torch.randn(n, train.shape[1], generator=g, dtype=torch.float64))
    other = 2.0 * torch.randn(8, train.shape[1], generator=g, dtype=torch.float64)
    return torch.cat([xt, other, torch.full((1, train.shape[1]), 6.0, dtype=torch.float64)])


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("t", TIMES)
def test_float64_matches_brute_force(train, sched, t, fused):
    x = queries(train, t, sched)
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64, fused=fused, tile=7)
    x0_ref, eps_ref = ref_x0_eps(train, x, t, sched)
    x0 = opt.x0_star(x, t)
    eps = opt(x, t)
    assert x0.dtype == torch.float64 and eps.dtype == torch.float64 and x0.shape == x.shape
    torch.testing.assert_close(x0, x0_ref, rtol=0, atol=1e-10)
    # eps divides by sqrt(1 - abar) (0.01 at t = 1): compare relative to its size
    torch.testing.assert_close(eps, eps_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("t", TIMES)
def test_float32_matches_brute_force(train, sched, t, fused):
    x = queries(train, t, sched)
    opt = EmpiricalOptimum(train, sched, dtype=torch.float32, fused=fused, tile=7)
    x0_ref, eps_ref = ref_x0_eps(train, x, t, sched)
    x0, eps = opt.x0_star(x, t), opt(x, t)
    assert x0.dtype == torch.float32 and eps.dtype == torch.float32
    torch.testing.assert_close(x0.double(), x0_ref, rtol=0, atol=2e-5)
    err = (eps.double() - eps_ref).norm(dim=1) / eps_ref.norm(dim=1)
    assert float(err.max()) < 1e-3



@pytest.mark.parametrize("fused", [True, False])
def test_float32_is_exact_on_data_far_from_the_origin(sched, fused):
    """Data N(0, I_16) + 1000: uncentred float32 logits x . x_i - (a/2)|x_i|^2 cancel (x0* off by 17% of the
    data's spread); centring the training set (exact: the softmax is shift invariant) keeps float32 accurate."""
    g = torch.Generator().manual_seed(3)
    train = torch.randn(300, 16, generator=g, dtype=torch.float64) + 1000.0
    t = 100
    x = queries(train, t, sched)[:32]
    x0_ref = x0_star_reference(x, train, float(sched.abar[t]))
    x0 = EmpiricalOptimum(train, sched, dtype=torch.float32, fused=fused).x0_star(x, t).double()
    spread = float(train.std(0).mean())
    assert float((x0 - x0_ref).abs().max()) < 1e-3 * spread
    stats = EmpiricalOptimum(train, sched, dtype=torch.float32).weight_stats(x, t)
    exact = torch.softmax(-(x[:, None] - sched.abar[t].sqrt() * train[None]).pow(2).sum(-1) / (2 * (1 - sched.abar[t])),
                          1)
    assert torch.equal(stats.nearest, exact.argmax(1))

def test_x0_star_is_convex_combination(train, sched):
    """x0* lies in the convex hull: for every direction, min_i <x_i,u> <= <x0*,u> <= max_i <x_i,u>."""
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64)
    u = torch.randn(16, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for t in TIMES:
        x0 = opt.x0_star(queries(train, t, sched), t)
        proj, bounds = x0 @ u.T, train @ u.T
        assert bool((proj >= bounds.min(0).values - 1e-12).all()) and bool((proj <= bounds.max(0).values + 1e-12).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
def test_invariant_to_tile_size(train, sched, dtype, fused):
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for t in (1, 100, 1000):
        x = queries(train, t, sched)
        base = EmpiricalOptimum(train, sched, dtype=dtype, tile=N, fused=False).x0_star(x, t)
        for tile in (1, 7, N, N + 5, 4096):
            got = EmpiricalOptimum(train, sched, dtype=dtype, tile=tile, fused=fused).x0_star(x, t)
            torch.testing.assert_close(got, base, rtol=0, atol=tol, msg=f"t={t} tile={tile}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
def test_row_independent_of_batch_companions(train, sched, dtype, fused):
    """A query's result must not depend on the other queries in the batch (e.g. a running max shared across rows)."""
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for t in (1, 10, 500):
        x = queries(train, t, sched)
        far = torch.stack([torch.full((D,), 500.0, dtype=torch.float64), torch.full((D,), -300.0, dtype=torch.float64),
                           300.0 * train[3]])
        ref = EmpiricalOptimum(train, sched, dtype=dtype, tile=4096, fused=False)
        alone = torch.cat([ref.x0_star(x[i:i + 1], t) for i in range(len(x))])
        for tile in (1, 7, 4096):
            opt = EmpiricalOptimum(train, sched, dtype=dtype, tile=tile, fused=fused)
            torch.testing.assert_close(opt.x0_star(x[5:6], t), alone[5:6], rtol=0, atol=tol)
            mixed = opt.x0_star(torch.cat([far[:1], x, far[1:]]), t)[1:-2]
            torch.testing.assert_close(mixed, alone, rtol=0, atol=tol)
            assert bool(torch.isfinite(opt.x0_star(far, t)).all())
    # the far queries themselves: all weight on the training point best aligned with them (a softmax, no NaN)
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64, tile=5, fused=fused)
    torch.testing.assert_close(opt.x0_star(far, 1), ref_x0_eps(train, far, 1, sched)[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
def test_per_sample_t_equals_rowwise_scalar_t(train, sched, dtype, fused):
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([1, 1000, 10, 500, 100, 2, 999, 50, 1, 300])
    x = add_noise(sched, train[torch.randint(N, (len(t),), generator=g)], t,
                  torch.randn(len(t), D, generator=g, dtype=torch.float64))
    opt = EmpiricalOptimum(train, sched, dtype=dtype, fused=fused, tile=7)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    x0, eps = opt.x0_star(x, t), opt(x, t)
    for b in range(len(t)):
        torch.testing.assert_close(x0[b:b + 1], opt.x0_star(x[b:b + 1], int(t[b])), rtol=0, atol=tol)
        torch.testing.assert_close(eps[b:b + 1], opt(x[b:b + 1], int(t[b])), rtol=tol, atol=tol)
    x0_ref, eps_ref = ref_x0_eps(train, x, t, sched)
    torch.testing.assert_close(x0.double(), x0_ref, rtol=0, atol=1e-10 if dtype == torch.float64 else 2e-5)


def test_t1_gives_nearest_training_point(train, sched):
    g = torch.Generator().manual_seed(11)
    x = 1.5 * torch.randn(200, D, generator=g, dtype=torch.float64)
    a = float(sched.abar[1]) ** 0.5
    d2 = ((x[:, None, :] / a - train[None]) ** 2).sum(-1)
    top2 = d2.topk(2, dim=1, largest=False).values
    ok = (top2[:, 1] - top2[:, 0]) > 0.02  # not a near-tie: the weight of the runner-up is < exp(-90)
    assert int(ok.sum()) > 150
    nearest = train[d2.argmin(1)]
    for dtype in (torch.float64, torch.float32):
        for fused in (True, False):
            x0 = EmpiricalOptimum(train, sched, dtype=dtype, fused=fused).x0_star(x, 1).double()
            torch.testing.assert_close(x0[ok], nearest[ok], rtol=0, atol=1e-6)


def test_t1000_gives_roughly_the_mean(train, sched):
    x = queries(train, 1000, sched)
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64)
    x0 = opt.x0_star(x, 1000)
    torch.testing.assert_close(x0, ref_x0_eps(train, x, 1000, sched)[0], rtol=0, atol=1e-12)
    w = ref_weights(train, x, 1000, sched)
    assert float((N * w - 1).abs().max()) < 0.5  # near-uniform weights ...
    bound = (N * w - 1).abs().amax(1, keepdim=True) * train.norm(dim=1).mean()  # |sum (w_i - 1/N) x_i|
    assert bool(((x0 - train.mean(0)).norm(dim=1, keepdim=True) <= bound + 1e-12).all())
    assert float((x0 - train.mean(0)).norm(dim=1).max()) < 0.1 * float(train.norm(dim=1).mean())
    st = opt.weight_stats(x, 1000)
    assert bool((st.entropy > math.log(N) - 0.05).all()) and bool((st.max_weight < 1.5 / N).all())


def test_tweedie_score_is_gradient_of_log_mixture(train, sched):
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64)
    for t in TIMES:
        abar = sched.abar[t]
        a, s2 = abar.sqrt(), 1 - abar
        x = queries(train, t, sched).requires_grad_(True)
        # log (1/N) sum_i N(x; a x_i, s^2 I)
        sq = ((x[:, None, :] - a * train[None]) ** 2).sum(-1)
        logp = torch.logsumexp(-sq / (2 * s2), 1) - math.log(N) - 0.5 * D * torch.log(2 * math.pi * s2)
        (grad,) = torch.autograd.grad(logp.sum(), x)
        score = -opt(x.detach(), t) / s2.sqrt()
        torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9 / float(s2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tile", [1, 7, 4096])
def test_weight_stats_match_brute_force(train, sched, dtype, tile):
    for t in TIMES:
        x = queries(train, t, sched)
        # order the training set so that the maximum moves to later tiles (exercises the running-max rescaling)
        opt = EmpiricalOptimum(train, sched, dtype=dtype, tile=tile)
        st = opt.weight_stats(x, t)
        w = ref_weights(train, x, t, sched)
        ent = -(w * torch.log(w.clamp(min=1e-300))).sum(1)
        assert st.entropy.dtype == torch.float64
        torch.testing.assert_close(st.entropy, ent, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(st.max_weight, w.max(1).values, rtol=1e-9, atol=1e-12)
        clear = (w.topk(2, 1).values[:, 0] - w.topk(2, 1).values[:, 1]) > 1e-9
        assert torch.equal(st.nearest[clear], w.argmax(1)[clear])
        # argmax_i w_i is the training point nearest to x_t / sqrt(abar_t)
        d = ((x[:, None, :] / sched.abar[t].sqrt() - train[None]) ** 2).sum(-1)
        assert torch.equal(st.nearest[clear], d.argmin(1)[clear])


def test_weight_stats_running_max_moves(sched):
    """Training points sorted so that each tile holds a new maximum for the query: the online entropy must rescale."""
    x = torch.zeros(1, 1, dtype=torch.float64)
    train = torch.linspace(-3, 0, 12, dtype=torch.float64)[:, None]  # nearest to 0 comes last
    for t in (5, 50, 300):
        w = ref_weights(train, x, t, sched)
        ent = -(w * w.clamp(min=1e-300).log()).sum(1)
        for tile in (1, 2, 5):
            st = EmpiricalOptimum(train, sched, dtype=torch.float64, tile=tile).weight_stats(x, t)
            torch.testing.assert_close(st.entropy, ent, rtol=1e-10, atol=1e-12)
            assert int(st.nearest) == 11
            torch.testing.assert_close(st.max_weight, w.max(1).values, rtol=1e-10, atol=0)


def test_single_training_point_is_exact(sched):
    x1 = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    opt = EmpiricalOptimum(x1, sched, dtype=torch.float64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    for t in TIMES:
        torch.testing.assert_close(opt.x0_star(x, t), x1.expand(5, 3), rtol=0, atol=1e-13)
        st = opt.weight_stats(x, t)
        assert bool((st.entropy == 0).all()) and bool((st.nearest == 0).all())
        torch.testing.assert_close(st.max_weight, torch.ones(5, dtype=torch.float64))


# ---------------------------------------------------------------- input checks
def test_bad_inputs_raise(train, sched):
    opt = EmpiricalOptimum(train, sched)
    x = torch.zeros(3, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="t must be >= 1"):
        opt(x, 0)
    with pytest.raises(ValueError, match="t must be >= 1"):
        opt.x0_star(x, torch.tensor([5, 0, 7]))
    with pytest.raises(ValueError, match="t must be >= 1"):
        opt.weight_stats(x, 0)
    with pytest.raises(TypeError, match="t must"):
        opt(x, 1.0)
    with pytest.raises(ValueError, match="t must"):
        opt(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must"):
        opt(x, 1001)
    with pytest.raises(ValueError, match="xt"):
        opt.x0_star(torch.zeros(3, D + 1), 5)
    with pytest.raises(ValueError, match="xt"):
        opt.x0_star(torch.zeros(D), 5)
    with pytest.raises(ValueError, match="train"):
        EmpiricalOptimum(torch.zeros(0, 3), sched)
    with pytest.raises(ValueError, match="train"):
        EmpiricalOptimum(torch.zeros(5), sched)
    with pytest.raises(ValueError, match="dtype"):
        EmpiricalOptimum(train, sched, dtype=torch.float16)
    with pytest.raises(ValueError, match="tile"):
        EmpiricalOptimum(train, sched, tile=0)


# ---------------------------------------------------------------- Gaussian denoiser
@pytest.fixture(scope="module")
def gauss(sched):
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.15]], dtype=torch.float64)
    cov = A @ A.T  # eigenvalues ~ 0.014, 0.22, 1.8: far from isotropic, not axis-aligned
    return mean, cov, GaussianDenoiser(mean, cov, sched)


def test_gaussian_x0_hat_closed_form(gauss, sched, gen):
    mean, cov, den = gauss
    x = 2 * torch.randn(6, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 10, 100, 500, 999, 1000])
    got = den.x0_hat(x, t)
    for b in range(len(t)):
        abar = sched.abar[int(t[b])]
        a = abar.sqrt()
        # E[x0 | x_t] = mean + Cov(x0, x_t) Var(x_t)^{-1} (x_t - E x_t), solved directly
        ref = mean + a * cov @ torch.linalg.solve(abar * cov + (1 - abar) * torch.eye(3, dtype=torch.float64),
                                                  x[b] - a * mean)
        torch.testing.assert_close(got[b], ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(den(x[b:b + 1], int(t[b]))[0], (x[b] - a * ref) / (1 - abar).sqrt(),
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", [50, 300])
def test_gaussian_x0_hat_is_monte_carlo_conditional_mean(gauss, sched, t):
    """Regress x0 on x_t over forward samples: the least-squares affine map is E[x0 | x_t] (linear for Gaussians)."""
    mean, cov, den = gauss
    g = torch.Generator().manual_seed(t)
    n = 200_000
    x0 = mean + torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    xt = add_noise(sched, x0, t, torch.randn(n, 3, generator=g, dtype=torch.float64))
    design = torch.cat([xt, torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, x0).solution  # [4, 3]
    probe = torch.randn(20, 3, generator=g, dtype=torch.float64)
    mc = torch.cat([probe, torch.ones(20, 1, dtype=torch.float64)], 1) @ coef
    torch.testing.assert_close(den.x0_hat(probe, t), mc, rtol=0, atol=0.02)


def test_gaussian_flow_map_composes(gauss, gen):
    _, _, den = gauss
    x = 2 * torch.randn(8, 3, generator=gen, dtype=torch.float64)
    for t, t1, t2 in [(1000, 400, 0), (700, 699, 3), (500, 20, 1), (30, 10, 0)]:
        torch.testing.assert_close(den.flow_map(den.flow_map(x, t, t1), t1, t2), den.flow_map(x, t, t2),
                                   rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(den.flow_map(x, 321, 321), x, rtol=1e-12, atol=1e-12)
    # and it is invertible: forward in time undoes backward
    torch.testing.assert_close(den.flow_map(den.flow_map(x, 900, 5), 5, 900), x, rtol=1e-9, atol=1e-9)


def test_gaussian_flow_map_transports_the_marginals(gauss, sched):
    """The flow map is affine, x -> A x + b; it must push N(a mean, a^2 cov + s^2 I) at t onto the marginal at t'."""
    mean, cov, den = gauss
    eye = torch.eye(3, dtype=torch.float64)
    for t, t_to in [(1000, 0), (600, 100), (50, 1)]:
        b = den.flow_map(torch.zeros(1, 3, dtype=torch.float64), t, t_to)[0]
        A = (den.flow_map(eye, t, t_to) - b).T  # column j = image of e_j
        ab, ab_to = sched.abar[t], sched.abar[t_to]
        torch.testing.assert_close(A @ (ab.sqrt() * mean) + b, ab_to.sqrt() * mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(A @ (ab * cov + (1 - ab) * eye) @ A.T, ab_to * cov + (1 - ab_to) * eye,
                                   rtol=1e-8, atol=1e-9)


def test_gaussian_flow_map_small_step_follows_eps(gauss, sched, gen):
    """dy/dsigma = eps(x, t) in y = x / sqrt(abar), sigma = sqrt((1 - abar) / abar): check with a one-step difference."""
    _, _, den = gauss
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    for t in (200, 600):
        ab, ab_to = float(sched.abar[t]), float(sched.abar[t - 1])
        sig, sig_to = ((1 - ab) / ab) ** 0.5, ((1 - ab_to) / ab_to) ** 0.5
        y_to = den.flow_map(x, t, t - 1) / ab_to**0.5
        mid = 0.5 * (den(x, t) + den(den.flow_map(x, t, t - 1), t - 1))  # trapezoid in sigma
        torch.testing.assert_close(y_to, x / ab**0.5 + (sig_to - sig) * mid, rtol=0, atol=1e-4 * abs(sig_to - sig))


# ---------------------------------------------------------------- device (runs only where torch sees a GPU)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [True, False])
def test_cuda_matches_cpu_reference(train, sched, dtype, fused):
    opt = EmpiricalOptimum(train, sched, dtype=dtype, fused=fused, tile=7).to("cuda")
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for t in TIMES:
        x = queries(train, t, sched)
        got = opt.x0_star(x.cuda(), torch.full((len(x),), t, device="cuda")).cpu().double()
        torch.testing.assert_close(got, ref_x0_eps(train, x, t, sched)[0], rtol=0, atol=tol)


def test_time_switch_uses_inside_only_within_its_window():
    from diffgen.diffusion.denoisers import TimeSwitch

    inside = lambda x, t: torch.ones_like(x)  # noqa: E731
    outside = lambda x, t: -torch.ones_like(x)  # noqa: E731
    switch = TimeSwitch(inside, outside, 10, 20)
    t = torch.tensor([1, 9, 10, 15, 20, 21, 1000])
    out = switch(torch.zeros(7, 3, dtype=torch.float64), t)
    assert out[:, 0].tolist() == [-1, -1, 1, 1, 1, -1, -1]
    assert switch(torch.zeros(2, 3), 15).eq(1).all() and switch(torch.zeros(2, 3), 5).eq(-1).all()
    with pytest.raises(ValueError, match="t_low"):
        TimeSwitch(inside, outside, 20, 10)


def test_smoothed_optimum_is_the_exact_score_of_the_kernel_density():
    from diffgen.diffusion.optimum import SmoothedOptimum
    from diffgen.diffusion.schedule import linear_schedule

    sched = linear_schedule()
    g = torch.Generator().manual_seed(4)
    train = torch.randn(20, 2, generator=g, dtype=torch.float64)
    h = 0.3
    smooth = SmoothedOptimum(train, sched, h, dtype=torch.float64, tile=7)
    plain = EmpiricalOptimum(train, sched, dtype=torch.float64)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(SmoothedOptimum(train, sched, 0.0, dtype=torch.float64)(x, 100), plain(x, 100))
    for t in (1, 50, 400):
        a2 = float(sched.abar[t])
        v = 1 - a2 + a2 * h**2
        xr = x.clone().requires_grad_(True)
        logp = torch.logsumexp(-((xr[:, None] - a2**0.5 * train[None]) ** 2).sum(-1) / (2 * v), 1).sum()
        (score,) = torch.autograd.grad(logp, xr)
        # Tweedie for x_t = a x0 + s eps with x0 ~ p_h: E[eps | x_t] = -s * score of the marginal of x_t
        assert torch.allclose(smooth(x, t), -(1 - a2) ** 0.5 * score, atol=1e-9)
    stats = SmoothedOptimum(train.float(), sched, h).weight_stats(x, 1)
    assert (stats.entropy > 0.01).any()  # the widened softmax no longer collapses at t = 1
    with pytest.raises(ValueError, match="bandwidth"):
        SmoothedOptimum(train, sched, -1.0)


def test_smoothed_optimum_of_one_point_is_the_gaussian_denoiser():
    from diffgen.diffusion.denoisers import GaussianDenoiser
    from diffgen.diffusion.optimum import SmoothedOptimum
    from diffgen.diffusion.schedule import linear_schedule

    sched = linear_schedule()
    point = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    h = 0.4
    smooth = SmoothedOptimum(point, sched, h, dtype=torch.float64)
    gauss = GaussianDenoiser(point[0], h**2 * torch.eye(3, dtype=torch.float64), sched)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([1, 2, 5, 10, 50, 100, 200, 500, 800, 1000])
    assert torch.allclose(smooth(x, t), gauss(x, t), atol=1e-10)


def test_reference_errors_and_max_error(sched):
    from diffgen.diffusion.optimum import max_error, reference_errors

    train = torch.randn(30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    variants = {"64": EmpiricalOptimum(train, sched, dtype=torch.float64, fused=False),
                "32": EmpiricalOptimum(train, sched)}
    errors = reference_errors(variants, train, sched, [1, 500], 8, torch.Generator().manual_seed(1))
    assert set(errors) == {(1, "noisy training"), (1, "midpoints (ties)"), (500, "noisy training"),
                           (500, "midpoints (ties)")}
    assert max_error(errors, ["64"]) < 1e-9 < max_error(errors, ["32"], "midpoints (ties)")
    assert max_error(errors) == max(max_error(errors, ["64"]), max_error(errors, ["32"]))


def test_weights_are_the_softmax_of_the_closed_form(sched):
    from diffgen.diffusion.optimum import SmoothedOptimum

    train = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xt = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    abar = float(sched.abar[50])
    w = EmpiricalOptimum(train, sched).weights(xt, 50)
    ref = torch.softmax(-((xt[:, None] - abar**0.5 * train[None]) ** 2).sum(-1) / (2 * (1 - abar)), 1)
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(w @ train, x0_star_reference(xt, train, abar))
    v = 1 - abar + abar * 0.3**2  # the smoothed optimum's weights use its widened variance
    ref_h = torch.softmax(-((xt[:, None] - abar**0.5 * train[None]) ** 2).sum(-1) / (2 * v), 1)
    torch.testing.assert_close(SmoothedOptimum(train, sched, 0.3).weights(xt, 50), ref_h)


def test_blend_interpolates_two_denoisers(sched):
    from diffgen.diffusion.denoisers import Blend

    a = lambda x, t: torch.ones_like(x)  # noqa: E731
    b = lambda x, t: 3 * torch.ones_like(x)  # noqa: E731
    x = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.equal(Blend(a, b, 0.0)(x, 5), a(x, 5)) and torch.equal(Blend(a, b, 1.0)(x, 5), b(x, 5))
    torch.testing.assert_close(Blend(a, b, 0.25)(x, 5), torch.full((2, 3), 1.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight must lie"):
        Blend(a, b, 1.5)


def test_clipped_x0_leaves_the_optimum_alone_and_keeps_any_prediction_in_range(sched):
    from diffgen.diffusion.denoisers import ClippedX0
    from diffgen.diffusion.schedule import x0_from_eps

    g = torch.Generator().manual_seed(0)
    train = torch.rand(20, 6, generator=g, dtype=torch.float64) * 2 - 1  # inside [-1, 1]
    opt = EmpiricalOptimum(train, sched, dtype=torch.float64)
    xt = torch.randn(16, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 100, 500, 999, 1000] * 2 + [50] * 4)
    torch.testing.assert_close(ClippedX0(opt, sched)(xt, t), opt(xt, t))  # x0* is a convex combination
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731  at t = 1000 its x0 is x / sqrt(abar): far out of range
    clipped = ClippedX0(zero, sched, -1.0, 1.0)
    x0 = x0_from_eps(sched, xt, t, clipped(xt, t))
    assert float(x0.abs().max()) <= 1.0 + 1e-9 and float(x0_from_eps(sched, xt, t, zero(xt, t)).abs().max()) > 10
    with pytest.raises(ValueError, match="low < high"):
        ClippedX0(opt, sched, 1.0, -1.0)


def test_cpu_picks_the_tiled_loop_above_the_fused_kernels_width(monkeypatch):
    """On the CPU the fused kernel runs up to CPU_FUSED_MAX_DIM and the tiled loop above it (the faster path per
    width, benchmarks/bench_empirical.py); both give the same x0*."""
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.diffusion.schedule import linear_schedule

    sched, g = linear_schedule(), torch.Generator().manual_seed(0)
    calls = []
    original = EmpiricalOptimum._x0_fused
    monkeypatch.setattr(EmpiricalOptimum, "_x0_fused", lambda self, *a: calls.append(a[0].shape[1]) or original(self, *a))
    for D in (64, EmpiricalOptimum.CPU_FUSED_MAX_DIM + 1):
        train, xt = torch.randn(50, D, generator=g), torch.randn(4, D, generator=g)
        fused = EmpiricalOptimum(train, sched).x0_star(xt, 300)
        tiled = EmpiricalOptimum(train, sched, fused=False).x0_star(xt, 300)
        torch.testing.assert_close(fused, tiled, rtol=1e-4, atol=1e-5)
    assert calls == [64]


# ---------------------------------------------------------------- padded widths, the path per device, exact matmuls
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("width", [4, 13])  # D + 1 = 5 and 14: padded to 8 and 16
def test_padded_and_unpadded_widths_agree_with_the_brute_force(sched, dtype, tol, fused, width):
    """Zero key columns add 0 to every logit and the padded value columns are dropped: the same x0* as unpadded, up to
    the order of the dot products' sums (float32 logits at t = 100 round differently by up to 5e-6)."""
    train = torch.randn(29, width, generator=torch.Generator().manual_seed(width), dtype=torch.float64)
    padded = EmpiricalOptimum(train, sched, dtype=dtype, fused=fused, tile=6)
    plain = EmpiricalOptimum(train, sched, dtype=dtype, fused=fused, tile=6, align=1)
    assert padded._keys.shape[1] % 8 == 0 and plain._keys.shape[1] == width + 1
    assert torch.equal(padded._keys[:, width + 1:], torch.zeros_like(padded._keys[:, width + 1:]))
    for t in (10, 100, 1000):
        x = queries(train, t, sched)
        got, ref = padded.x0_star(x, t), plain.x0_star(x, t)
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        brute = ref_x0_eps(train, x, t, sched)[0]
        torch.testing.assert_close(got.double(), brute, rtol=0, atol=1e-10 if dtype == torch.float64 else 2e-5)


def test_the_path_per_device_dtype_and_width_is_the_documented_one(sched):
    """CPU: fused up to CPU_FUSED_MAX_DIM, tiled above; CUDA: fused in float32, tiled in float64; fused=False: tiled.
    Decided without a GPU (the device is only inspected), so the CUDA rule is checked on every machine."""
    narrow, wide = (torch.zeros(3, d) for d in (64, EmpiricalOptimum.CPU_FUSED_MAX_DIM + 1))
    rows = {(dt, d, f): EmpiricalOptimum(x, sched, dtype=dt, fused=f)
            for dt in (torch.float32, torch.float64) for d, x in (("narrow", narrow), ("wide", wide))
            for f in (True, False)}
    for (dt, d, f), opt in rows.items():
        assert opt.path("cpu") == ("fused" if f and d == "narrow" else "tiled"), (dt, d, f)
        assert opt.path(torch.device("cuda", 0)) == ("fused" if f and dt == torch.float32 else "tiled"), (dt, d, f)


def test_cpu_runs_the_fused_kernel_on_aligned_widths_exactly_when_the_path_says_so(sched, monkeypatch):
    """The SDPA call happens iff path('cpu') == 'fused', with every width a multiple of 8 (D + 1 = 65 -> 72)."""
    widths = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: widths.append((q.shape[-1], k.shape[-1], v.shape[-1])) or
                        original(q, k, v, **kw))
    g = torch.Generator().manual_seed(0)
    for D_ in (64, EmpiricalOptimum.CPU_FUSED_MAX_DIM + 1):
        train, xt = torch.randn(50, D_, generator=g), torch.randn(4, D_, generator=g)
        opt = EmpiricalOptimum(train, sched)
        before = len(widths)
        fused = opt.x0_star(xt, 300)
        assert (len(widths) > before) == (opt.path("cpu") == "fused")
        tiled = EmpiricalOptimum(train, sched, fused=False).x0_star(xt, 300)
        torch.testing.assert_close(fused, tiled, rtol=1e-4, atol=1e-5)
    assert widths == [(72, 72, 72)]


def test_a_missing_fused_kernel_warns_and_falls_back_to_the_loop(train, sched, monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("No available kernel.  Aborting execution.")

    opt = EmpiricalOptimum(train, sched, dtype=torch.float64)
    x = queries(train, 100, sched)
    expected = EmpiricalOptimum(train, sched, dtype=torch.float64, fused=False).x0_star(x, 100)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
    with pytest.warns(RuntimeWarning, match="no fused attention kernel for torch.float64 rows of width 8 on cpu"):
        got = opt.x0_star(x, 100)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_tiles_are_large_on_cuda_and_as_given_when_given(sched):
    opt = EmpiricalOptimum(torch.zeros(10, 3), sched)
    assert opt.tile_size("cpu", 1000) == EmpiricalOptimum.CPU_TILE
    assert opt.tile_size("cuda", 1000) == EmpiricalOptimum.CUDA_LOGITS // 1000 > 16000
    assert opt.tile_size("cuda", 10 ** 6) == EmpiricalOptimum.CPU_TILE
    assert EmpiricalOptimum(torch.zeros(10, 3), sched, tile=7).tile_size("cuda", 1000) == 7


@pytest.mark.parametrize("fused", [True, False])
def test_float32_logits_stay_float32_under_bf16_autocast_and_reduced_matmul_precision(sched, fused):
    """A caller's torch.autocast(bfloat16) and set_float32_matmul_precision('medium') (bf16 matmuls in oneDNN on the
    CPU, TF32 on CUDA) must not reach the optimum's logits: the result matches the float64 brute force at float32
    accuracy, and the caller's settings are unchanged afterwards. Without the guard the same call is off by ~1e-2."""
    from diffgen.diffusion import optimum

    g = torch.Generator().manual_seed(2)
    train = torch.randn(40, 24, generator=g, dtype=torch.float64)
    x = queries(train, 200, sched)
    brute = ref_x0_eps(train, x, 200, sched)[0]
    opt = EmpiricalOptimum(train, sched, fused=fused)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = opt.x0_star(x, 200)
            assert torch.is_autocast_enabled("cpu")  # the caller's autocast is still on
            unguarded = optimum.exact_matmuls
            optimum.exact_matmuls = lambda device_type: contextlib.nullcontext()
            try:
                careless = opt.x0_star(x, 200)
            finally:
                optimum.exact_matmuls = unguarded
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    finally:
        torch.set_float32_matmul_precision(before)
    torch.testing.assert_close(got.double(), brute, rtol=0, atol=2e-5)
    assert float((careless.double() - brute).abs().max()) > 1e-3  # the mechanism the guard removes


# ---------------------------------------------------------------- the brute-force references, tiled over N
def _untiled_forward_time_minimiser(train, sched, xt, t, gap_probs):
    """The minimiser as first written: one [B, N, D] tensor of differences, einsum over it (small sizes only)."""
    x, xs = xt.double(), train.double()
    abar_t = float(sched.abar[t])
    diff = x[:, None, :] - abar_t**0.5 * xs[None]
    num, den = torch.zeros_like(x), 0.0
    for s in torch.nonzero(gap_probs).flatten().tolist():
        r = abar_t / float(sched.abar[s])
        var = r * (1 - float(sched.abar[s])) + (1 - r)
        w = torch.softmax(-diff.pow(2).sum(-1) / (2 * var), dim=1)
        c = ((1 - r) / (1 - abar_t)) ** 0.5
        num = num + float(gap_probs[s]) * c * (1 - r) ** 0.5 * torch.einsum("bn,bnd->bd", w, diff) / var
        den += float(gap_probs[s]) * c**2
    return num / den


@pytest.mark.parametrize("chunk", [1, 30, 10 ** 9])  # one training point per tile, a few, all at once
def test_tiled_references_equal_the_untiled_brute_force(train, sched, chunk):
    """chunk = 1: one training point per tile; memory at the paper's sizes: tests/test_memory.py."""
    from diffgen.diffusion.denoisers import forward_time_minimiser
    from diffgen.diffusion.objectives import ForwardTimeLoss

    x = queries(train, 50, sched)  # [33, D]
    for t in (1, 50, 700):
        abar = float(sched.abar[t])
        untiled = torch.softmax(-(x[:, None] - abar**0.5 * train[None]).pow(2).sum(-1) / (2 * (1 - abar)), 1) @ train
        torch.testing.assert_close(x0_star_reference(x, train, abar, chunk=chunk), untiled, rtol=0, atol=1e-12)
    for gap in ("one", "uniform"):
        probs = ForwardTimeLoss(sched, gap).gap_probs(40)
        ref = _untiled_forward_time_minimiser(train, sched, x, 40, probs)
        got = forward_time_minimiser(train, sched, x, 40, probs, chunk=chunk)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
