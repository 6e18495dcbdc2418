"""diffgen, the executable companion to *On the Generalization of Diffusion Model* (Yi, Sun, Li, arXiv 2305.14712).

The package is seven folders on seven floors (FOLDERS, bottom first); a module imports only from its own folder and
the folders below it (tests/test_structure.py). The root re-exports the helpers every chapter uses."""
from __future__ import annotations

from .base.provenance import VERSION as __version__
from .base.provenance import source_hash
from .base.util import randn, resolve_device, sample_generators, set_threads

FOLDERS = ("base", "data", "diffusion", "measures", "chapters", "claims", "commands")

__all__ = ["__version__", "randn", "resolve_device", "sample_generators", "set_threads", "source_hash"]
