"""The chapters' conclusions follow their rows: each chapter's "What we measured" cell, executed on claim rows made by
the chapter's own verdict rules, then again with one row flipped, must change its words for that row and its tally."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest

from diffgen.claims import conclusions, gates, verdicts
from diffgen.claims.results import Comparison, Condition
from diffgen.measures.metrics import Estimate, wilson_interval

REPO = Path(__file__).resolve().parents[1]


def conclusion_cell(stem: str) -> str:
    """The source of the chapter's cell that writes its conclusions (the one calling diffgen.claims.conclusions)."""
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


def line(text: str, label: str) -> str:
    """The verdict table's line of the row named `label` ('C4 · generates unseen data (n = 500)')."""
    from diffgen.claims.rowtext import md

    [found] = [row for row in text.splitlines() if row.startswith(f"| {md(label)} |")]
    return found


GATE_OK = gates.QualityGate("energy distance", 0.05, "a crude fit", 0.3)
REACHED = Condition("the nets approximate eps*", True)
TRAINED = Condition("sufficient training", True)


def test_chapter1_conclusions_follow_a_flipped_row():
    rows = [_r1(), _r2(), verdicts.memorizer_saturates(Estimate(2.0, 1.95, 2.05), 8, "the optimum"),
            verdicts.learner_below_memorizer([0.5, 0.6, 0.55], Estimate(2.0, 1.95, 2.05), "nets", GATE_OK),
            verdicts.blind_reads_zero(Estimate(0.0, -0.02, 0.02), "exact score"), _c6()]
    knn = {name: Estimate(v, v, v) for name, v in [("optimum + DDIM", 2.0), ("trained net", 0.55),
                                                   ("Gaussian fit", 0.1), ("exact score of P", 0.0)]}
    ns = dict(claims=rows, knn=knn, n_sets=8, log_M=2.08, n_seeds=3)
    text = render("ch1_mutual_information", ns)
    assert "diffgen-holds" in line(text, "C1 · trained nets below the optimum")
    rows[3] = flipped(rows[3], holds=False, quality=Condition("q", False))
    text2 = render("ch1_mutual_information", {**ns, "claims": rows})
    assert "fails (quality)" in line(text2, "C1 · trained nets below the optimum")
    assert "1 fails (C1)" in text2 and "0 fail" in text


def _r1():
    from diffgen.claims.results import check_row
    return check_row("R1", "sizes covered", 5.0, None, ">= 4 of 5", True)


def _r2():
    from diffgen.claims.results import check_row
    return check_row("R2", "difference", 0.01, (-0.1, 0.1), "overlap", True)


def _c6():
    return verdicts.tradeoff_along_training(SimpleNamespace(mi_changes=[0.5, 0.4, 0.6],
                                                            marginal_changes=[-1.0, -1.2, -0.9],
                                                            train_steps=(10, 100), seeds=3, start_step=10))


def test_chapter2_conclusions_name_the_cause_only_when_the_stochastic_rows_hold():
    copies = wilson_interval(200, 200)
    rows = [verdicts.closed_form_exact(1e-12), verdicts.sampler_copies(copies, "DDIM", paper=True),
            verdicts.sampler_copies(copies, "ODE", paper=True), verdicts.sampler_copies(copies, "DDIM 1", paper=False),
            verdicts.sampler_copies(copies, "DDPM, digits", paper=False)]
    ns = dict(claims=rows, collapse=SimpleNamespace(collapse_t=150))
    text = render("ch2_empirical_optimum", ns)
    assert "The stochastic samplers copy too" in text and "t = 150" in text
    rows[4] = verdicts.sampler_copies(wilson_interval(20, 200), "DDPM, digits", paper=False)
    text2 = render("ch2_empirical_optimum", {**ns, "claims": rows})
    assert "The stochastic samplers copy too" not in text2
    assert "diffgen-fails" in line(text2, "C3 · DDPM copies (ours)")
    assert "lower end 0.0657 \\< 0.9" in line(text2, "C3 · DDPM copies (ours)")  # the relation measured


def test_chapter2_finding_follows_its_rows():
    """The sentence that opens chapter 2: every sampler copies, or how many do, from the rows; a flipped row flips
    it."""
    copies = wilson_interval(200, 200)
    rows = [verdicts.closed_form_exact(1e-12), verdicts.sampler_copies(copies, "DDIM", paper=True),
            verdicts.sampler_copies(copies, "ODE", paper=True), verdicts.sampler_copies(copies, "DDPM", paper=False)]
    text = conclusions.optimum_finding(rows)
    assert text == ("The closed-form empirical optimum agrees with a float64 brute force (largest difference "
                    "1.00e-12). Driven by it, every sampler we ran copies training images (copy rate 1 for each of "
                    "DDIM; ODE; DDPM).")
    rows[3] = verdicts.sampler_copies(wilson_interval(20, 200), "DDPM", paper=False)
    text = conclusions.optimum_finding(rows)
    assert "every sampler" not in text and ("2 of 3 samplers copy training images (copy rate 1 for each of DDIM; "
                                            "ODE); the others do not by their row's rule (0.1 (DDPM))") in text
    rows[0] = verdicts.closed_form_exact(1e-3)
    assert conclusions.optimum_finding(rows).startswith("The closed-form empirical optimum differs from")
    none = [verdicts.sampler_copies(wilson_interval(20, 200), name, paper=True) for name in ("DDIM", "ODE")]
    assert "no sampler we ran copies" in conclusions.optimum_finding(none)
    assert conclusions.optimum_finding([]) == ""


def test_chapter3_conclusions_follow_premise_and_verdict_flips():
    approximates = {n: verdicts.approximates_optimum(v, f"n = {n}", fall=0.0, n=n)
                    for n, v in [(8, [0.9, 0.95, 0.92]), (500, [0.1, 0.2, 0.15])]}
    premise = {n: verdicts.premise_of(r, n) for n, r in approximates.items()}
    unseen = {n: verdicts.generates_unseen([wilson_interval(c, 100) for c in (5, 8, 6)], f"n = {n}", premise[n],
                                           GATE_OK, n) for n in approximates}
    generalizing = {n: verdicts.generalizing(approximates[n], unseen[n], n) for n in approximates}
    critical = {n: verdicts.difference_is_critical([0.1, 0.12, 0.11] if generalizing[n].met else None,
                                                   [0.4, 0.5, 0.45] if generalizing[n].met else None, f"n = {n}",
                                                   generalizing[n], n) for n in approximates}
    along = verdicts.tradeoff_along(SimpleNamespace(per_seed=[-0.8, -0.9, -0.7], dropped=[]), "within")
    widths = verdicts.tradeoff_at_equal_time(SimpleNamespace(per_seed=[-0.3, -0.2, -0.25], widths=[8, 16, 32],
                                                             dropped=[], reason=""), "widths")
    ns = dict(approximates=approximates, unseen=unseen, critical=critical,
              tradeoff={"widths": widths, "along": along})
    text = render("ch3_trained_gap", ns)
    assert "premise, nets that approximate eps*, is reached at n = 8." in text
    assert line(text, "C4 · generates unseen data (n = 500)").endswith(
        "| premise (the nets approximate eps\\* at n = 500): lower end of the normalised share 0.0258 \\<= 0.5 |")
    # a copying net at n = 8: that row, the tally and nothing else change
    unseen[8] = verdicts.generates_unseen([wilson_interval(c, 100) for c in (90, 95, 85)], "n = 8", premise[8],
                                          GATE_OK, 8)
    text2 = render("ch3_trained_gap", ns)
    assert "diffgen-fails" in line(text2, "C4 · generates unseen data (n = 8)")
    assert "upper end of the copy rate 1 \\> 0.5" in line(text2, "C4 · generates unseen data (n = 8)")
    assert "fail (C4" in text2.replace("fails (C4", "fail (C4") and text2 != text
    # the premise lost at n = 8 as well: no size reaches it
    approximates[8] = flipped(approximates[8], holds=False)
    assert "reached at no size" in render("ch3_trained_gap", ns)


def test_chapter3_finding_says_where_each_part_of_c4_holds():
    """The sentence that opens chapter 3, per training-set size, from the rows: all three parts hold, the nets copy,
    the nets do not approximate eps*; C6 at equal time. Each flip of a row moves its size to another reading."""
    approximates = {n: verdicts.approximates_optimum(v, f"n = {n}", fall=0.0, n=n)
                    for n, v in [(8, [0.9, 0.95, 0.92]), (63, [0.9, 0.85, 0.88]), (500, [0.1, 0.2, 0.15])]}
    premise = {n: verdicts.premise_of(r, n) for n, r in approximates.items()}
    unseen = {n: verdicts.generates_unseen([wilson_interval(c, 100) for c in counts], f"n = {n}", premise[n],
                                           GATE_OK, n)
              for n, counts in [(8, (90, 95, 85)), (63, (5, 8, 6)), (500, (0, 0, 0))]}
    generalizing = {n: verdicts.generalizing(approximates[n], unseen[n], n) for n in approximates}
    critical = {n: verdicts.difference_is_critical([0.1, 0.12, 0.11] if generalizing[n].met else None,
                                                   [0.4, 0.5, 0.45] if generalizing[n].met else None, f"n = {n}",
                                                   generalizing[n], n) for n in approximates}
    widths = verdicts.tradeoff_at_equal_time(SimpleNamespace(per_seed=[-0.3, -0.2, -0.25], widths=[8, 16, 32],
                                                             dropped=[], reason=""), "widths")
    text = conclusions.trained_gap_finding(approximates, unseen, critical, {"widths": widths})
    assert text.startswith("At n = 8 the nets approximate eps* but copy (copy rate 0.9); at n = 63 all three parts of "
                           "C4 hold") and "at n = 500 the nets do not approximate eps*" in text
    assert text.endswith("C6's trade-off (closer to eps*, more copies) holds (slope -0.25 [-0.374, -0.126]).")
    unseen[8] = verdicts.generates_unseen([wilson_interval(c, 100) for c in (5, 8, 6)], "n = 8", premise[8], GATE_OK,
                                          8)  # n = 8 stops copying: it joins n = 63, said once for both
    critical[8] = critical[63]
    text = conclusions.trained_gap_finding(approximates, unseen, critical, {"widths": widths})
    assert text.startswith("At n = 8, 63 all three parts of C4 hold") and "copy rate" not in text
    critical[8] = flipped(critical[63], holds=False)
    assert "at n = 8 the nets approximate eps* and generate unseen data, but 'the difference is critical' reads " \
           "'fails'" in conclusions.trained_gap_finding(approximates, unseen, critical, {}).lower()
    assert "C6" not in conclusions.trained_gap_finding(approximates, unseen, critical, {})
    unmeasured = verdicts.tradeoff_at_equal_time(SimpleNamespace(per_seed=None, widths=[8, 16], dropped=[8],
                                                                 reason="too few widths"), "widths")
    assert conclusions.trained_gap_finding(approximates, unseen, critical, {"widths": unmeasured}).endswith(
        "more copies) reads 'not measurable' (slope not measurable).")
    spanning = verdicts.tradeoff_at_equal_time(SimpleNamespace(per_seed=[-9.0, 4.0, -2.0], widths=[8, 16, 32],
                                                               dropped=[], reason=""), "widths")
    assert spanning.verdict == "fails" and conclusions.trained_gap_finding(
        approximates, unseen, critical, {"widths": spanning}).endswith(
        "more copies) is not shown, nor refuted (slope -2.33 [-18.5, 13.8], an interval that spans 0).")
    above = verdicts.tradeoff_at_equal_time(SimpleNamespace(per_seed=[0.3, 0.2, 0.25], widths=[8, 16, 32],
                                                            dropped=[], reason=""), "widths")
    readings = [conclusions.tradeoff_reading(r, "too few widths") for r in (widths, spanning, above, unmeasured)]
    assert readings == [
        "At equal training time the nets closer to the optimum copy more: the trade-off of C6 holds here.",
        "At equal training time C6's trade-off is not shown, nor refuted: the slope's interval spans 0.",
        "At equal training time C6's trade-off fails here: the slope's interval lies at or above 0 (closer to the "
        "optimum, no more copies).",
        "At equal training time C6's trade-off reads 'not measurable' here (too few widths)."]


def test_chapter4_conclusions_list_the_causes_only_when_a_c5_paper_row_fails():
    ok = verdicts.similar_model([1.0, 1.05, 0.97], [1.0, 1.05, 0.95], "n = 40", absolute=(0.01, 0.01),
                                premise=TRAINED, n=40)
    quality = verdicts.quality_within("C5a", [0.01, 0.0, 0.02], [0.0, 0.01, -0.01], 0.1, "energy", "n = 40",
                                      features="f", premise=TRAINED, n=40, two_sided=True)
    less = verdicts.memorizes_less([0.2, 0.25, 0.22], "n = 40", Condition("the standard net copies", True), GATE_OK,
                                   40)
    rows = {"similar model": [ok], "similar quality": [quality], "memorizes less": [less], "checks": [_r3()]}
    text = render("ch4_new_objective", dict(rows=rows, name_new="new (uniform)"))
    assert "causes of ours come first" not in text and "The headline objective is new (uniform)." in text
    rows["memorizes less"] = [flipped(less, holds=False, quality=Condition("q", False))]
    text2 = render("ch4_new_objective", dict(rows=rows, name_new="new (uniform)"))
    assert "1 of the paper's C5 rows fail here" in text2 and "R3 holds" in text2
    assert "1 rests on nets whose convergence is not checked (memorizes less (n = 40))" in text2
    assert "fails (quality)" in line(text2, "C5b · memorizes less (n = 40)")


def _r3():
    return verdicts.candidate_minimiser_is_eps_star(1e-14)


def test_a_condition_shared_by_several_rows_is_said_once():
    unreached = Condition("the nets approximate eps* at n = 9", False)
    rows = [verdicts.generates_unseen([wilson_interval(c, 100) for c in (5, 8, 6)], "x", REACHED,
                                      gates.QualityGate("e", 2.0, "fit", 0.3), 9),
            verdicts.difference_is_critical(None, None, "x", unreached, 9),
            flipped(verdicts.similar_model([1.0, 1.1, 0.9], [1.0, 1.05, 0.95], "n = 40", absolute=(0.01, 0.01),
                                           premise=TRAINED, n=40), flattened=False),
            flipped(verdicts.similar_model([1.0, 1.1, 0.9], [1.0, 1.05, 0.95], "n = 400", absolute=(0.01, 0.01),
                                           premise=TRAINED, n=400), flattened=False)]
    text = conclusions.written(rows, chapter="chX")
    table = text.split("::::{dropdown}")[0]
    assert table.lower().count("measured before its learning curves flattened") == 1  # note 1, said once
    assert "note 1" in line(text, "C5a · a similar model (n = 40)") and "note 1" in line(text,
                                                                                     "C5a · a similar model (n = 400)")
    assert "quality gate (the samples are at least as good as a crude yardstick's): e 2 \\> 0.3 (fit)" in line(
        text, "C4 · generates unseen data (n = 9)")
    assert "::::{dropdown}" in text and text.count("- *verdict*:") == 4  # every row's detail, one click away


@pytest.fixture(scope="module")
def trajectories(sched):
    """Real generators along a 'training': denoisers moved towards eps* (blends of an S-blind Gaussian denoiser and
    the empirical optimum of 60 digits) at five snapshots, each snapshot's gap to eps* and copy rate of 40 DDIM
    samples, per seed. 'fast' ends near the optimum; 'slow' takes the same path later and ends at the same point;
    'apart' ends farther from it (it stays less memorizing)."""
    import torch

    from diffgen.chapters.training_curves import ObjectiveCurves
    from diffgen.data.datasets import load_dataset
    from diffgen.diffusion.denoisers import Blend, GaussianDenoiser
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.diffusion.samplers import sample_ddim
    from diffgen.measures.metrics import copy_rate, gap_on_forward_samples, nearest_neighbors

    digits = load_dataset("digits", 60, 0, n_disjoint=60, seed=0)
    S, S2 = digits.train, digits.disjoint
    opt = EmpiricalOptimum(S, sched, dtype=torch.float64)
    far = GaussianDenoiser(S2.mean(0), torch.cov(S2.T) + 1e-3 * torch.eye(64, dtype=S2.dtype), sched)
    x0 = S[torch.randint(len(S), (32,), generator=torch.Generator().manual_seed(0))]
    paths = {"fast": (0.36, 0.42, 0.46, 0.49, 0.5), "slow": (0.2, 0.3, 0.38, 0.46, 0.5),
             "apart": (0.2, 0.3, 0.35, 0.38, 0.4)}
    cache = {}

    def point(w, seed):
        if (w, seed) not in cache:
            x_T = torch.randn(40, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            d = Blend(far, opt, w)
            cache[w, seed] = (float(gap_on_forward_samples(d, opt, x0, sched, (10, 100),
                                                           torch.Generator().manual_seed(1)).mean()),
                              copy_rate(nearest_neighbors(sample_ddim(d, x_T, sched, 20), S).ratio).value)
        return cache[w, seed]

    out = {}
    for name, ws in paths.items():
        pts = np.array([[point(w, r) for w in ws] for r in range(5)])  # [seeds, snapshots, (gap, rate)]
        out[name] = ObjectiveCurves((1, 2, 3, 4, 5), pts[..., 1], None, pts[..., 0], np.ones_like(pts[..., 0]),
                                    None, None, None)
    return out


def test_chapter4_reading_follows_real_trajectories(trajectories):
    """A new objective that only trains slower (same path, same end): 'memorizes less' at convergence fails and the
    reading names training speed; one that ends farther from the optimum: it holds at the end of training, and the
    reading adds that at matched progress it copies as much. Nets that did not converge: not decided, and the
    reading says what the curves show."""
    from diffgen.chapters import new_objective

    members = list(range(5))
    gate = gates.QualityGate("e", 0.1, "fit", 0.3)

    def rows(new: str, converged: bool):
        fast, other = trajectories["fast"], trajectories[new]
        copies = Condition("the standard net copies and every net converged", converged,
                           (Comparison("nets whose curves flattened", 10 if converged else 6, ">=", 10),))
        at_end = verdicts.memorizes_less(new_objective.rate_differences(fast, other, members), "x", copies, gate, 40)
        along = verdicts.less_along_training(new_objective.along_differences(fast, other, members), "x", gate, 40)
        matched = [verdicts.less_at_matched(new_objective.matched_differences(fast, other, members), "gap to eps*",
                                            "x", gate)]
        return at_end, along, matched

    at_end, along, matched = rows("slow", True)
    assert at_end.verdict == "fails" and along.verdict == "holds" and abs(at_end.value) < 0.05
    text = conclusions.speed_or_memorization([at_end], along, matched)
    assert "no longer memorizes less" in text and "training speed" in text
    at_end, along, matched = rows("apart", True)  # it copies less at the end, but as much at matched gap
    assert at_end.verdict == "holds" and matched[0].verdict != "holds"
    text = conclusions.speed_or_memorization([at_end], along, matched)
    assert "copies less at the end of training" in text and "not less memorization at equal progress" in text
    at_end, along, matched = rows("slow", False)
    text = conclusions.speed_or_memorization([at_end], along, matched)
    assert at_end.verdict == "premise not reached" and "6 of 10 nets' curves flattened for memorizes less (n = 40)" in text
    assert "not decided here" in text and np.isfinite(along.value)
    # two measures of progress that disagree: the reading says the curves do not decide, never "beyond speed"
    loss = verdicts.less_at_matched([0.001, -0.002, 0.0, 0.002, -0.001], "standard loss on held-out images", "x", gate)
    gap = verdicts.less_at_matched([0.09, 0.08, 0.1, 0.11, 0.09], "gap to eps*", "x", gate)
    assert (gap.verdict, loss.verdict) == ("holds", "fails")
    text = conclusions.speed_or_memorization([at_end], along, [gap, loss])
    assert ("copies less at matched gap to eps* but not at matched standard loss on held-out images" in text
            and "do not decide it" in text and "beyond training speed" not in text)
    text = conclusions.speed_or_memorization([at_end], along, [gap])
    assert "beyond training speed" in text  # the flip: with only the gap matched, the reading would claim more
    # converged nets that copy less at the end, while the matched measures disagree: the reading says both
    at_end, along, _ = rows("apart", True)
    text = conclusions.speed_or_memorization([at_end], along, [gap, loss])
    assert "copies less at the end of training" in text and "these curves do not decide it" in text
    assert "still memorizes less" not in text
    text = conclusions.speed_or_memorization([at_end], along, [gap])
    assert "still memorizes less" in text and "do not decide" not in text  # the flip: every matched row holds
    sized = verdicts.less_at_matched([0.09, 0.08, 0.1, 0.11, 0.09], "gap to eps*", "x", gate, 40)
    assert "at matched gap to eps* (n = 40) it copies less" in conclusions.speed_or_memorization([at_end], along,
                                                                                               [sized])
    waiting, _, _ = rows("slow", False)  # the matched reading names the one size it was matched at
    assert conclusions.speed_or_memorization([waiting], along, [sized]).endswith(
        "a difference beyond training speed, at the size where it was matched (n = 40).")
    assert conclusions.speed_or_memorization([waiting], along, [gap]).endswith("a difference beyond training speed.")
    # the chapter's finding (its results file's, the book's first sentence) is the same reading, from its groups
    copies = Condition("lower end of the standard net's copy rate", True,
                       (Comparison("lower end of the standard net's copy rate", 0.5, ">", 0),))
    grouped = {"memorizes less": [dataclasses.replace(at_end, premise=copies)], "along": [along], "matched": [gap],
               "checks": [_r3()]}
    assert conclusions.c5b_reading(grouped) == conclusions.speed_or_memorization(grouped["memorizes less"], along,
                                                                               [gap])
    assert conclusions.c5b_reading(grouped) in conclusions.new_objective(grouped, "new (uniform)")
    assert conclusions.c5b_reading({**grouped, "memorizes less": [at_end]}) == ""  # no size where the standard copies
    assert conclusions.c5b_reading({k: v for k, v in grouped.items() if k != "along"}) == ""


def test_information_over_noise_reads_a_flat_curve_at_the_ceiling_and_a_fall():
    """The intermediate-states page once read 4.14, 4.15, 4.13 (ceiling 4.16) as "capped by how much noise was
    added"; values within their intervals of each other and of the ceiling now read as flat at the ceiling."""
    from diffgen.measures.metrics import Estimate

    at_ceiling = [Estimate(v, v - 0.03, v + 0.03) for v in (4.14, 4.15, 4.13)]
    assert conclusions.information_over_noise([5, 40, 400], at_ceiling, 4.16) == (
        "stays flat at about 4.14 nats at every s, at the ceiling log M = 4.16 within the estimate's interval: at "
        "these s the added noise does not lower the dependence on S")
    falling = [Estimate(v, v - 0.03, v + 0.03) for v in (4.14, 3.0, 1.2)]
    assert conclusions.information_over_noise([5, 40, 400], falling, 4.16) == (
        "falls from 4.14 at s = 5 to 1.2 at s = 400: the more noise is added, the less the samples depend on S")
    low_flat = [Estimate(v, v - 0.03, v + 0.03) for v in (2.0, 2.01, 2.0)]
    assert conclusions.information_over_noise([5, 40, 400], low_flat, 4.16) == "stays flat at about 2"
