"""Shared fixtures for the diffgen unit tests (small sizes: the whole suite runs in well under a minute on CPU)."""
from __future__ import annotations

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
