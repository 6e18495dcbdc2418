"""The claims report, from the `<chapter>.results.json` files of a run (or of the book build).

One set of rows and one number format serve `diffgen report` (text, Markdown, JSON) and the introduction's table
(the `{diffgen-claims}` directive of diffgen.commands.book). A paper claim is grouped with every row measured under its
id, whichever chapter measured it. Its verdict rests on its `abstract`/`revision` rows only; `ours` rows (our extensions
of a claim) stand beside it with their own verdict and never change the paper's. Reconstruction checks (R1, R2, ...)
come after the claims. A claim that no results file measures is listed as "not run" with the chapter planned for it.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from ..base.provenance import source_hash
from ..chapters.registry import chapter_defaults
from ..claims import rowtext
from ..claims.prose import number
from ..claims.results import (
    EVERY,
    EXISTS,
    FAILS,
    HOLDS,
    NOT_MEASURABLE,
    PAPER_CLAIMS,
    PAPER_SOURCES,
    PREMISE,
    QUALITY,
    QUANTIFIER_WORDS,
    SWEEP_FILE,
    Claim,
    ReportError,
    claim_from_json,
    fmt_memory,
    is_reconstruction,
    read_results,
)
from ..claims.rowtext import NOT_RUN
from .sweepreport import read_sweep, render_sweep

CHECKS = "checks"  # the group of reconstruction checks (R1, R2, ...)
SWEEPS = "sweeps"  # a run folder's sweeps: <folder>/sweeps/<name>/sweep.json (diffgen.commands.sweep)


@dataclass(frozen=True)
class Row:
    """One measured row (its Claim), or a 'not run' placeholder of a paper claim (data None)."""

    claim: str  # C1..C4, C5a, C5b, C6, or R1, R2, ... for a reconstruction check
    chapter: str  # the chapter that measured it (or is planned to)
    source: str  # abstract | revision | ours
    statement: str  # what the row tests
    verdict: str  # holds | fails | fails (quality) | premise not reached | not measurable | not run
    data: Claim | None = None  # the row as measured
    sweep: str | None = None  # the sweep point that measured it ("train_steps=1000"), None: the run's own chapter

    @property
    def is_paper(self) -> bool:
        return self.source in PAPER_SOURCES

    @property
    def regime(self) -> dict | None:
        return None if self.data is None else self.data.regime

    @property
    def metric(self) -> str | None:
        return None if self.data is None else self.data.metric

    @property
    def value(self) -> float | None:
        return None if self.data is None else self.data.value

    @property
    def ci(self) -> tuple[float, float] | None:
        return None if self.data is None else self.data.ci

    @property
    def seeds(self) -> int | None:
        return None if self.data is None else self.data.seeds


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
    """Every `*.results.json` in `directory` -> (the chapter runs, one row per measured claim plus 'not run' rows),
    and the rows of the sweeps under `directory/sweeps/` measured by the current source (they widen the region of a
    claim read as "there is a regime where"; stale points are left out).

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
    return runs, rows_for([d for _, d in docs], sweep_rows_of(directory, runs))


def sweep_rows_of(directory: Path, runs: list[ChapterRun] = ()) -> list[Row]:
    """The rows of every sweep point under directory/sweeps/*/ whose results the current source computed, except a
    point with the parameters of a chapter run in `runs` (the same case measured twice: chapter 4's sweep includes
    its default length)."""
    rows, current = [], source_hash()
    chapter_runs = {(r.chapter, json.dumps(r.parameters, sort_keys=True)) for r in runs}
    for record in sorted((Path(directory) / SWEEPS).glob(f"*/{SWEEP_FILE}")):
        doc = read_sweep(record.parent)
        for name, entry in doc["points"].items():
            results = entry["results"]
            if results and results["source_hash"] == current and (
                    doc["chapter"], json.dumps(results["parameters"], sort_keys=True)) not in chapter_runs:
                rows += [_row(doc["chapter"], c, sweep=name) for c in results["claims"]]
    return rows


def rows_for(docs: list[dict], sweep: list[Row] = ()) -> list[Row]:
    """Rows grouped by paper claim (in PAPER_CLAIMS order; within a claim the paper's rows first, then ours, each in
    chapter order), then the reconstruction checks, then the sweeps' rows; a claim nobody measured: one 'not run'
    row."""
    rows = []
    measured = [_row(d["chapter"], c) for d in docs for c in d["claims"]]
    for cid, paper in PAPER_CLAIMS.items():
        mine = [r for r in measured if r.claim == cid]
        mine.sort(key=lambda r: not r.is_paper)
        if not any(r.is_paper for r in mine):
            mine.insert(0, Row(cid, paper.chapter, paper.source, paper.statement, NOT_RUN))
        rows += mine
    checks = [r for r in measured if is_reconstruction(r.claim)]
    return rows + sorted(checks, key=lambda r: int(r.claim[1:])) + list(sweep)


def _row(chapter: str, c: dict, sweep: str | None = None) -> Row:
    claim = claim_from_json(c)
    return Row(claim.id, chapter, claim.source, claim.statement, claim.verdict, claim, sweep)


def claim_verdict(rows: list[Row]) -> str:
    """The verdict on a group of rows read "in every measured case": not run; premise not reached (every measured row
    is conditional on a premise that was not reached); not measurable (no evaluated row has a value); holds (every
    evaluated row holds; "k of n rows evaluated" where some were not); or fails (k of n evaluated rows, saying how
    many are "not shown, not refuted": their interval spans the threshold, rowtext.undecided). Rows whose
    premise is not reached are not evaluated and do not count. For a paper claim, pass its paper rows (`by_claim`
    does): our rows never change the paper's verdict."""
    verdicts = [r.verdict for r in rows if r.verdict != NOT_RUN]
    if not verdicts:
        return NOT_RUN
    evaluated = [v for v in verdicts if v not in (PREMISE, NOT_MEASURABLE)]
    unmeasured = verdicts.count(NOT_MEASURABLE)
    if not evaluated:
        return NOT_MEASURABLE if unmeasured else PREMISE
    bad = sum(v != HOLDS for v in evaluated)
    if bad:
        open_ = sum(r.verdict == FAILS and r.data is not None and rowtext.undecided(r.data) for r in rows)
        spans = "" if not open_ else "; not shown, not refuted" if open_ == bad else f"; {open_} not shown, not refuted"
        return f"{FAILS} ({bad} of {len(evaluated)}{spans})"
    return HOLDS if len(evaluated) == len(verdicts) else f"{HOLDS} ({len(evaluated)} of {len(verdicts)} rows evaluated)"


@dataclass(frozen=True)
class Regime:
    """The rows of a claim read "there is a regime where" measured at one place (e.g. n = 63 after 3000 steps), with
    the verdict of the place: holds where every part holds; fails where a part whose premise is reached fails;
    else premise not reached, or not measurable."""

    where: dict  # e.g. {"n": 63, "train_steps": 3000}
    rows: list[Row]
    sweep: bool  # measured by a sweep point rather than the run's own chapter

    @property
    def verdict(self) -> str:
        verdicts = [r.verdict for r in self.rows]
        if all(v == HOLDS for v in verdicts):
            return HOLDS
        if any(v in (FAILS, QUALITY) for v in verdicts):
            return FAILS
        return PREMISE if PREMISE in verdicts else NOT_MEASURABLE

    @property
    def failing(self) -> list[Row]:
        return [r for r in self.rows if r.verdict in (FAILS, QUALITY)]


def regimes(rows: list[Row]) -> list[Regime]:
    """The places where rows measure, in order of appearance: rows with one regime (sweep or chapter) together."""
    out: dict[tuple, Regime] = {}
    for r in rows:
        if r.verdict == NOT_RUN:
            continue
        key = (r.sweep is not None, tuple(sorted((r.regime or {}).items())))
        out.setdefault(key, Regime(r.regime or {}, [], r.sweep is not None)).rows.append(r)
    return list(out.values())


def exists_verdict(places: list[Regime]) -> str:
    """A claim read "there is a regime where": holds where some regime holds entirely; fails where its premise is
    reached somewhere and a part fails in every such regime; else premise not reached, or not measurable."""
    if not places:
        return NOT_RUN
    held = sum(p.verdict == HOLDS for p in places)
    failed = sum(p.verdict == FAILS for p in places)
    if held:
        return f"{HOLDS} (in {held} of {len(places)} regimes)"
    if failed:
        return f"{FAILS} (in {failed} of {len(places)} regimes, none holds)"
    return PREMISE if any(p.verdict == PREMISE for p in places) else NOT_MEASURABLE


@dataclass(frozen=True)
class Group:
    """A paper claim (or the reconstruction checks) with its rows: those that decide it, ours beside it, and the rows
    of sweeps (claims read "there is a regime where" count their regimes too)."""

    claim: str  # C1..C4, C5a, C5b, C6, or CHECKS
    paper: list[Row]  # abstract/revision rows: they decide the verdict
    ours: list[Row]  # our rows: own verdicts only
    swept: list[Row] = field(default_factory=list)  # the paper rows of sweeps of the current source

    @property
    def quantifier(self) -> str | None:
        return None if self.claim == CHECKS else PAPER_CLAIMS[self.claim].quantifier

    @property
    def places(self) -> list[Regime]:
        return regimes(self.paper + self.swept)

    @property
    def verdict(self) -> str:
        if self.claim == CHECKS:
            return claim_verdict(self.ours)
        if self.quantifier == EXISTS:
            return exists_verdict(self.places)
        return claim_verdict(self.paper + self.swept)  # every measured case: the sweep's points are cases too

    @property
    def rows(self) -> list[Row]:
        return self.paper + self.ours

    @property
    def chapters(self) -> list[str]:
        return list(dict.fromkeys(r.chapter for r in self.rows))

    @property
    def headline(self) -> Row | None:
        """The row that says most about the verdict: for a claim read "there is a regime", the first row of the
        first regime that holds; else the first failing paper row, the chapters' before the sweeps' (they count
        too), else the first that holds (a row whose premise was not reached decides nothing, so it heads the claim
        only when no row was evaluated)."""
        measured = [r for r in self.paper if r.verdict != NOT_RUN]
        if not measured:
            return None
        if self.quantifier == EXISTS:
            held = [p for p in regimes(measured) if p.verdict == HOLDS]
            return held[0].rows[0] if held else next(iter(p.failing[0] for p in regimes(measured) if p.failing),
                                                    measured[0])
        failing = [r for r in measured + self.swept if r.verdict in (FAILS, QUALITY)]
        return (failing or [r for r in measured if r.verdict == HOLDS] or measured)[0]


def region(group: Group) -> str:
    """Where a claim read "there is a regime where" holds, fails or waits for its premise, computed from its regimes:
    'holds at n = 63, 3000 steps; a part fails at n = 8, 3000 steps (generates unseen data (n = 8): fails); premise
    not reached at n = 500, 3000 steps' (sweep points marked); '' for a claim read "in every measured case"."""
    if group.quantifier != EXISTS:
        return ""
    parts = []
    for verdict, words in ((HOLDS, "holds at"), (FAILS, "a part fails at"), (PREMISE, "premise not reached at"),
                           (NOT_MEASURABLE, "not measurable at")):
        places = [p for p in group.places if p.verdict == verdict]
        if places:
            parts.append(f"{words} " + " and ".join(_place(p) for p in places))
    return "; ".join(parts)


def _place(p: Regime) -> str:
    why = ", ".join(f"{rowtext.label(r.data)}: {r.verdict}" for r in p.failing)
    return (rowtext.regime_text(p.where) or "the chapter's run") + (" (sweep)" if p.sweep else "") + \
        (f" ({why})" if why else "")


def by_claim(rows: list[Row]) -> dict[str, Group]:
    """Paper claim id -> Group, in order, then CHECKS -> the reconstruction checks (when there are any)."""
    groups: dict[str, Group] = {}
    for row in rows:
        key = CHECKS if is_reconstruction(row.claim) else row.claim
        if row.sweep is not None:
            if row.is_paper and key in groups:
                groups[key].swept.append(row)
            continue
        group = groups.setdefault(key, Group(key, [], []))
        (group.paper if row.is_paper else group.ours).append(row)
    return groups


def summary(rows: list[Row]) -> str:
    """'4 claims hold, 1 fails, 1 not run; our own rows: 6 hold, 1 fails' (paper claims counted as claims, our rows
    as rows)."""
    groups = [g for g in by_claim(rows).values() if g.claim != CHECKS]
    verdicts = [g.verdict for g in groups]
    hold = sum(v.startswith(HOLDS) for v in verdicts)
    fail = sum(v.startswith(FAILS) for v in verdicts)
    premise = sum(v == PREMISE for v in verdicts)
    not_run = sum(v == NOT_RUN for v in verdicts)
    unmeasured = sum(v == NOT_MEASURABLE for v in verdicts)
    parts = [f"{hold} claim{'s' * (hold != 1)} hold{'s' * (hold == 1)}", f"{fail} fail{'s' * (fail == 1)}"]
    text = ", ".join(parts + ([f"{premise} premise not reached"] if premise else [])
                     + ([f"{unmeasured} not measurable"] if unmeasured else [])
                     + ([f"{not_run} not run"] if not_run else []))
    ours = [r for r in rows if not r.is_paper and r.sweep is None]
    return text + (f"; our own rows: {rowtext.tally(ours)}" if ours else "")



def any_fails(rows: list[Row]) -> bool:
    """True when a paper claim fails or one of its rows is not measurable (our own checks do not count)."""
    groups = [g for g in by_claim(rows).values() if g.claim != CHECKS]
    return any(g.verdict.startswith(FAILS) or g.verdict == NOT_MEASURABLE for g in groups) or any(
        r.is_paper and r.sweep is None and r.verdict == NOT_MEASURABLE and PAPER_CLAIMS[r.claim].quantifier == EVERY
        for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# Formatting (one number format everywhere: diffgen.claims.prose.number, through diffgen.claims.rowtext)


def fmt_number(value: float | None) -> str:
    """Three significant digits (1.02e-10, 0.992, 1); 'n/a' for None."""
    return "n/a" if value is None else number(value)


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]"


def fmt_measurement(row: Row) -> str:
    """'value [lo, hi], 5 seeds: the relation that decides it; the conditions against it' (diffgen.claims.rowtext)."""
    value = "" if row.data.value is None else f"{rowtext.measured(row.data)}: "
    return f"{value}{rowtext.decided_by(row.data)}" + "".join(f"; {n}" for n in rowtext.concerns(row.data))


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


def reading(group: Group) -> str:
    """'read as: there is a regime where it holds (by its wording: ...)'; '' for the checks."""
    if group.claim == CHECKS:
        return ""
    paper = PAPER_CLAIMS[group.claim]
    return f"read as: {QUANTIFIER_WORDS[paper.quantifier]} ({paper.reading})"


def row_text(r: Row) -> str:
    """One row in words: 'label: value [ci], k seeds: the relation that decides it; conditions -- metric'."""
    tag = "" if r.is_paper else "ours: "
    return f"{tag}{rowtext.label(r.data)}: {fmt_measurement(r)} -- {r.metric}"


def format_text(runs: list[ChapterRun], rows: list[Row], width: int = 110) -> str:
    lines = []
    for group in by_claim(rows).values():
        heading, statement = group_title(group)
        lines += _wrap(f"{heading:<15} {group.verdict.upper():<15} ", statement, width)
        for extra in filter(None, [reading(group), region(group) and "region: " + region(group)]):
            lines += _wrap(" " * 4, extra, width)
        for r in group.rows:
            if r.verdict == NOT_RUN:
                lines.append(f"    {r.chapter}  not run (no {r.chapter}.results.json)")
                continue
            lines += _wrap(f"    {r.chapter}  {r.verdict:<5} ", row_text(r), width)
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


def format_markdown(runs: list[ChapterRun], rows: list[Row]) -> str:
    md = rowtext.md
    lines = ["| claim | source | read as | we measured | verdict |", "|---|---|---|---|---|"]
    for group in by_claim(rows).values():
        heading, statement = group_title(group)
        measured = "<br>".join("not run" if r.verdict == NOT_RUN else f"{md(row_text(r))}: **{r.verdict}**"
                               for r in group.rows)
        sources = ", ".join(dict.fromkeys(r.source for r in group.rows))
        where = f"<br>{md(region(group))}" if region(group) else ""
        lines.append(f"| {md(heading)}: {md(statement)} | {sources} | {md(reading(group))} | {measured} | "
                     f"{group.verdict}{where} |")
    lines += ["", summary(rows) + "."]
    for run in runs:
        lines.append(f"- {run.chapter}: diffgen {run.diffgen_version} (source {run.source_hash}); peak memory "
                     f"{fmt_memory(run.memory)}; parameters: {md(fmt_parameters(run))}")
    return "\n".join(lines) + "\n"


def format_json(runs: list[ChapterRun], rows: list[Row]) -> str:
    from ..claims.results import claim_json

    claims = []
    for group in by_claim(rows).values():
        heading, statement = group_title(group)
        paper = PAPER_CLAIMS.get(group.claim)
        claims.append({"id": group.claim, "statement": statement, "verdict": group.verdict,
                       "source": paper and paper.source, "quantifier": paper and paper.quantifier,
                       "reading": paper and paper.reading, "region": region(group) or None,
                       "measurements": [claim_json(r.data) | {"chapter": r.chapter, "verdict": r.verdict}
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
