"""Layer 7: figures from arrays. Each function takes `ax=`, draws, returns it, and computes nothing of substance.
Style is an explicit call (`use_style()`), never an import side effect."""
from __future__ import annotations

import math

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "figure.figsize": (6.4, 4.0),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "image.cmap": "gray",
}


def use_style() -> None:
    """Apply the book's matplotlib style (call it once, in a chapter's setup cell)."""
    mpl.rcParams.update(STYLE)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_trajectories_2d(train, xt, *, ax, max_paths: int = 200):
    """Reverse paths xt [S+1, B, 2] (from x_T to the sample) over the training points train [N, 2]."""
    xt, train = _np(xt), _np(train)
    for b in range(min(max_paths, xt.shape[1])):
        ax.plot(xt[:, b, 0], xt[:, b, 1], lw=0.5, alpha=0.35, color="tab:blue")
    ax.scatter(xt[0, :, 0], xt[0, :, 1], s=4, color="tab:gray", alpha=0.5, label="$x_T$ (noise)")
    ax.scatter(xt[-1, :, 0], xt[-1, :, 1], s=10, color="tab:blue", label="samples $x_0$")
    ax.scatter(train[:, 0], train[:, 1], s=90, facecolors="none", edgecolors="tab:red", lw=1.5,
               label="training points")
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    return ax


def plot_points_2d(train, x, *, ax, title: str = "", lim: float = 4.0):
    """One frame: points x [B, 2] and the training set train [N, 2]."""
    x, train = _np(x), _np(train)
    ax.scatter(x[:, 0], x[:, 1], s=6, color="tab:blue", alpha=0.6)
    ax.scatter(train[:, 0], train[:, 1], s=90, facecolors="none", edgecolors="tab:red", lw=1.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title)
    ax.set_aspect("equal")
    return ax


def image_mosaic(rows, shape, pad: int = 1) -> np.ndarray:
    """Arrange image rows (a list of [K, D] arrays, each one row of K images of `shape`) into one 2-D array."""
    rows = [_np(r) for r in rows]
    h, w = shape[-2], shape[-1]
    k = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, k * (w + pad) - pad), np.nan)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            out[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = img.reshape(h, w)
    return out


def plot_image_rows(rows, shape, row_labels, *, ax, vmin: float = -1.0, vmax: float = 1.0):
    """Rows of images (e.g. samples above their nearest training images), labelled on the left."""
    mosaic = image_mosaic(rows, shape)
    ax.imshow(np.ma.masked_invalid(mosaic), vmin=vmin, vmax=vmax, cmap="gray_r", interpolation="nearest")
    h = shape[-2] + 1
    ax.set_yticks([i * h + (h - 1) / 2 for i in range(len(rows))], row_labels)
    ax.set_xticks([])
    ax.grid(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    return ax


def plot_band(x, values, *, ax, label: str, color=None, quantiles=(0.1, 0.9)):
    """Median of values [len(x), B] across B with a quantile band."""
    v = _np(values)
    lo, med, hi = np.quantile(v, [quantiles[0], 0.5, quantiles[1]], axis=1)
    line, = ax.plot(_np(x), med, label=label, color=color)
    ax.fill_between(_np(x), lo, hi, alpha=0.2, color=line.get_color())
    return ax


def plot_curves(x, curves: dict, *, ax, xlabel: str, ylabel: str, vline: float | None = None):
    """Several named curves over a shared x; an optional dashed vertical line (a convention's threshold)."""
    for name, y in curves.items():
        ax.plot(_np(x), _np(y), label=name)
    if vline is not None:
        ax.axvline(vline, ls="--", color="k", lw=1)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return ax


def plot_distance_hist(groups: dict, *, ax, bins: int = 40, floor: float = 1e-12):
    """Histograms of distances per group on a log x-axis; distances below `floor` (exact copies: 0) are drawn in
    the first bin, which is labelled as such."""
    values = {name: np.clip(_np(d), floor, None) for name, d in groups.items()}
    top = max(v.max() for v in values.values())
    edges = np.logspace(math.log10(floor), math.log10(top) + 0.1, bins)
    for name, v in values.items():
        ax.hist(v, bins=edges, alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.annotate(f"$\\leq${floor:.0e}\n(exact copies)", xy=(floor, 0), xytext=(0, 18), textcoords="offset points",
                fontsize=8, ha="left")
    ax.legend()
    return ax


def markdown_table(headers, rows) -> str:
    """A Markdown table from a header list and rows of already formatted cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_estimates(labels, values, lows, highs, *, ax, xlabel: str, ceiling: float | None = None,
                   ceiling_label: str = ""):
    """Horizontal bars (first label on top) with confidence-interval whiskers; an optional dashed ceiling line."""
    v, lo, hi = _np(values), _np(lows), _np(highs)
    y = np.arange(len(v))[::-1]
    ax.barh(y, v, color="tab:blue", alpha=0.75)
    ax.errorbar(v, y, xerr=np.stack([v - lo, hi - v]), fmt="none", ecolor="k", capsize=3, lw=1)
    ax.set_yticks(y, labels)
    if ceiling is not None:
        ax.axvline(ceiling, ls="--", color="tab:red", lw=1)
        ax.annotate(ceiling_label, xy=(ceiling, y[-1]), xytext=(-4, -14), textcoords="offset points", ha="right",
                    fontsize=8, color="tab:red")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel=xlabel)
    ax.grid(axis="y", visible=False)
    return ax


def plot_estimate_curves(x: dict, curves: dict, *, ax, xlabel: str, ylabel: str, logx: bool = True):
    """Named curves with bands: curves[name] = (values, lows, highs) over x[name] (each curve its own x)."""
    for name, (v, lo, hi) in curves.items():
        line, = ax.plot(_np(x[name]), _np(v), marker="o", ms=3, label=name)
        ax.fill_between(_np(x[name]), _np(lo), _np(hi), alpha=0.2, color=line.get_color())
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return ax


def plot_set_samples(z, train, *, ax, title: str = "", lim: float = 3.2):
    """Samples z [S, K, 2] of S generators, each in its own colour, with its training set train [S, n, 2] (crosses)."""
    z, train = _np(z), _np(train)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for s in range(len(z)):
        c = colors[s % len(colors)]
        ax.scatter(z[s, :, 0], z[s, :, 1], s=3, color=c, alpha=0.35, lw=0)
        ax.scatter(train[s, :, 0], train[s, :, 1], s=40, marker="x", color=c, lw=1.5)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title)
    ax.set_aspect("equal")
    return ax
