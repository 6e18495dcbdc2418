"""Figures and tables from arrays: each draws what it is given (one line per curve, one bar per window, one row of
the table per entry) and the style is an explicit call."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from diffgen.chapters import figures, tables
from diffgen.chapters.mutual_information import AlongTraining
from diffgen.chapters.new_objective import NoisyPointRow, TweedieSlope
from diffgen.chapters.trained_gap import Snapshot
from diffgen.measures.metrics import Estimate, copy_summaries, wilson_interval
from diffgen.measures.mi import ExcessRisk

matplotlib.use("Agg")


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_style_is_an_explicit_call_and_sets_legible_fonts():
    import importlib

    matplotlib.rcdefaults()
    importlib.reload(figures)
    assert matplotlib.rcParams["font.size"] == 10.0  # importing changes nothing
    figures.use_style()
    assert matplotlib.rcParams["font.size"] >= 11 and matplotlib.rcParams["axes.titlesize"] >= 11
    assert min(matplotlib.rcParams[k] for k in ("xtick.labelsize", "ytick.labelsize", "legend.fontsize")) >= 9
    assert matplotlib.rcParams["savefig.facecolor"] == "white" and not matplotlib.rcParams["savefig.transparent"]
    matplotlib.rcdefaults()


def test_tables_have_one_row_per_entry():
    errors = {(1, "noisy training"): {"a": 1e-10, "b": 2e-3}, (10, "midpoints (ties)"): {"a": 0.0, "b": 1.0}}
    table = tables.error_table(errors).splitlines()
    assert table[0] == "| t | queries | a | b |" and len(table) == 4 and "2.0e-03" in table[2]
    train = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    copies = copy_summaries({"copies": train[:4], "fresh": train[:3] + 5}, train)
    table = tables.copy_table(copies, extra={"kind": {"copies": "copier"}}).splitlines()
    assert len(table) == 4 and "(4/4)" in table[2] and table[2].endswith("| copier |") and table[3].endswith("| - |")
    risk = tables.excess_risk_table({"g": ExcessRisk(1.0, 0.25, 0.5)}).splitlines()
    assert len(risk) == 3 and "+0.250" in risk[2]


def test_quality_table_gives_fid_and_kid_with_intervals_across_seeds_that_hold_their_means():
    """Chapter 4 once printed KID 0.0902 [0.0909, 0.1319]: a bootstrap interval (resampling with replacement biases
    KID upward) beside FID's interval across seeds. Both now come from the seeds' t interval."""
    from types import SimpleNamespace

    from diffgen.measures.fid import SampleQuality
    from diffgen.measures.metrics import Estimate

    boot = Estimate(0.0902, 0.0909, 0.1319)
    q = SampleQuality(Estimate(100.0, 90.0, 110.0), boot, (96.0, 100.0, 104.0), (0.085, 0.09, 0.0956), 128, 300,
                      "FID", "KID")
    row = tables.quality_rows({("standard", 20): [0.2263, 0.2263]}, {}, {("standard", 20): q},
                              {("standard", 20): SimpleNamespace(passes=True, yardstick_value=0.3459)}, "FID")
    cells = [c.strip() for c in row.splitlines()[2].split("|")[1:-1]]
    assert cells == ["standard", "20", "0.2263", "", "0.3459 (passes)", "100 [90.06, 109.9]",
                     "0.0902 [0.077, 0.103]"], cells


def test_a_pipe_in_a_cell_stays_in_its_cell():
    """ch1's header "E_S KL(P_z|S || P)" once split the table's columns, so the page showed the raw Markdown."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").enable("table").render(tables.markdown_table(["a|b", "c"], [["x || y", "z"]]))
    assert html.count("<th>") == 2 and html.count("<td>") == 2 and "<th>a|b</th>" in html and "x || y" in html
    risk = MarkdownIt("commonmark").enable("table").render(tables.excess_risk_table({"g": ExcessRisk(1.0, .25, .5)}))
    assert risk.count("<th>") == 5 and "E_S KL(P_z|S || P)" in risk


def test_curves_bars_and_bands_draw_what_they_are_given(ax):
    figures.plot_curves_xy({"a": ([1, 2, 3], [1, 2, 3]), "b": ([1, 10], [5, 6])}, ax=ax, xlabel="x", ylabel="y",
                            logx=True)
    assert len(ax.lines) == 2 and ax.get_xscale() == "log"
    ax.clear()
    figures.plot_loss_curves({"n = 8": np.ones(100), "n = 64": np.ones(100) / 2}, ax=ax)
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    ax.clear()
    estimates = [Estimate(1.0, 0.5, 1.5), Estimate(2.0, 1.8, 2.1)]
    figures.plot_estimates(["a", "b"], estimates, ax=ax, xlabel="nats", ceiling=2.5, marks={"grid": [0.9, 1.9]})
    labels = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    assert len(ax.patches) == 2 and labels == {1: "a", 0: "b"}  # the first label on top
    ax.clear()
    figures.plot_estimate_curves({"g": ([1, 2], estimates)}, ax=ax, xlabel="n", ylabel="I", ceiling=2.5)
    assert len(ax.lines) == 2  # the curve and the ceiling


def test_ch3_figures(ax):
    rate = wilson_interval(3, 10)
    fig, axes = plt.subplots(1, 4)
    rows = [Snapshot(n, seed, s, rate, 0.1 * s, np.ones(5)) for n in (8, 64) for seed in (0, 1) for s in (1, 2)]
    figures.plot_memorization_sweep(rows, np.ones(5), axes)
    assert len(axes[0].lines) == 2 and len(axes[1].lines) >= 1 and len(axes[3].get_xticklabels()) == 3
    plt.close(fig)
    shares = [{(1, 10): {"net": 0.5, "blind": 0.2}, (1, 1000): {"net": 0.9, "blind": 0.8}}] * 2
    fig, (a1, a2) = plt.subplots(1, 2)
    figures.plot_band_shares(shares, a1, a2, model="net", yardstick="blind")
    assert len(a1.patches) == 4 and len(a2.patches) == 2
    assert a2.patches[0].get_height() == pytest.approx((0.5 - 0.2) / 0.8)
    plt.close(fig)
    assert len(tables.band_share_table(shares).splitlines()) == 4
    figures.plot_blend_curves([0, 1], {("net", 0): [rate, rate], ("blind", 0): [rate, rate]}, ax=ax)
    assert len(ax.lines) == 3  # two curves and the 50% line
    ax.clear()
    figures.plot_rate_curve([1, 10], [rate, rate], ax=ax, xlabel="tau", logx=True)
    assert ax.get_xscale() == "log"


def test_gap_profiles_figure():
    from diffgen.measures.metrics import GapProfile

    fig, axes = plt.subplots(1, 3)
    prof = GapProfile(np.array([1, 10, 100]), np.ones(3), np.ones(3), np.ones(3))
    figures.plot_gap_profiles({"a": prof, "b": prof}, axes)
    assert all(len(ax.lines) == 2 for ax in axes)
    plt.close(fig)


def test_chapter_specific_figures(ax):
    fig, (a1, a2) = plt.subplots(1, 2)
    along = AlongTraining((10, 100), [Estimate(0.1, 0, 0.2), Estimate(0.3, 0.2, 0.4)],
                          [wilson_interval(1, 10), wilson_interval(3, 10)], [0.2, 0.1, 0.3],
                          [-1.0, -1.2, -0.8], 3)
    figures.plot_along_training(along, a1, a2, ceiling=1.0, baseline=0.3)
    assert a1.get_xscale() == "log" and len(a1.lines) >= 2
    a1.clear(), a2.clear()
    slopes = [TweedieSlope(10, 0, 1.0, Estimate(0.98, 0.95, 1.01)), TweedieSlope(10, 9, 0.3, Estimate(0.3, 0.28, 0.33))]
    figures.plot_tweedie(slopes, {"one": [0.5, 0.4, 0.3]}, a1, a2)
    assert len(a2.lines) == 1 and len(a2.lines[0].get_xdata()) == 3
    a1.clear(), a2.clear()
    rows = [NoisyPointRow(s, 0.1 * s, wilson_interval(5, 10), 0.05 * s) for s in (1, 10)]
    figures.plot_noisy_points(rows, [1, 10], {1: Estimate(1, 0.9, 1.1), 10: Estimate(0.5, 0.4, 0.6)},
                               {1: 3.0, 10: 1.0}, 1.8, a1, a2)
    assert len(a2.lines) >= 2
    plt.close(fig)


def test_objective_curves_and_rate_against_gap_draw_every_objective():
    from diffgen.chapters.training_curves import ObjectiveCurves

    fig, axes = plt.subplots(1, 4)
    curve = lambda k, kid: ObjectiveCurves((10, 20, 40), np.full((2, 3), 0.1 * k), kid,  # noqa: E731
                                           np.array([[1.0, 0.5, 0.2]] * 2), np.array([[0.9, 0.7, 0.6]] * 2),
                                           torch.zeros(2, 4, 3), torch.ones(2, 4), torch.ones(2, 4))
    curves = {"standard": curve(1, np.ones((2, 3))), "new": curve(2, np.ones((2, 3)))}
    figures.plot_objective_curves(curves, [0, 1], axes)
    assert all(len(ax.lines) == 2 for ax in axes)
    assert axes[2].get_yscale() == "log" and axes[3].get_ylabel() == "standard loss, held-out images"
    for ax in axes:
        ax.clear()
    figures.plot_objective_curves({"no KID": curve(1, None)}, [0, 1], axes)
    assert [len(ax.lines) for ax in axes] == [1, 0, 1, 1]  # without a classifier the KID axis stays empty
    figures.plot_rate_against_gap(curves, {"standard": [0, 1], "new": [0, 1]}, ax=axes[1], along="heldout_loss")
    assert axes[1].xaxis_inverted() and axes[1].get_xlabel() == "standard loss on held-out images"
    assert len(axes[1].lines) == 2 + 2 * 2  # per objective its mean and a thin line per seed
    axes[0].clear()
    figures.plot_objective_curves(curves, {"standard": [0], "new": [1]}, axes[:3])  # members per objective
    assert len(axes[0].lines) == 2
    plt.close(fig)


def test_image_mosaic_places_grey_and_colour_images(ax):
    grey = np.arange(2 * 4, dtype=float).reshape(2, 4)  # two 2x2 images
    mosaic = figures.image_mosaic([grey, grey[:1]], (1, 2, 2))
    assert mosaic.shape == (5, 5)
    np.testing.assert_array_equal(mosaic[:2, 3:], [[4, 5], [6, 7]])
    assert np.isnan(mosaic[2]).all() and np.isnan(mosaic[3:, 3:]).all()  # padding and the missing image
    colour = np.stack([np.concatenate([np.full(4, -1.0), np.full(4, 0.0), np.full(4, 1.0)])])  # R -1, G 0, B 1
    mosaic = figures.image_mosaic([colour], (3, 2, 2))
    assert mosaic.shape == (2, 2, 3) and mosaic[1, 1].tolist() == [-1.0, 0.0, 1.0]
    figures.plot_image_rows([colour], (3, 2, 2), ["one"], ax=ax)
    np.testing.assert_allclose(ax.images[0].get_array()[0, 0], [0.0, 0.5, 1.0])
