"""Layer 0: devices, per-sample randomness, tiles, atomic writes and the argument checks every module shares."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error, not a silent fallback."""
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    return torch.device(device)


def set_threads(device: torch.device | str = "cpu") -> int:
    """On a CPU device, let torch use cpu_count - 1 threads (at least 1) and return that number. One core stays
    free: beside one other busy process a chapter then keeps its speed, while with every core in use each parallel
    region waits for its slowest thread (benchmarks/bench_chapters.py measures a chapter alone and beside a busy
    process). $DIFFGEN_THREADS, when set, is the number instead (a sweep gives each of its parallel chapters a share)."""
    if torch.device(device).type == "cpu":
        given = os.environ.get("DIFFGEN_THREADS", "")
        torch.set_num_threads(int(given) if given.isdigit() and int(given) > 0 else max(1, (os.cpu_count() or 1) - 1))
    return torch.get_num_threads()


def sample_generators(seed: int, n: int, offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample i = offset..offset+n-1, seeded from (seed, i).

    Sample i then sees the same random numbers whatever the batch size or device (EDM's per-image seeding).
    """
    return [torch.Generator().manual_seed(_mix(seed, offset + i)) for i in range(n)]


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for random stream `stream` >= 0 of `seed`, unrelated to every other (seed, stream) and to the
    per-sample generators of sample_generators (training uses stream 0 for batches, 1 + k for draw stream k)."""
    return torch.Generator().manual_seed(_mix(seed, -1 - stream))


def _mix(seed: int, index: int) -> int:
    # splitmix64-style mixing so that (seed, i) and (seed + 1, i - 1) give unrelated streams
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def randn(generators: Sequence[torch.Generator], dim: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """[B, dim] standard normal draws, row b from generators[b] (drawn on CPU, then moved: device independent)."""
    rows = [torch.randn(dim, generator=g, dtype=torch.float64) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def check_positive(**values) -> None:
    """ValueError naming the first argument that is not a positive integer (bools are not integers here)."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def check_non_negative(**values) -> None:
    """ValueError naming the first argument that is not a non-negative integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {value!r}")


def tiles(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of length `size` covering range(n)."""
    if size < 1:
        raise ValueError(f"tile size must be >= 1; got {size}")
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Write to a temporary file beside `path` and rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
