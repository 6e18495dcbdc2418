"""What produced a number: the package version, the hash of its source, and the import closure of a module.

Two hashes serve two jobs:
- `source_hash()`, of every module of the package: the stamp of an executed chapter (results files, the book's
  execution cache), since any module may change what a chapter shows;
- `closure_hash(modules)`, of the modules a computation can run: the cache key of a trained artifact, so that editing
  a plot, a widget or the report never retrains a network. The closure is read from the source (every import of a
  `diffgen` module, lazy imports inside functions included), never kept by hand.
Neither imports torch: the command line uses this module.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

VERSION = "0.1.0"
PACKAGE = "diffgen"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def module_files(package_dir: Path | None = None) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package and its folders ('diffgen.diffusion.train'; a folder's
    __init__.py is named by its folder: 'diffgen.diffusion', 'diffgen'); package_dir: this package's folder unless
    given."""
    root = Path(package_dir or PACKAGE_DIR)
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join((PACKAGE, *parts))] = path
    return files


def imported_modules(path: Path, known: set[str], module: str) -> set[str]:
    """The package modules that `module` (its file at `path`) imports anywhere (module level or inside functions).

    Relative imports resolve against the module's folder; `from pkg import x` names the module pkg.x when it exists,
    else pkg itself (a name defined in its __init__)."""
    path = Path(path)
    folder = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = folder.split(".")
                if node.level > len(parts):
                    raise ValueError(f"{path}: imports from outside the package (level {node.level})")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {name for name in found if name in known}


def module_closure(modules, package_dir: Path | None = None) -> list[str]:
    """The given modules and every package module they import, directly or not (sorted names)."""
    files = module_files(package_dir)
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in files:
            raise ValueError(f"{name!r} is not a module of {package_dir or PACKAGE_DIR}")
        seen.add(name)
        todo.extend(imported_modules(files[name], set(files), name) - seen)
    return sorted(seen)


def _hash_files(names, files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode() + b"\0")
        h.update(files[name].read_bytes())
    return h.hexdigest()[:16]


def closure_hash(modules, package_dir: Path | None = None) -> str:
    """sha256 (16 hex digits) of the source of module_closure(modules): changes exactly when code a computation can
    run changes."""
    return _hash_files(module_closure(modules, package_dir), module_files(package_dir))


def hash_sources(package_dir: Path | None = None) -> str:
    """sha256 (16 hex digits) of every module of the package, names included."""
    files = module_files(package_dir)
    return _hash_files(files, files)


@lru_cache(maxsize=None)
def source_hash() -> str:
    """hash_sources of this installed package (computed once per process)."""
    return hash_sources()


def tree_digest(folder: Path) -> str:
    """sha256 (16 hex digits) of every file below `folder`: relative paths and bytes, in sorted order ('' when the
    folder does not exist). Data a book page reads, folded into the book's execution stamp."""
    folder = Path(folder)
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
