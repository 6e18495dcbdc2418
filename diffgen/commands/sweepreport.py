"""What a parameter sweep (diffgen.commands.sweep) measured: each claim row at every grid point, its verdict maps,
and, for rows measured at several training-set sizes per run (chapter 3's C4), the region where each verdict holds
in words ("holds for n <= 63 at every training length; fails at n = 8 from 4000 steps on"); for a row over the
training length (chapter 4's C5b), whether its value outlasts longer training.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

from ..base.provenance import source_hash
from ..claims.prose import number, trend
from ..claims.results import (FLATTENED, HOLDS, NOT_MEASURABLE, PREMISE, SWEEP_FILE, ReportError,
                              claim_from_json, read_results)
from ..claims.rowtext import decided_by, md


@dataclass(frozen=True)
class SweepCell:
    """One claim row at one grid point, over the seeds measured there."""

    values: dict  # the swept parameters' values, the seed left out
    value: float | None  # mean over the seeds with a value
    ci: tuple[float, float] | None  # across seeds (t interval) with two or more, else the one seed's own interval
    verdicts: tuple[str, ...]  # the row's verdict at each seed's run
    stale: bool  # computed by other diffgen code than the current

    @property
    def verdict(self) -> str:
        """The verdict of every seed where they agree, else 'holds in k of m seeds'."""
        if len(set(self.verdicts)) == 1:
            return self.verdicts[0]
        return f"holds in {sum(v == 'holds' for v in self.verdicts)} of {len(self.verdicts)} seeds"


@dataclass(frozen=True)
class SweepRow:
    index: int  # position of the row in the chapter's claims
    claim: str
    source: str
    metric: str  # as the first point states it
    cells: list[SweepCell]
    label: str | None = None  # the row's short name, as the first point states it (files of older code: none)


def read_sweep(folder: str | Path) -> dict:
    """folder/sweep.json with each point's results (None where it has none); a corrupt file is an error naming it."""
    path = Path(folder) / SWEEP_FILE
    try:
        doc = json.loads(path.read_text())
        points = doc["points"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{path}: not a readable sweep record ({e})") from e
    for name, entry in points.items():
        results = Path(folder) / name / f"{doc['chapter']}.results.json"
        try:
            entry["results"] = read_results(results) if results.is_file() else None
        except (ValueError, KeyError, TypeError) as e:
            raise ReportError(f"{results}: {e}") from e
    return doc


def grid_text(doc: dict) -> str:
    """The grid of a sweep record in words, each parameter's values in increasing order: 'train_steps in {2000,
    4000, 8000}' (values that are not numbers in the order given)."""
    def ordered(values):
        try:
            return sorted(values, key=float)
        except (TypeError, ValueError):
            return list(values)
    return " by ".join(f"{k} in {{{', '.join(map(str, ordered(v)))}}}" for k, v in doc["grid"].items())


def sweep_rows(doc: dict, current: str | None = None) -> list[SweepRow]:
    """Per claim row of the chapter, one cell per grid point (seeds pooled: mean and interval across them)."""
    from ..measures.metrics import across_seeds

    current = current or source_hash()
    groups: dict[tuple, list[dict]] = {}
    for entry in doc["points"].values():
        key = tuple((k, v) for k, v in entry["values"].items() if k != "seed")
        groups.setdefault(key, []).append(entry)
    measured = [e["results"] for e in doc["points"].values() if e["results"]]
    if not measured:
        return []
    rows = []
    for i, first in enumerate(measured[0]["claims"]):
        cells = []
        for key, entries in groups.items():
            docs = [e["results"] for e in entries if e["results"] and len(e["results"]["claims"]) > i]
            claims = [claim_from_json(d["claims"][i]) for d in docs]
            values = [c.value for c in claims if c.value is not None]
            if len(values) >= 2:
                est = across_seeds(values)
                value, ci = est.value, (est.low, est.high)
            else:
                value = values[0] if values else None
                ci = claims[0].ci if values else None
            cells.append(SweepCell(dict(key), value, ci, tuple(c.verdict for c in claims),
                                   any(d["source_hash"] != current for d in docs)))
        rows.append(SweepRow(i, first["id"], first["source"], first["metric"], cells, first.get("label")))
    return rows


def format_sweep(folder: str | Path, doc: dict, rows: list[SweepRow], figures: list[Path]) -> str:
    statuses = [e.get("status") for e in doc["points"].values()]
    grid = " x ".join(f"{k} = {', '.join(map(str, v))}" for k, v in doc["grid"].items())
    stale = sum(c.stale for r in rows[:1] for c in r.cells)
    lines = [f"Sweep of {doc['chapter']} ({folder}): {grid}",
             f"{len(statuses)} points: {statuses.count('done') + statuses.count('skipped')} done, "
             f"{statuses.count('failed')} failed, {statuses.count('pending')} not run; {stale} grid cells stale "
             f"(computed by other diffgen code; rerun the sweep to recompute them)", ""]
    for row in rows:
        lines.append(f"{row.claim} [{row.source}] row {row.index + 1}: {row.metric}")
        for c in row.cells:
            where = ", ".join(f"{k}={v}" for k, v in c.values.items()) or "(one point)"
            value = NOT_MEASURABLE if c.value is None else number(c.value)
            ci = "" if c.ci is None else f" [{number(c.ci[0])}, {number(c.ci[1])}]"
            lines.append(f"  {where}: {value}{ci}  {c.verdict}{'  STALE' if c.stale else ''}")
        lines.append("")
    if figures:
        lines.append("Verdict maps: " + ", ".join(str(f) for f in figures))
    return "\n".join(lines) + "\n"


def sweep_figure(doc: dict, row: SweepRow):
    """The verdict map of one claim row over the first two swept parameters (the seed aside): each cell in its
    verdict's colour, with its value; further parameters facet the figure. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    from ..base import style
    from ..claims.claimplots import plot_verdict_grid

    names = [k for k in doc["grid"] if k != "seed"]
    x_name, y_name, facet_names = names[0], (names[1] if len(names) > 1 else None), names[2:]
    facets = sorted({tuple(c.values[k] for k in facet_names) for c in row.cells})
    fig, axes = plt.subplots(1, len(facets), figsize=(min(style.WIDE_WIDTH, 4.2 * len(facets) + 1), 3.2),
                             squeeze=False)
    for ax, facet in zip(axes[0], facets):
        cells = {(c.values[x_name], c.values[y_name] if y_name else None): c for c in row.cells
                 if tuple(c.values[k] for k in facet_names) == facet}
        xs, ys = sorted({x for x, _ in cells}), sorted({y for _, y in cells}, key=lambda y: (y is None, y))
        plot_verdict_grid([[cells[x, y].value if (x, y) in cells else None for x in xs] for y in ys],
                          [[cells[x, y].verdict if (x, y) in cells else "" for x in xs] for y in ys], xs, ys, ax=ax,
                          xlabel=x_name, ylabel=y_name or "",
                          title=", ".join(f"{k}={v}" for k, v in zip(facet_names, facet)))
    fig.suptitle(f"{row.claim} [{row.source}]: {textwrap.shorten(row.metric, 90)}", fontsize=10)
    return fig


def sweep_heatmaps(folder: str | Path, doc: dict, rows: list[SweepRow]) -> list[Path]:
    """sweep_figure of every claim row, as PNGs under folder/report/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not [k for k in doc["grid"] if k != "seed"]:
        return []
    out = Path(folder) / "report"
    out.mkdir(exist_ok=True)
    paths = []
    for row in rows:
        fig = sweep_figure(doc, row)
        path = out / f"{doc['chapter']}-row{row.index + 1}-{row.claim}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def render_sweep(folder: str | Path) -> str:
    doc = read_sweep(folder)
    rows = sweep_rows(doc)
    if not rows:
        raise ReportError(f"{folder}: the sweep has no finished point yet")
    return format_sweep(folder, doc, rows, sweep_heatmaps(folder, doc, rows))


# ---------------------------------------------------------------------------------------- rows by training-set size
@dataclass(frozen=True)
class SizeCell:
    """One row of a conditional claim at one grid point, at the training-set size it measures (its regime)."""

    n: int
    values: dict  # the point's swept parameters, the seed aside
    value: float | None
    verdict: str  # holds | fails | fails (quality) | premise not reached | not measurable
    stale: bool
    ci: tuple[float, float] | None = None  # the row's 95% interval there
    converged: tuple[int, int] | None = None  # (nets whose curves flattened, nets behind the row), where its premise
    # counts them (verdicts.nets_converged)
    decided_by: str = ""  # what decides its verdict there, in words (rowtext.decided_by)


def rows_by_size(doc: dict, claim: str, kind: str, current: str | None = None) -> list[SizeCell]:
    """Every row of `claim` whose metric starts with `kind` (e.g. chapter 3's 'copy rate'), at every grid point of a
    sweep (read_sweep), placed at the training-set size it measures (its regime; in files of older code, the 'n = N'
    of its metric): chapter 3 measures C4 at several sizes in each run, so these rows belong on a size axis."""
    import re

    current = current or source_hash()
    cells = []
    for entry in doc["points"].values():
        results = entry["results"]
        if not results:
            continue
        values = {k: v for k, v in entry["values"].items() if k != "seed"}
        for c in map(claim_from_json, results["claims"]):
            found = (c.regime or {}).get("n") or (lambda m: m and int(m.group(1)))(re.search(r"\bn = (\d+)",
                                                                                             c.metric))
            if c.id == claim and c.metric.startswith(kind) and found:
                tests = c.premise.tests if c.premise else ()
                converged = next(((int(t.value), int(t.threshold)) for t in tests if t.what == FLATTENED), None)
                cells.append(SizeCell(int(found), values, c.value, c.verdict, results["source_hash"] != current,
                                      tuple(c.ci) if c.ci else None, converged, decided_by(c)))
    return sorted(cells, key=lambda c: (c.n, sorted(c.values.items())))


def _steps(values: list, every: list, swept: str) -> str:
    """How a set of values of the swept parameter sits within all of them: 'at every training length', 'from 4000
    steps on', 'up to 2000 steps', 'after 1000 and 4000 steps' (train_steps); other parameters by name."""
    unit = (lambda v: f"{v} steps") if swept == "train_steps" else (lambda v: f"{swept} = {v}")
    if values == every:
        return "at every training length" if swept == "train_steps" else f"at every {swept}"
    if len(values) < len(every) and values == every[-len(values):]:
        return f"from {unit(values[0])} on"
    if values == every[:len(values)]:
        return f"up to {unit(values[-1])}"
    listed = " and ".join([", ".join(str(v) for v in values[:-1]), str(values[-1])] if len(values) > 1 else
                          [str(values[0])])
    return f"after {listed} steps" if swept == "train_steps" else f"at {swept} = {listed}"


def _sizes(run: list[int], sizes: list[int]) -> str:
    """'n = 8', 'n <= 63' (a run from the smallest size), 'n >= 178' (to the largest), 'n from 22 to 63'."""
    if len(run) == 1:
        return f"n = {run[0]}"
    if run[0] == sizes[0] and run[-1] != sizes[-1]:
        return f"n <= {run[-1]}"
    if run[-1] == sizes[-1] and run[0] != sizes[0]:
        return f"n >= {run[0]}"
    if run == sizes:
        return "every n"
    return f"n from {run[0]} to {run[-1]}"


def describe_region(cells: list[SizeCell], swept: str) -> str:
    """One sentence of where a row's verdicts lie over (training-set size, swept parameter): per verdict, runs of
    consecutive sizes that share the same set of swept values, e.g. 'holds for n <= 63 at every training length;
    premise not reached at n = 500 at every training length; fails at n = 8 from 4000 steps on'."""
    if not cells:
        return "not measured in this sweep"
    sizes = sorted({c.n for c in cells})
    by = {(c.n, c.values.get(swept)): c.verdict for c in cells}
    parts = []
    for verdict in dict.fromkeys(c.verdict for c in sorted(cells, key=lambda c: c.verdict != "holds")):
        phrases = []  # (run of sizes, phrase of swept values)
        for n in sizes:
            every = sorted(y for (m, y) in by if m == n)
            mine = [y for y in every if by[n, y] == verdict]
            if not mine:
                phrases.append(None)
                continue
            phrase = _steps(mine, every, swept)
            if phrases and phrases[-1] and phrases[-1][1] == phrase:
                phrases[-1][0].append(n)
            else:
                phrases.append(([n], phrase))
        runs = [("at " if len(run) == 1 else "for ") + f"{_sizes(run, sizes)} {phrase}"
                for run, phrase in filter(None, phrases)]
        parts.append(f"{verdict} " + (", ".join(runs[:-1]) + " and " + runs[-1] if len(runs) > 1 else runs[0]))
    return "; ".join(parts)


def size_figure(cells: list[SizeCell], swept: str, title: str, *, ax):
    """The verdict map of rows_by_size cells: training-set size across, the swept parameter up, each cell in its
    verdict's colour with its value."""
    from ..claims.claimplots import plot_verdict_grid

    if not cells:
        ax.text(0.5, 0.5, "not measured in this sweep", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])
        return ax
    xs = sorted({c.n for c in cells})
    ys = sorted({c.values.get(swept) for c in cells}, key=lambda y: (y is None, y))
    at = {(c.n, c.values.get(swept)): c for c in cells}
    values = [[at[x, y].value if (x, y) in at else None for x in xs] for y in ys]
    labels = [[at[x, y].verdict if (x, y) in at else "" for x in xs] for y in ys]
    return plot_verdict_grid(values, labels, xs, ys, ax=ax, xlabel="training-set size n (as measured)", ylabel=swept,
                             title=title)


# ------------------------------------------------------------------------------------------ a row over training length
def bullet(label: str, text: str) -> str:
    """A Markdown list item "- **label:** text", both escaped: a label such as "approximates eps*" must not end the
    bold early."""
    return f"- **{md(label)}:** {md(text)}"


def describe_budget(cells: list[SizeCell], swept: str) -> str:
    """Per training-set size, how a row's value moves as `swept` (the training length) grows, the nets that converged
    at each length, and what that says of a difference read "once trained to the end": it holds (on converged nets,
    where its premise counts them); the nets converged but another premise is not reached (say, the standard net
    does not copy); its interval reaches 0 at every length (there was none) or at the longest (not distinguishable
    from 0 there, or reversed when it lies below); it shrinks with each longer length, still above 0 (undecided); or it
    does not shrink steadily. One sentence per size."""
    if not cells:
        return "Not measured in this sweep."

    def reaches_zero(cell):
        return (cell.ci[0] if cell.ci else cell.value) <= 0

    unit = "step" if swept == "train_steps" else f"{swept} ="
    at = (lambda v: f"{v} steps") if swept == "train_steps" else (lambda v: f"{swept} = {v}")
    sentences = []
    for n in sorted({c.n for c in cells}):
        mine = sorted((c for c in cells if c.n == n and c.value is not None), key=lambda c: c.values[swept])
        if not mine:
            sentences.append(f"At n = {n} the row was not measurable at any {swept}.")
            continue
        xs, ys, last = [c.values[swept] for c in mine], [c.value for c in mine], mine[-1]
        noise = max(((c.ci[1] - c.ci[0]) / 2 for c in mine if c.ci), default=0.0)  # moves within it read as flat
        moves = trend(xs, ys, tolerance=noise, unit=unit) if len(mine) > 1 else f"is {number(ys[0])} at {at(xs[0])}"
        interval = f" [{number(last.ci[0])}, {number(last.ci[1])}]" if last.ci else ""
        counted = [c for c in mine if c.converged]
        nets = ("; nets converged: " + ", ".join(f"{c.converged[0]} of {c.converged[1]} at {at(c.values[swept])}"
                                                 for c in counted)) if counted else ""
        everyone = bool(last.converged) and last.converged[0] == last.converged[1]
        none = bool(last.converged) and last.converged[0] == 0
        if last.verdict == HOLDS:
            reading = f"it holds at {at(last.values[swept])}" + (", on converged nets" if everyone else "")
        elif last.verdict == PREMISE and everyone:
            reading = (f"the nets converged, but at {at(last.values[swept])} the row's premise is not reached "
                       f"({last.decided_by})")
        elif all(reaches_zero(c) for c in mine):
            reading = (f"there is no difference to outlast at any length; at {at(last.values[swept])} the row reads "
                       f"'{last.verdict}' ({last.decided_by})")
        elif reaches_zero(last):
            below = last.ci is not None and last.ci[1] < 0
            reading = (f"at {at(last.values[swept])} its interval " + (
                "lies below 0: after the longest training the difference has reversed" if below else
                "reaches 0: after the longest training it is not distinguishable from 0") + (
                "" if everyone or not last.converged else f", on nets {'none' if none else 'not all'} of which "
                f"converged (the row reads '{last.verdict}')"))
        elif moves.startswith("falls") and all(b < a for a, b in zip(ys, ys[1:])):  # beyond its intervals too
            reading = (f"it shrinks with each longer training and is still above 0 at {at(last.values[swept])}, where "
                       f"the row reads '{last.verdict}' ({last.decided_by}): whether it outlasts training is not "
                       "decided here")
        else:
            reading = (f"it does not shrink with each longer training; at {at(last.values[swept])} the row reads "
                       f"'{last.verdict}' ({last.decided_by})")
        sentences.append(f"At n = {n} it {moves} ({number(last.value)}{interval} at the longest){nets}: {reading}.")
    return " ".join(sentences)


def budget_figure(cells: list[SizeCell], swept: str, title: str, *, ax):
    """A row's value against `swept` (log axis), one line per training-set size (marker), its interval as a bar and
    each point in its verdict's colour; 0 dashed."""
    from ..base.style import verdict_color

    if not cells:
        ax.text(0.5, 0.5, "not measured in this sweep", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])
        return ax
    sizes = sorted({c.n for c in cells})
    shift = {n: 1.04 ** (k - (len(sizes) - 1) / 2) for k, n in enumerate(sizes)}  # side by side, not on top
    for n, marker in zip(sizes, "osD^v<>"):
        mine = sorted((c for c in cells if c.n == n and c.value is not None), key=lambda c: c.values[swept])
        xs = [c.values[swept] * shift[n] for c in mine]
        ax.plot(xs, [c.value for c in mine], color="0.55", lw=1, zorder=1)
        ax.plot([], [], marker, color="0.3", ls="", label=f"n = {n}")
        for x, c in zip(xs, mine):
            err = [[c.value - c.ci[0]], [c.ci[1] - c.value]] if c.ci else None
            ax.errorbar([x], [c.value], yerr=err, fmt=marker, color=verdict_color(c.verdict), ms=6, capsize=3,
                        zorder=2)
    for verdict in dict.fromkeys(c.verdict for c in cells):
        ax.plot([], [], "s", color=verdict_color(verdict), ls="", label=verdict)
    ax.axhline(0, color="0.4", lw=0.8, ls="--")
    ticks = sorted({c.values[swept] for c in cells})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel=swept, title=title)
    ax.legend(fontsize=8, frameon=False)
    return ax
