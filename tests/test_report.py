"""diffgen.commands.report and `diffgen report`: claims grouped C1..C6, 'not run' for missing chapters, the three formats,
exit codes; and a book build whose introduction table shows the numbers the chapters wrote while executing."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from diffgen.claims.results import Claim, Comparison, Condition, paper_row, write_results
from diffgen.commands import cli, report

REPO = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_results(out, "ch2", {"n_train": 1500, "seed": 0}, [
        Claim("C2", "abstract", "closed form", "max error", 1.0186e-10, None, "< 1e-8", True),
        Claim("C3", "abstract", "copies", "copy rate, DDIM", 0.99, (0.975, 1.0), ">= 0.95", True),
        Claim("C3", "ours", "stochastic samplers copy too", "copy rate, DDPM", 0.4, (0.3, 0.5), ">= 0.95", False),
        Claim("R2", "ours", "our candidate's minimiser is eps*", "deviation", 1e-14, None, "< 1e-8", True),
    ])
    write_results(out, "ch10", {"seed": 0}, [
        Claim("C6", "revision", "trade-off", "correlation", None, None, "< 0", False, seeds=3),
        Claim("R1", "ours", "a check that fails", "x", 2.0, None, "< 1", False)])
    return out


def test_rows_grouped_by_claim_with_not_run(run_dir):
    runs, rows = report.load_run(run_dir)
    assert [r.chapter for r in runs] == ["ch2", "ch10"]  # chapter order, not string order
    assert [(r.claim, r.chapter, r.source, r.verdict) for r in rows] == [
        ("C1", "ch1", "abstract", "not run"), ("C2", "ch2", "abstract", "holds"), ("C3", "ch2", "abstract", "holds"),
        ("C3", "ch2", "ours", "fails"), ("C4", "ch3", "abstract", "not run"), ("C5a", "ch4", "abstract", "not run"),
        ("C5b", "ch4", "revision", "not run"),
        ("C6", "ch10", "revision", "not measurable"), ("R1", "ch10", "ours", "fails"), ("R2", "ch2", "ours", "holds")]
    groups = report.by_claim(rows)
    verdicts = {cid: g.verdict for cid, g in groups.items()}
    assert verdicts == {"C1": "not run", "C2": "holds", "C3": "holds", "C4": "not run", "C5a": "not run",
                        "C5b": "not run", "C6": "not measurable", "checks": "fails (1 of 2)"}  # our C3 row: beside
    assert report.summary(rows) == "2 claims hold, 0 fail, 1 not measurable, 4 not run; our own rows: 1 holds, 2 fail"
    assert report.any_fails(rows)  # C6 is not measurable


def test_our_rows_never_change_a_paper_verdict(tmp_path):
    write_results(tmp_path, "ch2", {}, [
        Claim("C3", "abstract", "copies", "m", 1.0, None, ">= 0.95", True),
        Claim("C3", "ours", "a failing check of ours", "m", 0.0, None, ">= 0.95", False)])
    _, rows = report.load_run(tmp_path)
    assert report.by_claim(rows)["C3"].verdict == "holds" and not report.any_fails(rows)
    only_ours = tmp_path / "ours"
    write_results(only_ours, "ch2", {}, [Claim("C3", "ours", "x", "m", 1.0, None, "e", True)])
    _, rows = report.load_run(only_ours)
    assert report.by_claim(rows)["C3"].verdict == "not run"  # no row tests the claim as the paper states it


def test_rows_whose_premise_is_not_reached_do_not_count_and_quality_failures_do(tmp_path):
    """C4 is read "there is a regime where": at a size where the net does not approximate eps* its rows read 'premise
    not reached' and leave the claim to the regimes where it is reached; a row whose generator fails the quality
    gate counts as failed; a claim read "in every measured case" with only such rows: premise not reached."""
    reached = Condition("the nets approximate eps*", True, (Comparison("lower end", 0.9, ">", 0.5),))
    missed = Condition("the nets approximate eps*", False, (Comparison("lower end", 0.2, ">", 0.5),))
    bad_gate = Condition("samples as good as a crude fit", False, (Comparison("energy", 2.6, "<=", 0.27),))
    write_results(tmp_path, "ch3", {}, [
        paper_row("C4", "copy rate, n = 64", 0.1, (0.0, 0.2), "<= 0.5", True, 5, premise=reached,
                  quality=Condition("q", True), regime={"n": 64}),
        paper_row("C4", "copy rate, n = 500", 0.0, (0.0, 0.01), "<= 0.5", True, 5, premise=missed,
                  regime={"n": 500}),
        paper_row("C5b", "copy rate difference", 0.3, (0.2, 0.4), "> 0", True, 5, quality=bad_gate),
        paper_row("C6", "correlation", -0.9, (-1.0, -0.8), "< 0", True, 5, premise=missed)])
    _, rows = report.load_run(tmp_path)
    groups = report.by_claim(rows)
    assert [r.verdict for r in groups["C4"].paper] == ["holds", "premise not reached"]
    assert groups["C4"].verdict == "holds (in 1 of 2 regimes)"
    assert report.region(groups["C4"]) == "holds at n = 64; premise not reached at n = 500"
    assert groups["C5b"].verdict == "fails (1 of 1)" and groups["C5b"].paper[0].verdict == "fails (quality)"
    assert groups["C6"].verdict == "premise not reached"
    assert report.summary(rows).startswith("1 claim holds, 1 fails, 1 premise not reached")
    assert report.any_fails(rows)
    text = " ".join(report.format_text(*report.load_run(tmp_path)).split())
    assert "premise (the nets approximate eps*): lower end 0.2 <= 0.5" in text
    assert "quality gate (samples as good as a crude fit): energy 2.6 > 0.27" in text
    assert "read as: there is a regime where" in text and "region: holds at n = 64" in text


def test_the_headline_row_of_a_claim_is_one_that_decides_it(tmp_path):
    """A claim read "in every measured case" is headed by its first failing row, else by a row that holds; a row
    whose premise was not reached (listed first here) heads it only when no row was evaluated."""
    missed = Condition("every net converged", False, (Comparison("nets whose curves flattened", 0, ">=", 10),))
    rows = [paper_row("C5b", "copy rate difference, n = 20", 0.16, (0.12, 0.2), "> 0", True, 5, premise=missed),
            paper_row("C5b", "I(z; m) difference", 0.09, (0.05, 0.12), "> 0", True, 5),
            paper_row("C5b", "quality difference", 0.1, (0.05, 0.15), "<= 0.03", False, 5)]

    def headline(claims):
        return report.by_claim(report.load_run(_written(tmp_path, claims))[1])["C5b"].headline

    assert headline(rows[:2]).metric == "I(z; m) difference"  # holds, not the row that decides nothing
    assert headline(rows).metric == "quality difference"  # the flip: a failing row heads it
    assert headline(rows[:1]).metric == "copy rate difference, n = 20"  # nothing evaluated: the row there is


def _written(folder: Path, claims: list) -> Path:
    for old in folder.glob("*.results.json"):
        old.unlink()
    write_results(folder, "ch4", {}, claims)
    return folder


def test_a_claim_read_as_there_is_a_regime_where_counts_fresh_sweep_points(tmp_path):
    """A C4 regime that fails in the chapter but holds in a sweep point of the current source: the claim holds,
    and the region names both; a stale point (other source) does not count."""
    from diffgen.base.provenance import source_hash
    from diffgen.claims.results import SWEEP_FILE

    copies = Condition("the nets approximate eps*", True)
    write_results(tmp_path, "ch3", {}, [paper_row("C4", "copy rate", 0.8, (0.7, 0.9), "<= 0.5", False, 5,
                                                  premise=copies, regime={"n": 8, "train_steps": 3000})])
    sweep = tmp_path / "sweeps" / "ch3"
    points = {}
    for name, value, code in [("train_steps=1000", 0.1, source_hash()), ("train_steps=2000", 0.1, "stale")]:
        path = write_results(sweep / name, "ch3", {"train_steps": int(name.split("=")[1])}, [paper_row(
            "C4", "copy rate", value, (0.05, 0.2), "<= 0.5", True, 5, premise=copies,
            regime={"n": 8, "train_steps": int(name.split("=")[1])})])
        doc = json.loads(path.read_text())
        path.write_text(json.dumps(doc | {"source_hash": code}))
        points[name] = {"values": {"train_steps": int(name.split("=")[1])}, "status": "done"}
    (sweep / SWEEP_FILE).write_text(json.dumps({"chapter": "ch3", "grid": {"train_steps": [1000, 2000]},
                                                "points": points}))
    _, rows = report.load_run(tmp_path)
    group = report.by_claim(rows)["C4"]
    assert group.verdict == "holds (in 1 of 2 regimes)" and len(group.paper) == 1
    assert report.region(group) == ("holds at n = 8, 1000 steps (sweep); a part fails at n = 8, 3000 steps "
                                    "(copy rate: fails)")
    assert report.summary(rows).startswith("1 claim holds, 0 fail")


def test_a_claim_read_in_every_measured_case_counts_sweep_points_and_says_which_failures_decide_nothing(tmp_path):
    """C6 ("in every measured case"): the chapter's slope fails because its interval spans 0 (not shown, not refuted);
    a current sweep point's slope lies wholly above 0 (refuted there); a stale point does not count. Flips: the
    chapter's row alone, then with its interval wholly above 0."""
    from diffgen.base.provenance import source_hash
    from diffgen.claims.results import SWEEP_FILE
    from diffgen.claims.rowtext import decided_by, undecided

    def slope(value, ci, **kw):
        return paper_row("C6", "slope", value, ci, "< 0", ci[1] < 0, 5,
                         rule=(Comparison("upper end", ci[1], "<", 0),), **kw)

    write_results(tmp_path, "ch3", {}, [slope(-2.4, (-11.4, 6.6))])
    _, rows = report.load_run(tmp_path)
    row = report.by_claim(rows)["C6"].paper[0].data
    assert undecided(row) and decided_by(row).endswith("(the interval spans the threshold: not shown, not refuted)")
    assert report.by_claim(rows)["C6"].verdict == "fails (1 of 1; not shown, not refuted)"
    sweep = tmp_path / "sweeps" / "ch3"
    points = {}
    for name, ci, code in [("train_steps=1000", (0.5, 1.5), source_hash()), ("train_steps=2000", (0.5, 1.5), "old")]:
        path = write_results(sweep / name, "ch3", {"train_steps": int(name.split("=")[1])}, [slope(1.0, ci)])
        path.write_text(json.dumps(json.loads(path.read_text()) | {"source_hash": code}))
        points[name] = {"values": {"train_steps": int(name.split("=")[1])}, "status": "done"}
    (sweep / SWEEP_FILE).write_text(json.dumps({"chapter": "ch3", "grid": {"train_steps": [1000, 2000]},
                                                "points": points}))
    _, rows = report.load_run(tmp_path)
    group = report.by_claim(rows)["C6"]
    assert group.verdict == "fails (2 of 2; 1 not shown, not refuted)"
    assert not undecided(group.swept[0].data) and "not shown" not in decided_by(group.swept[0].data)
    # a point with the chapter's own parameters is the chapter's run measured again: it is not counted twice
    write_results(sweep / "train_steps=3000", "ch3", {}, [slope(1.0, (0.5, 1.5))])
    points["train_steps=3000"] = {"values": {"train_steps": 3000}, "status": "done"}
    (sweep / SWEEP_FILE).write_text(json.dumps({"chapter": "ch3", "grid": {"train_steps": [1000, 2000, 3000]},
                                                "points": points}))
    _, rows = report.load_run(tmp_path)
    assert report.by_claim(rows)["C6"].verdict.startswith("fails (2 of 2;")
    write_results(sweep / "train_steps=3000", "ch3", {"train_steps": 3000}, [slope(1.0, (0.5, 1.5))])
    _, rows = report.load_run(tmp_path)
    group = report.by_claim(rows)["C6"]
    assert group.verdict.startswith("fails (3 of 3;") and group.headline.sweep is None  # the chapter's row first
    write_results(tmp_path, "ch3", {}, [slope(-1.0, (-1.5, -0.5))])  # holds in the chapter, fails in the sweep
    group = report.by_claim(report.load_run(tmp_path)[1])["C6"]
    assert group.verdict == "fails (2 of 3)" and group.headline.sweep == "train_steps=1000"
    write_results(tmp_path, "ch3", {}, [slope(1.0, (0.5, 1.5))])
    (sweep / SWEEP_FILE).unlink()
    _, rows = report.load_run(tmp_path)
    assert report.by_claim(rows)["C6"].verdict == "fails (1 of 1)"


def test_the_book_shows_every_sweep_row_a_verdict_counts_and_a_chapter_says_when_the_sweeps_change_it(tmp_path):
    """The claims in detail list the sweep rows that a claim read "in every measured case" counts (C5a once failed
    through a sweep row shown on no page), and a chapter's summary adds the book's verdict where the sweeps change
    it; without sweep points neither appears."""
    from types import SimpleNamespace

    from docutils import nodes

    from diffgen.base.provenance import source_hash
    from diffgen.claims.results import SWEEP_FILE
    from diffgen.commands.claimpages import detail_nodes, summary_nodes

    def slope(value, ci):
        return paper_row("C6", "slope", value, ci, "< 0", ci[1] < 0, 5, rule=(Comparison("upper end", ci[1], "<", 0),))

    app = SimpleNamespace(env=SimpleNamespace(found_docs=set()))
    write_results(tmp_path, "ch3", {}, [slope(-1.0, (-1.5, -0.5))])

    def pages():
        detail = "".join(n.astext() for section in detail_nodes(app, "book/claims_in_detail", tmp_path)
                         for n in section.findall(nodes.raw))
        return detail, " ".join(n.astext() for n in summary_nodes(app, "book/ch3_tiny", tmp_path))

    detail, summary = pages()
    assert "Counted from the sweeps" not in detail and "with the sweeps' points" not in summary
    sweep = tmp_path / "sweeps" / "ch3"
    path = write_results(sweep / "train_steps=1000", "ch3", {"train_steps": 1000}, [slope(1.0, (0.5, 1.5))])
    path.write_text(json.dumps(json.loads(path.read_text()) | {"source_hash": source_hash()}))
    (sweep / SWEEP_FILE).write_text(json.dumps({"chapter": "ch3", "grid": {"train_steps": [1000]}, "points": {
        "train_steps=1000": {"values": {"train_steps": 1000}, "status": "done"}}}))
    detail, summary = pages()
    assert "Counted from the sweeps' points (1 evaluated row)" in detail
    assert "ch3, sweep train_steps=1000 · slope: 1 [0.5, 1.5], 5 seeds" in detail
    assert "holds C6" in summary and "with the sweeps' points (where the claims hold): ✕ fails (1 of 2)" in summary


@pytest.mark.parametrize("value, text", [(1.0186e-10, "1.02e-10"), (0.9921875, "0.992"), (1.0, "1"), (0.0, "0"),
                                         (-0.9448, "-0.945"), (1234.5, "1234"), (None, "n/a")])
def test_number_format(value, text):
    assert report.fmt_number(value) == text


def test_text_report(run_dir, capsys):
    assert cli.main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^C3 \(abstract\) +HOLDS +With the empirical optimum", out, re.M), out
    assert "read as: in every measured case (by its wording" in out
    assert "ch2  holds copy rate: 0.99 [0.975, 1]: expected >= 0.95 -- copy rate, DDIM" in out
    assert "ch2  fails ours: copy rate: 0.4 [0.3, 0.5]: expected >= 0.95 -- copy rate, DDPM" in out
    assert "ch10 not measurable correlation: no value (the row's detail says what was measured)" \
        in " ".join(out.split())
    assert re.search(r"^R +FAILS \(1 OF 2\) +Reconstruction checks \(ours\)", out, re.M), out
    assert "ch1  not run (no ch1.results.json)" in out
    assert "2 claims hold, 0 fail, 1 not measurable, 4 not run; our own rows: 1 holds, 2 fail." in out


def test_markdown_report(run_dir, capsys):
    assert cli.main(["report", str(run_dir), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "| claim | source | read as | we measured | verdict |"
    c3 = next(line for line in lines if line.startswith("| C3"))
    assert "copy rate: 0.99 \\[0.975, 1\\]: expected \\>= 0.95 -- copy rate, DDIM: **holds**<br>ours: " in c3, c3
    assert "| abstract, ours | read as: in every measured case" in c3 and c3.endswith("| holds |")
    assert next(line for line in lines if line.startswith("| C1")).endswith("| not run | not run |")


def test_reports_show_each_chapters_peak_memory_and_read_files_without_it(run_dir, capsys):
    doc = json.loads((run_dir / "ch10.results.json").read_text())
    doc["memory"] = {"gpu_peak_bytes": 5 * 2**30, "host_peak_bytes": 3 * 2**29}
    (run_dir / "ch10.results.json").write_text(json.dumps(doc))
    doc = json.loads((run_dir / "ch2.results.json").read_text())
    del doc["memory"]  # written by older code
    (run_dir / "ch2.results.json").write_text(json.dumps(doc))
    assert cli.main(["report", str(run_dir)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "peak memory GPU 5.00 GiB, host 1.50 GiB" in text and "peak memory not recorded" in text
    assert cli.main(["report", str(run_dir), "--format", "markdown"]) == 0
    assert "peak memory GPU 5.00 GiB, host 1.50 GiB" in capsys.readouterr().out
    assert cli.main(["report", str(run_dir), "--format", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["memory"] for r in runs] == [None, {"gpu_peak_bytes": 5 * 2**30, "host_peak_bytes": 3 * 2**29}]


def test_json_report(run_dir, capsys):
    assert cli.main(["report", str(run_dir), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in doc["claims"]] == ["C1", "C2", "C3", "C4", "C5a", "C5b", "C6", "checks"]
    c3 = doc["claims"][2]
    assert c3["verdict"] == "holds" and c3["chapters"] == ["ch2"] and c3["source"] == "abstract"
    assert c3["quantifier"] == "every" and c3["region"] is None and doc["claims"][3]["quantifier"] == "exists"
    first = c3["measurements"][0]
    assert {k: first[k] for k in ("id", "chapter", "source", "statement", "metric", "value", "ci", "expected",
                                  "seeds", "verdict")} == {
        "id": "C3", "chapter": "ch2", "source": "abstract", "statement": "copies", "metric": "copy rate, DDIM",
        "value": 0.99, "ci": [0.975, 1.0], "expected": ">= 0.95", "seeds": None, "verdict": "holds"}
    assert c3["measurements"][1]["source"] == "ours" and c3["measurements"][1]["verdict"] == "fails"
    assert doc["claims"][0]["measurements"] == [] and doc["claims"][0]["verdict"] == "not run"
    assert doc["claims"][-1]["id"] == "checks" and [m["id"] for m in doc["claims"][-1]["measurements"]] == ["R1", "R2"]
    assert doc["runs"][0]["parameters"] == {"n_train": 1500, "seed": 0}


def test_check_exits_1_when_a_claim_fails(run_dir, tmp_path, capsys):
    assert cli.main(["report", str(run_dir), "--check"]) == 1
    good = tmp_path / "good"
    write_results(good, "ch2", {}, [Claim("C2", "abstract", "s", "m", 0.0, None, "< 1e-8", True),
                                    Claim("R1", "ours", "s", "m", 1.0, None, "< 1", False)])
    assert cli.main(["report", str(good), "--check"]) == 0  # claims not run, and our checks, do not fail --check


def test_parameters_differing_from_the_chapter_defaults_are_shown(tmp_path, capsys):
    write_results(tmp_path, "ch2", {"n_train": 1500, "seed": 0},
                  [Claim("C2", "abstract", "s", "m", 0.0, None, "< 1", True)])
    defaults = report.chapter_defaults("ch2")
    assert defaults and defaults["n_train"] != 1500  # the real book's chapter 2
    assert cli.main(["report", str(tmp_path)]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # the report wraps its lines wherever the text falls
    assert f"parameters: n_train=1500 (default {defaults['n_train']})" in shown


@pytest.mark.parametrize("content, says", [
    (None, "no <chapter>.results.json in"),
    ("{not json", "ch2.results.json: not a valid results file (JSONDecodeError"),
    ('{"chapter": "ch2"}', "ch2.results.json: not a valid results file (ValueError: "),
    ('{"chapter": "ch2", "parameters": {}, "diffgen_version": "0", "source_hash": "x", "claims": '
     '[{"id": "C9", "source": "ours", "statement": "", "metric": "", "value": 1, "ci": null, "expected": "", '
     '"holds": true}]}',
     "claim id must be one of C1"),
    ('{"chapter": "ch2", "parameters": {}, "diffgen_version": "0", "source_hash": "x", "claims": [{"id": "C2"}]}',
     "not a valid results file (KeyError"),
])
def test_bad_run_dir_exits_2(tmp_path, capsys, content, says):
    if content is not None:
        (tmp_path / "ch2.results.json").write_text(content)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffgen report: error: ") and says in err and err.count("\n") == 1, err


def test_missing_dir_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_default_run_dir_is_the_book(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIFFGEN_BOOK_DIR", str(tmp_path))
    write_results(tmp_path, "ch3", {}, [Claim("C4", "abstract", "s", "m", 0.5, (0.4, 0.6), "<= 0.5", True)])
    assert cli.main(["report"]) == 0
    assert "ch3  holds m: 0.5 [0.4, 0.6]" in capsys.readouterr().out


# --- the introduction's table in a real (tiny) book build ----------------------------------------------------------

CHAPTER_CELL = """\
from diffgen.claims.results import Claim, Comparison, Condition, paper_row, write_results
value = {value}
write_results(".", "ch2", {{"value": value}}, [Claim("C3", "abstract", "s", "copy rate, DDIM", value,
                                               (value - 0.01, value), ">= 0.95", value >= 0.95)])
"""


def _claims_book(root: Path, value: float) -> None:
    (root / "_config.yml").write_text(
        "title: tiny\nonly_build_toc_files: true\nexclude_patterns: [_build]\n"
        "execute:\n  execute_notebooks: cache\n  timeout: 120\n  run_in_temp: false\n"
        "sphinx:\n  extra_extensions: [diffgen.commands.book]\n  config:\n    nb_execution_raise_on_error: true\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: ch2_tiny\n")
    (root / "intro.md").write_text("# Intro\n\n```{diffgen-claims}\n```\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Chapter 2"),
                                         nbformat.v4.new_code_cell(CHAPTER_CELL.format(value=value))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "ch2_tiny.ipynb")


def _intro_table(root: Path) -> str:
    html = (root / "_build" / "html" / "intro.html").read_text()
    table = re.search(r'<table class="[^"]*diffgen-claims.*?</table>', html, re.S)
    assert table, "the claims table is missing from the introduction"
    return re.sub(r"<[^>]+>", "", table.group(0))


@pytest.mark.notebook("two jupyter-book builds of a two-page book")
def test_intro_table_shows_the_numbers_the_chapters_wrote(tmp_path):
    """The table is filled after the chapters execute (the JSON does not exist when intro.md is read), and a
    rebuild in which only a chapter changed updates it."""
    root = tmp_path / "book"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for value, verdict in [(0.987, "holds"), (0.5, "fails (1 of 1)")]:
        _claims_book(root, value)
        proc = subprocess.run([str(JUPYTER_BOOK), "build", str(root), "--warningiserror"], capture_output=True,
                              text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        text = _intro_table(root)
        assert f"{value:.3g} [{value - 0.01:.3g}, {value:.3g}]" in text, text
        assert verdict in text and "C1" in text and "not run" in text
        html = (root / "_build" / "html" / "intro.html").read_text()
        assert 'href="ch2_tiny.html"' in html  # the chapter column links the chapter
