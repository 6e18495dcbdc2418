"""Models and objectives: the denoiser interface (shapes, dtypes, scalar t), zero output before training, time
conditioning, use inside a sampler; EpsLoss against a hand computation with the same random draws."""
from __future__ import annotations

import pytest
import torch

from diffgen._util import randn, sample_generators
from diffgen.models import MLPConfig, MLPDenoiser, UNetConfig, UNetDenoiser, time_embedding
from diffgen.objectives import EpsLoss
from diffgen.samplers import sample_ddim
from diffgen.schedule import add_noise, eps_from_x0

CASES = [(MLPConfig(hidden=32, depth=2, time_dim=16), (2,)),
         (MLPConfig(hidden=32, depth=1), (1, 8, 8)),
         (UNetConfig(base=8), (1, 8, 8)),
         (UNetConfig(base=8, mults=(1, 2, 2)), (1, 28, 28)),
         (UNetConfig(base=8), (3, 32, 32)),
         (UNetConfig(base=8, mults=(1, 2, 2), attention=(14,)), (1, 28, 28)),
         (UNetConfig(base=8, mults=(1, 2, 2), blocks=2, attention=(16,)), (3, 32, 32))]
IDS = ["mlp-2d", "mlp-digits", "unet-8", "unet-28", "unet-32", "unet-28-attention", "unet-32-ddpm"]


def _build(cfg, shape, seed=0):
    torch.manual_seed(seed)
    return cfg.build(shape)


def _perturb(model, seed=1):
    """Move every parameter by a random amount (so the zero-initialised last layer no longer hides the rest)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _inputs(dim, batch=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, dim, generator=g, dtype=dtype), torch.tensor([1, 500, 1000])[:batch]


@pytest.mark.parametrize("cfg, shape", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_zero_output_untrained(cfg, shape, dtype):
    model = _build(cfg, shape)
    dim = int(torch.tensor(shape).prod())
    x, t = _inputs(dim, dtype=dtype)
    out = model(x, t)
    assert out.shape == (3, dim) and out.dtype == dtype
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised last layer


@pytest.mark.parametrize("cfg, shape", CASES, ids=IDS)
def test_output_depends_on_t_and_x_after_perturbation(cfg, shape):
    model = _perturb(_build(cfg, shape))
    dim = int(torch.tensor(shape).prod())
    x, _ = _inputs(dim, batch=1)
    outs = [model(x, torch.tensor([t])) for t in (1, 250, 999)]
    assert all(o.abs().max() > 0 for o in outs)
    assert (outs[0] - outs[1]).abs().max() > 1e-4 and (outs[1] - outs[2]).abs().max() > 1e-4
    assert (model(x + 0.5, torch.tensor([250])) - outs[1]).abs().max() > 1e-4


@pytest.mark.parametrize("cfg, shape", CASES[:3], ids=IDS[:3])
def test_float64_input_matches_float32_and_scalar_t_broadcasts(cfg, shape):
    model = _perturb(_build(cfg, shape))
    dim = int(torch.tensor(shape).prod())
    x, _ = _inputs(dim)
    t = torch.full((3,), 300)
    out32, out64 = model(x, t), model(x.double(), t)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, out32.double())  # computed in the parameters' dtype, then cast
    assert torch.equal(model(x, 300), out32) and torch.equal(model(x, torch.tensor(300)), out32)


def test_batch_rows_are_independent():
    model = _perturb(_build(UNetConfig(base=8), (1, 8, 8)))
    x, t = _inputs(64)
    full = model(x, t)
    one = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(full, one, rtol=1e-5, atol=1e-6)  # GroupNorm, not BatchNorm


def test_works_as_a_denoiser_in_ddim(sched):
    model = _perturb(_build(MLPConfig(hidden=32, depth=2), (2,)), seed=3).requires_grad_(False)
    x_T = randn(sample_generators(0, 5), 2)
    calls = []

    def spy(x, t):
        calls.append((x.dtype, t.dtype, tuple(t.shape)))
        return model(x, t)

    z = sample_ddim(spy, x_T, sched, 10)
    assert z.shape == (5, 2) and z.dtype == torch.float64 and torch.isfinite(z).all()
    assert calls == [(torch.float64, torch.long, (5,))] * 10
    # an untrained (zero) model predicts eps_hat = 0, so DDIM returns x_T scaled to x0_hat = x_T / sqrt(abar_T) and
    # then (eps = 0) every step rescales: the end point is x_T / sqrt(abar_T)
    zero = _build(MLPConfig(hidden=32, depth=2), (2,))
    torch.testing.assert_close(sample_ddim(zero, x_T, sched, 10), x_T / sched.abar[-1].sqrt())


def test_time_embedding():
    t = torch.tensor([0, 1, 1000])
    e = time_embedding(t, 8)
    assert e.shape == (3, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(e[1, 0], torch.tensor(1.0).sin())  # highest frequency is 1
    torch.testing.assert_close(e[2, 4], torch.tensor(1000.0).cos())


def test_input_checks():
    model = MLPDenoiser(4, hidden=8, depth=1, time_dim=8)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4\]"):
        model(torch.zeros(2, 3), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer time steps"):
        model(torch.zeros(2, 4), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(2,\)"):
        model(torch.zeros(2, 4), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="time_dim must be an even integer"):
        MLPConfig(time_dim=7)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        MLPConfig(depth=0)
    with pytest.raises(ValueError, match="divisible by 2"):
        UNetDenoiser((1, 9, 9), base=8)
    with pytest.raises(ValueError, match="image shape"):
        UNetConfig().build((2,))
    with pytest.raises(ValueError, match="mults must be"):
        UNetConfig(mults=())
    assert UNetConfig(mults=[1, 2]).mults == (1, 2) and hash(UNetConfig(mults=[1, 2])) == hash(UNetConfig())


# -------------------------------------------------------------------------------------------------- EpsLoss

class FixedOutput(torch.nn.Module):
    """A 'model' that returns a fixed tensor and records what it was called with."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return self.out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eps_loss_equals_hand_computation(sched, dtype):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 5, generator=g, dtype=dtype)
    out = torch.randn(6, 5, generator=g, dtype=dtype)
    model = FixedOutput(out)
    loss = EpsLoss(sched).loss(model, x0, torch.Generator().manual_seed(7))
    assert loss.shape == (6,) and loss.dtype == dtype

    g2 = torch.Generator().manual_seed(7)  # the same draws, in the documented order: t, then eps
    t = torch.randint(1, sched.T + 1, (6,), generator=g2)
    eps = torch.randn(6, 5, generator=g2, dtype=dtype)
    torch.testing.assert_close(loss, ((out - eps) ** 2).mean(1))
    (xt, t_seen), = model.calls
    assert torch.equal(t_seen, t)
    torch.testing.assert_close(xt, add_noise(sched, x0, t, eps))
    abar = sched.abar[t][:, None]
    torch.testing.assert_close(xt, (abar.sqrt() * x0 + (1 - abar).sqrt() * eps).to(dtype))


def test_eps_loss_times_cover_one_to_T(sched):
    model = FixedOutput(torch.zeros(4096, 1))
    EpsLoss(sched).loss(model, torch.zeros(4096, 1), torch.Generator().manual_seed(0))
    t = model.calls[0][1]
    assert t.min() >= 1 and t.max() <= sched.T and t.min() < 5 and t.max() > sched.T - 5


def test_eps_loss_of_the_true_noise_is_zero(sched):
    x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def cheat(xt, t):  # knows x0 row by row, so recovers the noise exactly
        return eps_from_x0(sched, xt, t, x0)

    loss = EpsLoss(sched).loss(cheat, x0, torch.Generator().manual_seed(3))
    assert loss.shape == (8,) and loss.max() < 1e-20


def test_eps_loss_of_zero_model_is_mean_square_noise(sched):
    """An untrained (zero-output) model has loss |eps|^2 / D, whose mean over many samples is 1."""
    model = _build(MLPConfig(hidden=16, depth=1), (4,))
    x0 = torch.zeros(4000, 4)
    loss = EpsLoss(sched).loss(model, x0, torch.Generator().manual_seed(0))
    assert abs(loss.mean().item() - 1.0) < 0.05


def test_eps_loss_same_generator_state_same_loss_and_checks_shape(sched):
    model = _perturb(_build(MLPConfig(hidden=16, depth=1), (3,)))
    x0 = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    a = EpsLoss(sched).loss(model, x0, torch.Generator().manual_seed(5))
    b = EpsLoss(sched).loss(model, x0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"x0 must have shape \[B, D\]"):
        EpsLoss(sched).loss(model, x0[0], torch.Generator())


def test_unet_attention_sits_at_the_named_resolutions():
    """DDPM's CIFAR-10 layout: attention after every block at 16x16 (level 1 of 32 -> 16 -> 8) and in the middle."""
    from diffgen.models import _Attention
    model = _build(UNetConfig(base=8, mults=(1, 2, 2), blocks=2, attention=(16,)), (3, 32, 32))
    where = [name for name, m in model.named_modules() if isinstance(m, _Attention)]
    assert where == ["down.2.attn", "down.3.attn", "mid.0.attn", "up.2.attn", "up.3.attn"]
    assert not any(isinstance(m, _Attention) for m in _build(UNetConfig(base=8), (3, 32, 32)).modules())
    with pytest.raises(ValueError, match="attention must be"):
        UNetConfig(attention=(0,))
    with pytest.raises(ValueError, match="blocks must be"):
        UNetConfig(blocks=0)


def test_autocast_is_float32_on_the_cpu():
    on = _perturb(_build(UNetConfig(base=8, autocast=True), (3, 32, 32)))
    off = _perturb(_build(UNetConfig(base=8, autocast=False), (3, 32, 32)))
    x, t = _inputs(3 * 32 * 32)
    out = on(x, t)
    assert out.dtype == torch.float32 and torch.equal(out, off(x, t))
