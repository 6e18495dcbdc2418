"""The GPU's failure modes reproduced on the CPU: attention under vmap and bf16 autocast, tensors left on the host,
and host-device syncs inside the training and sampling loops.

Stand-in for a second device: the `meta` device. A meta tensor has a shape, a dtype and a device but no values, so
every op runs (fast) while (1) an op mixing a meta tensor with a CPU tensor of more than one element raises, as
CUDA does; (2) reading a value back (.item(), bool(), float(), .tolist(), .cpu()) raises, which is what a host-device
sync is on a GPU; and (3) the HostWatch mode below fails on every op that creates a CPU tensor of more than one
element while armed: a draw made on the CPU and copied over, or a CPU table indexed by a device tensor (which meta,
unlike CUDA, allows). CPU scalars (0-dim) are allowed, as CUDA allows them: torch passes them to kernels as
arguments (AdamW's step counters are such scalars). A TorchDispatchMode alone cannot tell a stray CPU tensor from a
device one on a CPU-only machine; meta plus the mode can. The meta device has no random generator: its random ops
ignore the CPU generator they are given, so the device code paths (a generator on the device) run unchanged.
The CPU runs below add the same mode in its second role: it fails on aten._local_scalar_dense (what .item(), bool()
and float() of a tensor dispatch to), so a CPU training or sampling step with real numbers is checked for syncs too.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from diffgen.base.util import sample_generators
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig, PlainMLPConfig, UNetConfig
from diffgen.diffusion.objectives import EpsLoss, ForwardTimeLoss, WeightedEpsLoss
from diffgen.diffusion.samplers import sample_ddim, sample_ddpm, sample_ode
from diffgen.diffusion.train import train_ensemble

META = torch.device("meta")
ATTENTION_UNET = UNetConfig(base=8, mults=(1, 2), attention=(4,), dropout=0.2)  # attention at 4x4 of 8x8 images


class HostWatch(TorchDispatchMode):
    """While `armed`, records (in `seen`) every op that returns a CPU tensor of more than one element when `device`
    is not the CPU, and every aten._local_scalar_dense of a tensor on `device` (a host-device sync there). Paused
    inside optimizer.step, whose foreach path reads its step counters, CPU scalars on every device by design (CUDA
    training uses fused AdamW, which keeps them on the GPU)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.armed, self.paused, self.seen, self.hooks = torch.device(device), False, False, [], []

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.hooks = [register_optimizer_step_pre_hook(lambda *a: setattr(self, "paused", True)),
                      register_optimizer_step_post_hook(lambda *a: setattr(self, "paused", False))]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        watching = self.armed and not self.paused
        if watching and func is torch.ops.aten._local_scalar_dense.default and args[0].device == self.device:
            self.seen.append(f"host sync: {func} of a {args[0].device} tensor")
        out = func(*args, **(kwargs or {}))
        if watching and self.device.type != "cpu":
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.device.type == "cpu" and o.numel() > 1:
                    self.seen.append(f"{func} made a CPU tensor of shape {tuple(o.shape)}")
        return out


def _arm(watch: HostWatch):
    """A sampler callback that arms the watch after the first denoiser call (the warm-up: grid, seeds, tables)."""
    def callback(i, t, xt, x0):
        watch.armed = True
        assert xt.device == watch.device and x0.device == watch.device
    return callback


# ------------------------------------------------------------------------------------------ objectives
OBJECTIVES = {"eps": lambda s: EpsLoss(s), "uniform": lambda s: ForwardTimeLoss(s, "uniform"),
              "uniform-3": lambda s: ForwardTimeLoss(s, "uniform", 3), "one": lambda s: ForwardTimeLoss(s, "one"),
              "full": lambda s: ForwardTimeLoss(s, "full"),
              "weighted": lambda s: WeightedEpsLoss(ForwardTimeLoss(s, "one"))}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_draws_and_losses_live_on_the_device_of_their_input(sched, name):
    objective = OBJECTIVES[name](sched)
    x0 = torch.empty(2, 8, 3, device=META)  # an ensemble's batch [M, B, D], as train_ensemble evaluates it
    model = lambda x, t: 0.5 * x + t[..., None]  # noqa: E731
    with HostWatch(META) as watch:
        for armed in (False, True):  # a warm-up call first: tables made once per device (WeightedEpsLoss's weights)
            watch.armed = armed
            draws = [objective.draw(x0[m], torch.Generator().manual_seed(m)) for m in range(2)]
            stacked = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
            loss = objective.loss_from(model, x0, stacked)
    assert not watch.seen, watch.seen
    assert all(v.device == META for d in draws for v in d.values()), {k: v.device for k, v in draws[0].items()}
    assert loss.device == META and loss.shape == (2, 8)


# ------------------------------------------------------------------------------------------ samplers
SAMPLERS = {"ddim eta 0": lambda d, x, s, cb: sample_ddim(d, x, s, 6, callback=cb),
            "ddim eta 0.5": lambda d, x, s, cb: sample_ddim(d, x, s, 6, eta=0.5, generators=sample_generators(0, 4),
                                                            callback=cb),
            "ddpm beta": lambda d, x, s, cb: sample_ddpm(d, x, s, 6, generators=sample_generators(0, 4), callback=cb),
            "ddpm posterior": lambda d, x, s, cb: sample_ddpm(d, x, s, 6, generators=sample_generators(0, 4),
                                                              variance="posterior", callback=cb),
            "ode": lambda d, x, s, cb: sample_ode(d, x, s, 6, callback=cb)}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_keep_every_tensor_on_the_device_and_never_sync(sched, name):
    torch.manual_seed(0)
    denoiser = ATTENTION_UNET.build((1, 8, 8)).eval().to(META)
    x_T = torch.empty(4, 64, dtype=torch.float64, device=META)
    with HostWatch(META) as watch:
        z = SAMPLERS[name](denoiser, x_T, sched, _arm(watch))
    assert watch.armed and not watch.seen, watch.seen
    assert z.device == META and z.shape == (4, 64) and z.dtype == torch.float64


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_steps_on_the_cpu_read_nothing_back(sched, name):
    torch.manual_seed(0)
    denoiser = MLPConfig(hidden=16, depth=1).build((3,)).eval()
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with HostWatch(torch.device("cpu")) as watch:
        z = SAMPLERS[name](denoiser, x_T, sched, _arm(watch))
    assert watch.armed and not watch.seen, watch.seen
    assert torch.isfinite(z).all()


# ------------------------------------------------------------------------------------------ training steps
class Stop(Exception):
    pass


def _watched_training(model_cfg, objective, sets, shape, device, tmp_path, steps: int = 4, **kwargs):
    """train_ensemble's first `steps` steps on `device` under a HostWatch armed after step 1; the losses handed to
    the callback at each step."""
    seen = []
    with HostWatch(device) as watch:
        def callback(step, losses):
            seen.append(losses)
            watch.armed = True
            if step == steps:
                raise Stop
        with pytest.raises(Stop):
            train_ensemble(model_cfg, objective, sets, shape, TrainConfig(train_steps=100, batch_size=8, warmup=2),
                           seeds=(0, 1, 0), streams=(0, 0, 1), device=device, cache_dir=tmp_path, progress=False,
                           callback=callback, **kwargs)
    assert not watch.seen, watch.seen[:5]
    return seen


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_training_steps_keep_every_tensor_on_the_device(sched, name, tmp_path):
    sets = [torch.randn(5, 3, generator=torch.Generator().manual_seed(m)) for m in range(3)]
    losses = _watched_training(PlainMLPConfig(hidden=8, depth=1, time_dim=4), OBJECTIVES[name](sched), sets, (3,),
                               META, tmp_path)
    assert [(v.device, tuple(v.shape)) for v in losses] == [(META, (3,))] * 4


def test_unet_training_steps_with_attention_and_dropout_stay_on_the_device(sched, tmp_path):
    sets = [torch.rand(6, 64, generator=torch.Generator().manual_seed(m)) for m in range(3)]
    losses = _watched_training(ATTENTION_UNET, EpsLoss(sched), sets, (1, 8, 8), META, tmp_path, steps=3)
    assert losses[-1].device == META


@pytest.mark.parametrize("name", ["eps", "uniform", "weighted"])
def test_training_steps_on_the_cpu_read_nothing_back(sched, name, tmp_path):
    sets = [torch.randn(5, 3, generator=torch.Generator().manual_seed(m)) for m in range(3)]
    losses = _watched_training(PlainMLPConfig(hidden=8, depth=1, time_dim=4), OBJECTIVES[name](sched), sets, (3,),
                               torch.device("cpu"), tmp_path)
    assert all(torch.isfinite(v).all() for v in losses)


# ------------------------------------------------------------------------------------------ attention precision
def _members(cfg, shape, n: int):
    """n perturbed members of cfg (the zero-initialised output layer would hide every other gradient)."""
    members = []
    for m in range(n):
        torch.manual_seed(m)
        model = cfg.build(shape)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape))
        members.append(model)
    return members


def _grads_together_and_apart(cfg, shape, n: int = 3):
    members = _members(cfg, shape, n)
    base = members[0]
    params, buffers = stack_module_state(members)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 4, base.dim, generator=g)
    t = torch.randint(1, 1001, (n, 4), generator=g)
    target = torch.randn(n, 4, base.dim, generator=g)
    together = vmap(lambda p, b, x, t: functional_call(base, (p, b), (x, t)))(params, buffers, x, t)
    (together - target).pow(2).mean((1, 2)).sum().backward()  # the sum of the members' mean losses
    apart = []
    for m, member in enumerate(members):
        (member(x[m], t[m]) - target[m]).pow(2).mean().backward()
        apart.append({k: p.grad for k, p in member.named_parameters()})
    return {k: v.grad for k, v in params.items()}, apart


def test_members_trained_together_under_bf16_autocast_get_the_gradients_of_each_member_alone():
    """Members evaluated together (vmap) under bf16 autocast, asked for on the CPU, get the gradients of each member
    alone within bf16 rounding: they differ by at most twice what bf16 changes in one member's gradients (alone, bf16
    against float32), which is itself more than float32 rounding (so autocast did run). On the CPU the vmapped
    convolutions stay float32 (their batching rule runs before CPU autocast; the matmuls are bf16), so the two sides
    differ by one side's bf16 rounding. CUDA's crash itself (a bf16 softmax input with a float32 result in the softmax
    backward) does not happen on the CPU; the dtypes that cause it are the next test's."""
    bf16 = UNetConfig(base=8, mults=(1, 2), attention=(4,), autocast=("cpu", "cuda"))
    together, apart = _grads_together_and_apart(bf16, (1, 8, 8))
    _, fp32 = _grads_together_and_apart(UNetConfig(base=8, mults=(1, 2), attention=(4,), autocast=()), (1, 8, 8))
    for m in range(3):
        diff = torch.stack([(together[k][m] - apart[m][k]).norm() for k in together]).norm()
        bf16_effect = torch.stack([(fp32[m][k] - apart[m][k]).norm() for k in together]).norm()
        scale = torch.stack([apart[m][k].norm() for k in together]).norm()
        assert bf16_effect > 1e-3 * scale  # bf16 ran: its gradients are not the float32 ones (float32: ~1e-6)
        assert diff <= 2 * bf16_effect and diff < 0.05 * scale, (m, float(diff / scale), float(bf16_effect / scale))


class DtypeLog(TorchDispatchMode):
    """Records the floating dtypes of the inputs of every softmax and attention op, and whether any op saw bf16."""

    def __init__(self):
        super().__init__()
        self.attention, self.bf16 = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype.is_floating_point]
        if "softmax" in func.name() or "scaled_dot_product" in func.name():
            self.attention.append((func.name(), dtypes))
        self.bf16 |= torch.bfloat16 in dtypes
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("together", [True, False], ids=["vmap", "alone"])
def test_attention_runs_in_float32_under_bf16_autocast(together):
    """What CUDA will do, checked on the CPU: with autocast on (ops run in bf16), the softmax and attention ops see
    float32 inputs, forward and backward, whether the members are vmapped (SDPA decomposed into bmm + softmax: the
    bmm's bf16 output would feed the softmax) or one runs alone (SDPA itself)."""
    cfg = UNetConfig(base=8, mults=(1, 2), attention=(4,), autocast=("cpu", "cuda"))
    members = _members(cfg, (1, 8, 8), 2 if together else 1)
    with DtypeLog() as log:
        if together:
            params, buffers = stack_module_state(members)
            out = vmap(lambda p, b, x, t: functional_call(members[0], (p, b), (x, t)))(
                params, buffers, torch.randn(2, 3, 64), torch.randint(1, 1001, (2, 3)))
        else:
            out = members[0](torch.randn(3, 64), torch.randint(1, 1001, (3,)))
        out.pow(2).sum().backward()
    assert log.bf16  # autocast is on
    assert any("softmax_backward" in name or "attention_backward" in name for name, _ in log.attention)
    assert all(dtype == torch.float32 for _, dtypes in log.attention for dtype in dtypes), log.attention
