"""The Sphinx extension of the book build (listed in _config.yml): headless execution, library-aware caching, the
claims table, per-chapter figure numbers and pages that need no network.

- Sets DIFFGEN_HEADLESS=1 before myst-nb starts kernels, so chapters show their static figures instead of
  instantiating ipywidgets (which stalls headless nbclient intermittently: jupyter/nbclient#312, nteract/papermill#723).
- Serves MathJax from the local `jupyter-server-mathjax` package (copied into _static/mathjax), so math renders in
  the built HTML without a network; the default configuration loads it from a CDN.
- The `{diffgen-claims}` directive (the introduction's claims table): a placeholder while reading, replaced in the
  write phase (`doctree-resolved`, after every chapter has been executed and has written its
  `<chapter>.results.json`) by a table built with diffgen.commands.report, the formatting `diffgen report` uses. The
  documents holding it are re-read on every build, so the table never shows an earlier build's numbers.
- Drops the font-awesome 4 stylesheet that matplotlib's `to_jshtml` frame sliders link from a CDN: the theme's own
  Font Awesome 6 (served locally) draws the slider buttons, so the pages request nothing from the network.
- Numbers figures per chapter as "Figure 2.1", "Figure 2.2", ... in `book/ch2_*` (the chapter number from the file
  name), for captions and `{numref}` alike; Sphinx alone numbers them through the whole book unless the table of
  contents is numbered.
- Lists each script once per page: sphinx-thebe registers its inline configuration twice under jupyter-book, and the
  second copy redeclares a `const` (an error in every page's console).
- jupyter-cache keys a notebook by its own code cells only, and Sphinx re-reads only documents whose files changed.
  When diffgen's source hash differs from the one stamped in the execution cache, this wipes the cache and marks
  every notebook outdated, so a library change re-executes every chapter; a notebook executed into the cache after
  Sphinx last read it (by `diffgen book`, before Sphinx starts) is re-read too.
- A build at another preset than the default (`diffgen book --preset smoke --build-dir DIR` sets the config value
  `diffgen_preset` in DIR's copy of _config.yml) stamps its cache with the preset's name and shows a banner on
  every page saying so: its numbers never pass for the book's.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from ..base.provenance import VERSION as __version__
from .bookrun import book_stamp, refresh_execution_cache
from .claimpages import detail_nodes, glance_nodes, summary_nodes


def _cache_dir(app) -> Path | None:
    config = getattr(app.env, "mystnb_config", None)
    path = getattr(config, "execution_cache_path", None)
    return Path(path) if path else None


def _on_builder_inited(app) -> None:
    cache_dir = _cache_dir(app)
    stamp = book_stamp(Path(app.srcdir), app.config.diffgen_preset)
    app.env.diffgen_stale = bool(cache_dir) and refresh_execution_cache(cache_dir, stamp)
    if app.env.diffgen_stale:
        logging.getLogger(__name__).info(f"diffgen {__version__} source and data {stamp}: re-executing all notebooks")


def _on_env_get_outdated(app, env, added, changed, removed) -> list[str]:
    reread = set(getattr(env, "diffgen_claims_docs", set())) & set(env.found_docs)  # the tables: every build
    notebooks = {doc for doc in env.found_docs if str(env.doc2path(doc)).endswith(".ipynb")}
    if getattr(env, "diffgen_stale", False):
        reread |= notebooks
    else:
        reread |= _executed_since_read(app, env, notebooks)
    return sorted(reread - set(added) - set(removed))


def _executed_since_read(app, env, docs) -> set[str]:
    """The notebooks executed into the cache after Sphinx last read them (`diffgen book` executes before Sphinx
    runs, and a notebook whose file did not change would otherwise keep the pages of its previous execution)."""
    from datetime import timezone

    import nbformat
    from jupyter_cache import get_cache

    cache_dir = _cache_dir(app)
    if not cache_dir or not cache_dir.is_dir():
        return set()
    cache, out = get_cache(str(cache_dir)), set()
    for doc in docs & set(env.all_docs):
        try:
            record = cache.match_cache_notebook(nbformat.read(env.doc2path(doc), as_version=4))
        except (KeyError, OSError, ValueError):
            continue
        executed = record.created.replace(tzinfo=timezone.utc).timestamp() * 1e6  # Sphinx reads in microseconds
        if executed > env.all_docs[doc]:
            out.add(doc)
    return out


def _on_env_get_updated(app, env) -> list[str]:
    """Renumber the figures (tables, code blocks) of `chN_*` documents as (N, 1), (N, 2), ... in page order."""
    changed = []
    for docname, by_type in env.toc_fignumbers.items():
        match = re.match(r"ch(\d+)_", docname.rsplit("/", 1)[-1])
        if not match:
            continue
        for figtype, numbers in by_type.items():
            renumbered = {fid: (int(match[1]), k + 1) for k, fid in enumerate(sorted(numbers, key=numbers.get))}
            if renumbered != numbers:
                by_type[figtype] = renumbered
                changed.append(docname)
    return sorted(set(changed))


# ---------------------------------------------------------------------------------------------------------------
# The claims table


class claims_table(nodes.General, nodes.Element):
    """Placeholder for a claims table; `folder` holds the absolute path of the results files, `kind` is 'glance'
    (the claims at a glance) or 'detail' (the claims in detail)."""


class ClaimsDirective(SphinxDirective):
    """```{diffgen-claims} [FOLDER]``` -- the claims at a glance from FOLDER/*.results.json (default: the page's
    folder)."""

    optional_arguments = 1
    kind = "glance"

    def run(self):
        here = Path(self.env.doc2path(self.env.docname)).parent
        node = claims_table(folder=str((here / (self.arguments[0] if self.arguments else ".")).resolve()),
                            kind=self.kind)
        if not hasattr(self.env, "diffgen_claims_docs"):
            self.env.diffgen_claims_docs = set()
        self.env.diffgen_claims_docs.add(self.env.docname)
        return [node]


class ClaimsDetailDirective(ClaimsDirective):
    """```{diffgen-claims-detail} [FOLDER]``` -- every claim's rows in detail, one dropdown per row."""

    kind = "detail"


SUMMARY_CLASS = "diffgen-summary"  # an admonition of a chapter with this class gets the chapter's verdicts, in place
SUMMARY_PLACEHOLDER = "are filled in here when the book is built"  # of its paragraph that says this (JupyterLab
# shows that paragraph: a notebook's verdicts come at its end)
STATIC = Path(__file__).resolve().parent / "static"  # diffgen.css: verdict colours, the tables' layout


def _on_env_purge_doc(app, env, docname) -> None:
    getattr(env, "diffgen_claims_docs", set()).discard(docname)


def _on_env_merge_info(app, env, docnames, other) -> None:
    env.diffgen_claims_docs = getattr(env, "diffgen_claims_docs", set()) | getattr(other, "diffgen_claims_docs", set())


def _on_doctree_resolved(app, doctree, docname) -> None:
    for node in list(doctree.findall(claims_table)):
        make = glance_nodes if node["kind"] == "glance" else detail_nodes
        node.replace_self(make(app, docname, Path(node["folder"])))
    for box in list(doctree.findall(nodes.admonition)):
        if SUMMARY_CLASS in box["classes"]:  # a chapter's summary: its placeholder paragraph gives way to the rows
            placeholder = [p for p in box.findall(nodes.paragraph) if SUMMARY_PLACEHOLDER in p.astext()]
            for p in placeholder:
                p.parent.remove(p)
            box += summary_nodes(app, docname, Path(app.env.doc2path(docname)).parent)
    for raw in doctree.findall(nodes.raw):  # the to_jshtml sliders' CDN stylesheet (see the module docstring)
        if "format" in raw and "html" in raw["format"] and _FONT_AWESOME_CDN.search(raw.astext()):
            raw[:] = [nodes.Text(_FONT_AWESOME_CDN.sub("", raw.astext()))]


_FONT_AWESOME_CDN = re.compile(r'<link[^>]*href="https?://[^"]*font-awesome[^"]*"[^>]*>\s*')


def _local_mathjax() -> Path | None:
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    return Path(jupyter_server_mathjax.__file__).resolve().parent / "static"


PRESET_BANNER = ('<span class="diffgen-preset">A build at the {preset} preset</span>: every chapter ran with the '
                 "parameters of <code>diffgen run --preset {preset}</code>, not the book's; its numbers check that "
                 "the book builds, not the paper's claims.")


def _on_config_inited(app, config) -> None:
    config.html_static_path = [*config.html_static_path, str(STATIC)]
    if config.diffgen_preset != "default":
        config.html_theme_options = {**config.html_theme_options,
                                     "announcement": PRESET_BANNER.format(preset=config.diffgen_preset)}
    if _local_mathjax():
        config.mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"  # the config the package ships
        config.mathjax2_config = {
            # MathJax 2 spelling of what myst sets for MathJax 3: typeset math inside sections marked as ignored
            "tex2jax": {"processClass": "tex2jax_process|mathjax_process|math|output_area",
                        "ignoreClass": "tex2jax_ignore|mathjax_ignore"},
            # the package ships the STIX-Web fonts only (as Jupyter's own notebook configured it)
            "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "preferredFont": None, "imageFont": None},
            # the hidden MathML copy for screen readers asks for TeX fonts the package does not ship (404s offline);
            # the MathJax menu still shows each formula as MathML
            "menuSettings": {"assistiveMML": False},
            "messageStyle": "none",  # no "Loading [MathJax]..." box over the page
        }


def _on_html_page_context(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for script in scripts:
        key = (str(getattr(script, "filename", script) or ""),  # the same inline script comes as None and ''
               repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique  # in place: handlers after this one (MathJax's) add to the same list


def _on_build_finished(app, exception) -> None:
    source = _local_mathjax()
    if exception is None and source and app.builder.format == "html":
        shutil.copytree(source, Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def setup(app):
    os.environ["DIFFGEN_HEADLESS"] = "1"
    app.add_config_value("diffgen_preset", "default", "env")  # set by `diffgen book --preset P --build-dir DIR`
    app.connect("builder-inited", _on_builder_inited, priority=900)  # after myst-nb has resolved the cache path
    app.connect("env-get-outdated", _on_env_get_outdated)
    app.connect("config-inited", _on_config_inited)
    app.connect("build-finished", _on_build_finished)
    app.connect("html-page-context", _on_html_page_context, priority=900)  # after the handlers that add scripts
    app.add_node(claims_table)
    app.add_directive("diffgen-claims", ClaimsDirective)
    app.add_directive("diffgen-claims-detail", ClaimsDetailDirective)
    app.add_css_file("diffgen.css")
    app.connect("env-purge-doc", _on_env_purge_doc)
    app.connect("env-merge-info", _on_env_merge_info)
    app.connect("doctree-resolved", _on_doctree_resolved)
    app.connect("env-get-updated", _on_env_get_updated, priority=900)  # after Sphinx has assigned the numbers
    return {"version": __version__, "parallel_read_safe": True, "parallel_write_safe": True}
