"""Layer 5: interactive panels (ipywidgets) and the static fallback of each (a matplotlib frame slider).

Headless runs (`diffgen run`, the book build, tests) set DIFFGEN_HEADLESS=1 and never instantiate a widget:
executing one without a frontend stalls nbclient intermittently (jupyter/nbclient#312, nteract/papermill#723).
The static fallback is what the rendered book shows; it works without a kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from matplotlib.animation import FuncAnimation

from ._util import is_headless, randn, sample_generators
from .denoisers import EmpiricalOptimum
from .plotting import plot_points_2d
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

    def draw(self, n: int, step: int, axes) -> None:
        """Frame `step` for training-set size n: x_t on the left, the optimum's prediction x0*(x_t, t) on the right."""
        for ax in axes:
            ax.clear()
        t = int(self.t[step])
        plot_points_2d(self.train[:n], self.xt[n][step], ax=axes[0], title=f"$x_t$,  t = {t}")
        plot_points_2d(self.train[:n], self.x0_hat[n][step], ax=axes[1], title=r"$\hat x_0 = x_0^*(x_t, t)$")


def toy_paths_animation(paths: ToyPaths, n: int, *, every: int = 2) -> str:
    """Static fallback: an HTML frame slider (matplotlib to_jshtml) over the reverse steps at training-set size n."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6), dpi=72)
    steps = list(range(0, len(paths.t), every))
    if steps[-1] != len(paths.t) - 1:
        steps.append(len(paths.t) - 1)
    anim = FuncAnimation(fig, lambda k: paths.draw(n, steps[k], axes), frames=len(steps), interval=150)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return html


def toy_paths_explorer(paths: ToyPaths):
    """Live panel: sliders for the reverse step and the training-set size n (needs a running kernel)."""
    import ipywidgets as W
    from IPython.display import display

    out = W.Output()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.6))
    plt.close(fig)
    step = W.IntSlider(value=0, min=0, max=len(paths.t) - 1, description="step")
    n = W.SelectionSlider(options=list(paths.xt), value=list(paths.xt)[-1], description="n train")

    def redraw(*_):
        paths.draw(n.value, step.value, axes)
        with out:
            out.clear_output(wait=True)
            display(fig)

    step.observe(redraw, "value")
    n.observe(redraw, "value")
    redraw()
    return W.VBox([W.HBox([step, n]), out])
