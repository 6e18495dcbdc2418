"""Layer 9: the chapters' conclusions, written from their claim rows. A chapter's "What we measured" section is one
call here: every sentence that states a verdict, a direction or a cause is derived from the rows it summarises, so a
rerun whose numbers move cannot contradict its own text (tests/test_conclusions.py flips rows and reads the words).
"""
from __future__ import annotations

from .prose import number
from .results import FAILS, HOLDS, NOT_MEASURABLE, PREMISE, QUALITY


def row_text(row) -> str:
    """'holds: 0.12 [0.05, 0.19], 5 seeds' (the row's verdict, value and interval), then its premise or quality
    gate where they decide, and 'measured before its learning curves flattened' where that is so."""
    verdict = row.verdict
    if row.value is None:
        text = verdict if verdict == NOT_MEASURABLE else f"{verdict}: not measured"
    else:
        ci = "" if row.ci is None else f" [{number(row.ci[0])}, {number(row.ci[1])}]"
        text = f"{verdict}: {number(row.value)}{ci}" + (f", {row.seeds} seeds" if row.seeds else "")
    if verdict == PREMISE:
        text += f" (premise: {row.premise})"
    elif verdict == QUALITY:
        text += f" (quality: {row.quality})"
    if row.flattened is False:
        text += "; measured before its learning curves flattened"
    return text


def findings(rows: list, labels: list[str]) -> str:
    """A Markdown bullet per row: '- **label** (source): row_text(row).'"""
    if len(rows) != len(labels):
        raise ValueError(f"one label per row: {len(rows)} rows, {len(labels)} labels")
    return "\n".join(f"- **{label}** ({row.source}): {row_text(row)}." for row, label in zip(rows, labels))


def tally(rows: list) -> str:
    """'Of the paper's rows, 4 hold, 2 fail (C4, C6), 1 is not evaluated (premise not reached: C4); of ours, ...'"""
    def part(group) -> str:
        held = sum(r.verdict == HOLDS for r in group)
        bad = [r for r in group if r.verdict in (FAILS, QUALITY)]
        waiting = [r for r in group if r.verdict == PREMISE]
        other = len(group) - held - len(bad) - len(waiting)
        ids = lambda rs: ", ".join(dict.fromkeys(r.id for r in rs))  # noqa: E731
        text = f"{held} hold{'s' if held == 1 else ''}, {len(bad)} fail{'s' if len(bad) == 1 else ''}"
        text += f" ({ids(bad)})" if bad else ""
        text += f", {len(waiting)} not evaluated (premise not reached: {ids(waiting)})" if waiting else ""
        return text + (f", {other} not measurable" if other else "")

    paper = [r for r in rows if r.source != "ours" and not r.id.startswith("R")]
    ours = [r for r in rows if r.source == "ours" or r.id.startswith("R")]
    return f"Of the paper's rows, {part(paper)}" + (f"; of ours, {part(ours)}" if ours else "") + "."


def unflattened(rows: list) -> str:
    """A sentence naming the rows measured before their learning curves flattened, or '' when there are none."""
    early = [r for r in rows if r.flattened is False]
    if not early:
        return ""
    return (f"{len(early)} of these rows were measured before their learning curves flattened: they speak for our "
            "training budget, and a longer run (the `large` preset) may move them.")


def failed_paper_rows(rows: list, claim_ids) -> list:
    """The paper's rows of the given claims that fail (by their rule or for quality)."""
    return [r for r in rows if r.id in claim_ids and r.source != "ours" and r.verdict in (FAILS, QUALITY)]


# ------------------------------------------------------------------------------------------------------ chapters
def trained_gap(approximates: dict, unseen: dict, critical: dict, tradeoff: dict) -> str:
    """Chapter 3: the rows of C4 per training-set size n (approximates, generates unseen data, the difference is
    critical) and of C6 (within sizes, across widths), each with its verdict."""
    rows, labels = [], []
    for n in approximates:
        rows += [approximates[n], unseen[n], critical[n]]
        labels += [f"C4, approximates eps* (n = {n})", f"C4, generates unseen data (n = {n})",
                   f"C4, the difference is critical (n = {n})"]
    rows += [tradeoff["within"], tradeoff["widths"]]
    labels += ["C6, trade-off within training-set sizes", "C6, trade-off across widths"]
    reached = [n for n, r in approximates.items() if r.holds]
    scope = (f"C4's premise, nets that approximate eps*, is reached at n = {', '.join(map(str, reached))}."
             if reached else "C4's premise, nets that approximate eps*, is reached at no size.")
    return written(rows, labels, scope, chapter="ch3")


def written(rows: list, labels: list[str], *paragraphs: str, chapter: str) -> str:
    """A chapter's conclusions: the tally of its rows, one bullet per row, the rows measured before their curves
    flattened, any further computed paragraphs, and where the numbers are written."""
    return "\n\n".join(filter(None, [tally(rows), findings(rows, labels), unflattened(rows), *paragraphs,
                                       f"The numbers are also written to `{chapter}.results.json` beside the "
                                       "executed notebook."]))


def new_objective(rows: dict, name_new: str) -> str:
    """Chapter 4: the rows of C5a and C5b (rows = {group: [Claim, ...]} as the chapter builds them) with their
    verdicts; where a paper row of C5 fails, the causes of ours that come before the paper, each as measured."""
    labels = {"similar model": "C5a, a similar model", "similar quality": "C5a, similar quality",
              "memorizes less": "C5b, memorizes less", "competitive quality": "C5b, competitive quality",
              "less information": "C5b, less information (2-D)", "beyond weighting": "C5b, beyond the weighting of t",
              "matched": "C5b, copies less at matched", "variant": "the fixed-gap variant"}
    flat_rows = [r for group in rows.values() for r in group]
    flat_labels = [r.id if group == "checks" else labels[group] + (f" ({_where(r.metric)})" if len(rows[group]) > 1
                                                                    else "")
                   for group in rows for r in rows[group]]
    failed = failed_paper_rows(flat_rows, ("C5a", "C5b"))
    causes = ""
    if failed:
        exact = next((r for r in flat_rows if r.id == "R3"), None)
        listed = [f"our reading of the objective, whose exact optimum is eps* (R3 {exact.verdict})" if exact else
                  "our reading of the objective",
                  "the estimator of E[xi_{t,t-1} | x_t] we chose (randomized gaps converted by Tweedie's formula), "
                  "which the summary names but does not specify"]
        early = [r for r in failed if r.flattened is False]
        listed.append("the training budget: " + (f"{len(early)} of the failing rows were measured before their "
                                                 "learning curves flattened" if early else
                                                 "every failing row's curves had flattened, so not the budget alone"))
        causes = (f"{len(failed)} of the paper's C5 rows fail here. Before they count against the paper, these causes "
                  "of ours come first: " + "; ".join(listed) + ".")
    return written(flat_rows, flat_labels, f"The headline objective is {name_new}.", causes, chapter="ch4")


def _where(metric: str) -> str:
    """What distinguishes rows of one group, from their metric text: 'n = 40', or the matched quantity."""
    import re

    if "matched" in metric:
        return metric.split("matched ", 1)[1].split(",")[0]
    found = re.search(r"n = \d+", metric)
    return found.group(0) if found else metric
