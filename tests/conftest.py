"""Shared fixtures for the diffgen unit tests (small sizes: the whole suite runs in well under a minute on CPU)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from diffgen.schedule import linear_schedule


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

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
