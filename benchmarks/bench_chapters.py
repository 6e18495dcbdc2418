"""Wall time of each chapter's preset on this machine: cold (empty training cache), warm (cache filled), and cold again
beside one busy process (a second process spinning on one core), with the slowest cells of each run.

Each run is `diffgen run CHAPTER --preset PRESET` in a fresh output folder; the cold runs get a fresh cache folder
($DIFFGEN_CACHE), so they train every network. The busy/alone ratio is the fairness check of the project's budget:
one other process on the CPU may slow a chapter by about 2x at most. Times come from one run each (the machine is
shared: compare ratios within one run of this script, not absolute times across runs).
Usage: .venv/bin/python benchmarks/bench_chapters.py [--preset default] [--chapters ch2 ch3] [--busy] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIFFGEN = Path(sys.executable).with_name("diffgen")


def _spin() -> None:
    while True:
        pass


def time_run(chapter: str, preset: str, out: Path, cache: Path) -> tuple[float, list[tuple[float, str]]]:
    """(seconds for one `diffgen run`, [(seconds, first line)] of its code cells, slowest first); raises if it fails."""
    start = time.perf_counter()
    subprocess.run([str(DIFFGEN), "run", chapter, "--preset", preset, "--out", str(out), "--timeout", "5400"],
                   check=True, env={**os.environ, "DIFFGEN_CACHE": str(cache)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    notebook = next(p for p in out.glob("*.ipynb") if not p.name.endswith((".running.ipynb", ".FAILED.ipynb")))
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    per_cell = [(c["metadata"].get("papermill", {}).get("duration") or 0.0,
                 next((line.strip() for line in "".join(c["source"]).splitlines() if line.strip()), ""))
                for c in cells]
    return seconds, sorted(per_cell, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--chapters", nargs="+", default=["ch1", "ch2", "ch3", "ch4"])
    parser.add_argument("--busy", action="store_true", help="also run each chapter cold beside a busy process")
    parser.add_argument("--cells", type=int, default=4, help="slowest cells shown per run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chapter in args.chapters:
            row = {"chapter": chapter, "preset": args.preset}
            runs = [("cold", "cache-cold", False), ("warm", "cache-cold", False)]
            runs += [("cold_busy", "cache-busy", True)] if args.busy else []
            for name, cache, busy in runs:
                spinner = multiprocessing.Process(target=_spin, daemon=True) if busy else None
                if spinner:
                    spinner.start()
                try:
                    seconds, cells = time_run(chapter, args.preset, Path(tmp) / f"{chapter}-{name}",
                                              Path(tmp) / f"{chapter}-{cache}")
                finally:
                    if spinner:
                        spinner.terminate()
                row[f"{name}_s"], row[f"{name}_cells"] = seconds, cells[:args.cells]
                print(f"{chapter} ({args.preset}) {name:9s} {seconds:7.1f} s; slowest cells: " +
                      "; ".join(f"{s:.0f} s `{line[:40]}`" for s, line in cells[:args.cells]), flush=True)
            if args.busy:
                print(f"{chapter}: beside a busy process {row['cold_busy_s'] / row['cold_s']:.2f}x the time alone",
                      flush=True)
            rows.append(row)
    cold, warm = sum(r["cold_s"] for r in rows), sum(r["warm_s"] for r in rows)
    print(f"total: {cold:.1f} s cold, {warm:.1f} s warm" +
          (f", {sum(r['cold_busy_s'] for r in rows):.1f} s cold beside a busy process" if args.busy else ""))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
