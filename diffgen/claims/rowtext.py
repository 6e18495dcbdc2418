"""The one rendering of a claim row (results.Claim) in words, used by the chapters' verdict sections, their
conclusions, `diffgen report` and the book's claims tables alike.

Every relation it prints is computed from the numbers it prints ("0.561 > 0.488": the relation that holds, not the
one the row needs), with as many digits as it takes for the printed numbers to show it; tests/test_rowtext.py reads
every printed inequality of the book's results files back against its numbers.
"""
from __future__ import annotations

import math
import re

from .prose import number
from .results import (
    FAILS,
    HOLDS,
    NEGATION,
    NOT_MEASURABLE,
    PAPER_CLAIMS,
    PREMISE,
    QUALITY,
    RELATIONS,
    Claim,
    Comparison,
    Condition,
)

NOT_RUN = "not run"
VERDICTS = (HOLDS, FAILS, QUALITY, PREMISE, NOT_MEASURABLE, NOT_RUN)
# one mark per verdict, so that a verdict reads without its colour (diffgen.base.style has the colours)
MARKS = {HOLDS: "●", FAILS: "✕", QUALITY: "▲", PREMISE: "○", NOT_MEASURABLE: "–", NOT_RUN: "·"}


def _printed(value: float, digits: int) -> str:
    return number(float(value), digits)


def relation(value: float, rel: str, threshold: float) -> str:
    """'0.165 <= 0.5': value and threshold with the relation that holds between them (`rel` where it does, its
    negation where not), each with the fewest significant digits (3 or more) at which the printed numbers show that
    relation (and differ, where the numbers do)."""
    shown = rel if RELATIONS[rel](float(value), float(threshold)) else NEGATION[rel]
    equal = float(value) == float(threshold)
    for digits in range(3, 18):
        a, b = _printed(value, digits), _printed(threshold, digits)
        if RELATIONS[shown](float(a), float(b)) and (equal or float(a) != float(b)):
            return f"{a} {shown} {b}"
    return f"{float(value)!r} {shown} {float(threshold)!r}"


def comparison_text(c: Comparison) -> str:
    """'energy distance to held-out images 0.561 > 0.488 (an isotropic Gaussian fit of S)'."""
    return f"{c.what} {relation(c.value, c.relation, c.threshold)}" + (f" ({c.of})" if c.of else "")


def condition_text(condition: Condition, met: str = "met", unmet: str = "not met") -> str:
    """'the standard net copies at n = 40: lower end 0.12 > 0: met' (a condition without tests: its statement and
    outcome). A condition of several tests that is not met marks each test "(met)" or "(not met)", so that a test
    that passes does not read as the reason."""
    mark = (lambda t: " (met)" if t.met else " (not met)") if not condition.met and len(condition.tests) > 1 else (
        lambda t: "")
    tests = ("; " if condition.combine == "all" else "; or ").join(comparison_text(t) + mark(t)
                                                                  for t in condition.tests)
    return f"{condition.statement}" + (f": {tests}" if tests else "") + f": {met if condition.met else unmet}"


def premise_text(row: Claim) -> str:
    return condition_text(row.premise, "reached", "not reached") if row.premise else ""


def quality_text(row: Claim) -> str:
    return condition_text(row.quality, "passes", "fails") if row.quality else ""


def measured(row: Claim, *, seeds: bool = True) -> str:
    """'0.173 [0.165, 0.18], 5 seeds', or 'not measurable'."""
    if row.value is None:
        return NOT_MEASURABLE
    ci = "" if row.ci is None else f" [{number(row.ci[0])}, {number(row.ci[1])}]"
    k = getattr(row, "seeds", None)
    return f"{number(row.value)}{ci}" + (f", {k} seeds" if seeds and k else "")


BRIEF_STATEMENT = 70  # characters: a longer premise or gate statement is left to the row's detail (`notes`)


def _unmet(condition: Condition, name: str) -> str:
    """'premise (the nets approximate eps* at n = 8): lower end 0.1 <= 0.5': a condition not met, by the comparisons
    that fail it (all of them where any one would do); a statement longer than BRIEF_STATEMENT is named only where
    no comparison says why."""
    tests = condition.tests if condition.combine == "any" else [t for t in condition.tests if not t.met]
    said = "; ".join(comparison_text(t) for t in tests)
    if said and len(condition.statement) > BRIEF_STATEMENT:
        return f"{name}: {said}"
    return f"{name} ({condition.statement})" + (f": {said}" if said else ": not met")


def decided_by(row: Claim) -> str:
    """What decides the row, as measured: the comparisons of its rule that fail (all of them where they hold), or
    the premise or the gate where those decide (by the comparisons that fail them), or why there is no value; files
    of older code: the rule as stated."""
    verdict = row.verdict
    if verdict == PREMISE:
        return _unmet(row.premise, "premise")
    if verdict == QUALITY:
        return _unmet(row.quality, "quality gate")
    if verdict == NOT_MEASURABLE:
        found = re.search(r"not measurable: ([^)]*)\)", row.metric)
        return found.group(1) if found else "no value (the row's detail says what was measured)"
    if not row.rule:
        return f"expected {row.expected}"
    failing = [t for t in row.rule if not t.met]
    return "; ".join(comparison_text(t) for t in (failing or row.rule)) + _spans(row)


def reads(row: Claim) -> str:
    """The row's verdict as a predicate: 'holds', 'fails', 'is not shown, nor refuted' (a failing row that is
    `undecided`: its interval spans the threshold), or "reads 'premise not reached'"."""
    if undecided(row):
        return "is not shown, nor refuted"
    return row.verdict if row.verdict in (HOLDS, FAILS) else f"reads '{row.verdict}'"


def _spans(row: Claim) -> str:
    return " (the interval spans the threshold: not shown, not refuted)" if undecided(row) else ""


def undecided(row: Claim) -> bool:
    """A row that fails only because its interval straddles its rule's threshold: every comparison it fails is on
    an end of the row's own interval, and that threshold lies strictly inside the interval. Its numbers neither
    show the claim nor its opposite (a slope of -2.4 [-11.4, 6.6] against "< 0")."""
    if row.verdict != FAILS or row.ci is None or not row.rule:
        return False
    low, high = (float(x) for x in row.ci)
    failing = [t for t in row.rule if not t.met]
    return bool(failing) and all(
        any(math.isclose(float(t.value), end, rel_tol=1e-12, abs_tol=1e-15) for end in (low, high))
        and low < float(t.threshold) < high for t in failing)


def label(row: Claim) -> str:
    """The row's short name (its `label`), else the first words of its metric."""
    return row.label or re.split(r"[,(:]", row.metric, maxsplit=1)[0].strip()


def line(row: Claim) -> str:
    """'holds: 0.92 [0.88, 0.95], 5 seeds; lower end 0.88 > 0.5' (one line per row)."""
    return f"{row.verdict}: {measured(row)}; {decided_by(row)}"


def notes(row: Claim) -> list[str]:
    """The conditions under which the row was measured: premise, quality gate, learning curves."""
    out = []
    if row.premise:
        out.append("premise: " + premise_text(row))
    if row.quality:
        out.append("quality gate: " + quality_text(row))
    if row.flattened is False:
        out.append("measured before its learning curves flattened")
    return out


def details(row: Claim) -> list[tuple[str, str]]:
    """Every detail of a row as (label, text) lines: what it tests and where that comes from, what was measured,
    the interval and its rule, the seeds, the premise, the gate, the learning curves and, for an equivalence, its
    margin and power."""
    source = {"abstract": "the paper's abstract", "revision": "the later revision's summary",
              "ours": "ours (our extension or check, not the paper's)"}[row.source]
    out = [("tests", row.statement), ("source", source), ("measured", row.metric), ("value", measured(row))]
    if row.interval:
        out.append(("interval", row.interval))
    out.append(("expected", row.expected))
    if row.rule:
        out.append(("decided by", "; ".join(comparison_text(t) for t in row.rule) + _spans(row)))
    if row.regime:
        out.append(("where", regime_text(row.regime)))
    if row.equivalence:
        e = row.equivalence
        units = f" = {number(e.margin / e.spread)} rerun spreads" if e.spread > 0 else ""
        enough = f"{e.seeds_for_80} seeds give 80%" if e.seeds_for_80 < 1000 else "not even 999 seeds give 80%"
        out.append(("equivalence", f"margin {number(e.margin)} (fixed before the measurement){units}; seed spread "
                                   f"{number(e.spread)}; power {number(e.power)} at {row.seeds} seeds to pass a true "
                                   f"difference of 0; {enough}"))
    out += [(n.split(": ", 1)[0], n.split(": ", 1)[1]) if ": " in n else ("learning curves", n) for n in notes(row)]
    out.append(("verdict", row.verdict))
    return out


def regime_text(regime: dict) -> str:
    """{'n': 63, 'train_steps': 3000} -> 'n = 63, 3000 steps'."""
    words = {"train_steps": lambda v: f"{v} steps", "width": lambda v: f"width {v}"}
    return ", ".join(words.get(k, lambda v, k=k: f"{k} = {v}")(v) for k, v in regime.items())


def source_word(source: str) -> str:
    return {"abstract": "abstract", "revision": "revision", "ours": "ours"}[source]


def claim_heading(claim_id: str) -> str:
    """'C4 · trained nets approximate it, yet create'."""
    return f"{claim_id} · {PAPER_CLAIMS[claim_id].short}"


# ------------------------------------------------------------------------------------------------------- Markdown
def md(text: str) -> str:
    """Escape what Markdown (and MyST) would misread in a table cell or a line of text."""
    return re.sub(r"([|*_<>`\\$\[\]])", r"\\\1", text)


CSS = {HOLDS: "holds", FAILS: "fails", QUALITY: "quality", PREMISE: "premise", NOT_MEASURABLE: "unmeasurable",
       NOT_RUN: "not-run"}


def kind(verdict: str) -> str:
    """The state of a verdict text: 'fails (2 of 6)' -> 'fails', 'holds (in 1 of 3 regimes)' -> 'holds'."""
    return next((v for v in (QUALITY, *VERDICTS) if verdict.startswith(v)), verdict)


def verdict_md(verdict: str) -> str:
    """The verdict with its mark, in a span the book's stylesheet colours (plain text elsewhere)."""
    state = kind(verdict)
    return f'<span class="diffgen-verdict diffgen-{CSS.get(state, "other")}">{MARKS.get(state, "")} {verdict}</span>'


def concerns(row: Claim) -> list[str]:
    """The conditions that speak against reading the row at face value and do not already decide it: a premise not
    reached or a quality gate that fails where the rule decides, a learning curve that had not flattened."""
    verdict = row.verdict
    out = []
    if row.premise and not row.premise.met and verdict != PREMISE:
        out.append(_unmet(row.premise, "premise"))
    if row.quality and not row.quality.met and verdict not in (QUALITY, PREMISE):
        out.append(_unmet(row.quality, "quality gate"))
    if row.flattened is False:
        out.append("measured before its learning curves flattened")
    return out


def rows_markdown(rows: list[Claim]) -> str:
    """A chapter's verdict section: one line per paper row in a table (the row; its verdict with its value and 95%
    interval; what decides it and the conditions that speak against it), the conditions shared by several rows said
    once under it, our own rows in the same form in a dropdown headed by their tally, and every row's full detail in
    one dropdown."""
    shared = _shared_notes(rows)
    paper, ours = [r for r in rows if r.source != "ours"], [r for r in rows if r.source == "ours"]
    out = [_table(paper, shared)] if paper else []
    if shared:
        out.append("\n".join(f"{k}. {md(n[0].upper() + n[1:])}." for n, k in shared.items()))
    if ours:
        out.append(f"::::{{dropdown}} Our own rows ({len(ours)}): {tally(ours)}\n{_table(ours, shared)}\n::::")
    body = "\n\n".join(f"**{md(row.id + ' · ' + label(row))}**\n\n" + "\n".join(f"- *{md(k)}*: {md(v)}"
                                                                               for k, v in details(row))
                       for row in rows)
    out.append(f"::::{{dropdown}} Every row in detail: what it tests, its source, interval, seeds, premise and "
               f"quality gate\n{body}\n::::")
    return "\n\n".join(out)


def _table(rows: list[Claim], shared: dict[str, int]) -> str:
    table = ["| row | verdict: value [95% CI] | decided by |", "|---|---|---|"]
    for row in rows:
        own = [n for n in concerns(row) if n not in shared]
        refs = [f"note {shared[n]}" for n in concerns(row) if n in shared]
        cell = "; ".join(filter(None, [decided_by(row), *own, ", ".join(refs)]))
        name = f"{row.id} · {label(row)}" + ("" if row.source != "ours" else " (ours)")
        table.append(f"| {md(name)} | {verdict_md(row.verdict)} {md(measured(row))} | {md(cell)} |")
    return "\n".join(table)


def tally(rows) -> str:
    """'4 hold, 2 fail, 1 premise not reached': rows (claim rows or report rows) counted by verdict; every verdict
    but holds and premise not reached counts as failing."""
    ok = sum(r.verdict == HOLDS for r in rows)
    premise = sum(r.verdict == PREMISE for r in rows)
    bad = len(rows) - ok - premise
    return f"{ok} hold{'s' * (ok == 1)}, {bad} fail{'s' * (bad == 1)}" + (f", {premise} premise not reached"
                                                                        if premise else "")


def _shared_notes(rows: list[Claim]) -> dict[str, int]:
    """The concerns that two or more rows share, numbered in order of appearance."""
    counts: dict[str, int] = {}
    for row in rows:
        for n in dict.fromkeys(concerns(row)):
            counts[n] = counts.get(n, 0) + 1
    return {n: k + 1 for k, n in enumerate(n for n, c in counts.items() if c > 1)}
