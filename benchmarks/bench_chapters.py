"""Wall time of each chapter's preset on this machine: cold (empty training cache), warm (cache filled), and cold again
beside one busy process (a second process spinning on one core), with the slowest cells of each run.

Each run is `diffgen run CHAPTER --preset PRESET` in a fresh output folder; the cold runs get a fresh cache folder
($DIFFGEN_CACHE), so they train every network. The busy/alone ratio is the fairness check of the project's budget:
one other process on the CPU may slow a chapter by about 2x at most. Times come from one run each (the machine is
shared: compare ratios within one run of this script, not absolute times across runs).

With --book it times `make book`'s work instead: `diffgen book` on a fresh clone of this repository's HEAD (git clone;
the venv is this one), cold (empty training cache and execution cache: every chapter executes, several at once) and
warm (nothing changed: nothing executes), with each chapter's seconds as the build printed them.
Usage: .venv/bin/python benchmarks/bench_chapters.py [--preset default] [--chapters ch2 ch3] [--busy] [--json PATH]
       .venv/bin/python benchmarks/bench_chapters.py --book
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIFFGEN = Path(sys.executable).with_name("diffgen")
REPO = Path(__file__).resolve().parents[1]


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


def time_book(tmp: Path) -> None:
    """`diffgen book` on a fresh clone of HEAD, cold then warm; prints each build's seconds and its chapters'."""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout
    if dirty:
        print("bench_chapters: uncommitted changes are not in the clone, but the venv's diffgen has them", flush=True)
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
    for name in ("cold", "warm"):
        start = time.perf_counter()
        done = subprocess.run([str(DIFFGEN), "book", str(clone)], env={**os.environ, "DIFFGEN_CACHE": str(tmp / "c")},
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"bench_chapters: diffgen book failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        chapters = re.findall(r"^(\w+): executed in (\d+) s", done.stdout, re.M)
        print(f"book at {head.strip()} {name}: {seconds:.0f} s ({seconds / 60:.1f} min); "
              + (", ".join(f"{ch} {s} s" for ch, s in chapters) or "no chapter executed"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--chapters", nargs="+", default=["ch1", "ch2", "ch3", "ch4"])
    parser.add_argument("--busy", action="store_true", help="also run each chapter cold beside a busy process")
    parser.add_argument("--cells", type=int, default=4, help="slowest cells shown per run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--book", action="store_true", help="time diffgen book on a fresh clone, cold and warm")
    args = parser.parse_args()
    if args.book:
        with tempfile.TemporaryDirectory() as tmp:
            time_book(Path(tmp))
        return
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
