"""Run by tests/test_memory.py in a fresh process: `python tests/memory_worker.py SCENARIO DIM [ARG]`. Builds the
scenario's inputs (CIFAR-10's 50 000 rows of DIM values: 3072 is CIFAR-10's), resets the peak resident set
(/proc/self/clear_refs), runs the function and prints one JSON line: {"extra": peak resident bytes above the resident
bytes before the call, ...the sizes the bound needs}."""
import json
import sys
from pathlib import Path

import torch

N = 50_000  # CIFAR-10's training set
torch.set_num_threads(1)  # a shared machine: the tests measure memory, not speed


def resident(field: str) -> int:
    """VmRSS or VmHWM (the peak since the last reset) of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(run) -> int:
    """Peak resident bytes of run() above the resident bytes just before it."""
    before = resident("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    run()
    return resident("VmHWM") - before


def cifar_sized(dim: int, dtype=torch.float64, n: int = N) -> torch.Tensor:
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(0), dtype=dtype) * 2 - 1


def optimum(dim: int, dtype_name: str) -> dict:
    """EmpiricalOptimum of 50 000 images (float64 data, as the chapters load it) in `dtype`, 8 queries at t = 10."""
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.diffusion.schedule import linear_schedule

    train, sched, dtype = cifar_sized(dim), linear_schedule(), getattr(torch, dtype_name)
    x = train[:8] + 0.01
    built = {}
    extra = measure(lambda: built.setdefault("opt", EmpiricalOptimum(train, sched, dtype=dtype)).x0_star(x, 10))
    return {"extra": extra, "keys": built["opt"]._keys.numel() * built["opt"]._keys.element_size()}


def reference(dim: int, kind: str) -> dict:
    """The float64 brute-force references on 50 000 images: x0_star_reference for 8 queries, forward_time_minimiser
    for 4 (B N D float64 differences: 9.8 and 4.9 GB at D = 3072)."""
    from diffgen.diffusion.denoisers import forward_time_minimiser
    from diffgen.diffusion.objectives import ForwardTimeLoss
    from diffgen.diffusion.optimum import CHUNK, x0_star_reference
    from diffgen.diffusion.schedule import linear_schedule

    train, sched = cifar_sized(dim), linear_schedule()
    if kind == "x0":
        x = train[:8] * 0.9
        extra = measure(lambda: x0_star_reference(x, train, float(sched.abar[100])))
    else:
        x = train[:4] * 0.9
        extra = measure(lambda: forward_time_minimiser(train, sched, x, 100, ForwardTimeLoss(sched, "one").gap_probs(100)))
    return {"extra": extra, "B": len(x), "chunk_bytes": CHUNK * 8}


def neighbours(dim: int) -> dict:
    """nearest_neighbors of 64 samples among 50 000 float32 images (a float64 copy of the set: 1.2 GB at D = 3072)."""
    from diffgen.measures.metrics import nearest_neighbors

    train = cifar_sized(dim, torch.float32)
    z = train[:64] + 1e-3
    return {"extra": measure(lambda: nearest_neighbors(z, train)), "B": len(z)}


def pairwise(dim: int, kind: str) -> dict:
    """median_bandwidth of 12 000 rows or KID of 12 000 + 12 000 rows (feature rows: dim 64): an [N, N] float64
    matrix would be 1.15 GB; tiles of quality.PAIRS pairs stay at 128 MiB."""
    from diffgen.measures import quality

    n = 12_000
    if kind == "median":
        x = cifar_sized(dim, n=n)
        extra = measure(lambda: quality.median_bandwidth(x[: n // 2], x[n // 2:]))
    else:
        x, y = cifar_sized(dim, n=n), cifar_sized(dim, n=n) + 0.1
        extra = measure(lambda: quality.kid(x, y))
    return {"extra": extra, "n": n, "pairs_bytes": quality.PAIRS * 8}


def loader(dim: int, folder: str) -> dict:
    """load_dataset('cifar10', 50 000, 10 000) from fixture files: the float64 result is 1.47 GB."""
    from diffgen.data.datasets import load_dataset

    out = {}
    extra = measure(lambda: out.setdefault("ds", load_dataset("cifar10", N, 10_000, data_dir=folder)))
    ds = out["ds"]
    return {"extra": extra, "result": (ds.train.numel() + ds.heldout.numel()) * 8}


if __name__ == "__main__":
    scenario, dim, *args = sys.argv[1:]
    print(json.dumps({"optimum": optimum, "reference": reference, "neighbours": neighbours, "pairwise": pairwise,
                      "loader": loader}[scenario](int(dim), *args)))
