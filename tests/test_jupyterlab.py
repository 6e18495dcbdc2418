"""The chapters in a real JupyterLab: each chapter, with the smoke preset's parameters, runs all its cells in a live
kernel; one control of its live panel is moved, and the panel's figure must be recomputed; no cell may print to
stderr or raise. Screenshots go to _build/screenshots/lab-*.png.

JupyterLab is started on a free localhost port without a token and stopped at the end; the browser is Debian's
chromium driven by Playwright (never `playwright install`), with every non-localhost request aborted. Runs when
DIFFGEN_BROWSER_LAB=1 (`make browser-test` sets it); `make test` skips it.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import urlopen

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "book").glob("ch*_*.ipynb"))
RUN_LIMIT = 600  # seconds for all cells of a smoke chapter (a hang guard, not a timing test)

pytestmark = pytest.mark.skipif(os.environ.get("DIFFGEN_BROWSER_LAB") != "1",
                                reason="set DIFFGEN_BROWSER_LAB=1 (make browser-test)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The chapters with the smoke preset's values injected as papermill would (a cell after `parameters`)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    presets = tomllib.loads((REPO / "diffgen" / "chapters" / "presets.toml").read_text())["smoke"]
    folder = tmp_path_factory.mktemp("lab")
    for path in CHAPTERS:
        nb = parameterize_notebook(load_notebook_node(str(path)), presets[path.stem.split("_")[0]])
        nbformat.write(nb, folder / path.name)
    return folder


SETTINGS = {  # JupyterLab user settings: every cell in the DOM (the test reads all outputs), no news from the network
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false", "checkForUpdates": false}',
}


@pytest.fixture(scope="module")
def lab(workspace, tmp_path_factory):
    port = _free_port()
    settings = tmp_path_factory.mktemp("lab-settings")
    for name, text in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFGEN_HEADLESS", "DIFFGEN_PROGRESS")}  # a live session
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    log = open(workspace / "lab.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root",
                             f"--port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.token=",
                             "--ServerApp.password=", f"--ServerApp.root_dir={workspace}",
                             "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urlopen(f"{url}/api/status", timeout=2)
            break
        except (URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start: {(workspace / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    path = REPO / "_build" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


ERRORS = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'  # stderr streams and tracebacks


KERNEL_START_LIMIT = 180  # seconds for the first kernel of a cold machine to connect


def _prompts(page) -> list[str]:
    return [p.strip() for p in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def _kernel_idle(page):
    """The status bar's kernel item once the notebook's kernel is connected and idle ('Python 3 (ipykernel) | Idle').
    Not the toolbar's execution indicator: it reads idle before any kernel exists."""
    return page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$"))


def _run_all(page, results: Path) -> float:
    """Once the kernel is connected and idle, Run > Run All Cells; then wait until the chapter's last cell has written
    its results file (a cell that raises stops the run: fail at once with its error); returns the seconds it took.

    JupyterLab drops a run requested before its session has a kernel ('Session has no kernel.' for every cell, or the
    cells' execution silently cleared), so the run starts only at a connected, idle kernel."""
    _kernel_idle(page).first.wait_for(timeout=KERNEL_START_LIMIT * 1000)
    results.unlink(missing_ok=True)
    start = time.monotonic()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    while time.monotonic() - start < RUN_LIMIT:
        errors = page.locator(ERRORS)
        assert errors.count() == 0, "output on stderr or an error:\n" + "\n".join(t[:800] for t in errors.all_inner_texts())
        prompts = _prompts(page)
        if results.exists() and not any(p in ("[*]:", "[ ]:") for p in prompts):  # collapsed inputs show no prompt
            return time.monotonic() - start
        page.wait_for_timeout(1000)
    raise AssertionError(f"the cells did not finish within {RUN_LIMIT} s: prompts {prompts}")


def _figure(panel) -> str | None:
    img = panel.locator(".widget-output img")
    return img.first.get_attribute("src") if img.count() else None


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_and_its_live_panel_recomputes(lab, workspace, browser, screenshots, path):
    lab_dir = workspace
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    external = []
    context.route("**/*", lambda route: route.continue_() if urlparse(route.request.url).hostname in
                  ("127.0.0.1", "localhost", None) else (external.append(route.request.url), route.abort()))
    page = context.new_page()
    page_errors = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(f"{lab}/lab/workspaces/{path.stem}/tree/{path.name}?reset")  # a workspace of its own: one tab
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        page.wait_for_timeout(1500)
        took = _run_all(page, lab_dir / f"{path.stem.split('_')[0]}.results.json")
        errors = page.locator(ERRORS)
        panels = page.locator(".widget-vbox:has(.widget-output)")
        assert panels.count() >= 1, f"{path.stem}: no live panel"
        panel = panels.first
        panel.scroll_into_view_if_needed()
        before = _figure(panel)
        assert before, f"{path.stem}: the live panel shows no figure"
        slider = panel.locator(".widget-hslider").first
        readout = slider.locator(".widget-readout").inner_text()
        slider.locator(".noUi-handle").first.focus()
        page.keyboard.press("ArrowRight" if not slider.locator(".noUi-handle[aria-valuenow]").count() or
                            slider.locator(".noUi-handle").first.get_attribute("aria-valuenow") !=
                            slider.locator(".noUi-handle").first.get_attribute("aria-valuemax") else "ArrowLeft")
        deadline = time.monotonic() + 60
        while _figure(panel) in (before, None) and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        panel.screenshot(path=str(screenshots / f"lab-{path.stem}-panel.png"))
        page.screenshot(path=str(screenshots / f"lab-{path.stem}.png"))
        assert slider.locator(".widget-readout").inner_text() != readout, f"{path.stem}: the control did not move"
        assert _figure(panel) not in (before, None), f"{path.stem}: moving the control did not redraw the panel"
        assert errors.count() == 0, "\n".join(errors.all_inner_texts())
        assert not page_errors, page_errors
        assert not external, f"requests to other hosts: {external[:5]}"
        print(f"{path.stem}: all cells in {took:.0f} s")
    finally:
        context.close()
