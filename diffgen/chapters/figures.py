"""Figures and tables from arrays. Each plot takes `ax=`, draws, returns it, and computes nothing of
substance; each table returns Markdown. Style is an explicit call (`use_style()`), never an import side effect.
Sizes are chosen for the book's page (diffgen.base.style: at most TEXT_WIDTH inches wide, WIDE_WIDTH in cells tagged
`full-width`), so the page shows a figure at its natural size and its tick labels stay at 9 points or more."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch


def use_style() -> None:
    """Apply the book's matplotlib style (diffgen.base.style; call it once, in a chapter's setup cell)."""
    from ..base import style

    style.use()


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
    """Arrange image rows (a list of [K, D] arrays, each one row of K images of `shape`) into one array: [H, W] for
    one channel, [H, W, 3] for colour (C, H, W) = (3, h, w) images; NaN between images."""
    rows = [_np(r) for r in rows]
    colour = len(shape) == 3 and shape[0] == 3
    h, w = shape[-2], shape[-1]
    k = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, k * (w + pad) - pad) + ((3,) if colour else ()), np.nan)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            tile = img.reshape(3, h, w).transpose(1, 2, 0) if colour else img.reshape(h, w)
            out[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = tile
    return out


def plot_image_rows(rows, shape, row_labels, *, ax, vmin: float = -1.0, vmax: float = 1.0):
    """Rows of images (e.g. samples above their nearest training images), labelled on the left; one channel in
    reversed grey (ink dark), colour images as they are, both mapped from [vmin, vmax]."""
    mosaic = image_mosaic(rows, shape)
    if mosaic.ndim == 3:
        rgb = np.clip((mosaic - vmin) / (vmax - vmin), 0, 1)
        ax.imshow(np.where(np.isnan(rgb), 1.0, rgb), interpolation="nearest")
    else:
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


def plot_nearest_rows(summaries: dict, names, train, shape, *, ax, show: int = 10):
    """For each named metrics.CopySummary: a row of its first samples above a row of their nearest training images."""
    train = _np(train)
    rows, labels = [], []
    for name in names:
        s = summaries[name]
        rows += [s.samples[:show], train[_np(s.neighbors.index[:show, 0])]]
        labels += [name, "nearest training"]
    return plot_image_rows(rows, shape, labels, ax=ax)


def plot_weight_collapse(collapse, n_train: int, ax1, ax2):
    """metrics.WeightCollapse: the entropy band of w(x_t, t) with log n (left), the share of decided paths (right)."""
    t = _np(collapse.t)
    plot_band(t, collapse.entropy, ax=ax1, label="median, 10-90% band")
    ax1.axhline(math.log(n_train), ls="--", color="k", lw=1, label="log n (uniform)")
    ax1.set(xlabel="time step t", ylabel="entropy of $w(x_t, t)$ [nats]", xscale="log")
    ax1.invert_xaxis()
    ax1.legend()
    ax2.plot(t, _np(collapse.decided), color="tab:green")
    ax2.set(xlabel="time step t", ylabel="share of paths", xscale="log", ylim=(0, 1.02),
            title="largest weight on the final image")
    ax2.invert_xaxis()
    return ax1, ax2


def plot_loss_curves(losses: dict, *, ax, window_share: int = 50):
    """Training losses [steps] per run name, as moving averages over len / window_share steps, on a log scale."""
    for name, curve in losses.items():
        curve = _np(curve)
        window = max(1, len(curve) // window_share)
        ax.plot(np.convolve(curve, np.ones(window) / window, mode="valid"), label=name)
    ax.set(xlabel="training step", ylabel="training loss (moving average)", yscale="log")
    ax.legend(ncol=2)
    return ax


def plot_curves_xy(curves: dict, *, ax, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False):
    """Named curves, each with its own x: curves[name] = (x, y)."""
    for name, (x, y) in curves.items():
        ax.plot(_np(x), _np(y), marker=".", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, xscale="log" if logx else "linear", yscale="log" if logy else "linear")
    ax.legend()
    return ax


def plot_memorization_sweep(rows, heldout_d1, axes):
    """trained_gap.snapshot_rows on four axes: copy rate against the training step per n (mean
    over seeds, band: the range of the seeds), final copy rate against n, every (n, seed, step) against its gap to
    the optimum, final d1 boxes beside held-out images'."""
    sizes = sorted({r.n for r in rows})
    last = max(r.train_step for r in rows)
    for n in sizes:
        steps = sorted({r.train_step for r in rows if r.n == n})
        per_step = [[r.rate.value for r in rows if r.n == n and r.train_step == s] for s in steps]
        line, = axes[0].plot(steps, [np.mean(v) for v in per_step], marker=".", label=f"n = {n}")
        axes[0].fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.15,
                             color=line.get_color())
        mine = [r for r in rows if r.n == n]
        axes[2].scatter([r.gap for r in mine], [r.rate.value for r in mine], s=12, label=f"n = {n}")
    axes[0].set(xlabel="training step", ylabel="copy rate ($d_1/d_2 < 1/3$)", ylim=(-0.02, 1.02))
    axes[0].legend()
    final = [[r.rate.value for r in rows if r.n == n and r.train_step == last] for n in sizes]
    axes[1].plot(sizes, [np.mean(v) for v in final], marker="o")
    axes[1].fill_between(sizes, [min(v) for v in final], [max(v) for v in final], alpha=0.2)
    axes[1].set(xscale="log", xlabel="training-set size n", ylabel="copy rate, end of training", ylim=(-0.02, 1.02))
    axes[2].set(xscale="log", xlabel="relative gap to $\\epsilon^*$", ylabel="copy rate")
    axes[2].legend()
    ends = [np.concatenate([r.d1 for r in rows if r.n == n and r.train_step == last]) for n in sizes]
    axes[3].boxplot(ends + [_np(heldout_d1)], showfliers=False)
    axes[3].set_xticks(range(1, len(sizes) + 2), [f"n = {n}" for n in sizes] + ["held-out"])
    axes[3].set(yscale="log", ylabel="$d_1/\\sqrt{D}$, end of training")
    return axes


def plot_width_tradeoff(widths, gaps, rates, passes, ax1, ax2):
    """C6 at equal training time (trained_gap.width_slopes' inputs): each seed's copy rate against its gap to eps*
    across the widths, one line per seed, widths that fail the quality gate hollow (ax1); the gap and the copy rate
    against the width, mean over seeds (ax2, the rate on a twin axis)."""
    gaps, rates = np.asarray(gaps, dtype=float), np.asarray(rates, dtype=float)
    for r in range(gaps.shape[1]):
        line, = ax1.plot(gaps[:, r], rates[:, r], "-", lw=1, alpha=0.7)
        for w, g, v, ok in zip(widths, gaps[:, r], rates[:, r], passes):
            ax1.plot([g], [v], "o", ms=5, color=line.get_color(), mfc=line.get_color() if ok else "white")
    for w, g, v in zip(widths, gaps.mean(1), rates.mean(1)):
        ax1.annotate(f"{w}", (g, v), xytext=(3, 3), textcoords="offset points", fontsize=9)
    ax1.set(xscale="log", xlabel="relative gap to $\\epsilon^*$ (labels: width)", ylabel="copy rate, same step")
    ax2.plot(widths, gaps.mean(1), "o-", color="tab:blue", label="gap to $\\epsilon^*$")
    ax2.set(xscale="log", yscale="log", xlabel="width", ylabel="relative gap to $\\epsilon^*$")
    ax2.set_xticks(widths, [str(w) for w in widths])
    twin = ax2.twinx()
    twin.plot(widths, rates.mean(1), "s--", color="tab:orange", label="copy rate")
    twin.set(ylabel="copy rate")
    twin.grid(False)
    ax2.legend(loc="upper left")
    twin.legend(loc="upper right")
    return ax1, ax2


def plot_band_shares(shares: list[dict], ax1, ax2, model: str = "net", yardstick: str = "net on S'"):
    """trained_gap.shares_by_band, one dict per seed: grouped bars of each denoiser's share per band (mean over
    seeds, whiskers: their range) on ax1; the model's share normalised by the yardstick per band on ax2 (None: not
    drawn)."""
    bands = list(shares[0])
    names = list(shares[0][bands[0]])
    width = 0.8 / len(names)
    labels = [f"{lo}..{hi}" for lo, hi in bands]
    for k, name in enumerate(names):
        values = np.array([[sh[b][name] for b in bands] for sh in shares])
        mean = values.mean(0)
        ax1.bar(np.arange(len(bands)) + (k - (len(names) - 1) / 2) * width, mean, width=width, label=name,
                yerr=np.stack([mean - values.min(0), values.max(0) - mean]), capsize=2)
    ax1.set_xticks(np.arange(len(bands)), labels)
    # a denoiser far from the optimum at low noise can have a share far below 0: the axis shows [-1, 1]
    ax1.set(xlabel="time steps t", ylabel="share of the optimum's loss reduction", ylim=(-1.0, 1.05))
    ax1.legend(fontsize=9)
    if ax2 is None:
        return ax1, None
    norm = np.array([[(sh[b][model] - sh[b][yardstick]) / (1 - sh[b][yardstick]) for b in bands] for sh in shares])
    ax2.bar(np.arange(len(bands)), norm.mean(0), yerr=np.stack([norm.mean(0) - norm.min(0), norm.max(0) - norm.mean(0)]),
            capsize=3, color="tab:blue")
    ax2.axhline(0.5, ls="--", color="k", lw=1)
    ax2.set_xticks(np.arange(len(bands)), labels)
    ax2.set(xlabel="time steps t", ylabel=f"normalised by {yardstick}")
    return ax1, ax2


def plot_gap_profiles(profiles: dict, axes):
    """metrics.GapProfile per denoiser on three axes: relative eps-gap, absolute and relative x0-gap, per time step."""
    for name, prof in profiles.items():
        for ax, values in zip(axes, (prof.eps_rel, prof.x0_abs, prof.x0_rel)):
            ax.plot(prof.t, values, marker=".", label=name)
    for ax, label in zip(axes, ("relative gap, $\\epsilon$", "absolute gap per pixel, $x_0$", "relative gap, $x_0$")):
        ax.set(xscale="log", yscale="log", xlabel="time step t", ylabel=label)
    axes[0].legend(fontsize=9)
    return axes


def plot_blend_curves(weights, curves: dict, *, ax, crossings: dict | None = None):
    """Copy rate against the blend weight lambda: curves[(who, seed)] = [Proportion per weight], one colour per who;
    crossings[who] = the lambda of each seed at which half the samples are copies, as ticks on the 50% line."""
    colors = {}
    for (who, seed), rates in curves.items():
        color = colors.setdefault(who, plt.rcParams["axes.prop_cycle"].by_key()["color"][len(colors)])
        ax.plot(weights, [r.value for r in rates], marker=".", color=color, alpha=0.8,
                label=who if list(colors).index(who) == len(colors) - 1 and seed == min(
                    s for w, s in curves if w == who) else None)
    for who, values in (crossings or {}).items():
        values = _np(values) if len(values) else np.zeros(0)
        ax.plot(values, np.full(len(values), 0.5), "|", ms=14, mew=2, color=colors.get(who, "k"))
    ax.axhline(0.5, ls="--", color="k", lw=1)
    ax.set(xlabel="$\\lambda$: $(1-\\lambda)\\,\\epsilon_\\theta + \\lambda\\,\\epsilon^*$", ylabel="copy rate",
           ylim=(-0.02, 1.02))
    ax.legend()
    return ax


def plot_normalized_by_size(normalized: dict, *, ax):
    """The normalised share per training-set size: normalized[n] = one value per seed; mean with the t interval
    across the seeds (metrics.across_seeds), and the line at one half."""
    from ..measures.metrics import across_seeds

    sizes = sorted(normalized)
    est = [across_seeds(normalized[n]) for n in sizes]
    mean = np.array([e.value for e in est])
    ax.errorbar(sizes, mean, yerr=np.stack([mean - [e.low for e in est], [e.high for e in est] - mean]), marker="o",
                capsize=3)
    ax.axhline(0.5, ls="--", color="k", lw=1)
    ax.set(xscale="log", xlabel="training-set size n", ylabel="normalised share, all t", ylim=(min(-0.05, *mean), 1.05))
    return ax


def plot_size_curves(curves: dict, plan, what: str, *, ax, ylabel: str):
    """One curve per training-set size of a trained_gap_plan: `what` of training_curves.ObjectiveCurves ('gap',
    'heldout_loss', ...) of its nets on S along the snapshots, mean over the seeds, band: their range."""
    for n in plan.sizes:
        job, on_s, _ = plan.members(n)
        c = curves[job]
        values = getattr(c, what)[on_s]
        line, = ax.plot(c.train_steps, values.mean(0), "o-", ms=3, label=f"n = {n}")
        ax.fill_between(c.train_steps, values.min(0), values.max(0), alpha=0.15, color=line.get_color())
    ax.set(xlabel="train step", ylabel=ylabel)
    ax.legend()
    return ax


def plot_rate_curve(x, rates, *, ax, xlabel: str, logx: bool = False):
    """One copy-rate curve with its Wilson band, and the 50% line."""
    v = np.array([r.value for r in rates])
    ax.plot(x, v, marker="o")
    ax.fill_between(x, [r.low for r in rates], [r.high for r in rates], alpha=0.2)
    ax.axhline(0.5, ls="--", color="k", lw=1)
    ax.set(xlabel=xlabel, ylabel="copy rate", ylim=(-0.02, 1.02), xscale="log" if logx else "linear")
    return ax


def _errorbars(estimates) -> tuple[np.ndarray, np.ndarray]:
    """(values, [2, n] distances to the interval ends) of metrics.Estimate-like objects."""
    v = np.array([e.value for e in estimates])
    return v, np.stack([v - np.array([e.low for e in estimates]), np.array([e.high for e in estimates]) - v])


def plot_estimates(labels, estimates, *, ax, xlabel: str, ceiling: float | None = None, ceiling_label: str = "",
                   marks: dict | None = None):
    """Horizontal bars of estimates (first label on top) with interval whiskers; an optional dashed ceiling line and
    `marks` {name: values} drawn as diamonds on the same rows."""
    v, err = _errorbars(estimates)
    y = np.arange(len(v))[::-1]
    ax.barh(y, v, color="tab:blue", alpha=0.75)
    ax.errorbar(v, y, xerr=err, fmt="none", ecolor="k", capsize=3, lw=1)
    ax.set_yticks(y, labels)
    for name, values in (marks or {}).items():
        ax.scatter(_np(values), y, marker="D", s=18, color="tab:orange", zorder=3, label=name)
    if ceiling is not None:
        ax.axvline(ceiling, ls="--", color="tab:red", lw=1)
        ax.annotate(ceiling_label, xy=(ceiling, y[-1]), xytext=(-4, -14), textcoords="offset points", ha="right",
                    fontsize=9, color="tab:red")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel=xlabel)
    ax.grid(axis="y", visible=False)
    if marks:
        ax.legend(loc="lower right")
    return ax


def plot_estimate_curves(curves: dict, *, ax, xlabel: str, ylabel: str, logx: bool = True,
                         ceiling: float | None = None):
    """Named curves of estimates with interval bands: curves[name] = (x, [Estimate, ...]); an optional dashed
    ceiling."""
    for name, (x, estimates) in curves.items():
        v, err = _errorbars(estimates)
        line, = ax.plot(_np(x), v, marker="o", ms=3, label=name)
        ax.fill_between(_np(x), v - err[0], v + err[1], alpha=0.2, color=line.get_color())
    if ceiling is not None:
        ax.axhline(ceiling, ls="--", color="tab:red", lw=1, label=f"log M = {ceiling:.2f}")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return ax


def plot_estimator_check(check, *, ax):
    """mutual_information.EstimatorCheck: both estimators with their intervals against the closed form 0.5 log(1 + 1/n)."""
    fine = np.geomspace(min(check.sizes), max(check.sizes), 100)
    ax.plot(fine, 0.5 * np.log1p(1 / fine), color="k", lw=1.2, label=r"exact $\frac{1}{2}\log(1 + 1/n)$")
    for shift, (name, estimates) in zip((0.96, 1.04), (("kNN", check.knn), ("grid", check.grid))):
        v, err = _errorbars(estimates)
        ax.errorbar(np.array(check.sizes) * shift, v, yerr=err, fmt="o", capsize=3, ms=4,
                    label=f"{name} estimate, 95% CI")
    ax.set(xscale="log", xlabel="training-set size n", ylabel="I(z; S)  [nats]")
    ax.legend()
    return ax


def plot_along_training(along, ax1, ax2, *, ceiling: float | None = None, baseline: float | None = None):
    """mutual_information.AlongTraining: I(z; m) (left, with an optional ceiling) and the copy rate (right, with an optional
    baseline: the rate of fresh samples of P) per snapshot."""
    for ax, estimates, label in ((ax1, along.mi, "I(z; m)  [nats]"), (ax2, along.copy, "copy rate (d1/d2 < 1/3)")):
        v, err = _errorbars(estimates)
        ax.errorbar(along.train_steps, v, yerr=err, fmt="o-", capsize=3, ms=4)
        ax.set(xscale="log", xlabel="training step (EMA snapshot)", ylabel=label)
    if ceiling is not None:
        ax1.axhline(ceiling, ls="--", color="tab:red", lw=1, label="log M")
    if baseline is not None:
        ax2.axhline(baseline, ls="--", color="k", lw=1, label="fresh samples of P")
        ax2.legend()
    return ax1, ax2


def plot_tweedie(slopes, signal: dict, ax1, ax2):
    """new_objective.tweedie_slopes against c_{t,s} (left, with the identity line) and the signal share
    E_{s|t} c_{t,s}^2 per time step for each gap distribution in `signal` {name: [T values]} (right)."""
    v, err = _errorbars([w.slope for w in slopes])
    ax1.errorbar([w.c for w in slopes], v, yerr=err, fmt="o", ms=4, capsize=2, label="Monte-Carlo slope (95% CI)")
    ax1.plot([0, 1.02], [0, 1.02], "k--", lw=1, label="Tweedie: slope $= c_{t,s}$")
    ax1.set(xlabel="$c_{t,s}$", ylabel="slope of $\\xi_{t,s}$ on $\\epsilon^*(x_t, t)$")
    ax1.legend()
    for name, values in signal.items():
        ax2.plot(np.arange(1, len(values) + 1), values, label=f"gap {name}")
    ax2.set(xscale="log", yscale="log", xlabel="time step t", ylabel="$\\mathbb{E}_{s\\mid t}\\, c_{t,s}^2$ (signal share)")
    ax2.legend()
    return ax1, ax2


def plot_noisy_points(rows, toy_s, toy_mi: dict, toy_bound: dict, ceiling: float, ax1, ax2):
    """new_objective.noisy_point_rows (left: copy rate with its interval, and distances on a twin axis) and the toy's
    I(z; m) per s beside its Gaussian-channel bound and the ceiling log M (right)."""
    s = [r.s for r in rows]
    ax1.plot(s, [r.rate.value for r in rows], "o-", label="copy rate vs clean $S$")
    ax1.fill_between(s, [r.rate.low for r in rows], [r.rate.high for r in rows], alpha=0.2)
    ax1.set(xscale="log", xlabel="time $s$ of the intermediate set", ylabel="copy rate ($d_1/d_2 < 1/3$)",
            ylim=(-0.02, 1.02))
    twin = ax1.twinx()
    twin.plot(s, [r.d1 for r in rows], "s--", color="tab:orange", label="median $d_1/\\sqrt{D}$")
    twin.plot(s, [r.h for r in rows], ":", color="k", label="noise scale $h_s$")
    twin.set(yscale="log", ylabel="distance per pixel")
    twin.grid(False)
    ax1.legend(loc="center left")
    twin.legend(loc="lower right")
    v, err = _errorbars([toy_mi[x] for x in toy_s])
    ax2.errorbar(toy_s, v, yerr=err, fmt="o-", capsize=3, label="$I(z; m)$, kNN estimate (95% CI)")
    below = [x for x in toy_s if toy_bound[x] < ceiling]  # above log M the bound says nothing about I(z; m)
    ax2.plot(below, [toy_bound[x] for x in below], "k:", label="Gaussian-channel bound (where below $\\log M$)")
    ax2.axhline(ceiling, color="tab:red", ls="--", lw=1, label="ceiling $\\log M$ (a copier)")
    ax2.set(xscale="log", xlabel="time $s$ of the intermediate set", ylabel="nats")
    ax2.legend()
    return ax1, ax2


def plot_objective_curves(curves: dict, members, axes):
    """training_curves.ObjectiveCurves per objective along training, for the member indices `members` (one list for every
    objective, or {objective: its members}, e.g. the seeds of one training-set size): copy rate, KID (an axis left
    empty without it), relative gap to eps* and, with a fourth axis, the standard loss on held-out images (mean over
    the seeds, band: their range)."""
    for name, c in curves.items():
        mine = members[name] if isinstance(members, dict) else members
        for ax, values in zip(axes, (c.rate, c.kid, c.gap, c.heldout_loss)):
            if values is None:
                continue
            v = values[mine]
            line, = ax.plot(c.train_steps, v.mean(0), "o-", ms=3, label=name)
            ax.fill_between(c.train_steps, v.min(0), v.max(0), alpha=0.15, color=line.get_color())
    axes[0].set(xlabel="train step", ylabel="copy rate ($d_1/d_2 < 1/3$)", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="train step", ylabel="KID to held-out images")
    axes[2].set(xlabel="train step", ylabel="relative gap to $\\epsilon^*$", yscale="log")
    if len(axes) > 3:
        axes[3].set(xlabel="train step", ylabel="standard loss, held-out images", yscale="log")
    axes[0].legend()
    return axes


AXIS_LABELS = {"gap": "relative gap to $\\epsilon^*$ (mean over t)", "heldout_loss": "standard loss on held-out images"}


def plot_rate_against_gap(curves, members: dict, *, ax, along: str = "gap"):
    """Copy rate against the relative gap to eps* (or another ObjectiveCurves field, `along`) along training, per
    objective: members = {objective: member indices of curves (one ObjectiveCurves, or {objective: curves})}; one thin
    line per member (seed), the mean over them thick. Curves that lie on each other mean equal memorization at equal
    closeness."""
    for name, mine in members.items():
        c = curves[name] if isinstance(curves, dict) else curves
        x, y = getattr(c, along)[mine], c.rate[mine]
        line, = ax.plot(x.mean(0), y.mean(0), "o-", ms=4, lw=2, label=name)
        for xm, ym in zip(x, y):
            ax.plot(xm, ym, "-", lw=0.7, alpha=0.45, color=line.get_color())
    ax.set(xscale="log", xlabel=AXIS_LABELS.get(along, along), ylabel="copy rate", ylim=(-0.02, 1.02))
    ax.invert_xaxis()
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
