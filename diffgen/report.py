"""Layer 10: the claims report, from the `<chapter>.results.json` files of a run (or of the book build).

One set of rows and one number format serve `diffgen report` (text, Markdown, JSON) and the introduction's table
(the `{diffgen-claims}` directive of diffgen.book). A paper claim is grouped with every row measured under its id,
whichever chapter measured it. Its verdict rests on its `abstract`/`revision` rows only; `ours` rows (our extensions
of a claim) stand beside it with their own verdict and never change the paper's. Reconstruction checks (R1, R2, ...)
come after the claims. A claim that no results file measures is listed as "not run" with the chapter planned for it.
"""
from __future__ import annotations

import json
import re
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from .chapters import chapter_defaults
from .provenance import source_hash
from .results import (FAILS, HOLDS, NOT_MEASURABLE, PAPER_CLAIMS, PAPER_SOURCES, PREMISE, QUALITY, SWEEP_FILE,
                      fmt_memory, is_reconstruction, read_results, row_verdict)

NOT_RUN = "not run"
CHECKS = "checks"  # the group of reconstruction checks (R1, R2, ...)


class ReportError(Exception):
    """No results in the folder, or a malformed results file (exit code 2 of `diffgen report`)."""


@dataclass(frozen=True)
class Row:
    """One measured row (or a 'not run' placeholder of a paper claim: metric, value, ci and expected are None)."""

    claim: str  # C1..C4, C5a, C5b, C6, or R1, R2, ... for a reconstruction check
    chapter: str  # the chapter that measured it (or is planned to)
    source: str  # abstract | revision | ours
    statement: str  # what the row tests
    metric: str | None
    value: float | None
    ci: tuple[float, float] | None
    expected: str | None
    seeds: int | None  # training seeds behind the row (None: nothing trained)
    verdict: str  # holds | fails | fails (quality) | premise not reached | not measurable | not run
    notes: tuple[str, ...] = ()  # the premise and the quality gate as measured; "measured before its learning
    # curves flattened" where that is so

    @property
    def is_paper(self) -> bool:
        return self.source in PAPER_SOURCES


@dataclass(frozen=True)
class ChapterRun:
    chapter: str
    path: Path
    parameters: dict
    diffgen_version: str
    source_hash: str
    memory: dict | None = None  # peak GPU and host memory (results.peak_memory); None in files of older code


def _chapter_key(chapter: str) -> tuple:
    number = chapter[2:]
    return (0, int(number), chapter) if chapter.startswith("ch") and number.isdigit() else (1, 0, chapter)


def load_run(directory: str | Path, *, missing_ok: bool = False) -> tuple[list[ChapterRun], list[Row]]:
    """Every `*.results.json` in `directory` -> (the chapter runs, one row per measured claim plus 'not run' rows).

    ReportError if the folder has no results file (unless `missing_ok`) or if a file is malformed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        if missing_ok:
            return [], rows_for([])
        raise ReportError(f"{directory} is not a folder")
    docs = []
    for path in sorted(directory.glob("*.results.json")):
        try:
            doc = read_results(path)
        except (OSError, ValueError, KeyError, TypeError) as e:  # bad JSON, missing keys, invalid claim
            raise ReportError(f"{path}: not a valid results file ({type(e).__name__}: {e})") from None
        docs.append((path, doc))
    if not docs and not missing_ok:
        raise ReportError(f"no <chapter>.results.json in {directory} (run chapters with `diffgen run`, or build "
                          "the book, first)")
    docs.sort(key=lambda item: _chapter_key(item[1]["chapter"]))
    runs = [ChapterRun(d["chapter"], p, d["parameters"], d["diffgen_version"], d["source_hash"], d.get("memory"))
            for p, d in docs]
    return runs, rows_for([d for _, d in docs])


def rows_for(docs: list[dict]) -> list[Row]:
    """Rows grouped by paper claim (in PAPER_CLAIMS order; within a claim the paper's rows first, then ours, each in
    chapter order), then the reconstruction checks; a claim nobody measured: one 'not run' row."""
    rows = []
    measured = [_row(d["chapter"], c) for d in docs for c in d["claims"]]
    for cid, paper in PAPER_CLAIMS.items():
        mine = [r for r in measured if r.claim == cid]
        mine.sort(key=lambda r: not r.is_paper)
        if not any(r.is_paper for r in mine):
            mine.insert(0, Row(cid, paper.chapter, paper.source, paper.statement, None, None, None, None, None,
                               NOT_RUN))
        rows += mine
    checks = [r for r in measured if is_reconstruction(r.claim)]
    return rows + sorted(checks, key=lambda r: int(r.claim[1:]))


def _row(chapter: str, c: dict) -> Row:
    verdict = row_verdict(c)
    return Row(c["id"], chapter, c["source"], c["statement"], c["metric"], c["value"],
               None if c["ci"] is None else tuple(c["ci"]), c["expected"], c.get("seeds"), verdict, _notes(c))


def _notes(c: dict) -> tuple[str, ...]:
    notes = []
    if c.get("premise"):
        notes.append(f"premise: {c['premise']}" + ("" if c.get("premise_met") else " (not reached)"))
    if c.get("quality"):
        notes.append(f"quality: {c['quality']}" + ("" if c.get("quality_ok") else " (fails)"))
    if c.get("flattened") is False:
        notes.append("measured before its learning curves flattened")
    return tuple(notes)


def claim_verdict(rows: list[Row]) -> str:
    """The verdict on a group of rows: not run; premise not reached (every measured row is conditional on a premise
    that was not reached); holds (every evaluated row holds); or fails (k of n evaluated rows). Rows whose premise is
    not reached are not evaluated and do not count. For a paper claim, pass its paper rows (`by_claim` does): our
    rows never change the paper's verdict."""
    verdicts = [r.verdict for r in rows if r.verdict != NOT_RUN]
    if not verdicts:
        return NOT_RUN
    evaluated = [v for v in verdicts if v != PREMISE]
    if not evaluated:
        return PREMISE
    bad = sum(v != HOLDS for v in evaluated)
    return HOLDS if not bad else f"{FAILS} ({bad} of {len(evaluated)})"


@dataclass(frozen=True)
class Group:
    """A paper claim (or the reconstruction checks) with its rows: those that decide it and ours beside it."""

    claim: str  # C1..C4, C5a, C5b, C6, or CHECKS
    paper: list[Row]  # abstract/revision rows: they decide the verdict
    ours: list[Row]  # our rows: own verdicts only

    @property
    def verdict(self) -> str:
        return claim_verdict(self.paper) if self.claim != CHECKS else claim_verdict(self.ours)

    @property
    def rows(self) -> list[Row]:
        return self.paper + self.ours

    @property
    def chapters(self) -> list[str]:
        return list(dict.fromkeys(r.chapter for r in self.rows))


def by_claim(rows: list[Row]) -> dict[str, Group]:
    """Paper claim id -> Group, in order, then CHECKS -> the reconstruction checks (when there are any)."""
    groups: dict[str, Group] = {}
    for row in rows:
        key = CHECKS if is_reconstruction(row.claim) else row.claim
        group = groups.setdefault(key, Group(key, [], []))
        (group.paper if row.is_paper else group.ours).append(row)
    return groups


def summary(rows: list[Row]) -> str:
    """'4 claims hold, 1 fails, 1 not run; our checks: 6 hold, 1 fails' (paper claims counted as claims, our rows
    as rows)."""
    groups = [g for g in by_claim(rows).values() if g.claim != CHECKS]
    verdicts = [g.verdict for g in groups]
    hold = sum(v == HOLDS for v in verdicts)
    fail = sum(v.startswith(FAILS) for v in verdicts)
    premise = sum(v == PREMISE for v in verdicts)
    not_run = sum(v == NOT_RUN for v in verdicts)
    parts = [f"{hold} claim{'s' * (hold != 1)} hold{'s' * (hold == 1)}", f"{fail} fail{'s' * (fail == 1)}"]
    text = ", ".join(parts + ([f"{premise} premise not reached"] if premise else [])
                     + ([f"{not_run} not run"] if not_run else []))
    ours = [r for r in rows if not r.is_paper]
    if ours:
        ok = sum(r.verdict == HOLDS for r in ours)
        premise = sum(r.verdict == PREMISE for r in ours)
        bad = len(ours) - ok - premise
        text += f"; our checks: {ok} hold{'s' * (ok == 1)}, {bad} fail{'s' * (bad == 1)}"
        text += f", {premise} premise not reached" if premise else ""
    return text


def any_fails(rows: list[Row]) -> bool:
    """True when a paper claim's row fails or is not measurable (our own checks do not count)."""
    return any(r.is_paper and r.verdict in (FAILS, QUALITY, NOT_MEASURABLE) for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# Formatting (one number format everywhere)


def fmt_number(value: float | None) -> str:
    """Three significant digits (1.02e-10, 0.992, 1)."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.3g}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]"


def fmt_measurement(row: Row) -> str:
    """'value [lo, hi] (expected ...; 3 seeds; premise: ...)' for a measured row."""
    ci = fmt_ci(row.ci)
    seeds = f"; {row.seeds} seed{'s' * (row.seeds != 1)}" if row.seeds else ""
    notes = "".join(f"; {n}" for n in row.notes)
    return f"{fmt_number(row.value)}{' ' + ci if ci else ''} (expected {row.expected}{seeds}{notes})"


def fmt_parameters(run: ChapterRun, defaults: dict | None = None) -> str:
    """'name=value, ...'; with `defaults`, only the parameters that differ from them, marked with the default."""
    items = []
    for name, value in run.parameters.items():
        if defaults is None:
            items.append(f"{name}={value}")
        elif name in defaults and defaults[name] != value:
            items.append(f"{name}={value} (default {defaults[name]})")
    return ", ".join(items) if items or defaults is None else "the chapter's defaults"


def group_title(group: Group) -> tuple[str, str]:
    """(heading, statement) of a group: 'C4 (abstract)' and the paper's words, or the checks' heading."""
    if group.claim == CHECKS:
        return "R", "Reconstruction checks (ours): statements about our reading of the paper, not the paper's."
    paper = PAPER_CLAIMS[group.claim]
    return f"{group.claim} ({paper.source})", paper.statement


def format_text(runs: list[ChapterRun], rows: list[Row], width: int = 110) -> str:
    lines = []
    for group in by_claim(rows).values():
        heading, statement = group_title(group)
        lines += _wrap(f"{heading:<15} {group.verdict.upper():<15} ", statement, width)
        for r in group.rows:
            if r.verdict == NOT_RUN:
                lines.append(f"    {r.chapter}  not run (no {r.chapter}.results.json)")
                continue
            tag = "" if r.is_paper else f"[{r.claim}, ours] " if group.claim == CHECKS else "[ours] "
            lines += _wrap(f"    {r.chapter}  {r.verdict:<5} ", f"{tag}{fmt_measurement(r)}: {r.metric}"
                           + ("" if r.is_paper else f" -- {r.statement}"), width)
    lines += ["", summary(rows) + "."]
    for run in runs:
        stale = "" if run.source_hash == source_hash() else f", not the current source {source_hash()}"
        lines += _wrap(f"{run.chapter}: ", f"{run.path}; diffgen {run.diffgen_version} (source {run.source_hash}"
                       f"{stale}); peak memory {fmt_memory(run.memory)}; parameters: "
                       f"{fmt_parameters(run, chapter_defaults(run.chapter))}", width)
    return "\n".join(lines) + "\n"


def _wrap(head: str, text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=head, subsequent_indent=" " * len(head),
                         break_on_hyphens=False) or [head]


def _md(text: str) -> str:
    """Escape what Markdown table cells would misread."""
    return re.sub(r"([|*_<>`\\])", r"\\\1", text)


def format_markdown(runs: list[ChapterRun], rows: list[Row]) -> str:
    lines = ["| claim | source | chapter | we measured | verdict |", "|---|---|---|---|---|"]
    for group in by_claim(rows).values():
        heading, statement = group_title(group)
        measured = "<br>".join(
            "not run" if r.verdict == NOT_RUN else
            f"{'' if r.is_paper else '(ours: ' + _md(r.statement) + ') '}{_md(r.metric)}: "
            f"**{_md(fmt_measurement(r))}**, {r.verdict}" for r in group.rows)
        sources = ", ".join(dict.fromkeys(r.source for r in group.rows))
        lines.append(f"| {_md(heading)}: {_md(statement)} | {sources} | {', '.join(group.chapters)} | {measured} | "
                     f"{group.verdict} |")
    lines += ["", summary(rows) + "."]
    for run in runs:
        lines.append(f"- {run.chapter}: diffgen {run.diffgen_version} (source {run.source_hash}); peak memory "
                     f"{fmt_memory(run.memory)}; parameters: {_md(fmt_parameters(run))}")
    return "\n".join(lines) + "\n"


def format_json(runs: list[ChapterRun], rows: list[Row]) -> str:
    claims = []
    for group in by_claim(rows).values():
        heading, statement = group_title(group)
        claims.append({"id": group.claim, "statement": statement, "verdict": group.verdict,
                       "source": None if group.claim == CHECKS else PAPER_CLAIMS[group.claim].source,
                       "measurements": [{k: v for k, v in asdict(r).items() if k != "claim"} | {"id": r.claim}
                                        for r in group.rows if r.verdict != NOT_RUN],
                       "chapters": group.chapters})
    doc = {"summary": summary(rows), "claims": claims,
           "runs": [{"chapter": r.chapter, "path": str(r.path), "parameters": r.parameters,
                     "diffgen_version": r.diffgen_version, "source_hash": r.source_hash, "memory": r.memory}
                    for r in runs]}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


FORMATS = {"text": format_text, "markdown": format_markdown, "json": format_json}


def render(directory: str | Path, fmt: str = "text") -> tuple[str, list[Row]]:
    """The claims table of a run folder; of a sweep folder (holding sweep.json), the table per grid point and its
    heat maps (text only)."""
    if (Path(directory) / SWEEP_FILE).is_file():
        if fmt != "text":
            raise ReportError(f"{directory} is a sweep folder: its report is text and heat maps (no --format {fmt})")
        return render_sweep(directory), []
    runs, rows = load_run(directory)
    return FORMATS[fmt](runs, rows), rows


# ---------------------------------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class SweepCell:
    """One claim row at one grid point, over the seeds measured there."""

    values: dict  # the swept parameters' values, the seed left out
    value: float | None  # mean over the seeds with a value
    ci: tuple[float, float] | None  # across seeds (t interval) with two or more, else the one seed's own interval
    holds: int  # seeds where the row holds
    seeds: int  # seeds with results
    stale: bool  # computed by other diffgen code than the current


@dataclass(frozen=True)
class SweepRow:
    index: int  # position of the row in the chapter's claims
    claim: str
    source: str
    metric: str  # as the first point states it
    cells: list[SweepCell]


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
        except (ValueError, KeyError) as e:
            raise ReportError(f"{results}: {e}") from e
    return doc


def sweep_rows(doc: dict, current: str | None = None) -> list[SweepRow]:
    """Per claim row of the chapter, one cell per grid point (seeds pooled: mean and interval across them)."""
    from .metrics import across_seeds

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
            claims = [d["claims"][i] for d in docs]
            values = [c["value"] for c in claims if c["value"] is not None]
            if len(values) >= 2:
                est = across_seeds(values)
                value, ci = est.value, (est.low, est.high)
            else:
                value = values[0] if values else None
                ci = tuple(claims[0]["ci"]) if values and claims[0]["ci"] else None
            cells.append(SweepCell(dict(key), value, ci, sum(bool(c["holds"]) for c in claims), len(claims),
                                   any(d["source_hash"] != current for d in docs)))
        rows.append(SweepRow(i, first["id"], first["source"], first["metric"], cells))
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
            lines.append(f"  {where}: {fmt_number(c.value)} {fmt_ci(c.ci)}  holds in {c.holds} of {c.seeds} "
                         f"seed(s){'  STALE' if c.stale else ''}")
        lines.append("")
    if figures:
        lines.append("Heat maps: " + ", ".join(str(f) for f in figures))
    return "\n".join(lines) + "\n"


def sweep_figure(doc: dict, row: SweepRow):
    """The heat map of one claim row: its value over the first two swept parameters (the seed aside), each cell
    marked with its verdict; further parameters facet the figure. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    from . import plotting

    names = [k for k in doc["grid"] if k != "seed"]
    x_name, y_name, facet_names = names[0], (names[1] if len(names) > 1 else None), names[2:]
    facets = sorted({tuple(c.values[k] for k in facet_names) for c in row.cells})
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets) + 1, 3.6), squeeze=False)
    for ax, facet in zip(axes[0], facets):
        cells = {(c.values[x_name], c.values[y_name] if y_name else None): c for c in row.cells
                 if tuple(c.values[k] for k in facet_names) == facet}
        xs, ys = sorted({x for x, _ in cells}), sorted({y for _, y in cells}, key=lambda y: (y is None, y))
        value = [[cells[x, y].value if (x, y) in cells else None for x in xs] for y in ys]
        share = [[cells[x, y].holds / cells[x, y].seeds if (x, y) in cells and cells[x, y].seeds else None
                  for x in xs] for y in ys]
        plotting.plot_sweep_heatmap(value, share, xs, ys, ax=ax, xlabel=x_name, ylabel=y_name or "",
                                    title=", ".join(f"{k}={v}" for k, v in zip(facet_names, facet)))
    fig.suptitle(f"{row.claim} [{row.source}]: {textwrap.shorten(row.metric, 90)}", fontsize=9)
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
    """One row of a conditional claim at one grid point, at the training-set size its metric names ('n = N')."""

    n: int
    values: dict  # the point's swept parameters, the seed aside
    value: float | None
    verdict: str  # holds | fails | fails (quality) | premise not reached | not measurable
    stale: bool


def rows_by_size(doc: dict, claim: str, kind: str, current: str | None = None) -> list[SizeCell]:
    """Every row of `claim` whose metric starts with `kind` (e.g. chapter 3's 'copy rate'), at every grid point of a
    sweep (read_sweep), placed at the training-set size its metric names: chapter 3 measures C4 at several sizes in
    each run, so these rows belong on a size axis, not on the swept n_train."""
    current = current or source_hash()
    cells = []
    for entry in doc["points"].values():
        results = entry["results"]
        if not results:
            continue
        values = {k: v for k, v in entry["values"].items() if k != "seed"}
        for c in results["claims"]:
            found = re.search(r"\bn = (\d+)", c["metric"])
            if c["id"] == claim and c["metric"].startswith(kind) and found:
                cells.append(SizeCell(int(found.group(1)), values, c["value"],
                                      row_verdict(c),
                                      results["source_hash"] != current))
    return sorted(cells, key=lambda c: (c.n, sorted(c.values.items())))


def where(cells: list[SizeCell], swept: str) -> dict[str, list[str]]:
    """verdict -> ['n = 63 after 2000 steps', ...]: where each verdict occurs (`swept`: the other axis's parameter)."""
    out: dict[str, list[str]] = {}
    for c in cells:
        out.setdefault(c.verdict, []).append(f"n = {c.n}" + (f" at {swept} = {c.values[swept]}" if swept in c.values
                                                                else ""))
    return out


def size_figure(cells: list[SizeCell], swept: str, title: str, *, ax):
    """A heat map of rows_by_size cells: training-set size across, the swept parameter up, the value as colour and
    the verdict in words."""
    from . import plotting

    if not cells:
        ax.text(0.5, 0.5, "not measured in this sweep", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xticks=[], yticks=[])
        return ax
    xs = sorted({c.n for c in cells})
    ys = sorted({c.values.get(swept) for c in cells}, key=lambda y: (y is None, y))
    at = {(c.n, c.values.get(swept)): c for c in cells}
    values = [[at[x, y].value if (x, y) in at else None for x in xs] for y in ys]
    labels = [[at[x, y].verdict if (x, y) in at else "" for x in xs] for y in ys]
    return plotting.plot_sweep_heatmap(values, None, xs, ys, ax=ax, xlabel="training-set size n (as measured)",
                                       ylabel=swept, title=title, labels=labels)

