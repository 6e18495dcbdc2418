"""The claims on the book's pages, as docutils nodes (diffgen.commands.book puts them in place): the claims at a
glance (one line per paper claim, with a figure of every row against its threshold), every row in detail (one
dropdown per row) and a chapter's summary of its claims' verdicts."""
from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx.errors import NoUri
from sphinx.util import logging


def glance_nodes(app, docname: str, folder: Path) -> list[nodes.Node]:
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
    points = sorted({(r.chapter, r.sweep) for r in rows if r.sweep is not None})
    if points:
        files += f" and {len(points)} current sweep points (book/sweeps/: " + ", ".join(
            f"{chapter} {point}" for chapter, point in points) + ")"
    note = nodes.paragraph(classes=["diffgen-glance-note"])
    note += [nodes.Text(f"{report.summary(rows)}. A claim's verdict rests on the rows that test it as the paper "
                        "states it, read as the verdict says (\"in every measured case\" or \"there is a regime "
                        "where\"); rows marked \"ours\" keep their own verdict. Numbers from "
                        f"{files}, written by each chapter run when it was last executed; "),
             nodes.literal(text="diffgen report"), nodes.Text(" prints the same table, and "),
             _doc_link(app, docname, "claims_in_detail", "the claims in detail"),
             nodes.Text(" lists every row with its interval, rule, seeds, premise and quality gate.")]
    wide = nodes.container(classes=["full-width", "diffgen-glance-block"])  # the theme's margin, beside the text
    wide += [table, note, _figure(groups)]
    return [wide]


def _glance_row(app, docname: str, group) -> nodes.row:
    from ..claims import rowtext
    from . import report

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
        where = f" (sweep {headline.sweep})" if headline.sweep else ""
        number += [nodes.strong(text=rowtext.measured(headline.data, seeds=False)),
                   nodes.inline(text=rowtext.label(headline.data) + where, classes=["diffgen-headline-label"])]
    return _table_row([name, verdict, number, _links(app, docname, group)])


def _verdict_node(verdict: str) -> nodes.paragraph:
    from ..claims.rowtext import CSS, MARKS, kind

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

    from ..base import style
    from ..claims import claimplots, rowtext
    from . import report

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


def detail_nodes(app, docname: str, folder: Path) -> list[nodes.Node]:
    """Per paper claim (then the checks): its statement, how it is read, its verdict and region, and every row in
    a dropdown with its full detail (diffgen.claims.rowtext.details)."""
    import html

    from ..claims import rowtext
    from . import report

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
        blocks = [f"<p><em>not run</em> (no {html.escape(r.chapter)}.results.json)</p>" if r.data is None else
                  _row_html(r, "diffgen-row") for r in group.rows]
        # the sweep points that count for a claim read "in every measured case" (a regime's are named under Where)
        counted = [r for r in group.swept if group.quantifier != report.EXISTS and r.verdict not in
                   (rowtext.PREMISE, rowtext.NOT_MEASURABLE)]
        if counted:
            blocks.append(f"<p>Counted from the sweeps' points ({len(counted)} evaluated row"
                          f"{'s' * (len(counted) != 1)}):</p>")
            blocks += [_row_html(r, "diffgen-row diffgen-swept") for r in counted]
        section += nodes.raw("", "\n".join(blocks), format="html")
        out.append(section)
    return out


def _row_html(r, classes: str) -> str:
    """One row as a dropdown: verdict, where it was measured (chapter, sweep point), name and value; its detail."""
    import html

    from ..claims import rowtext

    lines = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rowtext.details(r.data))
    state = rowtext.kind(r.verdict)
    where = r.chapter + (f", sweep {r.sweep}" if r.sweep else "")
    return (f'<details class="{classes}"><summary><span class="diffgen-verdict diffgen-'
            f'{rowtext.CSS.get(state, "other")}">{rowtext.MARKS.get(state, "")} {html.escape(r.verdict)}'
            f'</span> {html.escape(where)} · {html.escape(rowtext.label(r.data))}'
            f'{" (ours)" if not r.is_paper else ""}: {html.escape(rowtext.measured(r.data))}</summary>'
            f'<dl class="diffgen-detail">{lines}</dl></details>')


def summary_nodes(app, docname: str, folder: Path) -> list[nodes.Node]:
    """A chapter's finding and verdicts, from its results file (the chapter wrote it when it executed): its computed
    reading (the file's `finding`), where it wrote one; per paper claim it measures, the claim's verdict on this
    chapter's rows as the claim is worded, then each of those rows in one line (verdict, name, value and interval);
    our own rows counted in one line (each is under the chapter's "Verdict")."""
    from ..claims import rowtext
    from ..claims.results import read_results, results_path
    from . import report

    chapter = docname.rsplit("/", 1)[-1].split("_")[0]
    path = results_path(folder, chapter)
    if not path.is_file():
        return [nodes.paragraph(text=f"{chapter} has not been executed yet: no {path.name}.")]
    doc = read_results(path)
    rows = [r for r in report.rows_for([{"chapter": chapter, **doc}]) if r.verdict != report.NOT_RUN]
    finding = []
    if doc.get("finding"):  # the chapter's computed reading comes first, its rows under it
        finding = [nodes.paragraph()]
        finding[0] += [nodes.strong(text="What we found."), nodes.Text(" " + doc["finding"])]
    items = nodes.bullet_list(classes=["diffgen-summary-rows"])
    ours = []
    try:  # the book's verdict, which counts the sweeps' points too
        book = report.by_claim(report.load_run(folder, missing_ok=True)[1])
    except report.ReportError:
        book = {}
    for group in report.by_claim(rows).values():
        ours += group.ours
        if not group.paper:
            continue
        para = nodes.paragraph()
        para += [_verdict_node(group.verdict)[0], nodes.Text(" "), nodes.strong(text=group.claim),
                 nodes.Text(f" {report.PAPER_CLAIMS[group.claim].short} "
                            f"({report.QUANTIFIER_WORDS[group.quantifier]})")]
        overall = book.get(group.claim)
        if overall is not None and overall.swept and overall.verdict != group.verdict:
            para += [nodes.Text("; with the sweeps' points ("),
                     _doc_link(app, docname, "where_claims_hold", "where the claims hold"), nodes.Text("): "),
                     _verdict_node(overall.verdict)[0]]
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
    return finding + [items]
