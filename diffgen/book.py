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
        make = _claims_nodes if node["kind"] == "glance" else _detail_nodes
        node.replace_self(make(app, docname, Path(node["folder"])))
    for box in list(doctree.findall(nodes.admonition)):
        if SUMMARY_CLASS in box["classes"]:  # a chapter's summary: its placeholder paragraph gives way to the rows
            placeholder = [p for p in box.findall(nodes.paragraph) if SUMMARY_PLACEHOLDER in p.astext()]
            for p in placeholder:
                p.parent.remove(p)
            box += _summary_nodes(app, docname, Path(app.env.doc2path(docname)).parent)
    for raw in doctree.findall(nodes.raw):  # the to_jshtml sliders' CDN stylesheet (see the module docstring)
        if "format" in raw and "html" in raw["format"] and _FONT_AWESOME_CDN.search(raw.astext()):
            raw[:] = [nodes.Text(_FONT_AWESOME_CDN.sub("", raw.astext()))]


_FONT_AWESOME_CDN = re.compile(r'<link[^>]*href="https?://[^"]*font-awesome[^"]*"[^>]*>\s*')


def _claims_nodes(app, docname: str, folder: Path) -> list[nodes.Node]:
    """The claims at a glance: one line per paper claim (name, source, verdict with how it reads the claim, the
    headline number, where it is measured and its detail), the figure of every paper row against its threshold, and
    the summary line of `diffgen report`."""
    from . import report

    try:
        runs, rows = report.load_run(folder, missing_ok=True)
    except report.ReportError as e:
        logging.getLogger(__name__).warning(f"claims table: {e}", location=docname)
        return [nodes.paragraph(text=f"The claims table could not be built: {e}")]
    groups = report.by_claim(rows)
    table = nodes.table(classes=["diffgen-claims", "diffgen-glance"])
    widths = (34, 26, 22, 18)
    group = nodes.tgroup(cols=len(widths))
    table += group
    group += [nodes.colspec(colwidth=w) for w in widths]
    head = nodes.thead()
    head += _table_row([nodes.paragraph(text=t) for t in
                        ("The paper claims (source)", "Verdict, read as", "Headline [95% CI]", "Measured in")])
    body = nodes.tbody()
    for claim_group in groups.values():
        body += _glance_row(app, docname, claim_group)
    group += [head, body]
    files = ", ".join(f"{run.chapter}.results.json" for run in runs) or "no results file yet"
    note = nodes.paragraph(classes=["diffgen-glance-note"])
    note += [nodes.Text(f"{report.summary(rows)}. A claim's verdict rests on the rows that test it as the paper "
                        "states it, read as the verdict says (\"in every measured case\" or \"there is a regime "
                        "where\"); rows marked \"ours\" keep their own verdict. Numbers from "
                        f"{files}, written by each chapter when it was last executed; "),
             nodes.literal(text="diffgen report"), nodes.Text(" prints the same table, and "),
             _doc_link(app, docname, "claims_in_detail", "the claims in detail"),
             nodes.Text(" lists every row with its interval, rule, seeds, premise and quality gate.")]
    wide = nodes.container(classes=["full-width", "diffgen-glance-block"])  # the theme's margin, beside the text
    wide += [table, note, _figure(groups)]
    return [wide]


def _glance_row(app, docname: str, group) -> nodes.row:
    from . import report, rowtext

    if group.claim == report.CHECKS:
        name = nodes.paragraph()
        name += [nodes.strong(text="R1-R%d" % len(group.ours)), nodes.Text(" our reconstruction checks "),
                 nodes.inline(text="(ours)", classes=["diffgen-source"])]
        return _table_row([name, _verdict_node(group.verdict),
                           nodes.paragraph(text=f"{sum(r.verdict == 'holds' for r in group.ours)} of "
                                                f"{len(group.ours)} hold"),
                           _links(app, docname, group)])
    paper = report.PAPER_CLAIMS[group.claim]
    name = nodes.paragraph()
    name += [nodes.strong(text=group.claim), nodes.Text(" " + paper.short + " "),
             nodes.inline(text=f"({paper.source})", classes=["diffgen-source"])]
    verdict = _verdict_node(group.verdict)
    verdict += nodes.inline(text=report.QUANTIFIER_WORDS[paper.quantifier], classes=["diffgen-quantifier"])
    headline = group.headline
    number = nodes.paragraph()
    if headline is None:
        number += nodes.emphasis(text="not run")
    else:
        number += [nodes.strong(text=rowtext.measured(headline.data, seeds=False)),
                   nodes.inline(text=rowtext.label(headline.data), classes=["diffgen-headline-label"])]
    return _table_row([name, verdict, number, _links(app, docname, group)])


def _verdict_node(verdict: str) -> nodes.paragraph:
    from .rowtext import CSS, MARKS, kind

    para = nodes.paragraph()
    para += nodes.inline(text=f"{MARKS.get(kind(verdict), '')} {verdict}",
                         classes=["diffgen-verdict", "diffgen-" + CSS.get(kind(verdict), "other")])
    return para


def _links(app, docname: str, group) -> nodes.paragraph:
    """The chapter section that measures the claim (its label claim-cN) and the claim's detail."""
    from . import report

    para = nodes.paragraph()
    if group.claim != report.CHECKS:
        para += _label_link(app, docname, f"claim-{group.claim.lower()}", ", ".join(group.chapters))
        para += nodes.Text(" · ")
    para += _doc_link(app, docname, "claims_in_detail", "detail", anchor=_detail_id(group.claim))
    return para


def _detail_id(claim: str) -> str:
    return f"detail-{claim.lower()}"


def _figure(groups) -> nodes.Node:
    """Every paper row's interval against its threshold (claimplots.claims_figure), as an inline PNG."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import claimplots, report, rowtext, style

    entries = [(f"{r.claim} · {rowtext.label(r.data)}" if r.data else f"{r.claim}", r.data, r.verdict)
               for g in groups.values() if g.claim != report.CHECKS for r in g.paper]
    with matplotlib.rc_context():
        style.use()
        fig = claimplots.claims_figure(entries)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    caption = ("Every row that tests a paper claim: its value and 95% interval (the bar), in the row's own units, "
               "against the threshold of its rule (dashed; the side where the rule holds is shaded green), in the "
               "colour of its verdict; hollow: premise not reached, so the row does not count. Look for bars that "
               "cross their dashed line: those rows decide nothing firmly at this budget.")
    return nodes.raw("", f'<figure class="diffgen-glance-figure"><img alt="Every paper row against its threshold" '
                         f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>',
                     format="html")


def _label_link(app, docname: str, label: str, text: str) -> nodes.Node:
    """A link to a MyST label (e.g. `(claim-c4)=` in a chapter), else to the chapter page named `text` (a book
    without the labels; tests/test_book.py requires them in this one)."""
    found = app.env.domaindata["std"]["labels"].get(label)
    if not found:
        return _doc_link(app, docname, text.split(",")[0], text, prefix=True)
    target, anchor, _ = found
    try:
        uri = app.builder.get_relative_uri(docname, target) + "#" + anchor
    except NoUri:
        return nodes.Text(text)
    return nodes.reference("", text, internal=True, refuri=uri)


def _doc_link(app, docname: str, stem: str, text: str, anchor: str = "", prefix: bool = False) -> nodes.Node:
    """A link to the document named `stem` (prefix: whose name starts with `stem_`, a chapter: ch3 -> ch3_...)."""
    name = lambda d: d.rsplit("/", 1)[-1]  # noqa: E731
    target = next((d for d in sorted(app.env.found_docs) if name(d) == stem or prefix and
                   name(d).startswith(stem + "_")), None)
    if target is None:
        return nodes.Text(text)
    try:
        uri = app.builder.get_relative_uri(docname, target) + (f"#{anchor}" if anchor else "")
    except NoUri:
        return nodes.Text(text)
    return nodes.reference("", text, internal=True, refuri=uri)


def _table_row(cells) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += content
        row += entry
    return row


# ---------------------------------------------------------------------------------------------------------------
# The claims in detail, and each chapter's summary


def _detail_nodes(app, docname: str, folder: Path) -> list[nodes.Node]:
    """Per paper claim (then the checks): its statement, how it is read, its verdict and region, and every row in
    a dropdown with its full detail (diffgen.rowtext.details)."""
    import html

    from . import report, rowtext

    try:
        _, rows = report.load_run(folder, missing_ok=True)
    except report.ReportError as e:
        logging.getLogger(__name__).warning(f"claims in detail: {e}", location=docname)
        return [nodes.paragraph(text=f"The claims could not be read: {e}")]
    out = []
    for group in report.by_claim(rows).values():
        heading, statement = report.group_title(group)
        section = nodes.section(ids=[_detail_id(group.claim)])
        section += nodes.title(text=heading if group.claim == report.CHECKS else
                               f"{group.claim} · {report.PAPER_CLAIMS[group.claim].short}")
        para = nodes.paragraph()
        para += [_verdict_node(group.verdict)[0], nodes.Text(f" {statement}")]
        section += para
        for extra in filter(None, [report.reading(group), report.region(group) and
                                   "Where: " + report.region(group)]):
            section += nodes.paragraph(text=extra[0].upper() + extra[1:])
        blocks = []
        for r in group.rows:
            if r.data is None:
                blocks.append(f"<p><em>not run</em> (no {html.escape(r.chapter)}.results.json)</p>")
                continue
            lines = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in
                            rowtext.details(r.data))
            state = rowtext.kind(r.verdict)
            blocks.append(
                f'<details class="diffgen-row"><summary><span class="diffgen-verdict diffgen-'
                f'{rowtext.CSS.get(state, "other")}">{rowtext.MARKS.get(state, "")} {html.escape(r.verdict)}'
                f'</span> {html.escape(r.chapter)} · {html.escape(rowtext.label(r.data))}'
                f'{" (ours)" if not r.is_paper else ""}: {html.escape(rowtext.measured(r.data))}</summary>'
                f'<dl class="diffgen-detail">{lines}</dl></details>')
        section += nodes.raw("", "\n".join(blocks), format="html")
        out.append(section)
    return out


def _summary_nodes(app, docname: str, folder: Path) -> list[nodes.Node]:
    """A chapter's verdicts, from its results file (the chapter wrote it when it executed): per paper claim it
    measures, the claim's verdict on this chapter's rows as the claim is worded, then each of those rows in one line
    (verdict, name, value and interval); our own rows counted in one line (each is under the chapter's "Verdict")."""
    from . import report, rowtext
    from .results import read_results, results_path

    chapter = docname.rsplit("/", 1)[-1].split("_")[0]
    path = results_path(folder, chapter)
    if not path.is_file():
        return [nodes.paragraph(text=f"{chapter} has not been executed yet: no {path.name}.")]
    rows = [r for r in report.rows_for([{"chapter": chapter, **read_results(path)}]) if r.verdict != report.NOT_RUN]
    items = nodes.bullet_list(classes=["diffgen-summary-rows"])
    ours = []
    for group in report.by_claim(rows).values():
        ours += group.ours
        if not group.paper:
            continue
        para = nodes.paragraph()
        para += [_verdict_node(group.verdict)[0], nodes.Text(" "), nodes.strong(text=group.claim),
                 nodes.Text(f" {report.PAPER_CLAIMS[group.claim].short} "
                            f"({report.QUANTIFIER_WORDS[group.quantifier]})")]
        lines = nodes.bullet_list()
        for r in group.paper:
            line = nodes.paragraph()
            line += [_verdict_node(r.verdict)[0],
                     nodes.Text(f" {rowtext.label(r.data)}: {rowtext.measured(r.data, seeds=False)}")]
            lines += nodes.list_item("", line)
        items += nodes.list_item("", para, lines)
    if ours:
        para = nodes.paragraph()
        para += nodes.Text(f"Our own rows ({len(ours)}): {rowtext.tally(ours)}.")
        items += nodes.list_item("", para)
    return [items]


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
