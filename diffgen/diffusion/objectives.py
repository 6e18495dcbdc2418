"""Training objectives, per-sample losses `objective.loss(model, x0 [B, D], generator) -> [B]`.

An objective is two steps: `draw(x0, generator)` makes the random draws of one batch (a dict of tensors with leading
dimension B), and `loss_from(model, x0, draw)` evaluates the per-sample losses, for x0 [..., B, D] and draws stacked
to [..., B, ...]: an ensemble of M models (train.train_ensemble) evaluates [M, B, D] at once, each member with the
draws of its seed. loss_from is model_inputs (what the model is called on) then loss_given (the loss of its
prediction), so that members of several objectives share one call of the ensemble. `loss` is both steps for one
model. `train` reduces the per-sample losses and never asks which objective it got. All randomness comes from
`generator`. `draw` makes every tensor on x0's device with it (train passes a generator there,
util.stream_generator: no host work and no copy per step; on the CPU the numbers are those of every earlier
version); `loss` draws where its generator lives and moves the draws to x0's device once, so a CPU
generator gives the same numbers whatever x0's device (the common random numbers of metrics.objective_samples).
Nothing here reads a tensor back to the host: checks of drawn times run on their device (util.assert_in_range).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Protocol

import torch

from ..base.util import assert_in_range
from .schedule import Schedule, add_noise

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # eps_hat(x_t [B, D], t [B]) -> [B, D]


Draw = dict  # name -> tensor with leading dimension B (or [..., B] once stacked)


class Objective(Protocol):
    def draw(self, x0: torch.Tensor, generator: torch.Generator) -> Draw:
        """The random draws for the clean batch x0 [B, D] (only its shape, dtype and device are used)."""

    def loss_from(self, model: Model, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Per-sample loss [..., B] of `model` on x0 [..., B, D] with the draws `draw`:
        loss_given(model(*model_inputs(x0, draw)), x0, draw)."""

    def model_inputs(self, x0: torch.Tensor, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t [..., B, D], t [..., B]): what the model is called on."""

    def loss_given(self, pred: torch.Tensor, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Per-sample loss [..., B] of the model's prediction pred = model(*model_inputs(x0, draw))."""

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-sample loss [B] of `model` on the clean batch x0 [B, D], random draws from `generator`."""


def _check_batch(x0: torch.Tensor) -> None:
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape [B, D]; got {tuple(x0.shape)}")


def _normal(x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)


def _loss(objective, model: Model, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """objective.loss: the draws made on the generator's device (x0 only lends its shape and dtype), then moved."""
    _check_batch(x0)
    like = torch.empty((), dtype=x0.dtype, device=generator.device).expand(x0.shape)
    draw = {k: v.to(x0.device) for k, v in objective.draw(like, generator).items()}
    return objective.loss_from(model, x0, draw)


@dataclass(frozen=True)
class EpsLoss:
    """The standard objective (PAPER.md, L_S): || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps ||^2 / D,
    t ~ Uniform{1..T}, eps ~ N(0, I); its pointwise minimiser is the empirical optimum eps*."""

    sched: Schedule  # the forward process: T and abar_t

    def draw(self, x0: torch.Tensor, generator: torch.Generator) -> Draw:
        """t [B] (long) first, then eps [B, D] in x0's dtype, both on x0's device."""
        _check_batch(x0)
        t = torch.randint(1, self.sched.T + 1, (len(x0),), generator=generator, device=x0.device)
        return {"t": t, "eps": _normal(x0, generator)}

    def loss_from(self, model: Model, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        """[..., B]: mean over D of (model(x_t, t) - eps)^2."""
        return self.loss_given(model(*self.model_inputs(x0, draw)), x0, draw)

    def model_inputs(self, x0: torch.Tensor, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        return add_noise(self.sched, x0, draw["t"], draw["eps"]), draw["t"]

    def loss_given(self, pred: torch.Tensor, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        return (pred.to(x0.dtype) - draw["eps"]).pow(2).mean(-1)

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _loss(self, model, x0, generator)


GAPS = ("uniform", "one", "full")  # the gap distributions of ForwardTimeLoss (a validated field, not a registry)


def _check_gap(sched: Schedule, t: torch.Tensor, s: torch.Tensor) -> None:
    """ValueError unless 0 <= s < t <= T elementwise (x_t is defined from x_s for s < t only)."""
    if t.dtype.is_floating_point or s.dtype.is_floating_point:
        raise ValueError("t and s must be integer time steps")
    if bool((t < 1).any()) or bool((t > sched.T).any()):
        raise ValueError(f"t must lie in 1..T = {sched.T}; got values from {int(t.min())} to {int(t.max())}")
    if bool((s < 0).any()) or bool((s >= t).any()):
        raise ValueError("s must satisfy 0 <= s < t (the gap noise xi_{t,s} runs from s to t)")


def forward_time_coef(sched: Schedule, t, s) -> torch.Tensor:
    """c_{t,s} = sqrt((1 - abar_t / abar_s) / (1 - abar_t)) in float64 (Tweedie: E[xi_{t,s} | x_t] = c E[eps | x_t]);
    a ValueError unless 0 <= s < t <= T."""
    t, s = torch.broadcast_tensors(torch.as_tensor(t), torch.as_tensor(s))
    _check_gap(sched, t, s)
    r = sched.alpha_bar(t) / sched.alpha_bar(s)
    return ((1 - r) / (1 - sched.alpha_bar(t))).sqrt()


@dataclass(frozen=True)
class ForwardDraw:
    """One forward-time draw per row: times t > s, the states x_s and x_t, the gap noise xi_{t,s} and the total
    noise eps of x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (what EpsLoss would regress onto)."""

    t: torch.Tensor  # [B] long, 1..T
    s: torch.Tensor  # [B] long, 0..t-1
    xs: torch.Tensor  # [B, D]
    xt: torch.Tensor  # [B, D]
    xi: torch.Tensor  # [B, D]
    eps: torch.Tensor  # [B, D]
    c: torch.Tensor  # [B, 1] c_{t,s} in x0's dtype


def forward_draw(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                 generator: torch.Generator) -> ForwardDraw:
    """forward_states with the noises drawn from `generator`: xi [B, D] first, then eps_s [B, D] (on the generator's
    device, then moved to x0's), so that with s = 0 the draw of xi is the draw of eps in EpsLoss."""
    _check_batch(x0)
    t, s = torch.as_tensor(t), torch.as_tensor(s)
    if t.shape != (len(x0),) or s.shape != t.shape:
        raise ValueError(f"t and s must be [B = {len(x0)}] integer tensors; got {tuple(t.shape)}, {tuple(s.shape)}")
    _check_gap(sched, t, s)
    noise = lambda: torch.randn(x0.shape, generator=generator, dtype=x0.dtype,  # noqa: E731
                                device=generator.device).to(x0.device)
    xi = noise()
    return forward_states(sched, x0, t.to(x0.device), s.to(x0.device), xi, noise())


def forward_states(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, xi: torch.Tensor,
                   eps_s: torch.Tensor) -> ForwardDraw:
    """x_t = sqrt(abar_t / abar_s) x_s + sqrt(1 - abar_t / abar_s) xi, x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps_s,
    for x0, xi, eps_s [..., B, D] and t, s [..., B] on x0's device with 0 <= s < t <= T (checked there, no sync).
    Coefficients are formed in float64."""
    assert_in_range(t - s, 1, sched.T, "t and s must satisfy 0 <= s < t <= T")
    abar_t, abar_s = sched.alpha_bar(t)[..., None], sched.alpha_bar(s)[..., None]
    r = abar_t / abar_s
    col = lambda v: v.to(x0.dtype)  # noqa: E731
    xs = col(abar_s.sqrt()) * x0 + col((1 - abar_s).sqrt()) * eps_s
    xt = col(r.sqrt()) * xs + col((1 - r).sqrt()) * xi
    # the same x_t written as sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    eps = (col((r * (1 - abar_s)).sqrt()) * eps_s + col((1 - r).sqrt()) * xi) / col((1 - abar_t).sqrt())
    return ForwardDraw(t=t, s=s, xs=xs, xt=xt, xi=xi, eps=eps, c=col(((1 - r) / (1 - abar_t)).sqrt()))


@dataclass(frozen=True)
class ForwardTimeLoss:
    """The forward-time objective (our reconstruction of the later revision's summary): t ~ Uniform{1..T}, a gap
    k = t - s >= 1 drawn from `gap`, x_t from x_s by the forward process, and
        loss = || c_{t,s} eps_theta(x_t, t) - xi_{t,s} ||^2 / D,   c_{t,s} = sqrt((1 - abar_t/abar_s) / (1 - abar_t)).
    Since E[xi_{t,s} | x_t] = c_{t,s} E[eps | x_t] (Tweedie) and x_t's law does not depend on s, the pointwise
    minimiser is E[eps | x_t], i.e. eps* on a finite training set, for every gap distribution."""

    sched: Schedule  # the forward process: T and abar_t
    gap: str = "uniform"  # "uniform": k ~ Uniform{1..min(t, max_gap)}; "one": k = 1 (xi_{t,t-1}); "full": k = t (= EpsLoss)
    max_gap: int | None = None  # largest gap of "uniform" (None: up to t, so s = 0 is possible)

    def __post_init__(self):
        if self.gap not in GAPS:
            raise ValueError(f"gap must be one of {', '.join(GAPS)}; got {self.gap!r}")
        if self.max_gap is not None and (not isinstance(self.max_gap, int) or isinstance(self.max_gap, bool)
                                         or self.max_gap < 1):
            raise ValueError(f"max_gap must be None or a positive integer; got {self.max_gap!r}")
        if self.max_gap is not None and self.gap != "uniform":
            raise ValueError(f"max_gap applies to gap='uniform' only; got gap={self.gap!r}, max_gap={self.max_gap}")

    def gap_probs(self, t: int) -> torch.Tensor:
        """p(s | t) for s = 0..t-1 as a float64 tensor [t] (the distribution `draw_times` samples from)."""
        if not isinstance(t, int) or not 1 <= t <= self.sched.T:
            raise ValueError(f"t must be an integer in [1, {self.sched.T}]; got {t!r}")
        p = torch.zeros(t, dtype=torch.float64)
        if self.gap == "one":
            p[t - 1] = 1.0
        elif self.gap == "full":
            p[0] = 1.0
        else:
            kmax = t if self.max_gap is None else min(t, self.max_gap)
            p[t - kmax:] = 1.0 / kmax  # s = t - k, k = 1..kmax
        return p

    def signal_share(self, t: int) -> float:
        """E_{s|t} c_{t,s}^2: the share of the target xi_{t,s}'s variance that is signal (its weight of time t, were
        the target exactly c_{t,s} eps; 1 for the standard objective)."""
        probs = self.gap_probs(t)
        return float((probs * forward_time_coef(self.sched, t, torch.arange(t)) ** 2).sum())

    def draw_times(self, batch: int, generator: torch.Generator, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t [B], s [B]) on `device` (default: the generator's): t ~ Uniform{1..T} first, then (for "uniform" only)
        the gap."""
        device = generator.device if device is None else device
        t = torch.randint(1, self.sched.T + 1, (batch,), generator=generator, device=device)
        if self.gap == "one":
            return t, t - 1
        if self.gap == "full":
            return t, torch.zeros_like(t)
        kmax = t if self.max_gap is None else t.clamp(max=self.max_gap)
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
        k = 1 + (u * kmax).long().clamp(max=kmax - 1)
        return t, t - k

    def draw(self, x0: torch.Tensor, generator: torch.Generator) -> Draw:
        """t, (the gap,) xi, eps_s in that order, on x0's device."""
        _check_batch(x0)
        t, s = self.draw_times(len(x0), generator, x0.device)
        xi = _normal(x0, generator)
        return {"t": t, "s": s, "xi": xi, "eps_s": _normal(x0, generator)}

    def loss_from(self, model: Model, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        """[..., B]: mean over D of (c_{t,s} model(x_t, t) - xi_{t,s})^2."""
        return self.loss_given(model(*self.model_inputs(x0, draw)), x0, draw)

    def model_inputs(self, x0: torch.Tensor, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        d = forward_states(self.sched, x0, draw["t"], draw["s"], draw["xi"], draw["eps_s"])
        return d.xt, d.t

    def loss_given(self, pred: torch.Tensor, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        d = forward_states(self.sched, x0, draw["t"], draw["s"], draw["xi"], draw["eps_s"])
        return (d.c * pred.to(x0.dtype) - d.xi).pow(2).mean(-1)

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _loss(self, model, x0, generator)


@dataclass(frozen=True)
class WeightedEpsLoss:
    """The standard objective with the forward-time objective's weighting of t, a control:
        loss = lambda_t || eps_theta(x_t, t) - eps ||^2 / D,   lambda_t = E_{s|t} c_{t,s}^2 (matching.signal_share(t)),
    with EpsLoss's draws (the same t and eps from the same generator). The forward-time loss has the same minimiser
    and, were its target exactly c_{t,s} eps, this weighting; so the control separates the weighting of t from the
    noise of the target xi_{t,s}. Matching gap 'full' gives lambda = 1: EpsLoss itself."""

    matching: ForwardTimeLoss  # the forward-time objective whose weighting of t is copied

    @property
    def sched(self) -> Schedule:
        return self.matching.sched

    @cached_property
    def weights(self) -> torch.Tensor:
        """lambda_t for t = 1..T, float64 [T]."""
        return torch.tensor([self.matching.signal_share(t) for t in range(1, self.sched.T + 1)], dtype=torch.float64)

    def weights_on(self, device, dtype) -> torch.Tensor:
        """[0, lambda_1, ..., lambda_T] (indexed by t) on `device` in `dtype`, made once per (device, dtype)."""
        key = (torch.device(device), dtype)
        if key not in self._tables:
            self._tables[key] = torch.cat([torch.zeros(1, dtype=torch.float64), self.weights]).to(device, dtype)
        return self._tables[key]

    @cached_property
    def _tables(self) -> dict:
        return {}

    def draw(self, x0: torch.Tensor, generator: torch.Generator) -> Draw:
        return EpsLoss(self.sched).draw(x0, generator)

    def loss_from(self, model: Model, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        """[..., B]: lambda_t times EpsLoss's per-sample loss."""
        return self.loss_given(model(*self.model_inputs(x0, draw)), x0, draw)

    def model_inputs(self, x0: torch.Tensor, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        return EpsLoss(self.sched).model_inputs(x0, draw)

    def loss_given(self, pred: torch.Tensor, x0: torch.Tensor, draw: Draw) -> torch.Tensor:
        weight = self.weights_on(x0.device, x0.dtype)[draw["t"]]
        return weight * EpsLoss(self.sched).loss_given(pred, x0, draw)

    def loss(self, model: Model, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _loss(self, model, x0, generator)
