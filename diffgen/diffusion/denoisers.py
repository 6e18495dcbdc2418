"""Denoisers built from others or from closed forms: the Gaussian optimum, switches in time, the x0 clamp, blends
of a net with the optimum, the optimum of noisy intermediate states and the forward-time objective's minimiser."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .optimum import CHUNK, Denoiser, EmpiricalOptimum, squared_distances, time_batch, weighted_sum
from .schedule import Schedule, eps_from_x0, x0_from_eps


class GaussianDenoiser:
    """Exact denoiser for data N(mean, cov): x_t ~ N(a mean, a^2 cov + s^2 I), so E[x0 | x_t] is linear:
    x0_hat = mean + a cov (a^2 cov + s^2 I)^{-1} (x_t - a mean)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, sched: Schedule):
        self.mean = mean.to(torch.float64)
        self.cov = cov.to(torch.float64)
        self.sched = sched
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.cov)

    def x0_hat(self, xt: torch.Tensor, t) -> torch.Tensor:
        t = time_batch(t, len(xt), xt.device)
        abar = self.sched.alpha_bar(t)[:, None].to(torch.float64)
        a, s2 = abar.sqrt(), 1 - abar
        y = (xt.to(torch.float64) - a * self.mean) @ self.eigvecs  # eigen-coordinates
        shrink = a * self.eigvals / (abar * self.eigvals + s2)  # [B, D]
        return self.mean + (shrink * y) @ self.eigvecs.T

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        t = time_batch(t, len(xt), xt.device)
        return eps_from_x0(self.sched, xt.to(torch.float64), t, self.x0_hat(xt, t))

    def flow_map(self, xt: torch.Tensor, t: int, t_to: int) -> torch.Tensor:
        """Exact probability-flow ODE map x_t -> x_{t_to}. With z = x / a - mean, sigma^2 = s^2 / a^2 and cov
        eigenvalue lam, each eigen-coordinate obeys dz/dsigma = sigma z / (lam + sigma^2), so
        z(sigma') = z(sigma) sqrt((lam + sigma'^2) / (lam + sigma^2))."""
        abar, abar_to = (float(self.sched.abar[k]) for k in (t, t_to))
        var, var_to = (1 - abar) / abar, (1 - abar_to) / abar_to
        z = (xt.to(torch.float64) / abar**0.5 - self.mean) @ self.eigvecs
        z_to = z * ((self.eigvals + var_to) / (self.eigvals + var)).sqrt()
        return abar_to**0.5 * (self.mean + z_to @ self.eigvecs.T)


@dataclass(frozen=True)
class TimeSwitch:
    """eps_hat from `inside` for time steps t_low <= t <= t_high and from `outside` elsewhere (a time-window swap)."""

    inside: Denoiser
    outside: Denoiser
    t_low: int
    t_high: int

    def __post_init__(self):
        if not 0 <= self.t_low <= self.t_high:
            raise ValueError(f"need 0 <= t_low <= t_high; got t_low={self.t_low}, t_high={self.t_high}")

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        t = time_batch(t, len(xt), xt.device)
        mask = (t >= self.t_low) & (t <= self.t_high)
        if bool(mask.all()):
            return self.inside(xt, t)
        out = self.outside(xt, t).to(xt.dtype)
        if bool(mask.any()):
            out[mask] = self.inside(xt[mask], t[mask]).to(xt.dtype)
        return out


@dataclass(frozen=True)
class ClippedX0:
    """`denoiser` with its x0 prediction clamped to the data range [low, high]:
    eps' = (x_t - sqrt(abar_t) clamp(x0_hat)) / sqrt(1 - abar_t), x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t).
    What DDPM and DDIM implementations do for images (Ho et al. 2020's sampler clips x0 to [-1, 1]): an error of eps
    at high noise is amplified 1/sqrt(abar_t) times in x0 and, unclipped, can leave the data range for good. For the
    empirical optimum of data inside the range it changes nothing (x0* is a convex combination of training points)."""

    denoiser: Denoiser
    sched: Schedule
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"need low < high; got low={self.low}, high={self.high}")

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        t = time_batch(t, len(xt), xt.device)
        eps = self.denoiser(xt, t).to(xt.dtype)
        x0 = x0_from_eps(self.sched, xt, t, eps).clamp(self.low, self.high)
        return eps_from_x0(self.sched, xt, t, x0)


@dataclass(frozen=True)
class Blend:
    """(1 - weight) eps_a(x_t, t) + weight eps_b(x_t, t): a denoiser moved the share `weight` of the way to b
    (weight 0: a itself; 1: b). With a a trained net and b the empirical optimum, a small weight is a small
    perturbation of the net towards the memorizing optimum."""

    a: Denoiser
    b: Denoiser
    weight: float

    def __post_init__(self):
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must lie in [0, 1]; got {self.weight}")

    def __call__(self, xt: torch.Tensor, t) -> torch.Tensor:
        if self.weight == 0.0:
            return self.a(xt, t).to(xt.dtype)
        if self.weight == 1.0:
            return self.b(xt, t).to(xt.dtype)
        return (1 - self.weight) * self.a(xt, t).to(xt.dtype) + self.weight * self.b(xt, t).to(xt.dtype)


class NoisyPointOptimum(EmpiricalOptimum):
    """Optimum of the forward-time objective when the intermediate states are a finite set drawn once at one time s,
    y_j = sqrt(abar_s) x_j + sqrt(1 - abar_s) e_j (our derivation). With u_j = y_j / sqrt(abar_s) = x_j + h_s e_j,
    h_s^2 = (1 - abar_s) / abar_s, x_t (t > s) is the mixture (1/N) sum_j N(a u_j, v I), v = 1 - abar_t / abar_s, and
    the minimiser E_Y[xi_{t,s} | x_t] / c_{t,s} is SmoothedOptimum on the u_j with the bandwidth squared -h_s^2:
        w_j = softmax_j(-||x - a u_j||^2 / (2 v)),   x0_hat = ((1 - abar_t) / v) sum_j w_j u_j - (a h_s^2 / v) x.
    Its DDIM flow ends on the noisy points u_j, not on the x_j. For t <= s the objective has no target; we use the
    empirical optimum of the u_j (the noisy points taken as data), which keeps the point the path reached."""

    def __init__(self, noisy: torch.Tensor, sched: Schedule, s: int, **kwargs):
        _check_noise_time(s, sched)
        self.s = s
        self.abar_s = float(sched.abar[s])
        self.noise_var = (1 - self.abar_s) / self.abar_s  # h_s^2: variance of u_j - x_j per coordinate
        super().__init__(noisy, sched, **kwargs)

    @classmethod
    def draw(cls, train: torch.Tensor, sched: Schedule, s: int, generator: torch.Generator,
             **kwargs) -> "NoisyPointOptimum":
        """Draw y_j = sqrt(abar_s) x_j + sqrt(1 - abar_s) e_j once (e [N, D] from `generator`, on the CPU) and build
        the optimum on u_j = y_j / sqrt(abar_s)."""
        _check_noise_time(s, sched)
        e = torch.randn(train.shape, generator=generator, dtype=torch.float64).to(train.device)
        abar_s = float(sched.abar[s])
        ys = abar_s**0.5 * train.to(torch.float64) + (1 - abar_s) ** 0.5 * e
        return cls(ys / abar_s**0.5, sched, s, **kwargs)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", s={self.s})"

    def _variance(self, abar: torch.Tensor) -> torch.Tensor:
        return torch.where(abar < self.abar_s, 1 - abar / self.abar_s, 1 - abar)

    def _as_float64(self) -> "NoisyPointOptimum":
        self.__init__(self.train, self.sched, self.s, dtype=torch.float64, tile=self.tile, fused=False,
                      align=self.align)
        return self

    def x0_star(self, xt: torch.Tensor, t) -> torch.Tensor:
        mean = super().x0_star(xt, t)  # sum_j w_j u_j with the variance v
        abar = self.sched.alpha_bar(time_batch(t, len(xt), xt.device))[:, None]
        v = self._variance(abar)
        above = abar < self.abar_s  # t > s
        x0 = ((1 - abar) / v).to(self.dtype) * mean - (abar.sqrt() * self.noise_var / v).to(self.dtype) * xt.to(
            self.dtype)
        return torch.where(above.to(xt.device), x0, mean)


def _check_noise_time(s, sched: Schedule) -> None:
    if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s < sched.T:
        raise ValueError(f"s must be an integer in [1, {sched.T - 1}]; got {s!r}")


def forward_time_minimiser(train: torch.Tensor, sched: Schedule, xt: torch.Tensor, t: int,
                           gap_probs: torch.Tensor, *, chunk: int = CHUNK) -> torch.Tensor:
    """Brute-force float64 pointwise minimiser of E ||c_{t,s} e - xi_{t,s}||^2 given x_t, data uniform on train [N, D],
    s ~ gap_probs [t] (p(s | t), s = 0..t-1): sum_s p_s c_s E[xi_s | x_t] / sum_s p_s c_s^2, with E[xi_s | x_t] by
    Gaussian conditioning given x0 = x_i: sqrt(1 - r)(x_t - sqrt(abar_t) x_i) / (r (1 - abar_s) + 1 - r),
    r = abar_t / abar_s, averaged with the posterior weights w_i of x_i (softmax of the explicit squared differences,
    squared_distances; the average of x_t - sqrt(abar_t) x_i is x_t - sqrt(abar_t) sum_i w_i x_i). Memory [B, N]."""
    x = xt.to(torch.float64)
    if gap_probs.shape != (t,):
        raise ValueError(f"gap_probs must have shape ({t},) (s = 0..t-1); got {tuple(gap_probs.shape)}")
    abar_t = float(sched.abar[t])
    sq = squared_distances(x, train, abar_t**0.5, chunk=chunk)  # [B, N] ||x_t - sqrt(abar_t) x_i||^2
    num, den = torch.zeros_like(x), 0.0
    for s in torch.nonzero(gap_probs).flatten().tolist():
        abar_s = float(sched.abar[s])
        r = abar_t / abar_s
        var = r * (1 - abar_s) + (1 - r)  # Var(x_t | x0), written without using 1 - abar_t
        w = torch.softmax(-sq / (2 * var), dim=1)  # [B, N]
        post_xi = (1 - r) ** 0.5 * (x - abar_t**0.5 * weighted_sum(w, train)) / var
        c = ((1 - r) / (1 - abar_t)) ** 0.5
        num = num + float(gap_probs[s]) * c * post_xi
        den += float(gap_probs[s]) * c**2
    return num / den
