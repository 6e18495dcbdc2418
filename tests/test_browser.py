"""The built book in a real browser: Debian's chromium driven by Playwright, against `_build/html` served on localhost
with every other host blocked (the book must work offline).

Runs only when DIFFGEN_BROWSER_HTML names a built book (`make browser-test` sets it to _build/html after `make book`);
`make test` skips it. Never runs `playwright install`: the browser is the system's chromium ($DIFFGEN_CHROMIUM,
default /usr/bin/chromium). Screenshots of every page go to <html>/../screenshots/ (CI keeps them as artifacts).
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

pytestmark = pytest.mark.skipif(not HTML, reason="set DIFFGEN_BROWSER_HTML=_build/html (make browser-test)")


def toc_pages() -> list[str]:
    """The pages of _toc.yml in reading order, as paths relative to the HTML root (book/intro.html, ...)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]] + [entry["file"] for entry in toc.get("chapters", [])]
    files += [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [f"{f}.html" for f in files]


PAGES = toc_pages()


@pytest.fixture(scope="module")
def html_dir() -> Path:
    path = Path(HTML).resolve()
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
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
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
        slider, frame = animation.locator("input[type=range]"), animation.locator("img").first
        before = frame.get_attribute("src")
        slider.scroll_into_view_if_needed()
        slider.focus()
        page.keyboard.press("End")  # a user's key press on the focused slider: fires its input event
        assert slider.input_value() == slider.get_attribute("max"), f"{path}: slider {k} did not move"
        assert frame.get_attribute("src") != before, f"{path}: moving slider {k} did not change the frame"
        page.keyboard.press("Home")
        assert frame.get_attribute("src") == before, f"{path}: slider {k} back at 0 shows another frame"

    page.screenshot(path=str(screenshots / (path.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
    assert not v.errors, f"{path}: browser errors: {v.errors}"
    assert not v.failed, f"{path}: requests that failed: {v.failed}"
    assert not v.external, f"{path}: requests to the network (the book must work offline): {v.external}"


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


def test_intro_shows_the_claims_table(visit):
    page = visit(PAGES[0]).page
    rows = page.locator("table.diffgen-claims tbody tr")
    claims = ["C1", "C2", "C3", "C4", "C5a", "C5b", "C6"]
    assert rows.count() == len(claims) + 1, "one row per paper claim, then the reconstruction checks"
    headings = [rows.nth(k).locator("td").first.locator("strong").inner_text()
                for k in range(rows.count())]
    assert [h.split()[0] for h in headings] == claims + ["R"], headings
    chapters_in_toc = {Path(p).stem.split("_")[0] for p in PAGES if Path(p).stem.startswith("ch")}
    for k in range(len(claims)):
        cells = rows.nth(k).locator("td")
        chapter = cells.nth(1).inner_text().strip()
        if chapter in chapters_in_toc:  # a chapter in the book has run, so its claims show numbers
            assert "not run" not in cells.nth(3).inner_text(), f"row {k + 1}: {chapter} is in the book but not run"
            assert re.search(r"\d", cells.nth(2).inner_text()), f"row {k + 1}: no number"


def test_the_book_has_sliders(visit):
    """The slider check above must not pass vacuously: the chapters show precomputed frame sliders."""
    counts = {p: visit(p).page.locator(".animation input[type=range]").count() for p in PAGES}
    assert sum(counts.values()) >= 2, counts
