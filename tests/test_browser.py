"""The built book in a real browser: Debian's chromium driven by Playwright, against the built HTML served on
localhost with every other host blocked (the book must work offline), at 1280 px wide: every page loads, types its
math, moves its sliders, stays within HEIGHT pixels, keeps its tables inside their column with no cell narrower
than 100 px, shows its figures at 90% of their size or more on an opaque background; the claims at a glance sit in
the first screens of the introduction, say what `diffgen report` says and link to anchors that exist; a dropdown
opens on a row's full detail.

Against the build DIFFGEN_BROWSER_HTML names (`make browser-test` sets it to _build/html after `make book`), else
against the smoke build of the real book that `make test` makes (conftest.smoke_book: the layout is the same). Never
runs `playwright install`: the browser is the system's chromium ($DIFFGEN_CHROMIUM, default /usr/bin/chromium;
without it `make test` skips these tests outside CI and fails in CI). Screenshots of every page go to
<html>/../screenshots/ (CI keeps them as artifacts).
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
HTML = os.environ.get("DIFFGEN_BROWSER_HTML")
# ipywidgets' text/plain reprs, shown when a widget has no static fallback
WIDGET_REPR = re.compile(r"\b(VBox|HBox|interactive|IntSlider|FloatSlider|SelectionSlider|Dropdown|Output)\("
                         r"|Loading widget|Error displaying widget")

HEIGHT = 12_000  # px: the tallest page a reader scrolls through, at 1280 px wide
WIDTH = 1280
pytestmark = [pytest.mark.notebook("without DIFFGEN_BROWSER_HTML, the smoke build of the real book (minutes)"),
              pytest.mark.processes("a headless chromium")]


def toc_pages() -> list[str]:
    """The pages of _toc.yml in reading order, as paths relative to the HTML root (book/intro.html, ...)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]] + [entry["file"] for entry in toc.get("chapters", [])]
    files += [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [f"{f}.html" for f in files]


PAGES = toc_pages()


@pytest.fixture(scope="module")
def html_dir(request) -> Path:
    path = Path(HTML).resolve() if HTML else request.getfixturevalue("smoke_book").root / "_build" / "html"
    assert (path / "index.html").is_file(), f"no built book at {path}: run `make book` first"
    return path


@pytest.fixture(scope="module")
def server(html_dir):
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def screenshots(html_dir) -> Path:
    path = html_dir.parent / "screenshots"
    path.mkdir(exist_ok=True)
    return path


class Visit:
    """A page opened with every non-localhost request aborted and recorded, and every browser error recorded."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": WIDTH, "height": 800}, service_workers="block")
        self.external, self.errors, self.failed = [], [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and not _benign(m) and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("response", lambda r: r.status >= 400 and not r.url.endswith("/favicon.ico")
                     and self.failed.append(f"{r.status} {r.url}"))  # the browser asks for a favicon by itself
        self.page.on("requestfailed", lambda r: urlparse(r.url).hostname in ("127.0.0.1", "localhost")
                     and r.url not in self.external and self.failed.append(f"failed {r.url}"))
        self.page.goto(url, wait_until="load")

    def _route(self, route):
        if _local(route.request.url):
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def close(self):
        self.context.close()


def _benign(message) -> bool:
    """Console errors that are no fault of the book: the favicon the browser asks for by itself, and MathJax 2's
    HTML-CSS output, which declares its width-measuring font MathJax_Blank at `about:blank` (refused by Chrome)."""
    url = message.location.get("url", "")
    return url.endswith("/favicon.ico") or url == "about:blank" or "Access to font at 'about:blank'" in message.text


def _local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob", "about") or parsed.hostname in ("127.0.0.1", "localhost")


@pytest.fixture
def visit(browser, server):
    opened = []

    def open_page(path: str) -> Visit:
        opened.append(Visit(browser, urljoin(server, path)))
        return opened[-1]

    yield open_page
    for v in opened:
        v.close()


# Sphinx's formula containers (MathJax's own output also has spans of class "math", without "notranslate")
UNTYPESET = """() => Array.from(document.querySelectorAll('.math.notranslate'))
    .filter(m => !(m.querySelector('script[type^="math/tex"]')
                   && m.querySelector('.MathJax, .MathJax_Display, .MathJax_SVG, .MathJax_CHTML, mjx-container')))
    .map(m => m.textContent.slice(0, 60))"""


def _wait_for_math(page) -> list[str]:
    """Wait (up to a minute) until MathJax 2 (served from _static/mathjax) has typeset every formula; returns the
    formulas still untypeset."""
    page.wait_for_function("() => window.MathJax && window.MathJax.Hub && window.MathJax.isReady", timeout=60_000)
    page.evaluate("() => new Promise(resolve => MathJax.Hub.Queue(() => resolve(true)))")
    try:
        page.wait_for_function(f"() => ({UNTYPESET})().length === 0", timeout=60_000)
    except Exception:  # noqa: BLE001 - reported by the caller
        pass
    return page.evaluate(UNTYPESET)


@pytest.mark.parametrize("path", PAGES)
def test_page(visit, screenshots, path):
    v = visit(path)
    page = v.page
    text = page.inner_text("main")
    assert len(text) > 200, f"{path}: the page has almost no content"

    # no error output from the chapters, no tracebacks, no widget without its static fallback
    assert "Traceback" not in page.content(), path
    errors = page.locator(".cell_output .stderr, .cell_output .traceback, .cell_output .error, "
                          ".output.stderr, .output.traceback, .output.error, .system-message, .problematic")
    assert errors.count() == 0, f"{path}: error output: {errors.first.inner_text()[:500]}"
    assert not WIDGET_REPR.search(text), f"{path}: raw widget text {WIDGET_REPR.search(text).group(0)!r}"
    assert page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count() == 0, \
        f"{path}: a live widget in the static page (its callbacks cannot run here)"

    # every image has loaded
    page.evaluate("() => Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
    broken = page.evaluate("() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                           ".map(i => (i.getAttribute('src') || '').slice(0, 80))")
    assert not broken, f"{path}: images that did not load: {broken}"

    # math is typeset (no raw TeX left, no MathJax error)
    if page.locator(".math.notranslate").count():
        raw = _wait_for_math(page)
        assert not raw, f"{path}: math left untypeset: {raw[:5]}"
        assert page.locator(".MathJax_Error, merror, .mjx-merror").count() == 0, f"{path}: a MathJax error"

    # the precomputed frame sliders (matplotlib to_jshtml) change the displayed frame when moved
    for k in range(page.locator(".animation input[type=range]").count()):
        animation = page.locator(".animation").nth(k)
        animation.evaluate("el => { const d = el.closest('details'); if (d) d.open = true; }")  # a folded panel
        slider, frame = animation.locator("input[type=range]"), animation.locator("img").first
        before = frame.get_attribute("src")
        slider.scroll_into_view_if_needed()
        slider.focus()
        page.keyboard.press("End")  # a user's key press on the focused slider: fires its input event
        assert slider.input_value() == slider.get_attribute("max"), f"{path}: slider {k} did not move"
        assert frame.get_attribute("src") != before, f"{path}: moving slider {k} did not change the frame"
        page.keyboard.press("Home")
        assert frame.get_attribute("src") == before, f"{path}: slider {k} back at 0 shows another frame"

    page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = false; })")  # as it loads
    page.screenshot(path=str(screenshots / (path.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
    assert not v.errors, f"{path}: browser errors: {v.errors}"
    assert not v.failed, f"{path}: requests that failed: {v.failed}"
    assert not v.external, f"{path}: requests to the network (the book must work offline): {v.external}"
    _check_layout(page, path)


LAYOUT = """() => {
  const main = document.querySelector('main');
  const tables = Array.from(main.querySelectorAll('table')).map(t => {
    const box = t.closest('.pst-scrollable-table-container') || t.parentElement;
    const cells = Array.from(t.querySelectorAll('td, th')).map(c => c.getBoundingClientRect().width);
    return {over: t.scrollWidth - box.clientWidth, narrowest: Math.min(...cells),
            head: (t.querySelector('tr') || t).innerText.slice(0, 60)};
  });
  const images = Array.from(main.querySelectorAll('img')).filter(i => i.naturalWidth > 0 && i.offsetParent)
    .map(i => {
      const c = document.createElement('canvas');
      c.width = i.naturalWidth; c.height = i.naturalHeight;
      const g = c.getContext('2d');
      g.drawImage(i, 0, 0);
      const corners = [[0, 0], [c.width - 1, 0], [0, c.height - 1], [c.width - 1, c.height - 1]]
        .map(([x, y]) => g.getImageData(x, y, 1, 1).data[3]);
      return {src: (i.getAttribute('src') || '').slice(0, 60), scale: i.getBoundingClientRect().width / i.naturalWidth,
              opaque: Math.min(...corners)};
    });
  return {height: document.documentElement.scrollHeight, tables, images};
}"""


def _check_layout(page, path: str) -> None:
    """A page a reader reads to the end: at most HEIGHT px tall at 1280 px wide with its dropdowns folded; with
    them open, no table wider than its column, no cell narrower than 100 px; every figure shown at 80% of its size or more (a 10-point tick label at the book's
    110 dpi is 15.3 px: it keeps 12 px, 9 points) on an opaque background (no black text on the dark theme's
    background)."""
    height = page.evaluate(LAYOUT)["height"]  # as a reader meets the page: every dropdown folded
    assert height <= HEIGHT, f"{path}: {height} px tall at {WIDTH} px wide (at most {HEIGHT})"
    page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
    layout = page.evaluate(LAYOUT)  # and as one who opens every dropdown
    for t in layout["tables"]:
        assert t["over"] <= 1, f"{path}: a table {t['over']} px wider than its column: {t['head']!r}"
        assert t["narrowest"] >= 100, f"{path}: a cell {t['narrowest']:.0f} px wide (at least 100): {t['head']!r}"
    for image in layout["images"]:
        assert image["scale"] >= 0.8, f"{path}: a figure shown at {image['scale']:.0%} of its size: {image['src']}"
        assert image["opaque"] == 255, f"{path}: a figure with a transparent background: {image['src']}"


def test_navigation_reaches_every_chapter(visit, server):
    """From the landing page: the sidebar links every page of the table of contents, and the 'next' buttons walk
    through all of them in order."""
    v = visit("index.html")  # redirects to the root page
    page = v.page
    page.wait_for_url(re.compile(re.escape(PAGES[0]) + "$"))
    links = {urljoin(page.url, href).split("#")[0]
             for href in page.eval_on_selector_all(".bd-sidebar-primary a[href]", "as => as.map(a => a.href)")}
    assert {urljoin(server, p) for p in PAGES[1:]} <= links, f"sidebar misses {set(PAGES[1:]) - links}"
    walked = [page.url]
    while page.locator("a.right-next").count():
        page.locator("a.right-next").first.click()
        page.wait_for_load_state("load")
        walked.append(page.url)
    assert walked == [urljoin(server, p) for p in PAGES], walked
    assert not v.external, v.external


def test_the_claims_at_a_glance_say_what_diffgen_report_says_above_the_fold(visit, html_dir):
    """One line per claim, the last within the first 1.5 screens (1280 x 800) of the introduction, each verdict the
    one `diffgen report` gives on the build's results files, each link landing on an anchor that exists."""
    from diffgen.commands import report

    page = visit(PAGES[0]).page
    rows = page.locator("table.diffgen-glance tbody tr")
    claims = ["C1", "C2", "C3", "C4", "C5a", "C5b", "C6"]
    assert rows.count() == len(claims) + 1, "one line per paper claim, then the reconstruction checks"
    last = rows.nth(rows.count() - 1).bounding_box()
    assert last["y"] + last["height"] <= 1.5 * 800, f"the last line ends at {last['y'] + last['height']:.0f} px"
    groups = list(report.by_claim(report.load_run(html_dir.parents[1] / "book")[1]).values())
    for k, group in enumerate(groups):
        cells = rows.nth(k).locator("td")
        assert cells.nth(0).inner_text().split()[0] == (group.claim if group.claim != "checks" else "R1-R4")
        assert group.verdict in cells.nth(1).inner_text(), (group.claim, cells.nth(1).inner_text())
    hrefs = page.eval_on_selector_all("table.diffgen-glance a[href]", "as => as.map(a => a.href)")
    assert len(hrefs) >= 15
    for href in hrefs:
        target = page.context.new_page()
        target.goto(href, wait_until="load")
        anchor = urlparse(href).fragment
        assert anchor and target.evaluate(f"() => !!document.getElementById({anchor!r})"), href
        target.close()


def test_a_dropdown_opens_on_the_full_detail_of_a_row(visit):
    """On the claims in detail, a row opens to its interval, rule, seeds and source; in a chapter, the verdict
    section's dropdown opens to every row's detail."""
    page = visit("book/claims_in_detail.html").page
    row = page.locator("details.diffgen-row").first
    detail = row.locator("dl.diffgen-detail")
    assert not detail.is_visible()
    row.locator("summary").click()
    assert detail.is_visible() and all(k in detail.inner_text() for k in ("source", "decided by", "verdict"))
    chapter = visit("book/ch2_empirical_optimum.html").page
    dropdown = chapter.locator("details.sd-dropdown").last
    dropdown.locator("summary").click()
    assert "decided by" in dropdown.inner_text() and "source" in dropdown.inner_text()


def test_the_book_has_sliders(visit):
    """The slider check above must not pass vacuously: the chapters show precomputed frame sliders."""
    counts = {p: visit(p).page.locator(".animation input[type=range]").count() for p in PAGES}
    assert sum(counts.values()) >= 2, counts
