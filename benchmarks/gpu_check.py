"""`make gpu-check`: every chapter on one CUDA GPU, then the GPU benchmark, with one summary table.

On CIFAR-10-shaped files that diffgen's own fixture writer makes (diffgen.data.fixtures.write_cifar10: 50 000 training
and 10 000 test images, smooth synthetic colour images) it runs, each as `diffgen run --device cuda` would:
- every chapter at the smoke preset,
- every chapter at the paper preset, its training cut to a few hundred steps (PLAN),
then benchmarks/bench_gpu.py, and prints one table: chapter, preset, status, seconds, peak GPU and host memory (as
each chapter recorded them, diffgen.claims.results.peak_memory). Exit code 1 when anything failed. On a machine without
a CUDA GPU it says so and exits 0.

Usage (from the repository's root):
    make gpu-check                                   # with the project installed in .venv (README: GPU)
    PYTHONPATH=SITE python3 benchmarks/gpu_check.py  # a python3 with torch, SITE holding the chapter runtime
Options: --out DIR (default runs/gpu-check: data, cache, executed notebooks, bench_gpu.json), --only CHAPTER:PRESET
(repeatable: a part of the plan), --no-bench, --timeout SECONDS (per chapter). `--device cpu` runs the same plan on
the CPU: a stand-in for this script's tests, no check of anything GPU.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = [(f"ch{k}", "smoke", {}) for k in range(1, 5)]
PAPER = [("ch1", "paper", {"train_steps": 300}), ("ch2", "paper", {}), ("ch3", "paper", {"train_steps": 300}),
         ("ch4", "paper", {"train_steps": 300, "toy_train_steps": 300})]  # ch2 trains nothing
PLAN = SMOKE + PAPER


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    name: str  # chapter, or bench_gpu
    preset: str  # the preset and the parameters set on top of it
    ok: bool
    seconds: float
    memory: dict  # gpu_peak_bytes, host_peak_bytes (absent or None: not known)


def gib(memory: dict, key: str) -> str:
    return "-" if memory.get(key) is None else f"{memory[key] / 2**30:.2f} GiB"


def summary(rows: list[Row]) -> str:
    """The table: one line per run, then how many failed."""
    lines = [f"{'chapter':<10} {'preset':<44} {'status':<7} {'seconds':>8} {'peak GPU':>10} {'peak host':>10}"]
    for r in rows:
        lines.append(f"{r.name:<10} {r.preset:<44} {'ok' if r.ok else 'FAILED':<7} {r.seconds:>8.1f} "
                     f"{gib(r.memory, 'gpu_peak_bytes'):>10} {gib(r.memory, 'host_peak_bytes'):>10}")
    failed = sum(not r.ok for r in rows)
    lines.append(f"{len(rows)} runs, {failed} failed" if failed else f"{len(rows)} runs, all ok")
    return "\n".join(lines)


def exit_code(rows: list[Row]) -> int:
    return 0 if rows and all(r.ok for r in rows) else 1


def select(only: list[str]) -> list[tuple[str, str, dict]]:
    """The plan, or the CHAPTER:PRESET entries of it named by --only (a pair outside the plan: no extra parameters)."""
    if not only:
        return PLAN
    known = {f"{c}:{p}": (c, p, extra) for c, p, extra in PLAN}
    out = []
    for item in only:
        chapter, sep, preset = item.partition(":")
        if not sep or not chapter or not preset:
            raise SystemExit(f"gpu_check: --only takes CHAPTER:PRESET, e.g. ch2:smoke; got {item!r}")
        out.append(known.get(item, (chapter, preset, {})))
    return out


def run_chapters(plan, out: Path, device: str, timeout: int) -> list[Row]:
    from diffgen.chapters.registry import UsageError, plan_run
    from diffgen.commands.runner import run_chapter

    rows = []
    for chapter, preset, extra in plan:
        label = preset + "".join(f", {k}={v}" for k, v in extra.items())
        try:
            [run] = plan_run([chapter], preset, [(k, str(v)) for k, v in extra.items()], device)
        except UsageError as e:
            print(f"gpu_check: {chapter} {label}: {e}", file=sys.stderr)
            rows.append(Row(chapter, label, False, 0.0, {}))
            continue
        folder = out / preset
        folder.mkdir(parents=True, exist_ok=True)
        ended = run_chapter(run, folder, timeout)
        rows.append(Row(chapter, label, bool(ended), ended.seconds, ended.memory))
    return rows


def run_bench(out: Path) -> Row:
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--json",
                           str(out / "bench_gpu.json")])
    return Row("bench_gpu", "eps*, DDIM, U-Net training", done.returncode == 0, time.monotonic() - start, {})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    parser.add_argument("--only", action="append", default=[], metavar="CHAPTER:PRESET")
    parser.add_argument("--no-bench", action="store_true", help="skip benchmarks/bench_gpu.py")
    parser.add_argument("--timeout", type=int, default=900, metavar="SECONDS", help="per chapter (default: 900)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the same plan on the CPU, for this script's tests")
    args = parser.parse_args(argv)
    plan = select(args.only)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to check.")
        return 0
    from diffgen.data.fixtures import write_cifar10

    out = args.out.resolve()
    start = time.monotonic()
    write_cifar10(out / "data", n=10_000, smooth=True)
    print(f"gpu_check: CIFAR-10-shaped files (50 000 + 10 000 images) in {out / 'data'} "
          f"({time.monotonic() - start:.1f} s)", flush=True)
    os.environ.update(DIFFGEN_DATA=str(out / "data"), DIFFGEN_CACHE=str(out / "cache"))
    rows = run_chapters(plan, out, args.device, args.timeout)
    if not args.no_bench:
        rows.append(run_bench(out))
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "the CPU (a stand-in run)"
    print(f"\ngpu_check on {where}, torch {torch.__version__}: {time.monotonic() - start:.0f} s in all")
    print(summary(rows))
    return exit_code(rows)


if __name__ == "__main__":
    # diffgen from this checkout, for this process and the chapters' kernels (a python3 without the package installed)
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    sys.exit(main())
