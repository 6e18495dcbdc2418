"""Artifacts keyed by (configuration, data, code that produces them), written atomically, checked on load.

The key of an artifact (`artifact_key`) hashes the canonical form of its inputs (configs, schedules, data tensors)
and the source of the modules that can run while producing it: the import closure of the producing module and of
the modules that define the configs it was given (provenance.closure_hash). Editing a plot, a widget or the report
keeps every key; editing the objective, the model or the training loop changes the keys that use them.

An artifact file is MAGIC + sha256(payload) (32 bytes) + payload, where payload is the bytes of `torch.save(obj)`.
The digest is checked before anything is unpickled, and unpickling runs with `weights_only=True`, so an artifact
holds plain tensors, dicts, lists, tuples, numbers, strings and None only. `load_or_compute` is the one path from a
key to a value: a missing, truncated, corrupt or unusable file is deleted with a warning naming it, and recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch
from filelock import FileLock

from .progress import note
from .provenance import PACKAGE_DIR, closure_hash
from .util import atomic_write

MAGIC = b"DIFFGEN-ARTIFACT-1\n"
_DIGEST = 32  # bytes of a sha256 digest
_PLAIN = (str, int, float, bool, type(None))
T = TypeVar("T")


def cache_root() -> Path:
    """$DIFFGEN_CACHE if set, else <repo>/.cache/diffgen (git-ignored); read at call time, not import time."""
    env = os.environ.get("DIFFGEN_CACHE")
    return Path(env) if env else PACKAGE_DIR.parent / ".cache" / "diffgen"


# ------------------------------------------------------------------------------------------------- keys

def config_key(*objects) -> str:
    """sha256 hex of the canonical JSON of `objects`: equal configs give equal keys in any process."""
    return _sha256({"objects": [_canonical(o, set()) for o in objects]})


def artifact_key(producer: str, *objects) -> str:
    """sha256 hex of (the code that can run to produce the artifact, its inputs `objects`). The code is the import
    closure of the module `producer` (e.g. 'diffgen.diffusion.train') and of every diffgen module defining a dataclass
    found in `objects` (a model config's module builds the model, an objective's module computes the loss)."""
    modules = {producer}
    doc = {"objects": [_canonical(o, modules) for o in objects]}
    package = producer.split(".")[0]
    doc["code"] = closure_hash(sorted(m for m in modules if m.split(".")[0] == package))
    return _sha256(doc)


def _sha256(doc) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(obj, modules: set):
    """A JSON-able value that determines `obj`: dataclasses by class and fields (a Schedule is a dataclass of
    name and betas), tensors by dtype, shape and a digest of their bytes. Unknown types are a TypeError, never a
    silent repr (which could hide a difference or an id()). Adds the module of every dataclass to `modules`."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        # repr round-trips exactly; non-finite floats get a tag (JSON has no NaN), 1 and 1.0 stay distinct
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return _canonical(obj.item(), modules)
    if isinstance(obj, np.ndarray):
        return _canonical(torch.from_numpy(np.ascontiguousarray(obj)), modules)
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": str(obj.dtype), "shape": list(obj.shape), "sha256": tensor_digest(obj)}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj)}
    if isinstance(obj, (tuple, list)):
        return [_canonical(v, modules) for v in obj]
    if isinstance(obj, dict):
        items = [(_canonical(k, modules), _canonical(v, modules)) for k, v in obj.items()]
        return {"__dict__": sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        modules.add(cls.__module__)
        fields = {f.name: _canonical(getattr(obj, f.name), modules) for f in dataclasses.fields(obj)}
        return {"__class__": f"{cls.__module__}.{cls.__qualname__}", "fields": fields}
    raise TypeError(f"config_key cannot hash an object of type {type(obj).__name__}: use dataclasses, tensors, "
                    "tuples, lists, dicts, numbers, strings or None")


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 hex of the raw bytes of x (contiguous, on CPU): equal for equal values of equal dtype and shape."""
    flat = x.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


# -------------------------------------------------------------------------------------------- artifacts

def save_artifact(path: str | os.PathLike, obj) -> Path:
    """Write `obj` (plain tensors/dicts/lists/numbers only) to `path` atomically, with a sha256 of its bytes."""
    _check_plain(obj, "obj")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        f.write(MAGIC)
        f.write(hashlib.sha256(payload).digest())
        f.write(payload)
    return path


def load_artifact(path: str | os.PathLike):
    """The object saved at `path`, or None when the file is missing, truncated or corrupt (a bad file is deleted
    with a RuntimeWarning naming the reason, so the caller recomputes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    head = len(MAGIC) + _DIGEST
    if len(data) < head or not data.startswith(MAGIC):
        return _discard(path, "not a diffgen artifact or truncated header")
    digest, payload = data[len(MAGIC):head], data[head:]
    if hashlib.sha256(payload).digest() != digest:
        return _discard(path, "sha256 mismatch (truncated or corrupt)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (weights_only refusal, unpickling error: all mean "recompute")
        return _discard(path, f"torch.load failed: {type(err).__name__}: {err}")


# What a loaded artifact that does not fit its reader raises (a missing key, a tensor of the wrong shape, a format
# mismatch): the artifact is unusable, deleted and recomputed. Anything else is a bug and propagates.
UNUSABLE = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError)


def load_or_compute(path: str | os.PathLike, compute: Callable[[], dict], restore: Callable[[dict], T], *,
                    fmt: int, name: str, save: bool = True) -> tuple[T, bool]:
    """(restore(payload), True) when the artifact at `path` is usable, else (restore(compute()), False) after saving
    the computed payload there (save=False: not saved; another process of the same run writes it). While it loads or
    computes, it holds the file lock <path>.lock, so that concurrent callers (the points of a sweep) compute an
    artifact once: the second waits, then loads what the first saved. Usable: it loads (see load_artifact), its "format"
    entry equals `fmt` (bump it when the layout changes) and restore(payload) raises nothing in UNUSABLE; an unusable
    file is deleted with a RuntimeWarning naming it. `name` labels the note that reports a cache hit."""
    path = Path(path)
    if not save:  # another process of this run writes (and locks); this one must not wait for it
        return _load_or_compute(path, compute, restore, fmt, name, save)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # two processes asking for one artifact: one computes, the other then loads it
        return _load_or_compute(path, compute, restore, fmt, name, save)


def _load_or_compute(path: Path, compute, restore, fmt: int, name: str, save: bool):
    payload = load_artifact(path)
    if payload is not None:
        try:
            if payload.get("format") != fmt:
                raise ValueError(f"artifact format {payload.get('format')!r}, expected {fmt}")
            value = restore(payload)
        except UNUSABLE as err:
            _discard(path, f"{type(err).__name__}: {err}", stacklevel=2)
        else:
            note(f"{name}: loaded from cache {path}")
            return value, True
    payload = {**compute(), "format": fmt}
    if save:
        save_artifact(path, payload)
    return restore(payload), False


def _discard(path: Path, reason: str, stacklevel: int = 3) -> None:
    warnings.warn(f"diffgen.base.cache: deleting unusable artifact {path}: {reason}", RuntimeWarning,
                  stacklevel=stacklevel)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return None


def _check_plain(obj, where: str) -> None:
    """TypeError unless obj is built from tensors, dicts, lists, tuples, str/int/float/bool/None (weights_only)."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, _PLAIN):
                raise TypeError(f"{where}: dict keys must be str/int/float/bool/None; got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: artifacts hold only tensors, dicts, lists, tuples, numbers, strings and None "
                    f"(torch.load weights_only=True); got {type(obj).__name__}")
