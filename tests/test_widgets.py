"""Widget back ends that need no frontend: the I(z; m) gallery draws live generators on demand, keeps precomputed
entries, and its static fallback is a frame slider with one frame per training-set size."""
from __future__ import annotations

import re

import matplotlib
import torch

from diffgen import generators, mi, widgets
from diffgen.data import eight_gaussians

matplotlib.use("Agg")


def test_mi_gallery_draws_live_generators_on_demand_and_keeps_precomputed_ones():
    P = eight_gaussians()
    gallery = widgets.MIGallery(P, {"fit": generators.GaussianFit()}, n_samples=40, seed=0, shown=2)
    copies = generators.draw_sets(P, generators.Copier(), n_sets=6, n_train=5, n_samples=40, seed=0)
    gallery.add("copier", copies)
    z, train, est = gallery.get("copier", 5, 6)
    assert z.shape == (2, 40, 2) and torch.equal(train, copies.train[:2])
    assert abs(est.value - mi.mi_knn(copies.z, 3).value) < 1e-12
    assert gallery.get("copier", 7, 6) is None  # not live, not precomputed
    z_fit, train_fit, _ = gallery.get("fit", 7, 6)  # live: drawn now, on the same sets draw_sets uses
    assert torch.equal(train_fit, generators.training_sets(P, n_sets=6, n_train=7, seed=0)[:2])
    assert ("fit", 7, 6) in gallery.entries


def test_mi_gallery_animation_has_one_frame_per_size():
    P = eight_gaussians()
    gallery = widgets.MIGallery(P, {"fit": generators.GaussianFit()}, n_samples=30, seed=0)
    html = widgets.mi_gallery_animation(gallery, ["fit"], [4, 8, 16], n_sets=5)
    assert 'type="range"' in html
    assert len(re.findall(r"frames\[\d+\] = ", html)) == 3


def test_live_panels_redraw_when_a_control_moves():
    """The live explorers (never built headlessly) share one panel: every control change redraws the figure."""
    import ipywidgets as W

    a, b = W.IntSlider(value=0, min=0, max=3), W.Dropdown(options=["x", "y"], value="x")
    drawn = []
    panel = widgets._live_panel([a, b], lambda ax: drawn.append((a.value, b.value)), figsize=(2, 2))
    a.value, b.value = 2, "y"
    assert drawn == [(0, "x"), (2, "x"), (2, "y")]
    assert list(panel.children[0].children) == [a, b]


def test_mi_explorer_draws_what_its_controls_select():
    P = eight_gaussians()
    gallery = widgets.MIGallery(P, {"fit": generators.GaussianFit()}, n_samples=30, seed=0)
    panel = widgets.mi_explorer(gallery, ["fit", "trained net"], [4, 8], n_sets=8)
    name, n, m = panel.children[0].children
    n.value, m.value = 8, 16
    assert {("fit", 4, 8), ("fit", 8, 8), ("fit", 8, 16)} <= set(gallery.entries)
    name.value = "trained net"  # not live and not precomputed: drawn as a note, no error
    assert ("trained net", 8, 16) not in gallery.entries
