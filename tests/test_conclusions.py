"""The chapters' conclusions follow their rows: each chapter's "What we measured" cell, executed on claim rows made by
the chapter's own verdict rules, then again with one row flipped, must change its words for that row and its tally."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from diffgen import conclusions, verdicts
from diffgen.metrics import Estimate, wilson_interval

REPO = Path(__file__).resolve().parents[1]


def conclusion_cell(stem: str) -> str:
    """The source of the chapter's cell that writes its conclusions (the one calling diffgen.conclusions)."""
    nb = nbformat.read(REPO / "book" / f"{stem}.ipynb", as_version=4)
    [cell] = [c for c in nb.cells if c.cell_type == "code" and "say(conclusions." in c.source]
    return cell.source


def render(stem: str, namespace: dict) -> str:
    said = []
    exec(conclusion_cell(stem), {**namespace, "conclusions": conclusions, "say": said.append})
    assert len(said) == 1
    return said[0]


def flipped(row, **changes):
    """The row with another outcome, as the chapter's rule would have written it."""
    return dataclasses.replace(row, **changes)


def bullet(text: str, label: str) -> str:
    [line] = [line for line in text.splitlines() if line.startswith(f"- **{label}**")]
    return line


GATE_OK = verdicts.QualityGate("energy distance", 0.05, "a crude fit", 0.3)
REACHED = verdicts.Premise("the nets approximate eps*", True)


def test_chapter1_conclusions_follow_a_flipped_row():
    rows = [_r1(), _r2(), verdicts.memorizer_saturates(Estimate(2.0, 1.95, 2.05), 8, "the optimum"),
            verdicts.learner_below_memorizer([0.5, 0.6, 0.55], Estimate(2.0, 1.95, 2.05), "nets", GATE_OK),
            verdicts.blind_reads_zero(Estimate(0.0, -0.02, 0.02), "exact score"), _c6()]
    knn = {name: Estimate(v, v, v) for name, v in [("optimum + DDIM", 2.0), ("trained net", 0.55),
                                                   ("Gaussian fit", 0.1), ("exact score of P", 0.0)]}
    ns = dict(claims=rows, knn=knn, n_sets=8, log_M=2.08, n_seeds=3)
    text = render("ch1_mutual_information", ns)
    assert bullet(text, "C1, the trained nets lie below it").startswith("- **C1, the trained nets lie below it** "
                                                                        "(abstract): holds")
    rows[3] = flipped(rows[3], holds=False, quality_ok=False)
    text2 = render("ch1_mutual_information", {**ns, "claims": rows})
    assert "fails (quality)" in bullet(text2, "C1, the trained nets lie below it")
    assert "1 fails (C1)" in text2 and "0 fail" in text


def _r1():
    from diffgen.results import check_row
    return check_row("R1", "sizes covered", 5.0, None, ">= 4 of 5", True)


def _r2():
    from diffgen.results import check_row
    return check_row("R2", "difference", 0.01, (-0.1, 0.1), "overlap", True)


def _c6():
    return verdicts.tradeoff_along_training(SimpleNamespace(mi_changes=[0.5, 0.4, 0.6],
                                                            marginal_changes=[-1.0, -1.2, -0.9],
                                                            train_steps=(10, 100), seeds=3))


def test_chapter2_conclusions_name_the_cause_only_when_the_stochastic_rows_hold():
    copies = wilson_interval(200, 200)
    rows = [verdicts.closed_form_exact(1e-12), verdicts.sampler_copies(copies, "DDIM", paper=True),
            verdicts.sampler_copies(copies, "ODE", paper=True), verdicts.sampler_copies(copies, "DDIM 1", paper=False),
            verdicts.sampler_copies(copies, "DDPM", paper=False)]
    ns = dict(claims=rows, collapse=SimpleNamespace(collapse_t=150))
    text = render("ch2_empirical_optimum", ns)
    assert "The stochastic samplers copy too" in text and "t = 150" in text
    rows[4] = verdicts.sampler_copies(wilson_interval(20, 200), "DDPM", paper=False)
    text2 = render("ch2_empirical_optimum", {**ns, "claims": rows})
    assert "The stochastic samplers copy too" not in text2
    assert bullet(text2, "DDPM ancestral copies (stochastic)").startswith(
        "- **DDPM ancestral copies (stochastic)** (ours): fails")


def test_chapter3_conclusions_follow_premise_and_verdict_flips():
    approximates = {n: verdicts.approximates_optimum(v, f"n = {n}", flattened=True)
                    for n, v in [(8, [0.9, 0.95, 0.92]), (500, [0.1, 0.2, 0.15])]}
    premise = {n: verdicts.premise_of(r, n) for n, r in approximates.items()}
    unseen = {n: verdicts.generates_unseen([wilson_interval(c, 100) for c in (5, 8, 6)], f"n = {n}", premise[n],
                                           GATE_OK) for n in approximates}
    generalizing = {n: verdicts.generalizing(approximates[n], unseen[n], n) for n in approximates}
    critical = {n: verdicts.difference_is_critical([0.1, 0.12, 0.11] if generalizing[n].met else None,
                                                   [0.4, 0.5, 0.45] if generalizing[n].met else None, f"n = {n}",
                                                   generalizing[n]) for n in approximates}
    trade = verdicts.tradeoff(SimpleNamespace(per_seed=[-0.8, -0.9, -0.7], dropped=[]), "within")
    ns = dict(approximates=approximates, unseen=unseen, critical=critical,
              tradeoff={"within": trade, "widths": trade})
    text = render("ch3_trained_gap", ns)
    assert "premise, nets that approximate eps*, is reached at n = 8." in text
    assert bullet(text, "C4, generates unseen data (n = 500)").endswith(
        "premise not reached: 0.0633 [0.0254, 0.101], 3 seeds (premise: the row 'approximates eps*' holds at n = 500 "
        "(normalised share 0.15 [0.0258, 0.274], lower end above 0.5)).")
    # a copying net at n = 8: that row, the tally and nothing else change
    unseen[8] = verdicts.generates_unseen([wilson_interval(c, 100) for c in (90, 95, 85)], "n = 8", premise[8], GATE_OK)
    text2 = render("ch3_trained_gap", ns)
    assert bullet(text2, "C4, generates unseen data (n = 8)").startswith(
        "- **C4, generates unseen data (n = 8)** (abstract): fails: 0.9")
    assert "fail (C4" in text2.replace("fails (C4", "fail (C4") and text2 != text
    # the premise lost at n = 8 as well: no size reaches it
    approximates[8] = flipped(approximates[8], holds=False)
    assert "reached at no size" in render("ch3_trained_gap", ns)


def test_chapter4_conclusions_list_the_causes_only_when_a_c5_paper_row_fails():
    ok = verdicts.similar_model([1.0, 1.1, 0.9], 3.0, "n = 40")
    quality = verdicts.similar_quality("C5a", [0.01, 0.0, 0.02], 0.4, "energy", "n = 40")
    less = verdicts.memorizes_less([0.2, 0.25, 0.22], "n = 40", verdicts.Premise("the standard net copies", True),
                                   GATE_OK)
    rows = {"similar model": [ok], "similar quality": [quality], "memorizes less": [less],
            "checks": [_r3()]}
    text = render("ch4_new_objective", dict(rows=rows, name_new="new (uniform)"))
    assert "causes of ours come first" not in text and "The headline objective is new (uniform)." in text
    rows["memorizes less"] = [flipped(less, holds=False, quality_ok=False)]
    text2 = render("ch4_new_objective", dict(rows=rows, name_new="new (uniform)"))
    assert "1 of the paper's C5 rows fail here" in text2 and "R3 holds" in text2
    assert bullet(text2, "C5b, memorizes less").startswith("- **C5b, memorizes less** (revision): fails (quality)")


def _r3():
    return verdicts.candidate_minimiser_is_eps_star(1e-14)


def test_row_text_states_value_interval_seeds_and_the_deciding_condition():
    row = verdicts.generates_unseen([wilson_interval(c, 100) for c in (5, 8, 6)], "x",
                                    verdicts.Premise("p", True), verdicts.QualityGate("e", 2.0, "fit", 0.3))
    assert conclusions.row_text(row) == "fails (quality): 0.0633 [0.0254, 0.101], 3 seeds (quality: e 2 <= 0.3 of fit)"
    with pytest.raises(ValueError, match="one label per row"):
        conclusions.findings([row], [])
