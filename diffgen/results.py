"""Layer 1: the per-chapter results file `<chapter>.results.json` (one format for every chapter).

{"chapter", "parameters", "diffgen_version", "source_hash",
 "claims": [{"id": "C1".."C6", "statement", "metric", "value" (number, or null when not measurable),
             "ci": [low, high] | null, "expected", "holds"}]}
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ._util import atomic_write
from .provenance import VERSION, source_hash

CLAIM_IDS = ("C1", "C2", "C3", "C4", "C5", "C6")


@dataclass(frozen=True)
class Claim:
    """One measured claim: the paper's statement, what we computed, and whether it meets the stated condition."""

    id: str  # C1..C6, as in shared/paper/PAPER.md
    statement: str  # the paper's claim, in words
    metric: str  # what was measured
    value: float | None  # None: not measurable in this run (e.g. a correlation of a constant); then holds is False
    ci: tuple[float, float] | None  # 95% interval, or None for an exact/deterministic number
    expected: str  # the condition the value must meet, in words
    holds: bool

    def __post_init__(self):
        if self.id not in CLAIM_IDS:
            raise ValueError(f"claim id must be one of {', '.join(CLAIM_IDS)}; got {self.id!r}")
        if self.value is None:
            if self.holds:
                raise ValueError(f"claim {self.id} has no value, so it cannot hold")
        elif not math.isfinite(float(self.value)):
            raise ValueError(f"claim {self.id} value must be finite or None; got {self.value}")
        if self.ci is not None and (len(self.ci) != 2 or not all(math.isfinite(float(v)) for v in self.ci)):
            raise ValueError(f"claim {self.id} ci must be None or two finite numbers; got {self.ci}")


def results_path(directory: str | Path, chapter: str) -> Path:
    return Path(directory) / f"{chapter}.results.json"


def write_results(directory: str | Path, chapter: str, parameters: dict, claims: list[Claim]) -> Path:
    """Write `<chapter>.results.json` atomically into `directory` and return its path."""
    doc = {
        "chapter": chapter,
        "parameters": parameters,
        "diffgen_version": VERSION,
        "source_hash": source_hash(),
        "claims": [_claim_json(c) for c in claims],
    }
    path = results_path(directory, chapter)
    with atomic_write(path) as f:
        json.dump(doc, f, indent=2, allow_nan=False)  # NaN/Infinity are not JSON
        f.write("\n")
    return path


def _claim_json(c: Claim) -> dict:
    d = asdict(c)
    d["value"] = None if c.value is None else float(c.value)
    d["ci"] = None if c.ci is None else [float(v) for v in c.ci]
    d["holds"] = bool(c.holds)
    return d


def read_results(path: str | Path) -> dict:
    """Load a results file and check its shape; a malformed file is an error naming what is wrong."""
    doc = json.loads(Path(path).read_text())
    missing = {"chapter", "parameters", "diffgen_version", "source_hash", "claims"} - doc.keys()
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}")
    for c in doc["claims"]:
        Claim(**{**c, "ci": None if c["ci"] is None else tuple(c["ci"])})  # validates
    return doc
