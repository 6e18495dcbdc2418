"""Layer 5: M small noise predictors trained at once, member m on training set S_m only.

This is the trained-network generator of chapter 1: I(z; S) needs one trained model per training set, and M
separate runs of a small MLP would cost M times the Python overhead of one. The ensemble stacks the members'
weights ([M, fan_in, fan_out]) and runs them as batched matrix products. Training it IS training M independent
nets: the loss is the sum of the members' mean losses, so member m's gradient is that of its own loss on its own
set; Adam and the EMA act elementwise, and there is no global gradient clipping (tested: a member's weights do
not change when another member's data does).
Every member starts from the same weights and sees the same draws (batch indices into its own set, t and eps): the
members differ only through their training sets, so the samples depend on the set index m only through S_m, as
the estimators of `mi` assume (with independent initialisations, I(z; m) would also count the seeds).

Member architecture: h_0 = [x, sinusoid(t)], h_{k+1} = SiLU(W_k h_k + b_k) (depth hidden layers), eps_hat =
W_out h_depth + b_out with W_out = 0 at initialisation (an untrained member predicts eps_hat = 0).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._util import check_non_negative, check_positive, randn, resolve_device, sample_generators
from .cache import artifact_key, cache_root, load_or_compute
from .models import time_embedding
from .progress import note, progress as show_progress
from .samplers import sample_ddim
from .schedule import Schedule, add_noise
from .train import ema_decay, warmup_lr

ARTIFACT_FORMAT = 1


@dataclass(frozen=True)
class EnsembleConfig:
    """Architecture and optimisation of every member (all part of the cache key)."""

    hidden: int = 64  # width of each hidden layer
    depth: int = 3  # hidden layers
    time_dim: int = 32  # sinusoidal time embedding size (even)
    train_steps: int = 3000  # optimizer steps (each member sees batch_size points of its own set per step)
    batch_size: int = 64  # training points per member and step, drawn with replacement
    lr: float = 2e-3  # Adam learning rate after warm-up
    warmup: int = 100  # steps of linear warm-up
    ema_decay: float = 0.995  # EMA decay; step k uses min(ema_decay, (1 + k) / (10 + k))
    snapshots: tuple[int, ...] = ()  # steps whose EMA weights are kept (the last step always is)
    seed: int = 0  # initialisation, batch indices, t and eps

    def __post_init__(self):
        check_positive(hidden=self.hidden, depth=self.depth, time_dim=self.time_dim, train_steps=self.train_steps,
                       batch_size=self.batch_size)
        check_non_negative(warmup=self.warmup, seed=self.seed)
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even; got {self.time_dim}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay!r}")
        bad = [s for s in self.snapshots if not isinstance(s, int) or not 1 <= s <= self.train_steps]
        if bad or list(self.snapshots) != sorted(set(self.snapshots)):
            raise ValueError(f"snapshots must be increasing integers in [1, train_steps = {self.train_steps}]; "
                             f"got {self.snapshots!r}")

    @property
    def snapshot_steps(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.snapshots) | {self.train_steps}))


class EnsembleMLP(nn.Module):
    """M MLPs eps_theta^(m)(x, t) evaluated together: x [M, B, D], t [M, B] (integer) -> eps_hat [M, B, D];
    all members initialised to the same weights."""

    def __init__(self, n_models: int, dim: int, hidden: int = 64, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.n_models, self.dim, self.time_dim = n_models, dim, time_dim
        sizes = [dim + time_dim] + [hidden] * depth + [dim]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n_models, a, b)) for a, b in zip(sizes, sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(n_models, 1, b)) for b in sizes[1:])
        with torch.no_grad():  # nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same for every member
            for w, b in zip(self.weights, self.biases):
                bound = 1 / math.sqrt(w.shape[1])
                w.copy_(torch.empty(w.shape[1:]).uniform_(-bound, bound).expand_as(w))
                b.copy_(torch.empty(b.shape[1:]).uniform_(-bound, bound).expand_as(b))
        nn.init.zeros_(self.weights[-1])
        nn.init.zeros_(self.biases[-1])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        M, B, D = x.shape
        if M != self.n_models or D != self.dim or t.shape != (M, B):
            raise ValueError(f"need x [M={self.n_models}, B, D={self.dim}] and t [M, B]; got {tuple(x.shape)} "
                             f"and {tuple(t.shape)}")
        param = self.weights[0]
        emb = time_embedding(t.reshape(-1), self.time_dim).reshape(M, B, self.time_dim).to(param.dtype)
        h = torch.cat([x.to(param.dtype), emb], dim=2)
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if k < len(self.weights) - 1:
                h = F.silu(h)
        return h.to(x.dtype)


@dataclass(frozen=True, eq=False)
class EnsembleResult:
    """EMA weights at each snapshot step, and the per-member loss curve."""

    cfg: EnsembleConfig
    n_models: int
    dim: int
    snapshots: dict[int, dict[str, torch.Tensor]]  # train step -> EMA state_dict (CPU)
    losses: torch.Tensor  # [train_steps, M] each member's mean loss at each step
    from_cache: bool
    path: Path
    device: torch.device = field(default=torch.device("cpu"))

    @property
    def snapshot_steps(self) -> list[int]:
        return sorted(self.snapshots)

    def model_at(self, train_step: int) -> EnsembleMLP:
        """The EMA ensemble after `train_step` optimizer steps (a snapshot step), frozen, on the training device."""
        if train_step not in self.snapshots:
            raise ValueError(f"train_step must be one of the snapshot steps {sorted(self.snapshots)}; "
                             f"got {train_step!r}")
        c = self.cfg
        model = EnsembleMLP(self.n_models, self.dim, c.hidden, c.depth, c.time_dim)
        model.load_state_dict(self.snapshots[train_step])
        return model.to(self.device).eval().requires_grad_(False)

    def sample(self, train_step: int, sched: Schedule, n_samples: int, *, steps: int = 50, seed: int = 0,
               eta: float = 0.0) -> torch.Tensor:
        """z [M, K, D]: K DDIM samples (`steps` sampler steps, float64 loop) from each member at snapshot
        `train_step`; member m's sample k starts from the x_T of per-sample generator (seed, m K + k), the same
        whatever the snapshot."""
        model = self.model_at(train_step)
        M, K, D = self.n_models, n_samples, self.dim
        gens = sample_generators(seed, M * K)
        x_T = randn(gens, D, device=self.device)

        def denoiser(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(xt.reshape(M, K, D), t.reshape(M, K)).reshape(M * K, D)

        with torch.no_grad():
            z = sample_ddim(denoiser, x_T, sched, steps, eta=eta, generators=gens if eta > 0 else None)
        return z.reshape(M, K, D).cpu()


def train_ensemble(sets: torch.Tensor, sched: Schedule, cfg: EnsembleConfig = EnsembleConfig(), *,
                   device: str | torch.device = "auto", cache_dir: Path | None = None,
                   progress: bool = True) -> EnsembleResult:
    """Train member m on sets[m] (sets [M, n, D]) with the standard objective
    || eps_theta^(m)(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps ||^2 / D, or load the finished run from
    <cache_dir or cache_root()>/ensemble/<key>.pt (key: cfg, sched, sets, diffgen source)."""
    if not isinstance(sets, torch.Tensor) or sets.ndim != 3 or 0 in sets.shape:
        raise ValueError(f"sets must be a non-empty [M, n, D] tensor; got "
                         f"{tuple(sets.shape) if isinstance(sets, torch.Tensor) else type(sets).__name__}")
    if not isinstance(cfg, EnsembleConfig):
        raise ValueError(f"cfg must be an EnsembleConfig; got {type(cfg).__name__}")
    dev = resolve_device(device)
    M, n, D = sets.shape
    sets = sets.to(torch.float32)
    path = (Path(cache_dir) if cache_dir is not None else cache_root()) / "ensemble" / \
        f"{artifact_key(__name__, cfg, sched, sets)}.pt"

    def compute() -> dict:
        start = time.perf_counter()
        snapshots, losses = _fit(sets.to(dev), sched, cfg, dev, progress)
        note(f"diffgen.ensemble: trained {M} members for {cfg.train_steps} steps in "
             f"{time.perf_counter() - start:.1f} s on {dev}")
        return {"snapshots": snapshots, "losses": losses}

    def restore(art: dict) -> EnsembleResult:
        snapshots = {int(k): v for k, v in art["snapshots"].items()}
        if sorted(snapshots) != list(cfg.snapshot_steps) or art["losses"].shape != (cfg.train_steps, M):
            raise ValueError("snapshots or losses do not match the config")
        return EnsembleResult(cfg, M, D, snapshots, art["losses"], False, path, dev)

    result, from_cache = load_or_compute(path, compute, restore, fmt=ARTIFACT_FORMAT, name="diffgen.ensemble")
    return dataclasses.replace(result, from_cache=from_cache)


def _fit(sets: torch.Tensor, sched: Schedule, cfg: EnsembleConfig, dev: torch.device, progress: bool):
    M, n, D = sets.shape
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = EnsembleMLP(M, D, cfg.hidden, cfg.depth, cfg.time_dim)
    model = model.to(dev)
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    keep, snapshots, losses = set(cfg.snapshot_steps), {}, torch.empty(cfg.train_steps, M)
    B = cfg.batch_size
    steps = range(1, cfg.train_steps + 1)
    recent = lambda: f"mean loss {losses[max(0, step - 25):step].mean().item():.4f}"  # noqa: E731
    for step in show_progress(steps, desc=f"train {M} nets", status=recent) if progress else steps:
        idx = torch.randint(n, (B,), generator=g).expand(M, B).to(dev)  # shared draws: see the module note
        t = torch.randint(1, sched.T + 1, (B,), generator=g).expand(M, B).to(dev)
        eps = torch.randn(B, D, generator=g).expand(M, B, D).to(dev)
        x0 = torch.gather(sets, 1, idx[..., None].expand(M, B, D))
        xt = add_noise(sched, x0.reshape(M * B, D), t.reshape(-1), eps.reshape(M * B, D)).reshape(M, B, D)
        per_member = (model(xt, t) - eps).pow(2).mean((1, 2))  # [M]
        opt.zero_grad(set_to_none=True)
        per_member.sum().backward()
        for group in opt.param_groups:
            group["lr"] = warmup_lr(cfg.lr, cfg.warmup, step)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.lerp_(p, 1 - ema_decay(cfg.ema_decay, step))
        losses[step - 1] = per_member.detach().cpu()
        if step in keep:
            names = [name for name, _ in model.named_parameters()]
            snapshots[step] = {name: e.detach().cpu().clone() for name, e in zip(names, ema)}
    return snapshots, losses
