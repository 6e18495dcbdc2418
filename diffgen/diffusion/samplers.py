"""Samplers, pure functions of a denoiser eps_hat(x_t, t).

All share one loop shape: walk the grid t_0 = T > ... > t_{S-1} = 1 > t_S = 0 (`steps`: a number of steps for
`schedule.timesteps`, or a grid such as `schedule.karras_timesteps`), predict
eps_hat, convert it once to x0_hat (`schedule.x0_from_eps`), step. The loop runs in `dtype` (float64 by default:
at t = 1 the empirical optimum has 1 - abar_1 = 1e-4 and float32 rounding shows). `callback(i, t, xt, x0_hat)` is
called at every grid point, including the end (i = S, t = 0, xt = x0_hat = the sample).
Notation: abar = abar_t, abar_next = abar_{t'} for the next (smaller) time t' on the grid.

Randomness is an argument, seeded per sample: the stochastic samplers take `generators`, one per sample
(util.sample_generators), and step i adds noise util.sample_normal(seed_b, i) computed on x_T's device from each
generator's seed (counter-based: the generator's state is neither read nor advanced). Sample b's noise is then a
function of its seed alone, whatever its batch or device. The loop reads no tensor back to the host: the grid and
the schedule's coefficients are Python numbers from the start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..base.util import sample_normal, sample_seeds
from .optimum import Denoiser
from .schedule import Schedule, timesteps, x0_from_eps

Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
VARIANCES = ("beta", "posterior")


@dataclass
class Trajectory:
    """A callback that records the grid times, x_t and x0_hat at every step (tensors [S+1, B, D] once stacked)."""

    t: list[int] = field(default_factory=list)
    xt: list[torch.Tensor] = field(default_factory=list)
    x0_hat: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, i: int, t: int, xt: torch.Tensor, x0_hat: torch.Tensor) -> None:
        self.t.append(int(t))
        self.xt.append(xt.detach().cpu())
        self.x0_hat.append(x0_hat.detach().cpu())

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t [S+1], xt [S+1, B, D], x0_hat [S+1, B, D])."""
        return torch.tensor(self.t), torch.stack(self.xt), torch.stack(self.x0_hat)


def _check(x_T: torch.Tensor, steps, sched: Schedule) -> torch.Tensor:
    """The grid: `timesteps(sched, steps)` for an int, or `steps` itself, a decreasing long tensor ending at 0."""
    if x_T.ndim != 2:
        raise ValueError(f"x_T must have shape [B, D]; got {tuple(x_T.shape)}")
    if isinstance(steps, torch.Tensor):
        grid = steps.cpu()
        if grid.ndim != 1 or len(grid) < 2 or grid.dtype.is_floating_point or int(grid[-1]) != 0 or \
                int(grid[0]) > sched.T or not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError(f"a grid of steps must be a decreasing integer tensor from at most T = {sched.T} down "
                             "to 0 (schedule.timesteps, schedule.karras_timesteps)")
        return grid
    return timesteps(sched, steps)


def _predict(denoiser: Denoiser, sched: Schedule, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_hat, x0_hat) at integer time t for the whole batch, in x's dtype."""
    tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
    eps = denoiser(x, tt).to(x.dtype)
    return eps, x0_from_eps(sched, x, tt, eps)


Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int, int], torch.Tensor]


def _reverse(denoiser: Denoiser, x_T: torch.Tensor, sched: Schedule, grid: torch.Tensor, step: Step,
             callback: Callback | None, dtype: torch.dtype) -> torch.Tensor:
    """The loop every sampler shares: at each grid time t predict (eps_hat, x0_hat), report it, then
    x <- step(x, eps_hat, x0_hat, t, t', i); finally report the sample at t = 0."""
    x = x_T.to(dtype)
    times = grid.tolist()
    for i, (t, t_next) in enumerate(zip(times, times[1:])):
        eps, x0 = _predict(denoiser, sched, x, t)
        if callback:
            callback(i, t, x, x0)
        x = step(x, eps, x0, t, t_next, i)
    if callback:
        callback(len(times) - 1, 0, x, x)
    return x


def _seeds(generators, x_T: torch.Tensor) -> torch.Tensor:
    """The per-sample seeds on x_T's device; a ValueError unless there is one generator per row of x_T."""
    if generators is None or len(generators) != len(x_T):
        got = "none" if generators is None else len(generators)
        raise ValueError(f"generators must hold one generator per sample ({len(x_T)}); got {got}")
    return sample_seeds(generators, x_T.device)


def sample_ddim(denoiser: Denoiser, x_T: torch.Tensor, sched: Schedule, steps: int, *, eta: float = 0.0,
                generators: Sequence[torch.Generator] | None = None, callback: Callback | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_{t'} = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar'). eta = 0: deterministic; eta = 1: DDPM posterior."""
    grid = _check(x_T, steps, sched)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1]; got {eta}")
    if eta > 0 and generators is None:
        raise ValueError("eta > 0 draws fresh noise at every step: pass generators (one per sample)")
    seeds = _seeds(generators, x_T) if eta > 0 else None
    abars = sched.abar.tolist()

    def step(x, eps, x0, t, t_next, i):
        abar, abar_next = abars[t], abars[t_next]
        sigma = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)) ** 0.5
        x = abar_next**0.5 * x0 + max(1 - abar_next - sigma**2, 0.0) ** 0.5 * eps
        return x + sigma * sample_normal(seeds, i, x.shape[1], dtype=x.dtype) if sigma > 0 else x

    return _reverse(denoiser, x_T, sched, grid, step, callback, dtype)


def sample_ddpm(denoiser: Denoiser, x_T: torch.Tensor, sched: Schedule, steps: int | None = None, *,
                generators: Sequence[torch.Generator], variance: str = "beta", callback: Callback | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) on a grid: with alpha = abar / abar', beta = 1 - alpha,
    x_{t'} = [sqrt(abar') beta x0_hat + sqrt(alpha) (1 - abar') x_t] / (1 - abar) + sigma z, where
    sigma^2 = beta ("beta", DDPM's default) or (1 - abar') / (1 - abar) beta ("posterior" = DDIM with eta = 1).
    `steps=None` uses every time step, T of them."""
    steps = sched.T if steps is None else steps
    grid = _check(x_T, steps, sched)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(VARIANCES)}; got {variance!r}")
    seeds = _seeds(generators, x_T)
    abars = sched.abar.tolist()

    def step(x, eps, x0, t, t_next, i):
        abar, abar_next = abars[t], abars[t_next]
        alpha = abar / abar_next
        beta = 1 - alpha
        x = (abar_next**0.5 * beta * x0 + alpha**0.5 * (1 - abar_next) * x) / (1 - abar)
        if t_next == 0:
            return x
        var = beta if variance == "beta" else (1 - abar_next) / (1 - abar) * beta
        return x + var**0.5 * sample_normal(seeds, i, x.shape[1], dtype=x.dtype)

    return _reverse(denoiser, x_T, sched, grid, step, callback, dtype)


def sample_ode(denoiser: Denoiser, x_T: torch.Tensor, sched: Schedule, steps: int, *,
               callback: Callback | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Probability-flow ODE, Heun's method (Karras et al. 2022, Alg. 1) in y = x / sqrt(abar),
    sigma = sqrt((1 - abar) / abar), where dy/dsigma = eps_hat(x, t). The last step (to sigma = 0) is an Euler step;
    Euler alone is exactly DDIM with eta = 0. Uses 2 S - 1 denoiser calls."""
    grid = _check(x_T, steps, sched)
    abars = sched.abar.tolist()

    def step(x, eps, x0, t, t_next, i):
        abar, abar_next = abars[t], abars[t_next]
        sig, sig_next = ((1 - abar) / abar) ** 0.5, ((1 - abar_next) / abar_next) ** 0.5
        y = x / abar**0.5
        y_next = y + (sig_next - sig) * eps
        if t_next > 0:
            eps_next, _ = _predict(denoiser, sched, abar_next**0.5 * y_next, t_next)
            y_next = y + (sig_next - sig) * 0.5 * (eps + eps_next)
        return abar_next**0.5 * y_next

    return _reverse(denoiser, x_T, sched, grid, step, callback, dtype)
