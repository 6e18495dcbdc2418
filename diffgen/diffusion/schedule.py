"""The noise schedule (float64) and the conversions between x_t, x0 and eps.

Index convention: t = 0..T, abar[0] = 1 (clean data), abar[t] = prod_{s<=t} (1 - beta_s).
Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
Tensors of time steps are looked up in a copy of the table kept on their device (made once per device) and checked
without a host-device sync (util.assert_in_range), so a training or sampling step never waits for the GPU here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..base.util import assert_in_range


@dataclass(frozen=True, eq=False)
class Schedule:
    """Frozen float64 schedule; `betas[t-1]` is beta_t, `abar[t]` is abar_t for t = 0..T."""

    name: str
    betas: torch.Tensor  # [T], float64

    def __post_init__(self):
        b = self.betas
        if b.ndim != 1 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        object.__setattr__(self, "betas", b.to(torch.float64))
        abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - self.betas, 0)])
        object.__setattr__(self, "abar", abar)
        object.__setattr__(self, "_tables", {abar.device: abar})  # device -> abar there (not a field: not in keys)

    @property
    def T(self) -> int:
        return len(self.betas)

    def alpha_bar(self, t: torch.Tensor | int) -> torch.Tensor:
        """abar_t for integer t in [0, T] (any shape), float64 on t's device; t out of range is a ValueError (on a
        GPU a device-side assertion: checking there without a sync)."""
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"t must be an integer tensor; got {t.dtype}")
        assert_in_range(t, 0, self.T, f"t must lie in [0, {self.T}]")
        return self.table(t.device)[t]

    def table(self, device: torch.device | str) -> torch.Tensor:
        """abar [T + 1] (float64) on `device`, copied there once and kept."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = self.abar.to(device)
        return self._tables[device]

    def sigma(self, t) -> torch.Tensor:
        """sigma_t = sqrt(1 - abar_t), the noise scale of x_t."""
        return (1 - self.alpha_bar(t)).sqrt()

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, T={self.T})"


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """DDPM (Ho et al. 2020): beta_t linear from beta_start to beta_end over t = 1..T."""
    if T < 1:
        raise ValueError(f"T must be >= 1; got {T}")
    return Schedule("linear", torch.linspace(beta_start, beta_end, T, dtype=torch.float64))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal 2021: abar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2); beta clipped at max_beta."""
    if T < 1:
        raise ValueError(f"T must be >= 1; got {T}")
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return Schedule("cosine", (1 - abar[1:] / abar[:-1]).clamp(max=max_beta))


def _coefficients(sched: Schedule, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) computed in float64, then cast to broadcast against x [B, ...] of `like`.
    (1 - abar_t in float32 would lose three digits at t = 1, where 1 - abar_1 = 1e-4.) A Python int t gives 0-dim
    CPU coefficients, which torch passes to device kernels as scalars (no copy to the device)."""
    abar = sched.alpha_bar(t if isinstance(t, int) else torch.as_tensor(t, device=like.device))
    coefs = []
    for c in (abar.sqrt(), (1 - abar).sqrt()):
        c = c.to(like.dtype)
        coefs.append(c.reshape(c.shape + (1,) * (like.ndim - c.ndim)) if c.ndim else c)
    return coefs[0], coefs[1]


def add_noise(sched: Schedule, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    a, s = _coefficients(sched, t, x0)
    return a * x0 + s * eps


def x0_from_eps(sched: Schedule, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)."""
    a, s = _coefficients(sched, t, xt)
    return (xt - s * eps) / a


def eps_from_x0(sched: Schedule, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t); undefined at t = 0."""
    a, s = _coefficients(sched, t, xt)
    return (xt - a * x0) / s


def timesteps(sched: Schedule, steps: int) -> torch.Tensor:
    """Decreasing sampler grid of `steps` integer times from T down to 1 ("trailing" spacing), then 0.

    Returns a long tensor [steps + 1]: t_0 = T > t_1 > ... > t_{steps-1} = 1 > t_steps = 0.
    """
    if not 1 <= steps <= sched.T:
        raise ValueError(f"steps must be an integer in [1, {sched.T}]; got {steps}")
    if steps == 1:
        grid = torch.tensor([sched.T], dtype=torch.long)
    else:
        grid = torch.linspace(sched.T, 1, steps, dtype=torch.float64).round().long()
    return torch.cat([grid, torch.zeros(1, dtype=torch.long)])


def karras_timesteps(sched: Schedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Decreasing sampler grid refined at low noise (Karras et al. 2022, eq. 5): sigma_i = (sigma_max^(1/rho) +
    i/(S-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho on sigma_t = sqrt((1 - abar_t) / abar_t), each rounded to the
    integer t of nearest log sigma; repeats are dropped, so the grid can hold fewer than `steps` times. Returns a long
    tensor [S' + 1] from T down to 1, then 0, the shape `timesteps` returns (the samplers take either)."""
    if not 2 <= steps <= sched.T:
        raise ValueError(f"steps must be an integer in [2, {sched.T}]; got {steps}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0; got {rho}")
    log_sigma = 0.5 * ((1 - sched.abar[1:]) / sched.abar[1:]).log()  # [T], increasing in t
    lo, hi = log_sigma[0].exp() ** (1 / rho), log_sigma[-1].exp() ** (1 / rho)
    wanted = (hi + torch.linspace(0, 1, steps, dtype=torch.float64) * (lo - hi)) ** rho
    t = (log_sigma[None] - wanted.log()[:, None]).abs().argmin(1) + 1
    grid = torch.unique_consecutive(t)
    grid[0], grid[-1] = sched.T, 1
    return torch.cat([torch.unique_consecutive(grid), torch.zeros(1, dtype=torch.long)])
