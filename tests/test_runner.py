"""Headless execution with progress on the terminal (diffgen.base.progress, diffgen.commands.runner) and the book's execution cache
filled by the same runner (`diffgen book`)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from diffgen.base import progress
from diffgen.base.util import thread_share
from diffgen.commands import bookrun, runner

DIFFGEN = Path(sys.executable).with_name("diffgen")


def test_notes_and_progress_go_to_the_runner_when_headless(tmp_path, monkeypatch, capsys):
    channel = tmp_path / "progress.txt"
    monkeypatch.setenv("DIFFGEN_HEADLESS", "1")
    monkeypatch.setenv(progress.CHANNEL, str(channel))
    progress.note("loaded from cache x")
    assert list(progress.progress(range(3), desc="work", every=0.0)) == [0, 1, 2]
    lines = channel.read_text().splitlines()
    assert lines[0] == "loaded from cache x"
    assert lines[1:] == [f"work: {k}/3 ({line.split('(')[1]}" for k, line in zip((1, 2, 3), lines[1:])]
    assert capsys.readouterr().out == ""  # nothing reaches the notebook's outputs
    monkeypatch.delenv(progress.CHANNEL)
    progress.note("dropped")  # headless without a runner: silent
    assert list(progress.progress(range(2), desc="x")) == [0, 1] and capsys.readouterr().out == ""


def test_progress_status_and_total_from_the_initial_step(tmp_path, monkeypatch):
    channel = tmp_path / "progress.txt"
    monkeypatch.setenv("DIFFGEN_HEADLESS", "1")
    monkeypatch.setenv(progress.CHANNEL, str(channel))
    list(progress.progress(range(5, 10), desc="train", total=10, initial=5, status=lambda: "loss 0.1", every=1e9))
    assert channel.read_text().splitlines()[-1].startswith("train: 10/10 (") and "loss 0.1" in channel.read_text()


def test_follower_shows_each_line_once_and_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.CHANNEL, raising=False)
    shown = []
    with progress.Follower(tmp_path / "p.txt", shown.append, poll=0.01) as follower:
        assert os.environ[progress.CHANNEL] == str(tmp_path / "p.txt")
        with open(tmp_path / "p.txt", "a") as f:
            f.write("one\ntwo\npartial")
        follower.drain()
        assert shown == ["one", "two"]
        with open(tmp_path / "p.txt", "a") as f:
            f.write(" line\n")
        time.sleep(0.1)
    assert shown == ["one", "two", "partial line"] and progress.CHANNEL not in os.environ


def test_cell_printer_counts_code_cells_and_skips_injected_parameters():
    stream = io.StringIO()
    printer = runner.CellPrinter("ch9", n_code=2, stream=stream)
    printer.cell_start(cell={"cell_type": "markdown", "source": "# x"})
    printer.cell_start(cell={"cell_type": "code", "source": "a = 1  # params", "metadata": {"tags": ["parameters"]}})
    printer.cell_start(cell={"cell_type": "code", "source": "# Parameters\na = 2",
                             "metadata": {"tags": ["injected-parameters"]}})
    printer.cell_start(cell={"cell_type": "code", "source": "\nrun()\n", "metadata": {}})
    printer.show("train: 5/10 (2.0/s)")
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[0] for line in lines] == ["ch9 [ 1/2 0:00", "ch9 [ 1/2 0:00", "ch9 [ 2/2 0:00",
                                                         "ch9 [ 2/2 0:00"]
    assert [line.split("] ", 1)[1] for line in lines] == ["a = 1  # params", "(parameters injected)", "run()",
                                                         "train: 5/10 (2.0/s)"]


def test_outputs_are_copied_onto_the_source_notebook():
    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1 + 1")])
    source.cells[1].metadata["tags"] = ["parameters"]
    ran = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("1 + 1")])
    ran.cells[1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    ran.cells[1].execution_count = 1
    ran.cells[1].metadata["papermill"] = {"duration": 0.1}
    out = bookrun._outputs_onto(source, ran)
    assert out.cells[1].outputs == ran.cells[1].outputs and out.cells[1].execution_count == 1
    assert out.cells[1].metadata == {"tags": ["parameters"]}  # the source's metadata: the cache hashes it
    assert not source.cells[1].outputs
    ran.cells.append(nbformat.v4.new_code_cell("x"))
    with pytest.raises(ValueError, match="code cells"):
        bookrun._outputs_onto(source, ran)


def _tiny_book(root: Path, body: str = "print('ran at', time.time_ns())") -> None:
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text("title: tiny\nexecute:\n  execute_notebooks: cache\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/ch1_tiny\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Tiny"),
                                         nbformat.v4.new_code_cell("import time\nfrom diffgen.base.progress import note"),
                                         nbformat.v4.new_code_cell(f"note('hello from the kernel')\n{body}")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "book" / "ch1_tiny.ipynb")


def test_book_notebooks_follow_the_table_of_contents(tmp_path):
    _tiny_book(tmp_path)
    assert bookrun.book_notebooks(tmp_path) == [tmp_path / "book" / "ch1_tiny.ipynb"]  # intro.md is not a notebook


@pytest.mark.notebook("executes a fixture notebook in a kernel")
def test_execute_book_runs_each_notebook_once_and_shows_progress(tmp_path, capfd):
    _tiny_book(tmp_path)
    cache = tmp_path / "_build" / ".jupyter_cache"
    assert bookrun.execute_book(tmp_path, cache, timeout=120, source="aaa")
    out = capfd.readouterr()
    assert "ch1 [ 2/2" in out.err and "hello from the kernel" in out.err and "ch1: executed in" in out.out
    from jupyter_cache import get_cache

    record = get_cache(str(cache)).match_cache_notebook(nbformat.read(tmp_path / "book" / "ch1_tiny.ipynb", 4))
    assert record.uri.endswith("ch1_tiny.ipynb")
    assert bookrun.execute_book(tmp_path, cache, timeout=120, source="aaa")
    assert "unchanged since it was executed" in capfd.readouterr().out
    assert bookrun.execute_book(tmp_path, cache, timeout=120, source="bbb")  # other code: the cache is wiped
    assert "ch1: executed in" in capfd.readouterr().out


@pytest.mark.notebook("executes a fixture notebook in a kernel")
def test_execute_book_reports_a_failing_chapter(tmp_path, capfd):
    _tiny_book(tmp_path, body="raise RuntimeError('broken chapter')")
    assert not bookrun.execute_book(tmp_path, tmp_path / "_build" / ".jupyter_cache", timeout=120, source="aaa")
    err = capfd.readouterr().err
    assert "diffgen book: error: ch1 failed in cell index 2" in err and "RuntimeError: broken chapter" in err
    assert (tmp_path / "book" / "ch1_tiny.FAILED.ipynb").exists()


def _book_of(root: Path, pages: dict[str, tuple[str, int]]) -> None:
    """A book of chapters name -> (body of its last cell, its diffgen.expected_seconds), in this reading order."""
    _tiny_book(root)
    (root / "book" / "ch1_tiny.ipynb").unlink()
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   + "".join(f"  - file: book/{name}\n" for name in pages))
    for name, (body, seconds) in pages.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"import os, time\n{body}")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["diffgen"] = {"expected_seconds": seconds}
        nbformat.write(nb, root / "book" / f"{name}.ipynb")


def _log(name: str, seconds: float = 0.0, after: str | None = None) -> str:
    """A cell that writes <name>.start (time, $DIFFGEN_THREADS), waits until <after>.start exists (at most 60 s,
    else it fails), sleeps `seconds`, then writes <name>.end."""
    wait = "" if after is None else (f"for _ in range(600):\n    if os.path.exists('{after}.start'): break\n"
                                     f"    time.sleep(0.1)\nelse:\n    raise TimeoutError('{after} never started')\n")
    return (f"open('{name}.start', 'w').write(f'{{time.time()}} {{os.environ.get(\"DIFFGEN_THREADS\")}}')\n"
            f"{wait}time.sleep({seconds})\nopen('{name}.end', 'w').write(str(time.time()))")


@pytest.mark.notebook("executes fixture notebooks in kernels, two at once")
def test_execute_book_runs_notebooks_at_once_the_longest_first(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("DIFFGEN_THREADS", raising=False)  # (make test sets it for its workers)
    _book_of(tmp_path, {"ch3_shortest": (_log("ch3"), 0), "ch1_short": (_log("ch1", 0.5, after="ch2"), 1),
                        "ch2_long": (_log("ch2", 0.5, after="ch1"), 9)})  # in reading order ch3 would start first
    assert bookrun.execute_book(tmp_path, tmp_path / "_build" / ".jupyter_cache", timeout=120, source="a", jobs=2)
    book = tmp_path / "book"
    start = {n: float((book / f"ch{n}.start").read_text().split()[0]) for n in (1, 2, 3)}
    end = {n: float((book / f"ch{n}.end").read_text()) for n in (1, 2, 3)}
    assert start[3] > min(end[1], end[2])  # the shortest waited for a free slot (ch1 and ch2 met: at once)
    shares = {(book / f"ch{n}.start").read_text().split()[1] for n in (1, 2, 3)}
    assert shares == {str(thread_share(2))}  # each its share of the cores
    assert "3 notebook(s) to execute, 2 at once" in capfd.readouterr().out


@pytest.mark.notebook("executes fixture notebooks in kernels, two at once")
def test_after_a_failure_no_further_notebook_starts_and_the_running_ones_are_cached(tmp_path, capfd):
    _book_of(tmp_path, {"ch1_ok": (_log("ch1", 8, after="ch2"), 5),  # still running when ch2 fails
                        "ch2_broken": ("open('ch2.start', 'w')\nraise RuntimeError('broken')", 9),
                        "ch3_later": (_log("ch3"), 1)})
    cache = tmp_path / "_build" / ".jupyter_cache"
    assert not bookrun.execute_book(tmp_path, cache, timeout=120, source="a", jobs=2)
    assert (tmp_path / "book" / "ch1.end").exists() and not (tmp_path / "book" / "ch3.start").exists()
    err = capfd.readouterr().err
    assert "diffgen book: error: ch2 failed" in err and "not started after the failure: ch3" in err
    from jupyter_cache import get_cache

    get_cache(str(cache)).match_cache_notebook(nbformat.read(tmp_path / "book" / "ch1_ok.ipynb", 4))  # cached


def test_a_notebook_that_cannot_start_is_a_failure_not_a_hang(tmp_path, capfd, monkeypatch):
    _book_of(tmp_path, {"ch1_a": ("pass", 1)})

    def broken(*args, **kwargs):
        raise OSError("no such interpreter")

    monkeypatch.setattr(bookrun, "execute_notebook", broken)
    assert not bookrun.execute_book(tmp_path, tmp_path / "_build" / ".jupyter_cache", timeout=120, source="a")
    assert "ch1 failed to start: OSError: no such interpreter" in capfd.readouterr().err


@pytest.mark.notebook("executes a fixture notebook in a kernel")
def test_diffgen_run_prints_cells_and_training_progress(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('device = "auto"  # d; one of: auto, cpu, cuda\nseed = 0  # s; int in [0, 9]'),
        nbformat.v4.new_code_cell("import json, time\nfrom diffgen.base.progress import progress\n"
                                  "for _ in progress(range(8), desc='train', every=0.1):\n    time.sleep(0.05)\n"
                                  "json.dump({}, open('ch1.results.json', 'w'))")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, book / "ch1_progress.ipynb")
    proc = subprocess.run([str(DIFFGEN), "run", "ch1", "--out", str(tmp_path / "out"), "--timeout", "120"],
                          capture_output=True, text=True, env={**os.environ, "DIFFGEN_BOOK_DIR": str(book)}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "ch1 [ 2/2" in proc.stderr and "train: 8/8" in proc.stderr, proc.stderr
    executed = nbformat.read(tmp_path / "out" / "ch1_progress.ipynb", 4)
    assert not any(o.get("text", "").count("train") for c in executed.cells for o in c.get("outputs", []))
