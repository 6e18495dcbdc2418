"""The book: builds with no error output, and re-executes chapters when diffgen's source changes."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from diffgen.runner import STAMP_NAME, book_notebooks, refresh_execution_cache

REPO = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).with_name("jupyter-book")
DIFFGEN = Path(sys.executable).with_name("diffgen")


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
        "sphinx:\n  extra_extensions: [diffgen.book]\n  config:\n    nb_execution_raise_on_error: true\n")
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


@pytest.mark.slow
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

    with open(pkg / "diffgen" / "schedule.py", "a") as f:
        f.write("\n# a library change\n")
    third = _build(root, out, env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    printed3 = _printed(out)
    assert printed3.split()[0] != printed1.split()[0], "the new source hash must reach the kernel"
    assert printed3.split()[2] != printed1.split()[2], "a library change must re-execute the notebook"


@pytest.mark.slow
def test_book_builds_without_error_output():
    """`diffgen book` (what `make book` runs) builds the real book into _build/ with warnings as errors, showing a
    progress line per cell of each chapter it executes; no cell shows an error or stderr. It is the build `make book`
    makes, so a CI run executes each chapter once: here, and `make book` afterwards only renders."""
    result = subprocess.run([str(DIFFGEN), "book", str(REPO)], capture_output=True, text=True, timeout=5400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    executed = [line for line in result.stdout.splitlines() if line.endswith("(cached)") or " executed in " in line]
    assert len(executed) == len(book_notebooks(REPO)), result.stdout[-3000:]  # the chapters and the sweep page
    if any(" executed in " in line for line in executed):
        assert re.search(r"ch\d \[ ?\d+/\d+ \d+:\d\d\] ", result.stderr), "progress lines on the terminal"
    html_dir = REPO / "_build" / "html"
    pages = sorted((html_dir / "book").glob("*.html"))
    assert {p.stem for p in pages} >= {"intro", "ch1_mutual_information", "ch2_empirical_optimum",
                                       "ch3_trained_gap", "ch4_new_objective", "where_claims_hold", "references"}
    assert (html_dir / "_static" / "mathjax" / "MathJax.js").is_file(), "MathJax must be served from the book"
    for page in pages:
        html = page.read_text()
        if page.stem.startswith("ch"):  # every chapter has math (pages without any, e.g. references, load no MathJax)
            assert "_static/mathjax/MathJax.js" in html, page
        assert "cdn.jsdelivr.net/npm/mathjax" not in html, page
        assert "maxcdn.bootstrapcdn.com" not in html and "require.min.js" not in html, page  # nothing from a CDN
        assert "Traceback" not in html, page
        assert "output stderr" not in html and "output error" not in html, page
    # the book renders from the execution cache (myst-nb's jupyter_execute copy of a cached notebook has no outputs)
    from jupyter_cache import get_cache
    source = nbformat.read(REPO / "book" / "ch2_empirical_optimum.ipynb", as_version=4)
    cached = get_cache(str(REPO / "_build" / ".jupyter_cache")).merge_match_into_notebook(source)[1]
    images = [o for c in cached.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "data" in o and "image/png" in o["data"]]
    assert len(images) >= 4, "chapter 2 must show its figures"
    ch2 = (html_dir / "book" / "ch2_empirical_optimum.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", ch2)) >= 4, "the page shows chapter 2's figures"
    assert re.search(r'<span class="caption-number">Figure 2\.1 </span>', ch2), "figures are numbered per chapter"
    assert 'href="references.html#id' in ch2 or "references.html" in ch2, "chapter 2 cites the bibliography"
    references = (html_dir / "book" / "references.html").read_text()
    text = references.lower()  # the bibliography style sets titles in sentence case
    assert "on the generalization of diffusion model" in text and "denoising diffusion implicit models" in text
    intro = (html_dir / "book" / "intro.html").read_text()
    assert "diffgen-claims" in intro, "the introduction shows the claims table"
    results = json.loads((REPO / "book" / "ch2.results.json").read_text())
    assert all(c["holds"] for c in results["claims"]), results["claims"]


@pytest.mark.slow
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
    """The book's structure: the paper's claims in an admonition first (marked as the paper's, with our
    reconstruction labelled), a 'What we measured' section last, and citations resolved by references.bib."""
    nb = nbformat.read(path, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert ":::{admonition} What the paper claims" in markdown[0], "open with the paper's claims"
    assert "reconstruction" in markdown[0], "say which parts are our reconstruction"
    assert markdown[-1].lstrip().startswith("## What we measured"), "close with what we measured"
    bib = (REPO / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    cited = {k.strip() for c in nb.cells for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", c.source)
             for k in group.split(",")}
    assert cited, "cite the paper and the works the chapter builds on"
    assert cited <= keys, f"citations missing from book/references.bib: {cited - keys}"


def test_figures_numbered_per_chapter():
    from types import SimpleNamespace

    from diffgen.book import _on_env_get_updated

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

    from diffgen.book import _FONT_AWESOME_CDN

    html = ('<link rel="stylesheet"\nhref="https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css">'
            '\n<script language="javascript">/* anim */</script>')
    assert _FONT_AWESOME_CDN.sub("", nodes.raw("", html, format="html").astext()) == \
           '<script language="javascript">/* anim */</script>'


def test_book_stamp_follows_the_sweep_data_a_page_reads(tmp_path):
    """A page that reads book/sweeps/ (where_claims_hold) re-executes when that data changes, not only the code."""
    from diffgen.provenance import source_hash
    from diffgen.runner import book_stamp

    assert book_stamp(tmp_path) == f"{source_hash()}+"
    data = tmp_path / "book" / "sweeps" / "ch3" / "n=8"
    data.mkdir(parents=True)
    (data / "ch3.results.json").write_text("{}")
    first = book_stamp(tmp_path)
    assert first != f"{source_hash()}+" and book_stamp(tmp_path) == first
    (data / "ch3.results.json").write_text('{"changed": 1}')
    assert book_stamp(tmp_path) != first
