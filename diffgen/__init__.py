"""diffgen: the executable companion to *On the Generalization of Diffusion Model* (Yi, Sun, Li, arXiv 2305.14712)."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent

from ._util import randn, resolve_device, sample_generators  # noqa: E402  (public helpers)


@lru_cache(maxsize=None)
def source_hash() -> str:
    """sha256 (first 16 hex digits) of the package's computing source: changes whenever a number could."""
    return hash_sources(PACKAGE_DIR)


# Modules that run chapters, build the book or print reports but compute no number a chapter shows: editing them
# must not retrain every model or re-execute every chapter (the cache keys and the book's cache stamp use the hash).
# presets.toml is not hashed either: a preset only picks parameters, and parameters are part of every key.
NOT_COMPUTING = frozenset({"cli.py", "book.py", "report.py"})


def hash_sources(package_dir: Path) -> str:
    """sha256 (first 16 hex digits) of every .py file of `package_dir` except NOT_COMPUTING, names included."""
    h = hashlib.sha256()
    for path in sorted(Path(package_dir).rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        if "__pycache__" not in path.parts and rel not in NOT_COMPUTING:
            h.update(rel.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
