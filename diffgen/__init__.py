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
    """sha256 (first 16 hex digits) of every source file of the package: changes whenever the library does."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in {".py", ".toml"} and "__pycache__" not in path.parts:
            h.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
