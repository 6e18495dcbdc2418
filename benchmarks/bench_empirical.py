"""Benchmark of the exact empirical optimum eps*(x_t, t) (diffgen.diffusion.optimum.EmpiricalOptimum), on the CPU.

What it measures, for D in {64, 784, 3072} on synthetic data (N training points ~ N(0, I), B queries x_t drawn by
the forward process from fresh points at random t), all in float32 (EmpiricalOptimum's default):

1. Throughput of eps* -- the fused path (torch's scaled_dot_product_attention) and the tiled path (online
   log-sum-exp loop) separately -- as a fraction of the throughput of one dense [B, D] x [D, N] matmul of the same
   shapes in the same run. eps* is counted as 4 B N D flops (the logits x . x_i and the weighted sum of the x_i,
   2 B N D each), the matmul as 2 B N D. The matmul writes into a preallocated output, so it is the GEMM rate
   itself, not GEMM plus allocation: the baseline is as strong as it can be made.
2. Speed-up over a naive eps*: torch.cdist + softmax + matmul, materialising the B x N matrix, same dtype.
3. Peak memory of one call of each variant (see `peak_memory_worker` for how), next to the size of one B x N
   float32 matrix.
4. Correctness, before any timing: max |eps - eps_ref| of the fused, tiled and naive versions against a float64
   reference computed from the definition, for one small case and for the first queries of every timed shape.
   The script stops (exit status 1) rather than time a kernel that is wrong.

How it times: the machine may be shared and noisy, so the variants are timed in interleaved rounds (every round
times each variant once, back to back, in a rotated order; a sample repeats a call until it lasts ~20 ms). Ratios
are formed within a round and the median over rounds is reported, so that load from other processes hits
numerator and denominator alike; the report also prints the share of the cores the process actually got, and
warns when others took a noticeable part. Before timing, glibc's malloc is told to keep freed memory (mmap
threshold 32 MiB, no trimming), so a variant that allocates B x N or B x tile temporaries reuses them instead of
taking fresh page faults on every call. That steady state is the fastest one for the naive and tiled versions, so
the fused path's speed-ups are the conservative ones; `--malloc default` keeps glibc's adaptive behaviour, under
which those two run 1.5-3x slower, by an amount that depends on what the process allocated before. The script
also names the attention kernel the fused path actually ran (EmpiricalOptimum falls back to the tiled loop
silently when no fused kernel fits), and the number of threads torch uses.

Usage: .venv/bin/python benchmarks/bench_empirical.py [--quick] [--json PATH] [--malloc {steady,default}]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffgen.diffusion.optimum import EmpiricalOptimum
from diffgen.diffusion.schedule import Schedule, add_noise, linear_schedule

SHAPES = [(64, 512, 4096), (784, 512, 2048), (3072, 256, 1024)]  # (D, B, N): ~5-25 ms per eps* call
SMALL_CASE = (64, 64, 512)  # (D, B, N) of the correctness check
CHECK_QUERIES = 16  # queries of each timed shape also checked against the float64 reference
TOLERANCE = 1e-3  # allowed error per query relative to max(1, max|eps_ref|), see `max_errors`
TARGET_MATMUL_FRACTION, TARGET_SPEEDUP, TARGET_D = 0.75, 2.5, 64
MIB = 2**20


# ----------------------------------------------------------------------------------------------- the variants

def naive_eps(train: torch.Tensor, sched: Schedule, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps* the obvious way: all B x N squared distances, softmax over the training set, weighted sum."""
    abar = sched.alpha_bar(t)[:, None]  # coefficients in float64, then cast (1 - abar_1 = 1e-4 is inexact in float32)
    a, s2 = abar.sqrt().to(x.dtype), (1 - abar).to(x.dtype)
    d2 = torch.cdist(x / a, train).square() * a.square()  # ||x - a x_i||^2 = a^2 ||x / a - x_i||^2, [B, N]
    x0 = torch.softmax(-d2 / (2 * s2), dim=1) @ train
    return (x - a * x0) / s2.sqrt()


def reference_eps(train: torch.Tensor, sched: Schedule, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """float64 eps* straight from the definition (explicit differences x - a x_i), one query at a time."""
    train, out = train.double(), []
    for xb, tb in zip(x.double(), t):
        abar = sched.alpha_bar(tb)
        d2 = (xb - abar.sqrt() * train).square().sum(1)  # [N]
        x0 = torch.softmax(-d2 / (2 * (1 - abar)), 0) @ train
        out.append((xb - abar.sqrt() * x0) / (1 - abar).sqrt())
    return torch.stack(out)


def make_problem(D: int, B: int, N: int, seed: int = 0):
    """Training set [N, D], queries x_t [B, D] (forward process from fresh points) and times t [B] in [1, T]."""
    g = torch.Generator().manual_seed(seed)
    sched = linear_schedule()
    train = torch.randn(N, D, generator=g)
    t = torch.randint(1, sched.T + 1, (B,), generator=g)
    x = add_noise(sched, torch.randn(B, D, generator=g), t, torch.randn(B, D, generator=g)).float()
    return sched, train, x, t


def make_variants(sched, train, x, t, preallocate: bool = True) -> dict:
    """name -> zero-argument callable. With `preallocate` the matmul writes into a ready [B, N] output (timing);
    without, it allocates one (memory: its peak should then read as one B x N matrix, a check on the method)."""
    fused = EmpiricalOptimum(train, sched, fused=True)
    tiled = EmpiricalOptimum(train, sched, fused=False)
    out = torch.empty(len(x), len(train)) if preallocate else None
    return {
        "matmul": lambda: torch.mm(x, train.T, out=out),
        "fused": lambda: fused(x, t),
        "tiled": lambda: tiled(x, t),
        "naive": lambda: naive_eps(train, sched, x, t),
    }


class _OpLog(TorchDispatchMode):
    """Records the names of the aten ops that run inside the `with` block (quieter than torch.profiler, which
    prints start/stop lines to stderr)."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.__name__)
        return func(*args, **(kwargs or {}))


def fused_kernel(call) -> str:
    """Which attention kernel EmpiricalOptimum(fused=True) really runs; 'none (tiled fallback)' if none."""
    with _OpLog() as log:
        call()
    names = sorted(op for op in log.ops if "dot_product" in op or "attention" in op)
    return ", ".join(names) or "none (tiled fallback)"


# ------------------------------------------------------------------------------------------------ correctness

def max_errors(D: int, B: int, N: int, queries: int | None = None) -> dict[str, dict[str, float]]:
    """Errors of fused, tiled and naive against the float64 reference on the first `queries` queries of a problem.

    'abs' is max |eps - eps_ref|. 'rel' divides each query's max error by max(1, max|eps_ref|) of that query: at
    small t a query far from every training point has |eps*| ~ |x - a x_i| / sqrt(1 - abar_t) in the hundreds, where
    float32 rounding alone moves eps* by ~1e-4 or more.
    """
    sched, train, x, t = make_problem(D, B, N)
    x, t = x[:queries], t[:queries]
    ref = reference_eps(train, sched, x, t)
    got = {"fused": EmpiricalOptimum(train, sched, fused=True)(x, t),
           "tiled": EmpiricalOptimum(train, sched, fused=False)(x, t),
           "naive": naive_eps(train, sched, x, t)}
    scale = ref.abs().amax(1).clamp(min=1)
    errors = {}
    for name, eps in got.items():
        err = (eps.double() - ref).abs().amax(1)  # [queries]
        errors[name] = {"abs": err.max().item(), "rel": (err / scale).max().item()}
    return errors


# ------------------------------------------------------------------------------------------------------ timing

def keep_freed_memory() -> str:
    """Make glibc reuse freed blocks up to 32 MiB (M_MMAP_THRESHOLD, the most it accepts) and never return them to
    the OS (M_TRIM_THRESHOLD): timings then exclude page faults on freshly mapped temporaries. Returns a label."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    return "steady state (glibc keeps freed memory)" if ok else "default (mallopt unavailable)"


def calls_per_sample(call, target_s: float) -> int:
    """How many back-to-back calls make one timing sample of about `target_s` seconds (after a warm-up call)."""
    call()
    start = time.perf_counter()
    call()
    return max(1, math.ceil(target_s / (time.perf_counter() - start)))


def seconds_per_call(call, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def interleaved_times(variants: dict, rounds: int, target_s: float) -> dict[str, list[float]]:
    """Seconds per call of every variant in each round; each round runs all variants back to back, rotated."""
    repeat = {name: calls_per_sample(call, target_s) for name, call in variants.items()}
    names, times = list(variants), {name: [] for name in variants}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(seconds_per_call(variants[name], repeat[name]))
    return times


def round_median(num: list[float], den: list[float], scale: float = 1.0) -> float:
    """Median over rounds of scale * num[r] / den[r]: a ratio of two timings taken back to back."""
    return statistics.median(scale * a / b for a, b in zip(num, den))


# ------------------------------------------------------------------------------------------------------ memory

def peak_memory_worker(D: int, B: int, N: int) -> dict[str, float]:
    """Peak extra resident memory (MiB) of one call of each variant; runs in a fresh subprocess (see below).

    tracemalloc cannot see torch's allocations, so this asks the OS: the process's resident set. The parent starts
    this worker with glibc's mmap threshold fixed at 64 KiB, so every tensor larger than that is its own mapping,
    made resident as it is written and returned to the OS when freed -- the resident set then follows the live
    tensors instead of memory freed earlier and kept by malloc. Per variant: one warm-up call (lazy initialisation,
    library workspaces), then the current resident set as baseline, reset the kernel's peak mark (write 5 to
    /proc/self/clear_refs), one call, read the peak (VmHWM). Peak minus baseline is what the call needed on top of
    its inputs: temporaries, workspaces and its output, at page granularity. The matmul, run here with a freshly
    allocated output, should come out as one B x N matrix: a check on the method.
    """
    sched, train, x, t = make_problem(D, B, N)
    peaks = {}
    for name, call in make_variants(sched, train, x, t, preallocate=False).items():
        call()
        baseline = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        result = call()
        peaks[name] = (_status_kib("VmHWM") - baseline) / 1024
        del result
    return peaks


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory(D: int, B: int, N: int) -> dict[str, float]:
    """Run `peak_memory_worker` in a fresh Python process with a fixed mmap threshold."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", f"{D},{B},{N}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------------- the report

def bench_shape(D: int, B: int, N: int, rounds: int, target_s: float) -> dict:
    sched, train, x, t = make_problem(D, B, N)
    variants = make_variants(sched, train, x, t)
    wall, cpu = time.perf_counter(), time.process_time()
    times = interleaved_times(variants, rounds, target_s)
    # our threads run flat out (OpenMP spins while waiting), so CPU time falls short of wall x threads only when
    # other processes take the cores: then back-to-back ratios are distorted too (parallel regions wait for a
    # descheduled thread), and not evenly across variants
    cpu_share = (time.process_time() - cpu) / (time.perf_counter() - wall) / torch.get_num_threads()
    flops = 2 * B * N * D  # of one [B, D] x [D, N] matmul; eps* (and naive) count twice that
    row = {"D": D, "B": B, "N": N, "bxn_f32_mib": B * N * 4 / MIB, "fused_kernel": fused_kernel(variants["fused"]),
           "cpu_share": cpu_share,
           "ms": {name: 1e3 * statistics.median(ts) for name, ts in times.items()},
           "gflops": {name: (1 if name == "matmul" else 2) * flops / statistics.median(ts) / 1e9
                      for name, ts in times.items()}}
    for name in ("fused", "tiled"):
        row[f"{name}_vs_matmul"] = round_median(times["matmul"], times[name], scale=2.0)
        row[f"{name}_speedup_vs_naive"] = round_median(times["naive"], times[name])
    row["naive_vs_matmul"] = round_median(times["matmul"], times["naive"], scale=2.0)
    row["peak_mib"] = peak_memory(D, B, N)
    return row


def print_shape(row: dict) -> None:
    print(f"\nD={row['D']}  B={row['B']}  N={row['N']}   (one B x N float32 matrix = {row['bxn_f32_mib']:.2f} MiB)")
    print(f"  fused path runs: {row['fused_kernel']}")
    print(f"  CPU share while timing: {row['cpu_share']:.2f} of {torch.get_num_threads()} threads' wall time"
          + ("  WARNING: other processes took the cores; the ratios are unreliable" if row["cpu_share"] < 0.9 else ""))
    print(f"  {'variant':<8}{'ms/call':>10}{'GFLOP/s':>10}{'vs matmul':>11}{'vs naive':>10}{'peak MiB':>10}")
    for name in ("matmul", "fused", "tiled", "naive"):
        vs_mm = "1 (base)" if name == "matmul" else f"{row[f'{name}_vs_matmul']:.2f}"
        vs_naive = {"fused": f"{row['fused_speedup_vs_naive']:.2f}x", "tiled": f"{row['tiled_speedup_vs_naive']:.2f}x",
                    "naive": "1x"}.get(name, "")
        print(f"  {name:<8}{row['ms'][name]:>10.2f}{row['gflops'][name]:>10.1f}{vs_mm:>11}{vs_naive:>10}"
              f"{row['peak_mib'][name]:>10.2f}")


def targets(rows: list[dict]) -> dict[str, dict]:
    row = next(r for r in rows if r["D"] == TARGET_D)
    out = {}
    for name in ("fused", "tiled"):
        out[f"{name}_vs_matmul"] = {"value": row[f"{name}_vs_matmul"], "target": TARGET_MATMUL_FRACTION}
        out[f"{name}_speedup_vs_naive"] = {"value": row[f"{name}_speedup_vs_naive"], "target": TARGET_SPEEDUP}
    for entry in out.values():
        entry["pass"] = entry["value"] >= entry["target"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, short samples (smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH")
    parser.add_argument("--malloc", choices=("steady", "default"), default="steady",
                        help="steady: glibc keeps freed memory (default; see the docstring); default: leave it be")
    parser.add_argument("--memory-worker", metavar="D,B,N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(peak_memory_worker(*map(int, args.memory_worker.split(",")))))
        return 0

    malloc = keep_freed_memory() if args.malloc == "steady" else "default (glibc adaptive)"
    rounds, target_s = (3, 0.005) if args.quick else (15, 0.02)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads ({os.cpu_count()} CPUs), float32, "
          f"{rounds} interleaved rounds, median of per-round ratios; allocator: {malloc}")

    checks = {"small": max_errors(*SMALL_CASE)} | {f"D={D}": max_errors(D, B, N, CHECK_QUERIES) for D, B, N in SHAPES}
    print(f"\ncorrectness vs float64 reference: max |eps - eps_ref| (and relative to max(1, |eps_ref|) per query; "
          f"tolerance {TOLERANCE:g} on the relative one)")
    D, B, N = SMALL_CASE
    for case, errs in checks.items():
        label = f"small case D={D} B={B} N={N}" if case == "small" else f"{case}, first {CHECK_QUERIES} queries"
        print(f"  {label:<34}" + "  ".join(f"{name} {e['abs']:.1e} ({e['rel']:.1e})" for name, e in errs.items()))
    if any(not e["rel"] <= TOLERANCE for errs in checks.values() for e in errs.values()):  # also catches NaN
        print("FAIL: a variant disagrees with the float64 reference; not timing it.")
        return 1

    rows = [bench_shape(D, B, N, rounds, target_s) for D, B, N in SHAPES]
    for row in rows:
        print_shape(row)

    goals = targets(rows)
    print(f"\ntargets at D={TARGET_D}:")
    for key, goal in goals.items():
        kind = "of matmul throughput" if "matmul" in key else "x the naive version"
        print(f"  {key:<24}{goal['value']:6.3f}  (>= {goal['target']} {kind})  {'PASS' if goal['pass'] else 'MISS'}")

    if args.json:
        report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": rounds, "malloc": malloc,
                  "correctness": {"tolerance": TOLERANCE, "max_abs_err": checks}, "shapes": rows, "targets": goals}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
