"""Layer 1: diffgen, the executable companion to *On the Generalization of Diffusion Model* (Yi, Sun, Li,
arXiv 2305.14712). The package root re-exports the helpers every chapter uses; the modules hold the rest."""
from __future__ import annotations

from ._util import randn, resolve_device, sample_generators, set_threads
from .provenance import VERSION as __version__
from .provenance import source_hash

__all__ = ["__version__", "randn", "resolve_device", "sample_generators", "set_threads", "source_hash"]
