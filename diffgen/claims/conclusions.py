"""The chapters' conclusions, written from their claim rows. A chapter's "Verdict" section is one call
here: every sentence that states a verdict, a direction or a cause is derived from the rows it summarises, so a rerun
whose numbers move cannot contradict its own text (tests/test_conclusions.py flips rows and reads the words).
"""
from __future__ import annotations

from .results import FAILS, FLATTENED, HOLDS, PREMISE, QUALITY
from .prose import number, trend
from .rowtext import label, measured, reads, rows_markdown, undecided


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
def optimum_finding(rows: list) -> str:
    """Chapter 2's finding from its rows: whether the closed form agrees with the float64 brute force (C2) and which
    samplers driven by it copy training images (the C3 rows, the paper's and ours)."""
    exact = next((r for r in rows if r.id == "C2"), None)
    samplers = [r for r in rows if r.id == "C3"]
    copy = [r for r in samplers if r.verdict == HOLDS]
    rest = [r for r in samplers if r not in copy]

    def named(rs) -> str:  # '1 for each of DDIM, eta = 0; ODE (Heun)' or '1 (DDIM, eta = 0), 0.2 (ODE (Heun))'
        names = [label(r).removesuffix(" copies") for r in rs]
        if len(rs) > 1 and len({number(r.value) for r in rs}) == 1:
            return f"{number(rs[0].value)} for each of {'; '.join(names)}"
        return ", ".join(f"{number(r.value)} ({name})" for r, name in zip(rs, names))

    parts = []
    if exact is not None:
        parts.append(f"The closed-form empirical optimum {'agrees with' if exact.verdict == HOLDS else 'differs from'} "
                     f"a float64 brute force (largest difference {number(exact.value)}).")
    if samplers and not rest:
        parts.append(f"Driven by it, every sampler we ran copies training images (copy rate {named(copy)}).")
    elif samplers and not copy:
        parts.append(f"Driven by it, no sampler we ran copies by its row's rule (copy rate {named(rest)}).")
    elif samplers:
        parts.append(f"Driven by it, {len(copy)} of {len(samplers)} samplers copy training images (copy rate "
                     f"{named(copy)}); the others do not by their row's rule ({named(rest)}).")
    return " ".join(parts)


def trained_gap_finding(approximates: dict, unseen: dict, critical: dict, tradeoff: dict) -> str:
    """Chapter 3's finding from its rows, per training-set size n: where C4's three parts hold together, where the
    nets approximate eps* but copy or fail the quality gate, where they do not approximate it; then C6 at equal
    time across widths."""
    said = {}
    for n in approximates:
        a, u, c = approximates[n], unseen[n], critical[n]
        if a.verdict != HOLDS:
            what = ("the nets do not approximate eps*" if a.verdict in (FAILS, QUALITY) else
                    f"'approximates eps*' reads '{a.verdict}'")
        elif u.verdict == QUALITY:
            what = "the nets approximate eps* but their samples fail the quality gate"
        elif u.verdict == FAILS:
            what = f"the nets approximate eps* but copy (copy rate {number(u.value)})"
        elif u.verdict != HOLDS:
            what = f"the nets approximate eps*, and 'generates unseen data' reads '{u.verdict}'"
        elif c.verdict != HOLDS:
            what = (f"the nets approximate eps* and generate unseen data, but 'the difference is critical' reads "
                    f"'{c.verdict}'")
        else:
            what = ("all three parts of C4 hold: the nets approximate eps*, generate unseen data, and the difference "
                    "is critical")
        said.setdefault(what, []).append(n)
    sizes = lambda ns: "n = " + ", ".join(map(str, ns))  # noqa: E731
    text = "; ".join(f"at {sizes(ns)} {what}" for what, ns in said.items())
    widths = tradeoff.get("widths")
    if widths is not None:
        spans = ", an interval that spans 0" if undecided(widths) else ""
        text += (f". Across widths at equal training time, C6's trade-off (closer to eps*, more copies) "
                 f"{reads(widths)} (slope {_value(widths)}{spans})")
    return text[0].upper() + text[1:] + "." if text else ""


def tradeoff_reading(row, reason: str = "") -> str:
    """Chapter 3's sentence on C6 at equal training time from its slope row: holds (the slope's interval lies below
    0), not shown (it spans 0), fails (it lies above 0: closer to eps*, fewer copies), or not measurable (`reason`)."""
    if row.verdict == HOLDS:
        return "At equal training time the nets closer to the optimum copy more: the trade-off of C6 holds here."
    if undecided(row):
        return "At equal training time C6's trade-off is not shown, nor refuted: the slope's interval spans 0."
    if row.verdict == FAILS:
        return ("At equal training time C6's trade-off fails here: the slope's interval lies at or above 0 (closer to "
                "the optimum, no more copies).")
    return f"At equal training time C6's trade-off reads '{row.verdict}' here" + (f" ({reason})." if reason else ".")


def information_over_noise(s: list, mi: list, ceiling: float) -> str:
    """How I(z; m) of the optimum over intermediate states moves with their time s (one Estimate per s), values
    within the widest half-interval counting as equal, and what that says: it falls (more noise, less dependence on
    S), or it stays at the ceiling log M (the added noise does not lower it at these s), or how it moves."""
    tolerance = max((e.high - e.low) / 2 for e in mi)
    moves = trend(s, [e.value for e in mi], tolerance=tolerance, unit="s =")
    if moves.startswith("falls"):
        return f"{moves}: the more noise is added, the less the samples depend on S"
    if moves.startswith("stays flat") and all(e.high >= ceiling - tolerance for e in mi):
        return (f"{moves} nats at every s, at the ceiling log M = {number(ceiling)} within the estimate's interval: "
                f"at these s the added noise does not lower the dependence on S")
    return moves


def trained_gap(approximates: dict, unseen: dict, critical: dict, tradeoff: dict) -> str:
    """Chapter 3: the rows of C4 per training-set size n (approximates, generates unseen data, the difference is
    critical) and of C6 (at equal time across widths; along training, ours), each with its verdict, and where C4's
    premise is reached."""
    rows = [r for n in approximates for r in (approximates[n], unseen[n], critical[n])] + list(tradeoff.values())
    reached = [n for n, r in approximates.items() if r.holds]
    scope = (f"C4's premise, nets that approximate eps*, is reached at n = {', '.join(map(str, reached))}."
             if reached else "C4's premise, nets that approximate eps*, is reached at no size.")
    return written(rows, scope, chapter="ch3")


def written(rows: list, *paragraphs: str, chapter: str) -> str:
    """A chapter's verdict section: the tally of its rows, the rows themselves (diffgen.claims.rowtext.rows_markdown:
    one line each, conditions shared by several rows said once, every detail in a dropdown), the rows measured before
    their curves flattened, any further computed paragraphs, and where the numbers are written."""
    return "\n\n".join(filter(None, [tally(rows), rows_markdown(rows), unflattened(rows), *paragraphs,
                                       f"The numbers are also written to `{chapter}.results.json` beside the "
                                       "executed notebook."]))


def speed_or_memorization(converged: list, along, matched: list) -> str:
    """Chapter 4's reading of C5b, computed from its rows: 'memorizes less' at convergence (`converged`, the sizes
    where the standard net copies), at equal steps while training (`along`) and at matched progress (`matched`: one
    row per measure of progress, gap to eps* and held-out loss). Decided on the converged nets where they converged;
    else what the training curves say: slower training, less memorization beyond it, or, where the matched rows
    disagree, that the answer depends on which progress is matched."""
    if not converged:
        return ""
    reached = [r for r in converged if r.verdict != PREMISE]
    while_training = (f"While training, at equal steps{_at_n(along)}, the new objective copies {_direction(along)} "
                      f"({along.verdict}: {_value(along)})")
    at = "; ".join(f"at {_matched(r)}{_at_n(r)} it copies {_direction(r)} ({r.verdict}: {_value(r)})"
                   for r in matched)
    less = [r for r in matched if r.verdict == HOLDS]
    if len(reached) == len(converged):
        if all(r.verdict == HOLDS for r in converged):
            if len(less) == len(matched):
                return ("On nets whose curves flattened by our criterion the new objective still memorizes less "
                        "(C5b's 'memorizes less' holds at every size where the standard net copies). "
                        f"{while_training}; {at}.")
            return ("On nets whose curves flattened by our criterion the new objective copies less at the end of "
                    "training (C5b's 'memorizes less' holds at every size where the standard net copies), but the "
                    f"nets stopped at different points of their curves. {while_training}; {at}: "
                    f"{_matched_reading(less, matched, along)}.")
        return ("On nets whose curves flattened by our criterion the new objective no longer memorizes less (C5b's "
                f"'memorizes less' {', '.join(r.verdict for r in converged)} at the end of training): what it shows "
                "while training is one of training speed, our reading of the revision's 'optimization bias acts as "
                f"a regularizer'. {while_training}; {at}.")
    counts = "; ".join(f"{int(t.value)} of {int(t.threshold)} nets' curves flattened for {label(r)}"
                       for r in converged if r.premise for t in r.premise.tests
                       if t.what == FLATTENED)
    why = counts or "the premise says why"
    return (f"The nets behind C5b's rows had not all converged by the end of training ({why}), so C5b's "
            f"'memorizes less' at convergence is not decided here. {while_training}; {at}: "
            f"{_matched_reading(less, matched, along)}.")


def _matched_reading(less: list, matched: list, along) -> str:
    """What the rows at matched progress say (`less`: those that hold): less memorization beyond training speed,
    slower training, or, where the measures of progress disagree, that these curves do not decide."""
    if less and len(less) == len(matched):
        sizes = sorted({_at_n(r) for r in matched})
        where = f", at the size where it was matched{sizes[0]}" if len(sizes) == 1 and sizes[0] else ""
        return f"at every matched progress it copies less: a difference beyond training speed{where}"
    if less:
        return (f"it copies less at {' and '.join(_matched(r) for r in less)} but not at "
                f"{' and '.join(_matched(r) for r in matched if r.verdict != HOLDS)}: whether it memorizes less "
                "or only learns slower depends on which progress is matched, so these curves do not decide it")
    return ("the data support less progress (slower training), not less memorization at equal progress"
            if along.verdict == HOLDS else "neither shows less memorization")


def _matched(row) -> str:
    """'matched gap to eps*' from the metric of a verdicts.less_at_matched row."""
    return row.metric.split(",")[0].removeprefix("copy rate at ")


def _direction(row) -> str:
    if row.value is None:
        return "(not measurable)"
    return "less" if row.verdict == HOLDS else "more" if row.ci and row.ci[1] < 0 else "about as much"


def _at_n(row) -> str:
    """' (n = 40)' where the row was measured at one training-set size, else ''."""
    return f" (n = {row.regime['n']})" if row.regime and "n" in row.regime else ""


def _value(row) -> str:
    return measured(row, seeds=False)


def new_objective(rows: dict, name_new: str) -> str:
    """Chapter 4: the rows of C5a and C5b (rows = {group: [Claim, ...]} as the chapter builds them) with their
    verdicts; where a paper row of C5 fails, the causes of ours that come before the paper, each as measured."""
    flat_rows = [r for group in rows.values() for r in group]
    failed = failed_paper_rows(flat_rows, ("C5a", "C5b"))
    causes = ""
    if failed:
        exact = next((r for r in flat_rows if r.id == "R3"), None)
        listed = [f"our reading of the objective, whose exact optimum is eps* (R3 {exact.verdict})" if exact else
                  "our reading of the objective",
                  "the estimator of E[xi_{t,t-1} | x_t] we chose (randomized gaps converted by Tweedie's formula), "
                  "which the summary names but does not specify"]
        converged = [r for r in failed if r.premise and any(t.what == FLATTENED for t in r.premise.tests)]
        unchecked = [r for r in failed if r not in converged]
        listed.append("the training budget: " + (f"the nets behind {len(converged)} of them had converged by our "
                                                 "criterion" if converged else "no failing row rests on nets whose "
                                                 "convergence was checked")
                      + (f"; {len(unchecked)} rest{'s' * (len(unchecked) == 1)} on nets whose convergence is not "
                         f"checked ({', '.join(label(r) for r in unchecked)})" if unchecked else ""))
        causes = (f"{len(failed)} of the paper's C5 rows fail here. Before they count against the paper, these causes "
                  "of ours come first: " + "; ".join(listed) + ".")
    return written(flat_rows, f"The headline objective is {name_new}.", c5b_reading(rows), causes, chapter="ch4")


def c5b_reading(rows: dict) -> str:
    """Chapter 4's reading of C5b (speed_or_memorization) from its rows as the chapter groups them, at the sizes
    where the standard net copies; '' where the chapter measured no training curves."""
    copies = [r for r in rows.get("memorizes less", []) if r.premise and any(
        t.what == "lower end of the standard net's copy rate" and t.met for t in r.premise.tests)]
    return speed_or_memorization(copies, rows["along"][0], rows["matched"]) \
        if rows.get("along") and rows.get("matched") else ""
