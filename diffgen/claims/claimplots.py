"""Figures of claim rows (results.Claim): every row's interval against the threshold of its rule, coloured by
its verdict, for the claims at a glance. Computes nothing: the numbers are the rows'; diffgen.base.style has the
colours.
"""
from __future__ import annotations

import math

from ..base.style import VERDICT_COLORS, verdict_color
from .results import Claim
from .rowtext import MARKS, kind

ROW_HEIGHT = 0.46  # inches per row
WIDTH = 8.4  # inches: the claims at a glance span the text column and the margin beside it


def drawable_tests(row: Claim) -> list:
    """The tests of a row's rule that compare the row's own value or an end of its interval with a threshold (the
    ones a picture of the interval can show)."""
    ends = {row.value, *(row.ci or ())}
    return [t for t in row.rule if any(math.isclose(float(t.value), float(e), rel_tol=1e-12, abs_tol=1e-300)
                                       for e in ends if e is not None)]


def claims_figure(entries: list[tuple[str, Claim | None, str]]):
    """Small multiples, one strip per row: (label, row or None for 'not run', verdict). Each strip shows the row's
    value and 95% interval in the row's own units, the threshold of its rule (dashed) with the side where the rule
    holds shaded, all in the colour of its verdict; a row whose premise is not reached is drawn hollow, a row without
    a value says why. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = len(entries)
    height = ROW_HEIGHT * n + 0.3
    fig, axes = plt.subplots(n, 1, figsize=(WIDTH, height), squeeze=False)
    fig.subplots_adjust(left=0.45, right=0.98, top=1 - 0.1 / height, bottom=0.25 / height, hspace=1.6)
    for k, (ax, (label, row, verdict)) in enumerate(zip(axes[:, 0], entries)):
        _strip(ax, label, row, verdict)
        if ax.get_xscale() != "log":
            ax.xaxis.set_major_locator(MaxNLocator(4))
        if k and label.split(" ")[0] != entries[k - 1][0].split(" ")[0]:  # a new claim: a rule above its rows
            top = ax.get_position().y1 + 0.45 * ROW_HEIGHT / height
            fig.add_artist(plt.Line2D([0.02, 0.98], [top, top], color="0.8", lw=0.8, transform=fig.transFigure))
    return fig


def _strip(ax, label: str, row: Claim | None, verdict: str) -> None:
    color = verdict_color(verdict)
    ax.set_yticks([])
    ax.grid(False)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.text(-0.02, 0.5, f"{label}  {MARKS.get(kind(verdict), '')}", transform=ax.transAxes, ha="right",
            va="center", fontsize=10, color="black")
    if row is None or row.value is None:
        ax.spines["bottom"].set_visible(False)
        ax.set_xticks([])
        ax.text(0.5, 0.5, verdict, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.3",
                style="italic")
        return
    lo, hi = row.ci if row.ci else (row.value, row.value)
    tests = drawable_tests(row)
    points = [lo, hi, row.value, *(float(t.threshold) for t in tests)]
    log = min(points) > 0 and max(points) / min(points) > 100
    left, right = min(points), max(points)
    pad = (math.log10(right / left) * 0.12 if log else (right - left) * 0.12) or (abs(right) * 0.1 or 0.1)
    limits = (left / 10 ** pad, right * 10 ** pad) if log else (left - pad, right + pad)
    if log:
        ax.set_xscale("log")
    ax.set_xlim(*limits)
    for t in tests:
        holds_right = t.relation in (">", ">=")
        ax.axvspan(float(t.threshold), limits[1] if holds_right else limits[0], color=VERDICT_COLORS["holds"],
                   alpha=0.12, lw=0)
        ax.axvline(float(t.threshold), color="black", ls="--", lw=1)
    hollow = kind(verdict) == "premise not reached"
    ax.plot([lo, hi], [0, 0], color=color, lw=3, solid_capstyle="butt")
    ax.plot([row.value], [0], "o", ms=7, color=color, mfc="white" if hollow else color, mew=2)
    ax.set_ylim(-1, 1)
    ax.tick_params(axis="x", labelsize=9, length=2, pad=1)


def plot_verdict_grid(values, verdicts, xs, ys, *, ax, xlabel: str, ylabel: str, title: str = ""):
    """A claim row over a grid: each cell values[y][x] in the colour of its verdict verdicts[y][x] (mixed verdicts
    over seeds, 'holds in k of m seeds': grey), labelled with its value and verdict; '' (no cell): blank."""
    from matplotlib.patches import Rectangle

    for i, row in enumerate(values):
        for j, value in enumerate(row):
            verdict = verdicts[i][j]
            if not verdict:
                continue
            mixed = verdict.startswith("holds in ")
            color = "#BBBBBB" if mixed else verdict_color(verdict)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=color, edgecolor="white", lw=2))
            mark = "" if mixed else MARKS.get(kind(verdict), "")
            text = ("n/a" if value is None else f"{value:.3g}") + f"\n{mark} {verdict}".replace(" not ", "\nnot ")
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="black")
    ax.set(xlim=(-0.5, len(xs) - 0.5), ylim=(-0.5, len(ys) - 0.5), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), ["" if y is None else str(y) for y in ys])
    ax.grid(False)
    return ax
