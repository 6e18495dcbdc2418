"""One rendering of a claim row (diffgen.claims.rowtext): every relation it prints is true of the numbers it prints, in
every form the book and `diffgen report` use; a flipped row changes its words, its colour and its point."""
from __future__ import annotations

import re

import pytest

from diffgen.base import style
from diffgen.claims import claimplots, conclusions, gates, rowtext, verdicts
from diffgen.claims.results import Comparison, Condition, paper_row, write_results
from diffgen.commands import report
from diffgen.measures.metrics import wilson_interval

NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
RELATION = re.compile(rf"(?<![\w./\\-])({NUMBER})\s*(\\?<=|\\?>=|\\?<|\\?>|≤|≥)\s*({NUMBER})(?![\w./])")
OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "≤": float.__le__,
       "≥": float.__ge__}


def false_relations(text: str) -> list[str]:
    """Every 'a OP b' between two printed numbers in `text` (Markdown escapes allowed) that is false of them."""
    return [m.group(0) for m in RELATION.finditer(text)
            if not OPS[m.group(2).lstrip("\\")](float(m.group(1)), float(m.group(3)))]


def test_the_relation_checker_sees_false_relations_and_ignores_what_is_not_one():
    assert false_relations("energy 0.561 <= 0.488 of a fit; lower end 0.165 > 0.5") == ["0.561 <= 0.488",
                                                                                     "0.165 > 0.5"]
    assert false_relations("0.561 \\> 0.488; d1/d2 < 1/3; n <= 63; 1e-09 < 1e-08; -0.2 < 0") == []


@pytest.mark.parametrize("value, rel, threshold, shown", [
    (0.561, "<=", 0.488, "0.561 > 0.488"), (0.165, ">", 0.5, "0.165 <= 0.5"), (0.9, ">", 0.5, "0.9 > 0.5"),
    (0.49996, "<", 0.5, "0.49996 < 0.5"), (0.50004, "<", 0.5, "0.50004 >= 0.5"), (0.5, "<", 0.5, "0.5 >= 0.5"),
    (1.0000001, ">=", 1.0, "1.0000001 >= 1"), (3.82e-11, "<", 1e-8, "3.82e-11 < 1.00e-08")])
def test_a_relation_is_printed_as_it_holds_with_the_digits_it_takes(value, rel, threshold, shown):
    text = rowtext.relation(value, rel, threshold)
    assert text == shown and not false_relations(text)


def test_a_quality_value_moved_across_its_threshold_flips_the_printed_relation_and_the_verdict():
    premise = Condition("the nets approximate eps*", True)
    rates = [wilson_interval(c, 100) for c in (5, 8, 6)]
    for value, relation, verdict in [(0.48, "<=", "holds"), (0.49, ">", "fails (quality)")]:
        gate = gates.QualityGate("energy distance to held-out images", value, "a crude fit", 0.488)
        row = verdicts.generates_unseen(rates, "x", premise, gate, 40)
        text = rowtext.quality_text(row)
        assert f"{value:g} {relation} 0.488" in text and row.verdict == verdict and not false_relations(text)
        assert (verdict != "holds") == ("passes" not in text)


def _rows():
    """Rows of every kind the chapters write: conditional, gated, equivalence, constant across seeds, unmeasured."""
    reached = Condition("the nets approximate eps*", True, (Comparison("lower end", 0.87, ">", 0.5),))
    gate = gates.QualityGate("energy distance to held-out images", 0.561, "a crude fit", 0.488)
    trained = verdicts.converged(0.02)
    return [verdicts.approximates_optimum([0.173, 0.165, 0.18], "x", fall=0.01, n=500),
            verdicts.generates_unseen([wilson_interval(0, 256)] * 5, "x", verdicts.premise_of(
                verdicts.approximates_optimum([0.173, 0.165, 0.18], "x", fall=0.01, n=500), 500), gate, 500),
            verdicts.generates_unseen([wilson_interval(c, 256) for c in (160, 170, 150)], "x", reached, gate, 8),
            verdicts.difference_is_critical([0.1, 0.1, 0.1], [0.1, 0.1, 0.1], "x", reached, 63),
            verdicts.similar_model([1.3, 1.4, 1.5, 1.35, 1.45], [1.02, 0.98, 1.01, 0.99], "x", absolute=(0.02, 0.015),
                                   premise=trained, n=40),
            verdicts.quality_within("C5b", [0.012, -0.016, 0.04, 0.01, 0.02], [0.01, -0.01, 0.02, 0.0, -0.02], 0.03,
                                    "energy distance", "x", features="f", premise=trained, n=40, two_sided=False),
            verdicts.memorizes_less([0.0] * 5, "x", verdicts.standard_copies([wilson_interval(0, 256)] * 5, 400,
                                                                              trained), gate, 400),
            verdicts.closed_form_exact(3.82e-11)]


def test_every_form_of_every_row_prints_only_true_relations(tmp_path):
    """The chapters' verdict table, its dropdown, each line, each detail, `diffgen report` in its three formats."""
    rows = _rows()
    forms = [conclusions.written(rows, chapter="chX")]
    for row in rows:
        forms += [rowtext.line(row), rowtext.decided_by(row), *(v for _, v in rowtext.details(row))]
    write_results(tmp_path, "ch4", {}, rows)
    runs, measured = report.load_run(tmp_path)
    forms += [fmt(runs, measured) for fmt in report.FORMATS.values()]
    assert not [bad for text in forms for bad in false_relations(text)]
    assert re.search(r"lower end of the normalised share 0\.\d+ <= 0\.5$", rowtext.line(rows[0]))
    assert "0.561 \\> 0.488" in forms[0]  # Markdown-escaped
    assert rows[3].ci is None and "the same value in all 3 seeds" in rowtext.details(rows[3])[4][1]
    assert rows[1].ci[1] > 0  # 0 copies in every seed: the pooled interval, never [0, 0]


def test_a_flipped_row_changes_its_verdict_its_colour_and_its_point():
    """The figure of the claims at a glance draws each row in its verdict's colour; flipping the row's gate turns
    its words, its colour and its marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [wilson_interval(c, 100) for c in (5, 8, 6)]
    premise = Condition("the nets approximate eps*", True)
    colors = {}
    for value in (0.2, 0.9):
        row = verdicts.generates_unseen(rates, "x", premise, gates.QualityGate("e", value, "fit", 0.5), 40)
        fig = claimplots.claims_figure([("C4 · unseen", row, row.verdict)])
        marker = [line for line in fig.axes[0].lines if line.get_marker() == "o"][0]
        colors[row.verdict] = matplotlib.colors.to_hex(marker.get_color())
        assert rowtext.verdict_md(row.verdict).startswith(f'<span class="diffgen-verdict diffgen-'
                                                          f'{rowtext.CSS[rowtext.kind(row.verdict)]}">')
        plt.close(fig)
    assert colors == {"holds": style.VERDICT_COLORS["holds"].lower(),
                      "fails (quality)": style.VERDICT_COLORS["fails (quality)"].lower()}


def test_the_figure_draws_every_row_its_threshold_and_the_rows_without_a_value():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows()
    fig = claimplots.claims_figure([(f"row {k}", r, r.verdict) for k, r in enumerate(rows)] +
                                   [("C1", None, "not run")])
    assert len(fig.axes) == len(rows) + 1
    first = fig.axes[0]
    assert [line.get_xdata()[0] for line in first.lines if line.get_linestyle() == "--"] == [0.5]  # its threshold
    assert fig.axes[-1].texts[-1].get_text() == "not run"
    assert fig.axes[7].get_xscale() == "log"  # an error of 1e-11 against 1e-8
    plt.close(fig)


def test_a_row_held_back_by_its_premise_is_decided_by_the_failing_test_and_its_detail_keeps_the_statement():
    long = "sufficient training: the curves of every net flattened (gap and held-out loss within 5%, copy rate " \
           "within 0.05 over the last interval)"
    for statement, shown in (("the nets approximate eps*", True), (long, False)):
        premise = Condition(statement, False, (Comparison("nets whose curves flattened", 3, ">=", 10),
                                               Comparison("power", 0.9, ">=", 0.8)))
        row = verdicts.memorizes_less([0.1, 0.2, 0.15], "new", premise, gates.QualityGate("energy", 0.1, "a crude fit", 1.0), 8)
        assert row.verdict == "premise not reached"
        said = rowtext.decided_by(row)
        assert "nets whose curves flattened 3 < 10" in said and "power" not in said  # the test that fails it only
        assert (statement in said) == shown and statement in dict(rowtext.details(row)).get("premise", "")


def test_the_verdict_section_tables_the_paper_rows_and_folds_ours_under_their_tally():
    rows = _rows() + [verdicts.candidate_minimiser_is_eps_star(1e-14), verdicts.candidate_minimiser_is_eps_star(0.1)]
    text = rowtext.rows_markdown(rows)
    ours = [r for r in rows if r.source == "ours"]
    assert ours and len(ours) < len(rows)
    visible, folded = text.split("::::{dropdown} Our own rows", 1)
    assert f"({len(ours)}): {rowtext.tally(ours)}" in folded.splitlines()[0]
    for row in rows:  # each row once in a table: the paper's in sight, ours in the dropdown
        name = rowtext.md(f"{row.id} · {rowtext.label(row)}")
        assert (f"| {name} |" in visible) == (row.source != "ours"), name
        assert (f"| {name} (ours) |" in folded.split("::::{dropdown} Every row")[0]) == (row.source == "ours"), name
    assert rowtext.tally(rows[:3]) == "0 hold, 2 fail, 1 premise not reached" and rowtext.tally(ours) == "1 holds, 1 fails"


def test_a_condition_not_met_marks_which_of_its_tests_failed():
    """claims_in_detail once printed "nets whose curves flattened 0 < 10; power ... 0.989 >= 0.8: not reached", as if
    the power failed too."""
    from diffgen.claims.results import Comparison, Condition

    both = (Comparison("nets whose curves flattened", 0, ">=", 10), Comparison("power", 0.989, ">=", 0.8))
    assert rowtext.condition_text(Condition("trained", False, both), "reached", "not reached") == (
        "trained: nets whose curves flattened 0 < 10 (not met); power 0.989 >= 0.8 (met): not reached")
    assert rowtext.condition_text(Condition("trained", True, (both[1],)), "reached", "not reached") == (
        "trained: power 0.989 >= 0.8: reached")
