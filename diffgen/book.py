"""Layer 12: the Sphinx extension of the book build (listed in _config.yml): headless execution, library-aware caching, the
claims table, per-chapter figure numbers and pages that need no network.

- Sets DIFFGEN_HEADLESS=1 before myst-nb starts kernels, so chapters show their static figures instead of
  instantiating ipywidgets (which stalls headless nbclient intermittently: jupyter/nbclient#312, nteract/papermill#723).
- Serves MathJax from the local `jupyter-server-mathjax` package (copied into _static/mathjax), so math renders in
  the built HTML without a network; the default configuration loads it from a CDN.
- The `{diffgen-claims}` directive (the introduction's claims table): a placeholder while reading, replaced in the
  write phase (`doctree-resolved`, after every chapter has been executed and has written its
  `<chapter>.results.json`) by a table built with diffgen.report, the formatting `diffgen report` uses. The documents
  holding it are re-read on every build, so the table never shows an earlier build's numbers.
- Drops the font-awesome 4 stylesheet that matplotlib's `to_jshtml` frame sliders link from a CDN: the theme's own
  Font Awesome 6 (served locally) draws the slider buttons, so the pages request nothing from the network.
- Numbers figures per chapter as "Figure 2.1", "Figure 2.2", ... in `book/ch2_*` (the chapter number from the file
  name), for captions and `{numref}` alike; Sphinx alone numbers them through the whole book unless the table of
  contents is numbered.
- Lists each script once per page: sphinx-thebe registers its inline configuration twice under jupyter-book, and the
  second copy redeclares a `const` (an error in every page's console).
- jupyter-cache keys a notebook by its own code cells only, and Sphinx re-reads only documents whose files changed.
  When diffgen's source hash differs from the one stamped in the execution cache, this wipes the cache and marks
  every notebook outdated, so a library change re-executes every chapter.
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
from sphinx.errors import NoUri
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from .provenance import VERSION as __version__
from .runner import book_stamp, refresh_execution_cache


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
    if getattr(env, "diffgen_stale", False):
        reread |= {doc for doc in env.found_docs if str(env.doc2path(doc)).endswith(".ipynb")}
    return sorted(reread - set(added) - set(removed))


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
    """Placeholder for the claims table; `folder` holds the absolute path of the results files."""


class ClaimsDirective(SphinxDirective):
    """```{diffgen-claims} [FOLDER]``` -- the claims table from FOLDER/*.results.json (default: the page's folder)."""

    optional_arguments = 1

    def run(self):
        here = Path(self.env.doc2path(self.env.docname)).parent
        node = claims_table(folder=str((here / (self.arguments[0] if self.arguments else ".")).resolve()))
        if not hasattr(self.env, "diffgen_claims_docs"):
            self.env.diffgen_claims_docs = set()
        self.env.diffgen_claims_docs.add(self.env.docname)
        return [node]


def _on_env_purge_doc(app, env, docname) -> None:
    getattr(env, "diffgen_claims_docs", set()).discard(docname)


def _on_env_merge_info(app, env, docnames, other) -> None:
    env.diffgen_claims_docs = getattr(env, "diffgen_claims_docs", set()) | getattr(other, "diffgen_claims_docs", set())


def _on_doctree_resolved(app, doctree, docname) -> None:
    for node in list(doctree.findall(claims_table)):
        node.replace_self(_claims_nodes(app, docname, Path(node["folder"])))
    for raw in doctree.findall(nodes.raw):  # the to_jshtml sliders' CDN stylesheet (see the module docstring)
        if "format" in raw and "html" in raw["format"] and _FONT_AWESOME_CDN.search(raw.astext()):
            raw[:] = [nodes.Text(_FONT_AWESOME_CDN.sub("", raw.astext()))]


_FONT_AWESOME_CDN = re.compile(r'<link[^>]*href="https?://[^"]*font-awesome[^"]*"[^>]*>\s*')


def _claims_nodes(app, docname: str, folder: Path) -> list[nodes.Node]:
    from . import report

    try:
        runs, rows = report.load_run(folder, missing_ok=True)
    except report.ReportError as e:
        logging.getLogger(__name__).warning(f"claims table: {e}", location=docname)
        return [nodes.paragraph(text=f"The claims table could not be built: {e}")]
    table = nodes.table(classes=["diffgen-claims"])
    widths = (30, 9, 51, 10)
    group = nodes.tgroup(cols=len(widths))
    table += group
    group += [nodes.colspec(colwidth=w) for w in widths]
    head = nodes.thead()
    head += _table_row([nodes.paragraph(text=t) for t in
                        ("The paper claims (source)", "Chapter",
                         "We measured: value [95% CI] (expected; training seeds)", "Verdict")])
    body = nodes.tbody()
    for claim_group in report.by_claim(rows).values():
        heading, statement = report.group_title(claim_group)
        claim = nodes.paragraph()
        claim += [nodes.strong(text=heading), nodes.Text(" " + statement)]
        chapters = nodes.paragraph()
        for k, chapter in enumerate(claim_group.chapters):
            chapters += [nodes.Text(", ")] * (k > 0) + [_chapter_link(app, docname, chapter)]
        body += _table_row([claim, chapters, _measured(claim_group.rows), nodes.paragraph(text=claim_group.verdict)])
    group += [head, body]
    files = ", ".join(f"{run.chapter}.results.json" for run in runs) or "no results file yet"
    note = nodes.paragraph()
    note += [nodes.Text(f"{report.summary(rows)}. A claim's verdict rests on the rows that test it as the paper "
                        "states it; rows marked \"ours\" extend it with checks of our own and keep their own verdict. "
                        f"Numbers from {files}, written by each chapter when it was last executed (the build "
                        "re-executes a chapter when it or diffgen changes); "),
             nodes.literal(text="diffgen report"), nodes.Text(" prints the same table.")]
    return [table, note]


def _measured(rows) -> nodes.Node:
    from . import report

    items = nodes.bullet_list()
    for r in rows:
        para = nodes.paragraph()
        if r.verdict == report.NOT_RUN:
            para += nodes.emphasis(text="not run")
        else:
            if not r.is_paper:
                para += [nodes.strong(text=f"ours ({r.claim}): " if report.is_reconstruction(r.claim) else "ours: "),
                         nodes.Text(f"{r.statement} ")]
            seeds = f"; {r.seeds} seed{'s' * (r.seeds != 1)}" if r.seeds else ""
            para += [nodes.Text(f"{r.metric}: "), nodes.strong(text=report.fmt_number(r.value)),
                     nodes.Text((" " + report.fmt_ci(r.ci)) * (r.ci is not None) +
                                f" (expected {r.expected}{seeds}): "),
                     nodes.emphasis(text=r.verdict)]
        items += nodes.list_item("", para)
    return items if len(rows) > 1 else items[0][0]


def _chapter_link(app, docname: str, chapter: str) -> nodes.Node:
    target = next((d for d in sorted(app.env.found_docs) if d.rsplit("/", 1)[-1].startswith(chapter + "_")), None)
    if target is None:
        return nodes.Text(chapter)
    try:
        uri = app.builder.get_relative_uri(docname, target)
    except NoUri:
        return nodes.Text(chapter)
    return nodes.reference("", chapter, internal=True, refuri=uri)


def _table_row(cells) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += content
        row += entry
    return row


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
    app.connect("env-purge-doc", _on_env_purge_doc)
    app.connect("env-merge-info", _on_env_merge_info)
    app.connect("doctree-resolved", _on_doctree_resolved)
    app.connect("env-get-updated", _on_env_get_updated, priority=900)  # after Sphinx has assigned the numbers
    return {"version": __version__, "parallel_read_safe": True, "parallel_write_safe": True}
