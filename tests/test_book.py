"""The book build: `diffgen book` at the smoke preset in a folder of its own, re-execution when diffgen's source
changes, a cell error failing the build, the book's structure. What a built book shows: test_built_book.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from diffgen.commands.bookrun import book_notebooks, refresh_execution_cache
from diffgen.commands.runner import STAMP_NAME

REPO = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")


def _build(root: Path, out: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(JUPYTER_BOOK), "build", str(root), "--path-output", str(out), "--warningiserror"],
                          capture_output=True, text=True, timeout=2400, env=env)  # a hang guard, not a timing test


def test_refresh_execution_cache_wipes_only_on_a_new_hash(tmp_path):
    cache = tmp_path / ".jupyter_cache"
    assert refresh_execution_cache(cache, "aaa")  # nothing there yet: stale
    (cache / "executed.db").write_text("x")
    assert not refresh_execution_cache(cache, "aaa")  # same hash: kept
    assert (cache / "executed.db").exists()
    assert refresh_execution_cache(cache, "bbb")  # library changed: wiped and re-stamped
    assert not (cache / "executed.db").exists()
    assert (cache / STAMP_NAME).read_text().strip() == "bbb"


def _tiny_book(root: Path) -> None:
    """A one-notebook book whose output records diffgen's source hash and when it ran."""
    (root / "_config.yml").write_text(
        "title: tiny\nonly_build_toc_files: true\nexclude_patterns: [pkg, _build]\n"
        "execute:\n  execute_notebooks: cache\n  timeout: 120\n"
        "sphinx:\n  extra_extensions: [diffgen.commands.book]\n  config:\n    nb_execution_raise_on_error: true\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: nb\n")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Tiny"),
        nbformat.v4.new_code_cell("import os, time, diffgen\n"
                                  "print(diffgen.source_hash(), os.environ.get('DIFFGEN_HEADLESS'), time.time_ns())"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "nb.ipynb")


def _printed(out: Path) -> str:
    html = (out / "_build" / "html" / "nb.html").read_text()
    match = re.search(r"([0-9a-f]{16}) (\S+) (\d{10,})", html)
    assert match, "the tiny notebook's output is missing from the HTML"
    return match.group(0)


@pytest.mark.notebook("three jupyter-book builds of a one-notebook book")
def test_library_change_reexecutes_chapters(tmp_path):
    root, out = tmp_path / "book", tmp_path / "out"
    root.mkdir()
    _tiny_book(root)
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "diffgen", pkg / "diffgen", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(pkg)}  # the build and its kernels import this copy of diffgen

    first = _build(root, out, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    printed1 = _printed(out)
    assert printed1.split()[1] == "1", "the book build must execute chapters headlessly (DIFFGEN_HEADLESS=1)"

    assert _build(root, out, env).returncode == 0
    assert _printed(out) == printed1, "nothing changed, so the cached execution must be reused"

    with open(pkg / "diffgen" / "diffusion" / "schedule.py", "a") as f:
        f.write("\n# a library change\n")
    third = _build(root, out, env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    printed3 = _printed(out)
    assert printed3.split()[0] != printed1.split()[0], "the new source hash must reach the kernel"
    assert printed3.split()[2] != printed1.split()[2], "a library change must re-execute the notebook"


@pytest.mark.notebook("two diffgen book builds of a one-notebook book")
def test_a_page_that_diffgen_book_re_executes_is_rendered_anew(tmp_path):
    """`diffgen book` executes into the cache before Sphinx runs; the notebook's file did not change, yet its page
    must show the new execution, not the previous build's."""
    root = tmp_path / "book"
    root.mkdir()
    _tiny_book(root)
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO / "diffgen", pkg / "diffgen", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    build = lambda: subprocess.run([str(JUPYTER_BOOK.with_name("diffgen")), "book", str(root)],  # noqa: E731
                                   capture_output=True, text=True, timeout=1200, env=env)
    first = build()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    printed1 = _printed(root)
    with open(pkg / "diffgen" / "diffusion" / "schedule.py", "a") as f:
        f.write("\n# a library change\n")
    second = build()
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "nb: executed in" in second.stdout
    assert _printed(root).split()[2] != printed1.split()[2], "the page must show the new execution"


@pytest.mark.notebook("builds the real book with every chapter at the smoke preset")
def test_smoke_book_executes_each_page_once_then_renders_from_its_cache(smoke_book):
    """`diffgen book . --preset smoke --build-dir DIR` (conftest.py) builds a copy of the real book (the same
    _toc.yml, _config.yml plus `diffgen_preset`) with warnings as errors, showing a progress line per cell of each
    page it executes; jupyter-book then only renders, from DIR's own execution cache. What the build shows is checked
    by test_built_book.py."""
    executed = [line for line in smoke_book.stdout.splitlines() if " executed in " in line]
    assert len(executed) == len(book_notebooks(REPO)), smoke_book.stdout[-3000:]  # the chapters and the sweep page
    assert re.search(r"ch\d \[ ?\d+/\d+ \d+:\d\d\] ", smoke_book.stderr), "progress lines on the terminal"
    assert smoke_book.stdout.count("Using cached notebook") == len(book_notebooks(REPO))
    assert "Executing notebook" not in smoke_book.stdout + smoke_book.stderr, "jupyter-book must not execute"
    root = smoke_book.root
    assert (root / "_toc.yml").read_bytes() == (REPO / "_toc.yml").read_bytes()
    config, ours = (yaml.safe_load((path / "_config.yml").read_text()) for path in (root, REPO))
    ours["sphinx"]["config"]["diffgen_preset"] = "smoke"
    assert config == ours
    assert "The book at preset smoke is at file://" in smoke_book.stdout


def test_a_preset_build_needs_a_folder_of_its_own(tmp_path, capsys):
    from diffgen.commands import cli

    assert cli.main(["book", str(REPO), "--preset", "smoke"]) == 2
    assert "--preset smoke builds into a folder of its own: pass --build-dir DIR" in capsys.readouterr().err
    assert cli.main(["book", str(REPO), "--preset", "nope", "--build-dir", str(tmp_path / "b")]) == 2
    assert "unknown preset 'nope'; choose from default, smoke" in capsys.readouterr().err
    assert cli.main(["book", str(REPO), "--preset", "smoke", "--build-dir", str(REPO / "book" / "b")]) == 2
    assert f"lies inside {REPO / 'book'}, which the build copies" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (REPO / "book" / "b").exists()


def test_a_preset_build_injects_what_diffgen_run_injects():
    from diffgen.chapters.registry import plan_run
    from diffgen.commands.bookrun import book_parameters

    injected = book_parameters(REPO, "smoke")
    chapters = [path for path in book_notebooks(REPO) if path.stem.startswith("ch")]
    assert set(injected) == set(chapters) and len(chapters) == 4  # the sweep page has no parameters
    for path in chapters:
        [run] = plan_run([path.stem], "smoke")
        assert injected[path] == run.overrides and run.overrides, path.name
    assert book_parameters(REPO, "default") == {}


def test_copied_sources_leave_out_what_a_build_of_the_book_wrote(tmp_path):
    """The copy holds the pages, the bibliography and the sweep data the pages read, but not the chapters' results
    files or failed notebooks beside them: the copy's claims table can only show its own build's numbers."""
    from diffgen.commands.bookrun import copy_book_sources

    root = tmp_path / "root"
    (root / "book" / "sweeps" / "ch3" / "n=8").mkdir(parents=True)
    (root / "_config.yml").write_text("title: t\nbibtex_bibfiles: [refs/r.bib]\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/ch1_a\n"
                                   "  - file: top\n")
    for name in ("book/intro.md", "book/ch1_a.ipynb", "book/ch1.results.json", "book/ch1_a.FAILED.ipynb",
                 "book/sweeps/ch3/n=8/ch3.results.json", "refs/r.bib", "top.md", "stray.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    copy_book_sources(root, tmp_path / "copy", "smoke")
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == ["_config.yml", "_toc.yml", "book/ch1_a.ipynb", "book/intro.md",
                      "book/sweeps/ch3/n=8/ch3.results.json", "refs/r.bib", "top.md"]
    assert yaml.safe_load((tmp_path / "copy" / "_config.yml").read_text()) == {
        "title": "t", "bibtex_bibfiles": ["refs/r.bib"], "sphinx": {"config": {"diffgen_preset": "smoke"}}}


def test_a_preset_builds_cache_never_passes_for_the_default_builds(tmp_path):
    """A cache filled at the smoke preset is stale for the default build, which then wipes it and executes."""
    from diffgen.commands.bookrun import book_stamp

    smoke, default = book_stamp(tmp_path, "smoke"), book_stamp(tmp_path)
    assert smoke == f"{default}+smoke"
    cache = tmp_path / ".jupyter_cache"
    assert refresh_execution_cache(cache, smoke)
    (cache / "executed.db").write_text("x")
    assert refresh_execution_cache(cache, default) and not (cache / "executed.db").exists()


@pytest.mark.notebook("a jupyter-book build of a one-notebook book")
def test_cell_error_fails_the_build_loudly(tmp_path):
    """A chapter whose cell raises fails `jupyter-book build` (nb_execution_raise_on_error), naming the notebook and
    the error, with no HTML page for it (the same settings as the book's _config.yml)."""
    root, out = tmp_path / "book", tmp_path / "out"
    root.mkdir()
    _tiny_book(root)
    nb = nbformat.read(root / "nb.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("x = 1\nraise RuntimeError('chapter cell failed on purpose')"))
    nbformat.write(nb, root / "nb.ipynb")
    result = _build(root, out)
    assert result.returncode != 0, "a cell error must fail the build"
    log = result.stdout + result.stderr
    assert "nb.ipynb" in log and "RuntimeError" in log and "chapter cell failed on purpose" in log, log[-3000:]
    assert not (out / "_build" / "html" / "nb.html").exists()


def test_config_fails_the_build_on_cell_errors():
    """The real book uses the settings the test above exercises."""
    import yaml

    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["allow_errors"] is False
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert config["execute"]["timeout"] > 0  # a stalled cell becomes an error


def _toc_chapters() -> list[Path]:
    import yaml

    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [REPO / f"{entry['file']}.ipynb" for entry in toc.get("chapters", [])
            if (REPO / f"{entry['file']}.ipynb").name.startswith("ch")]


@pytest.mark.parametrize("path", _toc_chapters(), ids=lambda p: p.stem)
def test_chapter_opens_with_the_claims_and_closes_with_the_measurements(path):
    """The book's structure: a summary box first (the question, the rows' verdicts filled in when the book is built,
    the key figure), the paper's claims in an admonition (marked as the paper's, with our reconstruction labelled),
    a 'Verdict' section last, each paper claim the chapter measures at a labelled section, and citations resolved by
    references.bib."""
    from diffgen.claims.results import PAPER_CLAIMS
    from diffgen.commands.book import SUMMARY_CLASS, SUMMARY_PLACEHOLDER

    nb = nbformat.read(path, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    summary = markdown[0].split(":::{admonition} What the paper claims")[0]
    assert f":class: {SUMMARY_CLASS}" in summary and "**The question.**" in summary, "open with the summary"
    assert SUMMARY_PLACEHOLDER in summary and "{numref}`fig-" in summary, "its verdicts and its key figure"
    assert ":::{admonition} What the paper claims" in markdown[0], "then the paper's claims"
    assert "reconstruction" in markdown[0], "say which parts are our reconstruction"
    assert markdown[-1].lstrip().startswith("## Verdict"), "close with the verdict"
    chapter = path.stem.split("_")[0]
    for claim in (c for c in PAPER_CLAIMS.values() if c.chapter == chapter):
        assert any(f"(claim-{claim.id.lower()})=" in m for m in markdown), f"no section labelled claim-{claim.id}"
    bib = (REPO / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    cited = {k.strip() for c in nb.cells for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", c.source)
             for k in group.split(",")}
    assert cited, "cite the paper and the works the chapter builds on"
    assert cited <= keys, f"citations missing from book/references.bib: {cited - keys}"


def test_figures_numbered_per_chapter():
    from types import SimpleNamespace

    from diffgen.commands.book import _on_env_get_updated

    env = SimpleNamespace(toc_fignumbers={
        "book/ch3_trained_gap": {"figure": {"fig-b": (7,), "fig-a": (5,), "fig-c": (9,)}},
        "book/intro": {"figure": {"x": (1,)}},
    })
    assert _on_env_get_updated(None, env) == ["book/ch3_trained_gap"]
    assert env.toc_fignumbers["book/ch3_trained_gap"]["figure"] == {"fig-a": (3, 1), "fig-b": (3, 2), "fig-c": (3, 3)}
    assert env.toc_fignumbers["book/intro"]["figure"] == {"x": (1,)}
    assert _on_env_get_updated(None, env) == []  # already numbered: nothing to rewrite


def test_frame_slider_cdn_stylesheet_is_dropped():
    from docutils import nodes

    from diffgen.commands.book import _FONT_AWESOME_CDN

    html = ('<link rel="stylesheet"\nhref="https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css">'
            '\n<script language="javascript">/* anim */</script>')
    assert _FONT_AWESOME_CDN.sub("", nodes.raw("", html, format="html").astext()) == \
           '<script language="javascript">/* anim */</script>'


def test_book_stamp_follows_the_sweep_data_a_page_reads(tmp_path):
    """A page that reads book/sweeps/ (where_claims_hold) re-executes when that data changes, not only the code."""
    from diffgen.base.provenance import source_hash
    from diffgen.commands.bookrun import book_stamp

    assert book_stamp(tmp_path) == f"{source_hash()}+"
    data = tmp_path / "book" / "sweeps" / "ch3" / "n=8"
    data.mkdir(parents=True)
    (data / "ch3.results.json").write_text("{}")
    first = book_stamp(tmp_path)
    assert first != f"{source_hash()}+" and book_stamp(tmp_path) == first
    (data / "ch3.results.json").write_text('{"changed": 1}')
    assert book_stamp(tmp_path) != first
