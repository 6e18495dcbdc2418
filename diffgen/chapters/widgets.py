"""Panels that recompute from their controls, live in JupyterLab and as frame sliders in the book.

A panel is a small object with `controls` (each a `Control`: a name, its options and a default) and
`draw(fig, **values)`, which computes what the values ask for (a sampler run, an estimate: never training; trained
nets come from the cache) and draws it. `show(panel, sweep=NAME)` displays it:
- in a live notebook, an ipywidgets panel whose figure is recomputed whenever a control moves;
- headless (the book build, `diffgen run`), a matplotlib frame slider (`to_jshtml`) that steps the control `sweep`
  through its options, the others at their defaults, so the rendered page is complete without a kernel.
Executing an ipywidget headlessly stalls nbclient intermittently (jupyter/nbclient#312, nteract/papermill#723), so
headless runs never create one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import torch
from matplotlib.animation import FuncAnimation

from ..base.progress import is_headless
from ..base.util import randn, sample_generators
from ..diffusion.denoisers import Blend, ClippedX0, NoisyPointOptimum
from ..diffusion.optimum import EmpiricalOptimum, SmoothedOptimum
from ..diffusion.samplers import Trajectory, sample_ddim
from ..diffusion.schedule import Schedule, add_noise
from ..measures.metrics import copy_rate, nearest_neighbors
from ..measures.mi import mi_knn
from .figures import plot_image_rows, plot_points_2d, plot_set_samples
from .generators import SetSamples, draw_sets


@dataclass(frozen=True)
class Control:
    """One control of a panel: a slider over `options` (a dropdown when they are strings), starting at `value`."""

    name: str
    options: tuple
    value: object
    label: str = ""

    def __post_init__(self):
        if len(self.options) < 1:
            raise ValueError(f"control {self.name} needs options; got {self.options!r}")
        if self.value not in self.options:
            raise ValueError(f"control {self.name}: default {self.value!r} is not one of {self.options!r}")


def panel_controls(*controls: Control) -> tuple[tuple[Control, ...], dict]:
    """(the controls with at least two distinct options, {name: value} of the others): a control with one position
    would not be a control, so it becomes a fixed argument of draw."""
    kept = tuple(c for c in controls if len(set(c.options)) > 1)
    return kept, {c.name: c.value for c in controls if len(set(c.options)) <= 1}


def live_widgets() -> bool:
    """True in an interactive Jupyter session; False in headless execution (DIFFGEN_HEADLESS=1)."""
    return not is_headless()


def defaults(panel) -> dict:
    """The values draw gets when no control has moved: every control's default and the panel's fixed values."""
    return {**getattr(panel, "fixed", {}), **{c.name: c.value for c in panel.controls}}


def show(panel, sweep: str):
    """Display `panel`: live controls in a notebook with a kernel, else a frame slider over control `sweep`."""
    from IPython.display import HTML, display

    display(live_panel(panel) if live_widgets() else HTML(frame_slider(panel, sweep)))


def frame_slider(panel, sweep: str, interval: int = 700) -> str:
    """HTML of a matplotlib frame slider: one frame per option of control `sweep`, the others at their defaults
    (one frame when `sweep` is a fixed value of this panel)."""
    values = defaults(panel)
    if sweep not in values:
        raise ValueError(f"sweep must name a control of the panel ({', '.join(values)}); got {sweep!r}")
    control = next((c for c in panel.controls if c.name == sweep), None)
    options = control.options if control is not None else (values[sweep],)
    fig = plt.figure(figsize=panel.figsize)  # saved at the book's dpi (diffgen.base.style), like every figure

    def frame(k):
        fig.clf()
        panel.draw(fig, **{**values, sweep: options[k]})

    html = FuncAnimation(fig, frame, frames=len(options), interval=interval).to_jshtml(default_mode="once")
    plt.close(fig)
    return html


def live_panel(panel):
    """An ipywidgets panel: the controls above a figure that panel.draw redraws whenever one of them changes."""
    import ipywidgets as W
    from IPython.display import display

    widgets = {}
    for c in panel.controls:
        common = dict(options=list(c.options), value=c.value, description=c.label or c.name,
                      style={"description_width": "initial"})
        widgets[c.name] = W.Dropdown(**common) if all(isinstance(o, str) for o in c.options) else \
            W.SelectionSlider(continuous_update=False, **common)  # recompute on release, not on every pixel
    out = W.Output()
    fig = plt.figure(figsize=panel.figsize)
    plt.close(fig)

    def redraw(*_):
        fig.clf()
        panel.draw(fig, **{**defaults(panel), **{name: w.value for name, w in widgets.items()}})
        with out:
            out.clear_output(wait=True)
            display(fig)

    for w in widgets.values():
        w.observe(redraw, "value")
    redraw()
    return W.VBox([W.HBox(list(widgets.values())), out])


# --------------------------------------------------------------------------------------------------- chapter 2
@dataclass
class OptimumPanel:
    """Chapter 2: the empirical optimum of the first n training images at time t, and what DDIM makes of it.

    Left: a held-out image noised to x_t, the optimum's prediction x0*(x_t, t), the training image with the largest
    weight, and the largest weights. Right: DDIM samples from the optimum smoothed with bandwidth h (h = 0: the
    optimum itself) above their nearest training images, and the copy rate of `n_samples` samples."""

    train: torch.Tensor  # [N, D] training images
    heldout: torch.Tensor  # [M, D] images the optimum never saw (the query is heldout[0])
    shape: tuple  # per-image shape
    sched: Schedule
    n_values: tuple  # training-set sizes offered (first n images)
    steps: int = 25  # DDIM steps of the samples
    n_samples: int = 64  # samples behind the copy rate
    seed: int = 0
    figsize: tuple = (9.0, 5.2)
    controls: tuple = field(init=False)
    fixed: dict = field(init=False)

    def __post_init__(self):
        self.controls, self.fixed = panel_controls(
            Control("t", (1, 5, 10, 20, 50, 100, 200, 500, 1000), 100, "time t"),
            Control("n", tuple(sorted(set(self.n_values))), max(self.n_values), "n train"),
            Control("h", (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5), 0.0, "bandwidth h"))
        self.noise = randn(sample_generators(self.seed, 1), self.train.shape[1], device=self.train.device)
        self.x_T = randn(sample_generators(self.seed + 1, self.n_samples), self.train.shape[1],
                         device=self.train.device)

    def draw(self, fig, t: int, n: int, h: float) -> None:
        train = self.train[:n]
        opt = EmpiricalOptimum(train, self.sched, dtype=torch.float64, fused=False)
        query = self.heldout[:1].to(torch.float64)
        xt = add_noise(self.sched, query, t, self.noise)
        x0 = opt.x0_star(xt, t)
        weights = opt.weights(xt, t)[0]
        top = weights.topk(min(8, n))
        a = float(self.sched.abar[t]) ** 0.5
        z = sample_ddim(SmoothedOptimum(train, self.sched, h, dtype=torch.float64, fused=False), self.x_T,
                        self.sched, self.steps)
        nn = nearest_neighbors(z, train)
        rate = copy_rate(nn.ratio)
        grid = fig.add_gridspec(2, 4, height_ratios=[1, 1.1])
        images = [query, xt / a, x0]
        titles = ["held-out image", f"$x_t/\\sqrt{{\\bar\\alpha_t}}$, t = {t}", "$x_0^*(x_t, t)$"]
        for k, (img, title) in enumerate(zip(images, titles)):
            ax = fig.add_subplot(grid[0, k])
            plot_image_rows([img], self.shape, [""], ax=ax)
            ax.set_title(title, fontsize=10)
        ax = fig.add_subplot(grid[0, 3])
        ax.bar(range(len(top.values)), top.values.cpu().numpy(), color="tab:blue")
        ax.set(ylim=(0, 1.02), xticks=[], title=f"largest of {n} weights")
        ax = fig.add_subplot(grid[1, :])
        show = min(16, len(z))
        plot_image_rows([z[:show], train[nn.index[:show, 0]]], self.shape, ["samples", "nearest training"], ax=ax)
        ax.set_title(f"DDIM from the optimum smoothed by h = {h:g}: copy rate {rate.value:.2f} "
                     f"({rate.count} of {rate.total})", fontsize=10)


@dataclass(frozen=True)
class ToyPaths:
    """DDIM (eta = 0) paths under eps* of the first n training points, for each n (a frame slider over the steps)."""

    train: torch.Tensor  # [N_max, 2] pool; the set for n is train[:n]
    t: torch.Tensor  # [S+1] grid times
    xt: dict  # n -> [S+1, B, 2]
    x0_hat: dict  # n -> [S+1, B, 2]

    @classmethod
    def compute(cls, train: torch.Tensor, n_values, sched: Schedule, steps: int, n_samples: int, seed: int):
        x_T = randn(sample_generators(seed, n_samples), 2)
        xt, x0 = {}, {}
        for n in n_values:
            rec = Trajectory()
            sample_ddim(EmpiricalOptimum(train[:n], sched, dtype=torch.float64), x_T, sched, steps, callback=rec)
            t, xt[n], x0[n] = rec.stacked()
        return cls(train, t, xt, x0)

    @property
    def figsize(self) -> tuple:
        return (3.3 * len(self.xt), 3.5)

    @property
    def controls(self) -> tuple:
        return (Control("step", tuple(range(0, len(self.t), 3)) + ((len(self.t) - 1,) if (len(self.t) - 1) % 3 else
                                                                   ()), 0, "reverse step"),)

    def draw(self, fig, step: int) -> None:
        """Frame `step`: x_t (blue) and the optimum's prediction x0*(x_t, t) (orange), one panel per n."""
        t = int(self.t[step])
        for k, n in enumerate(self.xt):
            ax = fig.add_subplot(1, len(self.xt), k + 1)
            plot_points_2d(self.train[:n], self.xt[n][step], ax=ax, title=f"n = {n},  t = {t}")
            x0 = self.x0_hat[n][step]
            ax.scatter(x0[:, 0], x0[:, 1], s=4, color="tab:orange", alpha=0.8)


# --------------------------------------------------------------------------------------------------- chapter 3
@dataclass
class BlendPanel:
    """Chapter 3: samples of (1 - lambda) eps_theta + lambda eps* from the same x_T, for the net trained on n images
    at a snapshot step: how far towards the optimum the net must move before its samples become copies."""

    runs: dict  # n -> train.TrainResult trained on train[:n]
    train: torch.Tensor  # [N, D]
    shape: tuple
    sched: Schedule
    steps: int = 50  # DDIM steps
    n_samples: int = 64  # samples behind the copy rate
    seed: int = 0
    clip: tuple | None = None  # data range the x0 prediction is clamped to (denoisers.ClippedX0), or None
    figsize: tuple = (9.0, 2.6)
    controls: tuple = field(init=False)
    fixed: dict = field(init=False)

    def __post_init__(self):
        sizes = tuple(sorted(self.runs))
        steps = tuple(sorted(set().union(*(r.snapshots for r in self.runs.values()))))
        self.controls, self.fixed = panel_controls(
            Control("weight", (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0), 0.0, "lambda"),
            Control("n", sizes, sizes[-1], "n train"),
            Control("train_step", steps, steps[-1], "train step"))
        self.x_T = randn(sample_generators(self.seed, self.n_samples), self.train.shape[1], device=self.train.device)
        self._optima = {}

    def draw(self, fig, weight: float, n: int, train_step: int) -> None:
        run = self.runs[n]
        step = max((s for s in run.snapshots if s <= train_step), default=min(run.snapshots))
        if n not in self._optima:
            self._optima[n] = EmpiricalOptimum(self.train[:n], self.sched, dtype=torch.float64)
        denoiser = Blend(run.model_at(step), self._optima[n], weight)
        if self.clip is not None:
            denoiser = ClippedX0(denoiser, self.sched, *self.clip)
        with torch.no_grad():
            z = sample_ddim(denoiser, self.x_T, self.sched, self.steps)
        nn = nearest_neighbors(z, self.train[:n])
        rate = copy_rate(nn.ratio)
        ax = fig.add_subplot(1, 1, 1)
        show = min(14, len(z))
        plot_image_rows([z[:show], self.train[:n][nn.index[:show, 0]]], self.shape, ["samples", "nearest training"],
                        ax=ax)
        ax.set_title(f"$(1-\\lambda)\\,\\epsilon_\\theta + \\lambda\\,\\epsilon^*$, $\\lambda$ = {weight:g}, n = {n}, "
                     f"step {step}: copy rate {rate.value:.2f} ({rate.count} of {rate.total})", fontsize=10)


# --------------------------------------------------------------------------------------------------- chapter 1
@dataclass
class MIPanel:
    """Chapter 1: I(z; m) of a generator on M training sets of n points, with the samples of the first three sets.

    Generators in `live` (callables of generators.GenerativeModel type) are drawn on demand for any (n, M); others
    come precomputed through `add` (trained nets: one SetSamples per size, of which the first M sets are used)."""

    data: object  # the distribution P (data.GaussianMixture)
    live: dict  # name -> GenerativeModel drawn on demand
    n_values: tuple  # training-set sizes offered
    m_values: tuple  # numbers of sets offered
    n_samples: int
    seed: int
    k: int = 3  # kNN neighbours
    shown: int = 3  # sets drawn
    figsize: tuple = (4.6, 4.8)
    precomputed: dict = field(default_factory=dict)  # (name, n) -> SetSamples
    cache: dict = field(default_factory=dict)  # (name, n, M) -> Estimate

    def add(self, name: str, samples: SetSamples) -> None:
        self.precomputed[name, samples.n_train] = samples

    @property
    def names(self) -> tuple:
        return tuple(dict.fromkeys([*self.live, *(name for name, _ in self.precomputed)]))

    @property
    def controls(self) -> tuple:
        return panel_controls(*self._controls())[0]

    @property
    def fixed(self) -> dict:
        return panel_controls(*self._controls())[1]

    def _controls(self) -> tuple:
        n_values = tuple(sorted(set(self.n_values)))
        return (Control("name", self.names, self.names[0], "generator"),
                Control("n", n_values, n_values[len(n_values) // 2], "n train"),
                Control("n_sets", tuple(sorted(set(self.m_values))), max(self.m_values), "M sets"))

    def samples(self, name: str, n: int, n_sets: int) -> SetSamples | None:
        """The first n_sets sets of (name, n): precomputed, or drawn now for a live generator (None: neither)."""
        if (name, n) in self.precomputed and self.precomputed[name, n].n_sets >= n_sets:
            s = self.precomputed[name, n]
            return SetSamples(s.z[:n_sets], s.train[:n_sets], s.seed)
        if name in self.live:
            s = draw_sets(self.data, self.live[name], n_sets=max(n_sets, max(self.m_values)), n_train=n,
                          n_samples=self.n_samples, seed=self.seed)
            self.precomputed[name, n] = s
            return SetSamples(s.z[:n_sets], s.train[:n_sets], s.seed)
        return None

    def estimate(self, name: str, n: int, n_sets: int):
        if (name, n, n_sets) not in self.cache:
            s = self.samples(name, n, n_sets)
            self.cache[name, n, n_sets] = None if s is None else mi_knn(s.z, self.k, seed=self.seed)
        return self.cache[name, n, n_sets]

    def draw(self, fig, name: str, n: int, n_sets: int) -> None:
        ax = fig.add_subplot(1, 1, 1)
        s = self.samples(name, n, n_sets)
        if s is None:
            have = sorted(m for g, m in self.precomputed if g == name)
            ax.set_title(f"{name}: trained at n = {', '.join(map(str, have))} only", fontsize=10)
            ax.axis("off")
            return
        est = self.estimate(name, n, n_sets)
        plot_set_samples(s.z[:self.shown], s.train[:self.shown], ax=ax,
                         title=f"{name}, n = {n}, M = {n_sets}\nI(z; m) = {est.value:.2f} [{est.low:.2f}, "
                               f"{est.high:.2f}] nats (log M = {math.log(n_sets):.2f})")


# --------------------------------------------------------------------------------------------------- chapter 4
@dataclass
class NoisyPointPanel:
    """Chapter 4: DDIM samples of the optimum over one finite set of intermediate states at time s (the noisy
    points x_j + h_s e_j), above their nearest clean training images, with the copy rate."""

    train: torch.Tensor  # [N, D]
    shape: tuple
    sched: Schedule
    s_values: tuple  # times s offered
    steps: int = 50
    n_samples: int = 64
    seed: int = 0
    figsize: tuple = (9.0, 2.6)
    controls: tuple = field(init=False)
    fixed: dict = field(init=False)

    def __post_init__(self):
        values = tuple(sorted(set(self.s_values)))
        self.controls, self.fixed = panel_controls(Control("s", values, values[len(values) // 2], "time s"))
        self.x_T = randn(sample_generators(self.seed, self.n_samples), self.train.shape[1], device=self.train.device)

    def draw(self, fig, s: int) -> None:
        opt = NoisyPointOptimum.draw(self.train, self.sched, s, torch.Generator().manual_seed(self.seed),
                                     dtype=torch.float64, fused=False)
        z = sample_ddim(opt, self.x_T, self.sched, self.steps)
        nn = nearest_neighbors(z, self.train)
        rate = copy_rate(nn.ratio)
        h = opt.noise_var**0.5
        ax = fig.add_subplot(1, 1, 1)
        show = min(14, len(z))
        plot_image_rows([z[:show], self.train[nn.index[:show, 0]]], self.shape, ["samples", "nearest training"],
                        ax=ax)
        ax.set_title(f"noisy points at s = {s} (noise scale $h_s$ = {h:.3f}): copy rate {rate.value:.2f}, "
                     f"median $d_1/\\sqrt{{D}}$ = {float(nn.d1.median()) / math.sqrt(self.train.shape[1]):.3f}",
                     fontsize=10)


@dataclass
class ToyGapPanel:
    """Chapter 4, 2-D: DDIM samples from the same x_T of nets trained with each objective, at a snapshot step."""

    runs: dict  # label -> train.TrainResult on `train`
    train: torch.Tensor  # [N, 2]
    sched: Schedule
    steps: int = 50
    n_samples: int = 300
    seed: int = 0
    figsize: tuple = (4.4, 4.4)
    controls: tuple = field(init=False)
    fixed: dict = field(init=False)

    def __post_init__(self):
        steps = tuple(sorted(set().union(*(r.snapshots for r in self.runs.values()))))
        self.controls, self.fixed = panel_controls(Control("train_step", steps, steps[-1], "train step"),
                                                   Control("label", tuple(self.runs), next(iter(self.runs)),
                                                           "objective"))
        self.x_T = randn(sample_generators(self.seed, self.n_samples), 2, device=self.train.device)

    def draw(self, fig, train_step: int, label: str) -> None:
        run = self.runs[label]
        step = max((s for s in run.snapshots if s <= train_step), default=min(run.snapshots))
        with torch.no_grad():
            z = sample_ddim(run.model_at(step), self.x_T, self.sched, self.steps).cpu()
        rate = copy_rate(nearest_neighbors(z, self.train.cpu()).ratio)
        ax = fig.add_subplot(1, 1, 1)
        plot_points_2d(self.train.cpu(), z, ax=ax, title=f"{label}, step {step}: copy rate {rate.value:.2f}")
