"""Models and objectives: the denoiser interface (shapes, dtypes, scalar t), zero output before training, time
conditioning, use inside a sampler; EpsLoss against a hand computation with the same random draws."""
from __future__ import annotations

import pytest
import torch

from diffgen.base.util import randn, sample_generators
from diffgen.diffusion.models import MLPConfig, MLPDenoiser, UNetConfig, UNetDenoiser, parameter_count, time_embedding
from diffgen.diffusion.objectives import EpsLoss
from diffgen.diffusion.samplers import sample_ddim
from diffgen.diffusion.schedule import add_noise, eps_from_x0

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
    from diffgen.diffusion.models import _Attention
    model = _build(UNetConfig(base=8, mults=(1, 2, 2), blocks=2, attention=(16,)), (3, 32, 32))
    where = [name for name, m in model.named_modules() if isinstance(m, _Attention)]
    assert where == ["down.2.attn", "down.3.attn", "mid.0.attn", "up.3.attn", "up.4.attn", "up.5.attn"]
    assert not any(isinstance(m, _Attention) for m in _build(UNetConfig(base=8), (3, 32, 32)).modules())
    with pytest.raises(ValueError, match="attention must be"):
        UNetConfig(attention=(0,))
    with pytest.raises(ValueError, match="blocks must be"):
        UNetConfig(blocks=0)


def test_autocast_is_float32_on_the_cpu():
    on = _perturb(_build(UNetConfig(base=8), (3, 32, 32)))  # the default: bf16 autocast on CUDA only
    off = _perturb(_build(UNetConfig(base=8, autocast=()), (3, 32, 32)))
    x, t = _inputs(3 * 32 * 32)
    with torch.no_grad():
        out = on(x, t)
        assert out.dtype == torch.float32 and torch.equal(out, off(x, t))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast does not leak into the model
            assert torch.equal(on(x, t), out)
        cpu_bf16 = _perturb(_build(UNetConfig(base=8, autocast=("cpu", "cuda")), (3, 32, 32)))(x, t)
    assert cpu_bf16.dtype == torch.float32 and not torch.equal(cpu_bf16, out)  # asked for: bf16 on the CPU too
    torch.testing.assert_close(cpu_bf16, out, rtol=0.05, atol=0.05 * float(out.abs().max()))
    for bad in ((True,), ("tpu",)):
        with pytest.raises(ValueError, match="autocast must be a tuple of device types from cpu, cuda"):
            UNetConfig(autocast=bad)


def _ddpm_parameters(ch=128, mults=(1, 2, 2, 2), blocks=2, attention_levels=(1,), image_channels=3) -> int:
    """DDPM's CIFAR-10 U-Net (Ho et al. 2020, diffusion_tf/models/unet.py) counted layer by layer from its source:
    conv_in, the 2-layer time MLP on a ch-dim sinusoid, resnet blocks (GN, conv, temb dense, GN, conv, NIN shortcut
    when channels change), attention (GN, q, k, v, proj_out as NINs), conv downsample/upsample, GN + conv_out."""
    conv = lambda i, o, k=3: i * o * k * k + o  # noqa: E731
    res = lambda i, o: (2 * i + conv(i, o) + 4 * ch * o + o + 2 * o + conv(o, o)  # noqa: E731
                        + (conv(i, o, 1) if i != o else 0))
    attn = lambda c: 2 * c + 4 * conv(c, c, 1)  # noqa: E731
    total = conv(image_channels, ch) + (ch * 4 * ch + 4 * ch) + (4 * ch * 4 * ch + 4 * ch)
    hs, c = [ch], ch
    for level, m in enumerate(mults):
        for _ in range(blocks):
            total += res(c, ch * m) + (attn(ch * m) if level in attention_levels else 0)
            c = ch * m
            hs.append(c)
        if level < len(mults) - 1:
            total += conv(c, c)
            hs.append(c)
    total += res(c, c) + attn(c) + res(c, c)
    for level in reversed(range(len(mults))):
        for _ in range(blocks + 1):
            c_out = ch * mults[level]
            total += res(c + hs.pop(), c_out) + (attn(c_out) if level in attention_levels else 0)
            c = c_out
        if level > 0:
            total += conv(c, c)
    return total + 2 * c + conv(c, image_channels)


def test_unet_is_ddpm_layer_for_layer_and_counts_its_parameters():
    """DDPM's CIFAR-10 network has 35.7 M parameters; ours with its configuration has exactly as many, and
    parameter_count (built on the meta device) counts the built model without touching the global RNG."""
    ddpm = UNetConfig(base=128, mults=(1, 2, 2, 2), time_dim=128, blocks=2, attention=(16,), dropout=0.1)
    assert _ddpm_parameters() == 35_746_307
    torch.manual_seed(3)
    before = torch.get_rng_state()
    assert parameter_count(ddpm, (3, 32, 32)) == 35_746_307
    assert torch.equal(torch.get_rng_state(), before)
    small = UNetConfig(base=8, mults=(1, 2, 2), time_dim=8, blocks=1, attention=(8,))
    assert parameter_count(small, (1, 16, 16)) == sum(p.numel() for p in _build(small, (1, 16, 16)).parameters()) \
        == _ddpm_parameters(8, (1, 2, 2), 1, (1,), 1)
    assert parameter_count(MLPConfig(hidden=4, depth=1, time_dim=2), (3,)) == \
        sum(p.numel() for p in _build(MLPConfig(hidden=4, depth=1, time_dim=2), (3,)).parameters())


def test_dropout_sits_between_the_convolutions_and_only_acts_in_training():
    model = _perturb(_build(UNetConfig(base=8, dropout=0.5), (1, 8, 8)))
    assert all(isinstance(b.block.dropout, torch.nn.Dropout) and b.block.dropout.p == 0.5
               for b in [*model.down, *model.mid, *model.up])
    assert not any(isinstance(m, torch.nn.Dropout) for m in _build(UNetConfig(base=8), (1, 8, 8)).modules())
    x, t = _inputs(64)
    with torch.no_grad():
        torch.manual_seed(0)
        a, b = model(x, t), model(x, t)  # training mode: fresh masks
        model.eval()
        c, d = model(x, t), model(x, t)
    assert not torch.equal(a, b) and torch.equal(c, d)
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
            UNetConfig(dropout=bad)
