"""M nets of one architecture as one module: their parameters stacked on a leading member dimension and evaluated
with torch.func.vmap (one batched pass for every seed and control of an experiment)."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

StateDict = dict[str, torch.Tensor]


class Ensemble:
    """M copies of one architecture evaluated together: x [M, B, D], t [M, B] -> eps_hat [M, B, D], member m with the
    state state[name][m] (torch.func.vmap over torch.func.functional_call)."""

    def __init__(self, base: nn.Module, state: StateDict):
        self.base = base  # the architecture (its own tensors are never used)
        self.state = state  # name -> [M, ...]: parameters and buffers
        self.n_members = len(next(iter(state.values())))
        names = dict(base.named_parameters())
        params = {k: v for k, v in state.items() if k in names}
        buffers = {k: v for k, v in state.items() if k not in names}
        self._call = batched_call(base, params, buffers)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.n_members or t.shape != x.shape[:2]:
            raise ValueError(f"need x [M={self.n_members}, B, D] and t [M, B]; got {tuple(x.shape)} and "
                             f"{tuple(t.shape)}")
        return self._call(x, t)

    def denoiser(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The ensemble as one denoiser of flat batches [M K, D] (member m gets rows m K .. m K + K - 1), for the
        samplers."""
        def denoise(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t = torch.as_tensor(t, device=xt.device)
            t = t.expand(len(xt)) if t.ndim == 0 else t
            M = self.n_members
            return self(xt.reshape(M, -1, *xt.shape[1:]), t.reshape(M, -1)).reshape(xt.shape)
        return denoise

    def member(self, m: int) -> nn.Module:
        """Member m as a plain module (frozen, eval mode), on the ensemble's device."""
        if not 0 <= m < self.n_members:
            raise ValueError(f"m must lie in [0, {self.n_members}); got {m!r}")
        device = next(iter(self.state.values())).device
        module = copy.deepcopy(self.base).to_empty(device=device)
        module.load_state_dict({k: v[m] for k, v in self.state.items()})
        return _frozen(module)


def batched_call(base: nn.Module, params: StateDict, buffers: StateDict):
    """model(x [M, B, D], t [M, B]) -> [M, B, D] with member m's parameters params[name][m]: vmap over the members,
    each with its own random draws (dropout masks); one member is called directly (vmap would only add its
    overhead)."""
    if len(next(iter(params.values()))) == 1:
        def single(x, t):
            state = ({k: v[0] for k, v in params.items()}, {k: v[0] for k, v in buffers.items()})
            return functional_call(base, state, (x[0], t[0]))[None]
        return single
    forward = vmap(lambda p, b, x, t: functional_call(base, (p, b), (x, t)), randomness="different")
    return lambda x, t: forward(params, buffers, x, t)


class StackedMembers(nn.Module):
    """The members' stacked parameters as the parameters of one module, the form DistributedDataParallel wraps:
    forward(x [M, B, D], t [M, B]) is batched_call over them."""

    def __init__(self, base: nn.Module, params: StateDict, buffers: StateDict):
        super().__init__()
        self.names = list(params)
        self.weights = nn.ParameterList([nn.Parameter(v.detach()) for v in params.values()])
        self._fixed = [base, buffers]  # in a list: the meta-device base and the buffers are not DDP's to sync

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        base, buffers = self._fixed
        return batched_call(base, dict(zip(self.names, self.weights)), buffers)(x, t)


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)
