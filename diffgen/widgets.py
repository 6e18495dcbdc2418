"""Layer 8: interactive panels (ipywidgets) and the static fallback of each (a matplotlib frame slider).

Headless runs (`diffgen run`, the book build, tests) set DIFFGEN_HEADLESS=1 and never instantiate a widget:
executing one without a frontend stalls nbclient intermittently (jupyter/nbclient#312, nteract/papermill#723).
The static fallback is what the rendered book shows; it works without a kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from matplotlib.animation import FuncAnimation

from ._util import randn, sample_generators
from .progress import is_headless
from .denoisers import EmpiricalOptimum
from .plotting import plot_image_rows, plot_points_2d, plot_set_samples
from .samplers import Trajectory, sample_ddim
from .schedule import Schedule


def live_widgets() -> bool:
    """True in an interactive Jupyter session; False in headless execution (DIFFGEN_HEADLESS=1)."""
    return not is_headless()


@dataclass(frozen=True)
class ToyPaths:
    """DDIM (eta = 0) paths under eps* of the first n training points, for each n."""

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

    def draw(self, n: int, step: int, ax) -> None:
        """Frame `step` for training-set size n: x_t (blue) and the optimum's prediction x0*(x_t, t) (orange)."""
        ax.clear()
        t = int(self.t[step])
        plot_points_2d(self.train[:n], self.xt[n][step], ax=ax, title=f"n = {n},  t = {t}")
        x0 = self.x0_hat[n][step]
        ax.scatter(x0[:, 0], x0[:, 1], s=4, color="tab:orange", alpha=0.8)


def toy_paths_animation(paths: ToyPaths, n_values, *, every: int = 3) -> str:
    """Static fallback: an HTML frame slider (matplotlib to_jshtml) over the reverse steps, one panel per n."""
    fig, axes = plt.subplots(1, len(n_values), figsize=(3.3 * len(n_values), 3.4), dpi=72, squeeze=False)
    steps = list(range(0, len(paths.t), every))
    if steps[-1] != len(paths.t) - 1:
        steps.append(len(paths.t) - 1)

    def frame(k):
        for ax, n in zip(axes[0], n_values):
            paths.draw(n, steps[k], ax)

    return _frame_slider(fig, frame, len(steps), interval=150)


def _frame_slider(fig, draw_frame, n_frames: int, interval: int) -> str:
    """An HTML frame slider (matplotlib to_jshtml) of draw_frame(k) for k < n_frames; closes the figure."""
    html = FuncAnimation(fig, draw_frame, frames=n_frames, interval=interval).to_jshtml(default_mode="once")
    plt.close(fig)
    return html


def _live_panel(controls: list, draw, figsize) -> object:
    """An ipywidgets panel: `controls` above a figure that draw(ax) redraws whenever one of them changes."""
    import ipywidgets as W
    from IPython.display import display

    out = W.Output()
    fig, ax = plt.subplots(figsize=figsize)
    plt.close(fig)

    def redraw(*_):
        draw(ax)
        with out:
            out.clear_output(wait=True)
            display(fig)

    for control in controls:
        control.observe(redraw, "value")
    redraw()
    return W.VBox([W.HBox(controls), out])


def toy_paths_explorer(paths: ToyPaths):
    """Live panel: sliders for the reverse step and the training-set size n (needs a running kernel)."""
    import ipywidgets as W

    step = W.IntSlider(value=0, min=0, max=len(paths.t) - 1, description="step")
    n = W.SelectionSlider(options=list(paths.xt), value=list(paths.xt)[-1], description="n train")
    return _live_panel([step, n], lambda ax: paths.draw(n.value, step.value, ax), figsize=(4.2, 4.2))


@dataclass(frozen=True)
class SampleGallery:
    """DDIM samples from the same x_T for every (training-set size n, EMA snapshot step), with nearest training images."""

    shape: tuple
    samples: dict  # (n, step) -> [K, D]
    nearest: dict  # (n, step) -> [K, D], the nearest image in the first n training images
    ratio: dict  # (n, step) -> [K] d1 / d2

    @classmethod
    def compute(cls, runs: dict, x_T: torch.Tensor, train: torch.Tensor, shape, sched: Schedule, steps: int):
        """runs: n -> a train.TrainResult trained on train[:n]."""
        from .metrics import nearest_neighbors

        samples, nearest, ratio = {}, {}, {}
        for n, run in runs.items():
            for step in sorted(run.snapshots):
                z = sample_ddim(run.model_at(step), x_T, sched, steps)
                nn = nearest_neighbors(z, train[:n])
                samples[n, step], nearest[n, step], ratio[n, step] = z.cpu(), train[nn.index[:, 0]].cpu(), nn.ratio.cpu()
        return cls(tuple(shape), samples, nearest, ratio)

    @property
    def sizes(self) -> list:
        return sorted({n for n, _ in self.samples})

    def steps(self, n: int) -> list:
        return sorted(s for m, s in self.samples if m == n)

    def draw(self, n: int, step: int, ax) -> None:
        ax.clear()
        copies = int((self.ratio[n, step] < 1 / 3).sum())
        plot_image_rows([self.samples[n, step], self.nearest[n, step]], self.shape, ["samples", "nearest training"],
                        ax=ax)
        ax.set_title(f"n = {n}, step {step}: {copies} of {len(self.ratio[n, step])} are copies")


def sample_gallery_animation(gallery: SampleGallery) -> str:
    """Static fallback: a frame slider over training-set sizes (final snapshot of each)."""
    fig, ax = plt.subplots(figsize=(6.4, 2.2), dpi=80)
    frames = [(n, gallery.steps(n)[-1]) for n in gallery.sizes]
    return _frame_slider(fig, lambda k: gallery.draw(*frames[k], ax), len(frames), interval=600)


def sample_gallery_explorer(gallery: SampleGallery):
    """Live panel: pick the training-set size and the training step (needs a running kernel)."""
    import ipywidgets as W

    n = W.SelectionSlider(options=gallery.sizes, value=gallery.sizes[-1], description="n train")
    step = W.SelectionSlider(options=gallery.steps(n.value), value=gallery.steps(n.value)[-1], description="step")

    def new_size(*_):  # observed before the panel's redraw, so the step is valid for the new size when it draws
        step.options = gallery.steps(n.value)
        step.value = gallery.steps(n.value)[-1]

    n.observe(new_size, "value")
    return _live_panel([n, step], lambda ax: gallery.draw(n.value, step.value, ax), figsize=(6.4, 2.2))


@dataclass
class MIGallery:
    """I(z; m) experiments per (generator name, n, M): the samples of the first sets and the kNN estimate.

    Entries come from `add` (precomputed, e.g. trained nets) or are computed on demand by `get` for the generators
    in `live` (callables of mi.GenerativeModel type), so a live panel can explore any n and M for those."""

    data: object  # the distribution P (GaussianMixture)
    live: dict  # name -> mi.GenerativeModel that can be drawn on demand
    n_samples: int
    seed: int
    k: int = 3  # kNN neighbours
    shown: int = 3  # sets drawn per panel
    entries: dict = None  # (name, n, M) -> (z [shown, K, 2], train [shown, n, 2], Estimate)

    def __post_init__(self):
        self.entries = {} if self.entries is None else self.entries

    def add(self, name: str, samples) -> None:
        """Store a mi.SetSamples under (name, n, M) with its kNN estimate."""
        from .mi import mi_knn

        est = mi_knn(samples.z, self.k, seed=self.seed)
        self.entries[name, samples.n_train, samples.n_sets] = (samples.z[:self.shown], samples.train[:self.shown], est)

    def get(self, name: str, n: int, n_sets: int):
        """The entry for (name, n, M), drawing it first if the generator is live; None if it cannot be had."""
        if (name, n, n_sets) not in self.entries and name in self.live:
            from .generators import draw_sets

            self.add(name, draw_sets(self.data, self.live[name], n_sets=n_sets, n_train=n, n_samples=self.n_samples,
                                     seed=self.seed))
        return self.entries.get((name, n, n_sets))

    def draw(self, name: str, n: int, n_sets: int, ax) -> None:
        ax.clear()
        entry = self.get(name, n, n_sets)
        if entry is None:
            ax.set_title(f"{name}: not computed for n = {n}, M = {n_sets}")
            return
        z, train, est = entry
        plot_set_samples(z, train, ax=ax, title=f"{name}, n = {n}\nI(z; m) = {est.value:.2f} "
                                                 f"[{est.low:.2f}, {est.high:.2f}]")


def mi_gallery_animation(gallery: MIGallery, names, n_values, n_sets: int) -> str:
    """Static fallback: a frame slider over training-set sizes n, one panel per generator (first sets only)."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.1 * len(names), 3.6), dpi=72, squeeze=False)

    def frame(k):
        for ax, name in zip(axes[0], names):
            gallery.draw(name, n_values[k], n_sets, ax)

    return _frame_slider(fig, frame, len(n_values), interval=800)


def mi_explorer(gallery: MIGallery, names, n_values, n_sets: int):
    """Live panel: generator, training-set size n and number of sets M (live generators are drawn on demand;
    the others exist only at the precomputed n and M)."""
    import ipywidgets as W

    name = W.Dropdown(options=list(names), value=list(names)[0], description="generator")
    n = W.SelectionSlider(options=list(n_values), value=list(n_values)[0], description="n train")
    m = W.SelectionSlider(options=sorted({8, 16, 32, n_sets, 2 * n_sets}), value=n_sets, description="M sets")
    return _live_panel([name, n, m], lambda ax: gallery.draw(name.value, n.value, m.value, ax), figsize=(4.4, 4.6))


@dataclass(frozen=True)
class ToyGapSamples:
    """DDIM samples on a 2-D toy from the same x_T, per training objective (label) and EMA snapshot step."""

    train: torch.Tensor  # [N, 2]
    samples: dict  # (label, step) -> [K, 2]
    rate: dict  # (label, step) -> copy rate (d1/d2 < 1/3)

    @classmethod
    def compute(cls, runs: dict, x_T: torch.Tensor, train: torch.Tensor, sched: Schedule, steps: int):
        """runs: label -> a train.TrainResult on `train` (every snapshot is sampled)."""
        from .metrics import COPY_THRESHOLD, nearest_neighbors

        samples, rate = {}, {}
        for label, run in runs.items():
            for step in sorted(run.snapshots):
                z = sample_ddim(run.model_at(step), x_T, sched, steps).cpu()
                samples[label, step] = z
                rate[label, step] = float((nearest_neighbors(z, train).ratio < COPY_THRESHOLD).double().mean())
        return cls(train.cpu(), samples, rate)

    @property
    def labels(self) -> list:
        return list(dict.fromkeys(label for label, _ in self.samples))

    @property
    def steps(self) -> list:
        return sorted({s for _, s in self.samples})

    def draw(self, label: str, step: int, ax) -> None:
        ax.clear()
        plot_points_2d(self.train, self.samples[label, step], ax=ax,
                       title=f"{label}, step {step}: copy rate {self.rate[label, step]:.2f}")


def toy_gap_animation(samples: ToyGapSamples) -> str:
    """Static fallback: a frame slider over training steps, one panel per objective."""
    labels = samples.labels
    fig, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels), 3.5), dpi=72, squeeze=False)

    def frame(k):
        for ax, label in zip(axes[0], labels):
            samples.draw(label, samples.steps[k], ax)

    return _frame_slider(fig, frame, len(samples.steps), interval=500)


def toy_gap_explorer(samples: ToyGapSamples):
    """Live panel: pick the objective (gap distribution) and the training step (needs a running kernel)."""
    import ipywidgets as W

    label = W.Dropdown(options=samples.labels, value=samples.labels[0], description="objective")
    step = W.SelectionSlider(options=samples.steps, value=samples.steps[-1], description="step")
    return _live_panel([label, step], lambda ax: samples.draw(label.value, step.value, ax), figsize=(4.2, 4.2))