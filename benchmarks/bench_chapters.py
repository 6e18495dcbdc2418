"""Wall time of each chapter's preset on this machine, cold (empty training cache) and warm (cache filled).

Runs `diffgen run CHAPTER --preset PRESET` twice per chapter in a fresh output folder and a fresh cache folder
($DIFFGEN_CACHE), so the cold run trains every network and the warm run shows what a rebuild costs.
Usage: .venv/bin/python benchmarks/bench_chapters.py [--preset default] [--chapters ch2 ch3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIFFGEN = Path(sys.executable).with_name("diffgen")


def time_run(chapter: str, preset: str, out: Path, cache: Path) -> float:
    """Seconds for one `diffgen run` (raises if the chapter fails)."""
    start = time.perf_counter()
    subprocess.run([str(DIFFGEN), "run", chapter, "--preset", preset, "--out", str(out), "--timeout", "3600"],
                   check=True, env={**os.environ, "DIFFGEN_CACHE": str(cache)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--chapters", nargs="+", default=["ch2", "ch3"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chapter in args.chapters:
            cache = Path(tmp) / f"cache-{chapter}"
            cold = time_run(chapter, args.preset, Path(tmp) / f"{chapter}-cold", cache)
            warm = time_run(chapter, args.preset, Path(tmp) / f"{chapter}-warm", cache)
            rows.append({"chapter": chapter, "preset": args.preset, "cold_s": cold, "warm_s": warm})
            print(f"{chapter} ({args.preset}): {cold:7.1f} s cold, {warm:6.1f} s warm (training cache filled)",
                  flush=True)
    print(f"total: {sum(r['cold_s'] for r in rows):.1f} s cold, {sum(r['warm_s'] for r in rows):.1f} s warm")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
