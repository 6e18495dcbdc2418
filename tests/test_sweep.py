"""diffgen sweep on a 2-worker Dask LocalCluster over a fixture chapter, resume after a kill, a failing point, the
report of a sweep folder, and the cache's file lock under two processes asking for one artifact at once."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from diffgen.chapters.registry import UsageError
from diffgen.commands import cli, report
from diffgen.commands.sweep import parse_grid

DIFFGEN = Path(sys.executable).with_name("diffgen")

PARAMS = """\
n = 2  # how many; int in [1, 10]
scale = 0.5  # a factor; float in [0, 1]
fail_at = 0  # raise when n equals this; int in [0, 10]
pause = 0.0  # seconds to sleep first; float in [0, 60]
seed = 0  # random seed; int in [0, 2147483647]
device = "auto"  # where to run; one of: auto, cpu, cuda
"""

BODY = """\
import time
from diffgen.claims.results import Claim, write_results
parameters = {k: v for k, v in dict(globals()).items() if k[0] != "_" and isinstance(v, (bool, int, float, str))}
time.sleep(pause)
if n == fail_at:
    raise ValueError("boom at n = %d" % n)
value = n * scale + 0.01 * seed
claims = [Claim("C4", "abstract", "a statement", f"n times scale, n = {n}", value, (value - 0.1, value + 0.1),
                "> 1", value > 1, 1)]
print(write_results(".", "ch1", parameters, claims))
"""


@pytest.fixture
def book(tmp_path, monkeypatch):
    folder = tmp_path / "book"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PARAMS), nbformat.v4.new_code_cell(BODY)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "ch1_sweepable.ipynb")
    monkeypatch.setenv("DIFFGEN_BOOK_DIR", str(folder))
    return folder


def test_grid_parsing_errors():
    assert parse_grid([("n", "1,2"), ("scale", "0.5")], seeds=2) == {"n": ["1", "2"], "scale": ["0.5"],
                                                                    "seed": ["0", "1"]}
    for pairs, seeds, match in [([("n", "1,1")], None, "distinct"), ([("n", "1"), ("n", "2")], None, "twice"),
                                ([], None, "at least one"), ([("seed", "1,2")], 2, "either --seeds")]:
        with pytest.raises(UsageError, match=match):
            parse_grid(pairs, seeds)


def test_bad_value_is_refused_before_anything_runs(book, tmp_path, capsys):
    assert cli.main(["sweep", "ch1", "-p", "n", "1,99", "--out", str(tmp_path / "s")]) == 2
    assert "parameter n of ch1 must be an int in [1, 10]; got 99" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.processes("Dask workers executing a fixture chapter per point")
def test_sweep_on_a_local_cluster_then_report(book, tmp_path, capsys):
    """Two points (n = 1, 3 by scale = 0.5: a grid of two parameters) on two workers, one where the claim fails and
    one where it holds; each point is a kernel, so two show what four did (2 x 2 before)."""
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "ch1", "-p", "n", "1,3", "-p", "scale", "0.5", "--out", str(out),
                     "--device", "cpu", "--timeout", "120", "--workers", "2"]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    assert sorted(doc["points"]) == ["n=1,scale=0.5", "n=3,scale=0.5"]
    assert all(p["status"] == "done" for p in doc["points"].values())
    assert all((out / name / "ch1.results.json").is_file() for name in doc["points"])
    captured = capsys.readouterr().out
    assert "2 to run" in captured and "2 workers, dashboard " in captured
    assert "[2 done, 0 running or queued, 0 failed]" in captured
    assert cli.main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "n=3, scale=0.5: 1.5 [1.4, 1.6]  holds\n" in text
    assert "n=1, scale=0.5: 0.5 [0.4, 0.6]  fails\n" in text  # the rule "> 1" fails there
    assert "0 grid cells stale" in text
    assert (out / "report" / "ch1-row1-C4.png").stat().st_size > 1000
    # again: every point is current, nothing runs
    assert cli.main(["sweep", "ch1", "-p", "n", "1,3", "-p", "scale", "0.5", "--out", str(out),
                     "--device", "cpu"]) == 0
    assert "2 already done, 0 to run" in capsys.readouterr().out


@pytest.mark.processes("a diffgen sweep killed mid-run, then rerun")
def test_killed_sweep_resumes_with_the_missing_points_only(book, tmp_path):
    """Two points on one worker (six before), one of them pausing: the sweep is killed when the first finishes,
    and the rerun runs the other one only."""
    out = tmp_path / "sweep"
    cmd = [str(DIFFGEN), "sweep", "ch1", "-p", "pause", "0,8", "--out", str(out), "--device", "cpu", "--timeout",
           "120", "--workers", "1"]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/ch1.results.json")) and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in out.glob("*/ch1.results.json")}
    assert len(finished) == 1
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 points, 1 already done, 1 to run" in again.stdout
    doc = json.loads((out / "sweep.json").read_text())
    assert {name for name, p in doc["points"].items() if p["status"] == "skipped"} == finished


@pytest.mark.processes("a diffgen sweep stopped with SIGTERM while a point executes")
def test_terminated_sweep_leaves_no_process_behind(book, tmp_path):
    """SIGTERM to the sweep (its process only, not its group) while a point's kernel runs: the worker, the point's
    runner and its kernel are all gone soon after; before, the runner executed on as an orphan."""
    import psutil

    out = tmp_path / "sweep"
    proc = subprocess.Popen([str(DIFFGEN), "sweep", "ch1", "-p", "pause", "60", "--out", str(out), "--device",
                             "cpu", "--timeout", "300", "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    sweep = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the point's kernel has started
        below = sweep.children(recursive=True)
        if any("ipykernel" in " ".join(_cmdline(p)) for p in below):
            break
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the point's kernel did not start within 120 s")
    assert any("diffgen.commands.runner" in " ".join(_cmdline(p)) for p in below)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(below, timeout=30)
    for p in alive:
        p.kill()
    assert not alive, [" ".join(_cmdline(p)) for p in alive]


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:  # it ended meanwhile
        return []


@pytest.mark.processes("Dask workers executing a fixture chapter per point")
def test_failing_point_is_recorded_and_the_others_finish(book, tmp_path, capsys):
    """Two points (three before): the one that raises is recorded as failed, the other finishes."""
    out = tmp_path / "sweep"
    args = ["sweep", "ch1", "-p", "n", "1,2", "--set", "fail_at", "2", "--out", str(out), "--device", "cpu",
            "--timeout", "120", "--workers", "2"]
    assert cli.main(args) == 1
    doc = json.loads((out / "sweep.json").read_text())
    status = {name: p["status"] for name, p in doc["points"].items()}
    assert status == {"n=1": "done", "n=2": "failed"}
    failed = doc["points"]["n=2"]
    assert failed["notebook"] == "n=2/ch1_sweepable.FAILED.ipynb" and (out / failed["notebook"]).is_file()
    assert "boom at n = 2" in (out / "n=2" / "run.log").read_text() or "ValueError" in failed["error"]
    assert "1 point(s) failed" in capsys.readouterr().err
    assert cli.main(args) == 1  # a rerun retries the failed point only
    assert "2 points, 1 already done, 1 to run" in capsys.readouterr().out


def _ask(path: str, counter: str, barrier, answer: str) -> None:
    from diffgen.base.cache import load_or_compute

    def compute():
        with open(counter, "a") as f:
            f.write("computed\n")
        time.sleep(1.0)
        return {"x": 42}

    barrier.wait()
    value, from_cache = load_or_compute(path, compute, lambda art: art["x"], fmt=1, name="test")
    Path(answer).write_text(f"{value} {from_cache}")


@pytest.mark.processes("two spawned processes racing for one cache file")
def test_two_processes_asking_for_one_artifact_compute_it_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    path, counter = str(tmp_path / "a" / "art.pt"), str(tmp_path / "count.txt")
    procs = [ctx.Process(target=_ask, args=(path, counter, barrier, str(tmp_path / f"answer{k}"))) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert Path(counter).read_text() == "computed\n"  # one computed it, the other waited and loaded it
    answers = sorted((tmp_path / f"answer{k}").read_text() for k in range(2))
    assert answers == ["42 False", "42 True"]


def test_sweep_report_pools_seeds_and_marks_stale_points(tmp_path):
    """A sweep folder written by hand: two seeds per cell give a t interval across seeds; a point computed by other
    code than the current package is marked stale; a missing point reads 'not run'."""
    from diffgen.base.provenance import source_hash

    points = {}
    for n in (1, 2):
        for seed in (0, 1):
            name = f"n={n},seed={seed}"
            value = n + 0.1 * seed
            (tmp_path / name).mkdir()
            source = source_hash() if n == 1 else "old-code"
            (tmp_path / name / "ch1.results.json").write_text(json.dumps({
                "chapter": "ch1", "parameters": {"n": n, "seed": seed}, "diffgen_version": "0", "source_hash": source,
                "claims": [{"id": "C4", "source": "abstract", "statement": "s", "metric": f"m at n = {n}",
                            "value": value, "ci": None, "expected": "> 1.5", "holds": value > 1.5, "seeds": 1}]}))
            points[name] = {"values": {"n": n, "seed": seed}, "status": "done"}
    points["n=3,seed=0"] = {"values": {"n": 3, "seed": 0}, "status": "pending"}
    (tmp_path / "sweep.json").write_text(json.dumps({"chapter": "ch1", "grid": {"n": [1, 2, 3], "seed": [0, 1]},
                                                     "points": points}))
    text, _ = report.render(tmp_path)
    assert "n=1: 1.05 [0.415, 1.69]  fails\n" in text  # the verdict of both seeds
    assert "n=2: 2.05 [1.41, 2.69]  holds  STALE" in text
    assert "1 not run" in text and "1 grid cells stale" in text
    assert (tmp_path / "report" / "ch1-row1-C4.png").is_file()
    with pytest.raises(report.ReportError, match="sweep folder"):
        report.render(tmp_path, "json")
    (tmp_path / "sweep.json").write_text("{")
    with pytest.raises(report.ReportError, match="sweep.json: not a readable sweep record"):
        report.render(tmp_path)


def test_set_threads_takes_the_share_a_sweep_gives(monkeypatch):
    import torch

    from diffgen import set_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("DIFFGEN_THREADS", "1")
        assert set_threads("cpu") == 1
        monkeypatch.setenv("DIFFGEN_THREADS", "zero")  # not a positive integer: the default share
        assert set_threads("cpu") == max(1, (os.cpu_count() or 1) - 1)
    finally:
        torch.set_num_threads(before)


def test_the_region_of_a_row_is_one_sentence_of_runs_of_sizes_and_lengths():
    """Where each verdict lies over (training-set size, training length), in words: runs of consecutive sizes that
    share the same lengths, 'n <= 63' from the smallest, 'at every training length', 'from 4000 steps on'."""
    from diffgen.commands.sweepreport import SizeCell, describe_region

    verdicts = {8: ["holds", "holds", "fails"], 22: ["holds"] * 3, 63: ["holds"] * 3,
                178: ["premise not reached", "premise not reached", "holds"], 500: ["premise not reached"] * 3}
    cells = [SizeCell(n, {"train_steps": steps}, 0.5, v, False)
             for n, row in verdicts.items() for steps, v in zip((1000, 2000, 4000), row)]
    assert describe_region(cells, "train_steps") == (
        "holds at n = 8 up to 2000 steps, for n from 22 to 63 at every training length and at n = 178 from 4000 "
        "steps on; fails at n = 8 from 4000 steps on; premise not reached at n = 178 up to 2000 steps and at "
        "n = 500 at every training length")
    every = [SizeCell(n, {"train_steps": s}, 0.5, "holds" if n < 100 else "not measurable", False)
             for n in (8, 22, 63, 178) for s in (1000, 2000)]
    assert describe_region(every, "train_steps") == ("holds for n <= 63 at every training length; not measurable at "
                                                     "n = 178 at every training length")
    assert describe_region([], "train_steps") == "not measured in this sweep"


def test_a_difference_over_the_training_length_reads_what_longer_training_did_to_it():
    """describe_budget per size: the trend, the nets converged at each length, and the reading: a difference whose
    interval reaches 0 at the longest training is no longer distinguishable from 0 (on nets not all converged: it says
    so), one whose interval lies below 0 has reversed; one that shrinks with each longer training but
    stays above 0 on unconverged nets is undecided; one that holds on converged nets holds; flips of each."""
    import dataclasses

    from diffgen.commands.sweepreport import SizeCell, describe_budget

    def cells(values, lows, verdicts, converged):
        return [SizeCell(20, {"train_steps": s}, v, verdict, False, (lo, 2 * v - lo), c)
                for s, v, lo, verdict, c in zip((2000, 4000, 8000), values, lows, verdicts, converged)]

    waiting = ["premise not reached"] * 3
    shrinking = cells([0.16, 0.1, 0.05], [0.12, 0.07, 0.02], waiting, [(0, 10), (2, 10), (4, 10)])
    text = describe_budget(shrinking, "train_steps")
    assert text.startswith("At n = 20 it falls from 0.16 at step 2000 to 0.05 at step 8000 (0.05 [0.02, 0.08] at the "
                           "longest); nets converged: 0 of 10 at 2000 steps, 2 of 10 at 4000 steps, 4 of 10 at 8000 "
                           "steps: it shrinks with each longer training")
    assert "not decided here" in text
    vanishing = cells([0.16, 0.1, 0.02], [0.12, 0.07, -0.01], waiting, [(0, 10)] * 3)
    assert describe_budget(vanishing, "train_steps").endswith(
        "at 8000 steps its interval reaches 0: after the longest training it is not distinguishable from 0, on nets "
        "none of which converged (the row reads 'premise not reached').")
    some = cells([0.16, 0.1, 0.02], [0.12, 0.07, -0.01], waiting, [(0, 10), (2, 10), (4, 10)])
    assert describe_budget(some, "train_steps").endswith("on nets not all of which converged (the row reads 'premise "
                                                         "not reached').")
    flat = cells([0.16, 0.163, 0.145], [0.13, 0.11, 0.1], waiting, [(0, 10)] * 3)  # moves inside its intervals
    assert "it stays flat at about 0.156" in describe_budget(flat, "train_steps")
    drifting = cells([0.16, 0.15, 0.14], [0.06, 0.05, 0.04], waiting, [(0, 10)] * 3)  # falls, but inside its noise
    text = describe_budget(drifting, "train_steps")
    assert "stays flat" in text and "does not shrink with each longer training" in text and "it shrinks" not in text
    unknown = cells([0.16, 0.1, 0.02], [0.12, 0.07, -0.01], waiting, [None] * 3)  # no count of converged nets
    assert describe_budget(unknown, "train_steps").endswith("it is not distinguishable from 0.")
    reversed_ = cells([0.16, 0.1, -0.05], [0.12, 0.07, -0.08], waiting[:2] + ["fails"], [(0, 10), (2, 10), (10, 10)])
    assert describe_budget(reversed_, "train_steps").endswith(
        "at 8000 steps its interval lies below 0: after the longest training the difference has reversed.")
    lasting = cells([0.16, 0.1, 0.1], [0.12, 0.07, 0.08], waiting[:2] + ["holds"], [(0, 10), (2, 10), (10, 10)])
    assert describe_budget(lasting, "train_steps").endswith("it holds at 8000 steps, on converged nets.")
    unchecked = cells([0.16, 0.1, 0.1], [0.12, 0.07, 0.08], ["holds"] * 3, [None] * 3)  # no premise: nothing said
    assert describe_budget(unchecked, "train_steps").endswith("it holds at 8000 steps.")
    wobbling = cells([0.16, 0.18, 0.1], [0.12, 0.1, 0.06], waiting, [None] * 3)
    text = describe_budget(wobbling, "train_steps")
    assert "does not shrink with each longer training" in text and "nets converged" not in text
    elsewhere = [SizeCell(400, {"train_steps": s}, 0.0, "premise not reached", False, None, (10, 10),
                          "premise: lower end of the standard net's copy rate 0 <= 0") for s in (2000, 4000)]
    assert describe_budget(elsewhere, "train_steps").endswith(
        "the nets converged, but at 4000 steps the row's premise is not reached (premise: lower end of the standard "
        "net's copy rate 0 <= 0).")
    never = [SizeCell(400, {"train_steps": s}, v, "premise not reached", False, ci, c, "premise: nets 9 < 10")
             for s, v, ci, c in ((2000, 0.0, None, (10, 10)), (8000, -0.001, (-0.003, 0.001), (9, 10)))]
    text = describe_budget(never, "train_steps")  # one net short of converged: no difference was there to outlast
    assert text.endswith("there is no difference to outlast at any length; at 8000 steps the row reads 'premise not "
                         "reached' (premise: nets 9 < 10).") and "not distinguishable" not in text
    gone = [dataclasses.replace(never[0], value=0.05, ci=(0.02, 0.08)), never[1]]  # there at 2000, gone at 8000
    assert "it is not distinguishable from 0" in describe_budget(gone, "train_steps")
    assert describe_budget([], "train_steps") == "Not measured in this sweep."


def test_a_bullets_label_stays_bold_whatever_it_holds():
    """"- **C4, approximates eps*:** ..." once rendered as "C4, approximates eps" in bold, then ":* holds"."""
    from markdown_it import MarkdownIt

    from diffgen.commands.sweepreport import bullet

    html = MarkdownIt("commonmark").render(bullet("C4, approximates eps*", "holds at n <= 63 (train_steps = 2000)"))
    assert "<strong>C4, approximates eps*:</strong> holds at n &lt;= 63 (train_steps = 2000)" in html, html


def test_rows_by_size_carry_their_interval_and_converged_nets(tmp_path):
    """A C5b row of a sweep point read back with its interval, its label and the premise's count of converged nets;
    the figure draws one line per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffgen.commands.sweepreport import budget_figure, grid_text, read_sweep, rows_by_size, sweep_rows

    points = {}
    for steps, done in ((2000, 0), (4000, 7)):
        name = f"train_steps={steps}"
        (tmp_path / name).mkdir()
        rows = [{"id": "C5b", "source": "revision", "statement": "s", "metric": f"copy rate, std minus new, n = {n}",
                 "value": 0.1, "ci": [0.05, 0.15], "expected": "> 0", "holds": False, "seeds": 5, "regime": {"n": n},
                 "label": f"memorizes less (n = {n})",
                 "premise": {"statement": "trained", "met": done == 10, "combine": "all",
                             "tests": [{"what": "nets whose curves flattened", "value": done, "relation": ">=",
                                        "threshold": 10, "of": ""}]}} for n in (20, 40)]
        (tmp_path / name / "ch4.results.json").write_text(json.dumps({
            "chapter": "ch4", "parameters": {"train_steps": steps}, "diffgen_version": "0", "source_hash": "x",
            "claims": rows}))
        points[name] = {"values": {"train_steps": steps}, "status": "done"}
    (tmp_path / "sweep.json").write_text(json.dumps({"chapter": "ch4", "grid": {"train_steps": [2000, 4000]},
                                                     "points": points}))
    doc = read_sweep(tmp_path)
    assert grid_text({"grid": {"train_steps": ["8000", "2000"], "dataset": ["mnist", "digits"]}}) == (
        "train_steps in {2000, 8000} by dataset in {mnist, digits}")
    assert [r.label for r in sweep_rows(doc, "x")] == ["memorizes less (n = 20)", "memorizes less (n = 40)"]
    cells = rows_by_size(doc, "C5b", "copy rate", current="x")
    assert [(c.n, c.values["train_steps"], c.ci, c.converged) for c in cells] == [
        (20, 2000, (0.05, 0.15), (0, 10)), (20, 4000, (0.05, 0.15), (7, 10)),
        (40, 2000, (0.05, 0.15), (0, 10)), (40, 4000, (0.05, 0.15), (7, 10))]
    assert cells[1].decided_by == "premise (trained): nets whose curves flattened 7 < 10"
    fig, ax = plt.subplots()
    budget_figure(cells, "train_steps", "C5b", ax=ax)
    assert len(ax.lines) >= 2 and [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["n = 20", "n = 40"]
    plt.close(fig)
