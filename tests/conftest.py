"""Shared fixtures of the diffgen tests, the markers of the tests `make test-fast` leaves out, and the smoke build
of the book.

Markers (registered in pyproject.toml), each given a one-line reason, `@pytest.mark.processes("torchrun: 2 Gloo
processes")`: `notebook` (executes notebooks in Jupyter kernels), `processes` (starts other processes) and `slow`
(a minute or so of work in this process). The first two imply `slow`, so `pytest -m "not slow"` (`make test-fast`)
runs no notebook and starts no process.
"""
from __future__ import annotations

import json
import multiprocessing.process
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffgen import set_threads
from diffgen.base.util import thread_share
from diffgen.diffusion.schedule import linear_schedule

if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").isdigit():  # `make test`: one worker per core
    os.environ.setdefault("DIFFGEN_THREADS", str(thread_share(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
set_threads("cpu")  # the chapters' share of a shared CPU (cores - 1, or a worker's share): beside another busy
# process, torch with every core waits in each parallel region for its slowest thread, which made training tests 10
# to 40 times slower here
REPO = Path(__file__).resolve().parents[1]
KINDS = ("notebook", "processes", "slow")  # the markers of tests left out of `make test-fast`


@pytest.hookimpl(tryfirst=True)  # before -m selects: `notebook` and `processes` count as `slow`
def pytest_collection_modifyitems(config, items):
    for item in items:
        kinds = [mark for name in KINDS for mark in item.iter_markers(name)]
        for mark in kinds:
            if not (mark.args and isinstance(mark.args[0], str) and mark.args[0].strip()):
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{mark.name} needs a one-line reason, "
                                        f'@pytest.mark.{mark.name}("why this test is not in make test-fast")')
        if kinds and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow(f"marked {kinds[0].name}"))


@pytest.fixture(autouse=True)
def _no_process_unless_marked(request, monkeypatch):
    """Tests not marked `slow` (nor `notebook`, `processes`) start no process: `make test-fast` stays the inner loop."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.processes(\"reason\")")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)


@pytest.fixture(scope="session")
def sched():
    """The DDPM default: T = 1000, beta linear 1e-4 .. 0.02."""
    return linear_schedule()


@pytest.fixture
def gen():
    """A fresh, fixed-seed CPU generator per test (tests never depend on global RNG state)."""
    return torch.Generator().manual_seed(1234)


CHROMIUM = os.environ.get("DIFFGEN_CHROMIUM", "/usr/bin/chromium")  # Debian's chromium; never `playwright install`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]


@pytest.fixture(scope="module")
def browser():
    """Headless chromium driven by Playwright (the browser tests of the book and of JupyterLab)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI") or os.environ.get("DIFFGEN_BROWSER_HTML"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); CI installs it")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> SimpleNamespace:
    """The real book built as `make book` builds it (its _toc.yml, the diffgen.commands.book extension, warnings as errors),
    every chapter executed with the smoke preset's parameters: `diffgen book REPO --preset smoke --build-dir DIR`,
    in a folder of its own. `root` is DIR (the copy of the sources, book/<chapter>.results.json, _build/html).
    Under pytest-xdist the workers share one build: the first to ask builds it while the others wait on a file lock."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared  # the workers' common folder
    root, log = shared / "smoke-book" / "build", shared / "smoke-book" / "log.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(shared / "smoke-book.lock")):
        if not log.is_file():  # a failed build is recorded too: the other workers report it without rebuilding
            build = subprocess.Popen([str(Path(sys.executable).with_name("diffgen")), "book", str(REPO), "--preset",
                                      "smoke", "--build-dir", str(root), "--timeout", "600"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
            try:
                stdout, stderr = build.communicate(timeout=1800)  # a hang guard, not a timing test
            except subprocess.TimeoutExpired:
                os.killpg(build.pid, 9)  # the build and the chapters it runs
                stdout, stderr = build.communicate()
                stderr += "\nconftest: the smoke build ran past 1800 s and was killed"
            log.write_text(json.dumps({"returncode": build.returncode, "stdout": stdout, "stderr": stderr}))
    done = json.loads(log.read_text())
    assert done["returncode"] == 0, done["stdout"][-4000:] + done["stderr"][-4000:]
    return SimpleNamespace(root=root, stdout=done["stdout"], stderr=done["stderr"])
