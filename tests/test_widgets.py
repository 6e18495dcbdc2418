"""Panels without a frontend: controls, the frame slider of the book (one frame per option) and the live panel of
JupyterLab (every control change recomputes); each chapter's panel computes what its controls ask for."""
from __future__ import annotations

import math
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from diffgen.chapters import generators, widgets
from diffgen.data.datasets import eight_gaussians, load_dataset
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig
from diffgen.diffusion.objectives import EpsLoss
from diffgen.diffusion.train import train

matplotlib.use("Agg")


class Recorder:
    """A panel that records what it was asked to draw."""

    figsize = (2, 2)

    def __init__(self):
        self.controls, self.fixed = widgets.panel_controls(
            widgets.Control("a", (0, 1, 2), 1), widgets.Control("b", ("x", "y"), "x"),
            widgets.Control("c", (5,), 5))
        self.drawn = []

    def draw(self, fig, a, b, c):
        self.drawn.append((a, b, c))
        fig.add_subplot(1, 1, 1).set_title(f"{a} {b} {c}")


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def test_controls_validate_and_single_options_become_fixed_values():
    with pytest.raises(ValueError, match="default 3 is not one of"):
        widgets.Control("a", (0, 1), 3)
    panel = Recorder()
    assert [c.name for c in panel.controls] == ["a", "b"] and panel.fixed == {"c": 5}
    assert widgets.defaults(panel) == {"a": 1, "b": "x", "c": 5}


def test_frame_slider_has_one_frame_per_option_of_the_swept_control():
    panel = Recorder()
    html = widgets.frame_slider(panel, "a")
    assert 'type="range"' in html and len(re.findall(r"frames\[\d+\] = ", html)) == 3
    assert set(panel.drawn) == {(0, "x", 5), (1, "x", 5), (2, "x", 5)}  # the others at their defaults
    assert len(re.findall(r"frames\[\d+\] = ", widgets.frame_slider(Recorder(), "c"))) == 1  # a fixed value
    with pytest.raises(ValueError, match="sweep must name a control"):
        widgets.frame_slider(panel, "nope")


def test_live_panel_redraws_whenever_a_control_moves():
    panel = Recorder()
    live = widgets.live_panel(panel)
    a, b = live.children[0].children
    a.value, b.value = 2, "y"
    assert panel.drawn == [(1, "x", 5), (2, "x", 5), (2, "y", 5)]


def test_show_never_builds_a_widget_headless(monkeypatch, capsys):
    monkeypatch.setenv("DIFFGEN_HEADLESS", "1")
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    widgets.show(Recorder(), "a")
    assert type(shown[0]).__name__ == "HTML" and 'type="range"' in shown[0].data


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 30, 20, seed=0)


def test_optimum_panel_recomputes_its_samples_from_the_bandwidth(sched, digits):
    panel = widgets.OptimumPanel(digits.train, digits.heldout, digits.shape, sched, n_values=(10, 30), steps=10,
                                 n_samples=24)
    fig = plt.figure()
    panel.draw(fig, t=100, n=30, h=0.0)
    copies_at_0 = _titles(fig)[-1]
    fig.clf()
    panel.draw(fig, t=100, n=30, h=0.5)
    assert "copy rate 1.00" in copies_at_0 and "copy rate 1.00" not in _titles(fig)[-1]
    fig.clf()
    panel.draw(fig, t=1000, n=10, h=0.0)
    assert "t = 1000" in " ".join(_titles(fig)) and "largest of 10 weights" in _titles(fig)
    plt.close(fig)


def test_blend_panel_moves_from_the_net_to_the_optimum(sched, digits, tmp_path):
    run = train(MLPConfig(hidden=32, depth=1), EpsLoss(sched), digits.train, digits.shape,
                TrainConfig(train_steps=40, batch_size=16, checkpoint_every=20), device="cpu", cache_dir=tmp_path,
                progress=False)
    panel = widgets.BlendPanel({30: run}, digits.train, digits.shape, sched, steps=10, n_samples=16)
    assert [c.name for c in panel.controls] == ["weight", "train_step"] and panel.fixed == {"n": 30}
    fig = plt.figure()
    panel.draw(fig, weight=1.0, n=30, train_step=40)
    assert "copy rate 1.00" in _titles(fig)[0]  # all the way to eps*: copies
    fig.clf()
    panel.draw(fig, weight=0.0, n=30, train_step=20)
    assert "step 20" in _titles(fig)[0] and "copy rate 1.00" not in _titles(fig)[0]
    plt.close(fig)


def test_mi_panel_draws_live_generators_on_demand_and_uses_the_first_sets_of_precomputed_ones():
    P = eight_gaussians()
    panel = widgets.MIPanel(P, {"fit": generators.GaussianFit()}, n_values=(5, 7), m_values=(4, 6), n_samples=40,
                            seed=0)
    copies = generators.draw_sets(P, generators.Copier(), n_sets=6, n_train=5, n_samples=40, seed=0)
    panel.add("copier", copies)
    assert [c.options for c in panel.controls] == [("fit", "copier"), (5, 7), (4, 6)]
    four = panel.samples("copier", 5, 4)
    assert torch.equal(four.z, copies.z[:4]) and torch.equal(four.train, copies.train[:4])
    assert panel.samples("copier", 7, 6) is None  # neither live nor precomputed
    fit = panel.samples("fit", 7, 4)  # live: drawn now, on the sets draw_sets uses
    assert torch.equal(fit.train, generators.training_sets(P, n_sets=4, n_train=7, seed=0))
    fig = plt.figure()
    panel.draw(fig, name="copier", n=5, n_sets=6)
    value = float(re.search(r"I\(z; m\) = ([0-9.]+)", _titles(fig)[0])[1])
    assert abs(value - math.log(6)) < 0.02  # a copier sits at the ceiling log M
    fig.clf()
    panel.draw(fig, name="copier", n=7, n_sets=6)
    assert "trained at n = 5 only" in _titles(fig)[0]
    plt.close(fig)


def test_noisy_point_panel_samples_noisier_copies_as_s_grows(sched, digits):
    panel = widgets.NoisyPointPanel(digits.train, digits.shape, sched, s_values=(1, 300), steps=10, n_samples=16)
    fig = plt.figure()
    panel.draw(fig, s=1)
    early = _titles(fig)[0]
    fig.clf()
    panel.draw(fig, s=300)
    assert "copy rate 1.00" in early and "copy rate 1.00" not in _titles(fig)[0]
    plt.close(fig)


def test_toy_gap_panel_and_toy_paths_draw_their_frames(sched, tmp_path):
    toy = load_dataset("gmm", 4, seed=0)
    run = train(MLPConfig(hidden=16, depth=1), EpsLoss(sched), toy.train, (2,),
                TrainConfig(train_steps=20, batch_size=8, checkpoint_every=10), device="cpu", cache_dir=tmp_path,
                progress=False)
    panel = widgets.ToyGapPanel({"standard": run}, toy.train, sched, steps=5, n_samples=20)
    assert [c.name for c in panel.controls] == ["train_step"]
    assert len(re.findall(r"frames\[\d+\] = ", widgets.frame_slider(panel, "train_step"))) == 2
    paths = widgets.ToyPaths.compute(toy.train, [2, 4], sched, 7, n_samples=10, seed=0)
    assert paths.controls[0].options[-1] == len(paths.t) - 1  # the last frame shows the samples
    fig = plt.figure()
    paths.draw(fig, step=len(paths.t) - 1)
    assert _titles(fig) == ["n = 2,  t = 0", "n = 4,  t = 0"]
    plt.close(fig)
