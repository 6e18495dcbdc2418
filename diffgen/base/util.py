"""Devices, per-sample randomness, tiles, atomic writes and the argument checks every module shares."""
from __future__ import annotations

import contextlib
import math
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
    region waits for its slowest thread (measured here: 2 threads beside a busy process trained 18x slower than 1;
    alone they were 1.4x faster, and with OMP_WAIT_POLICY=PASSIVE slower than one). Parallel chapters are the way to
    use every core (diffgen book runs them as separate processes). benchmarks/bench_chapters.py measures a chapter
    alone and beside a busy process. $DIFFGEN_THREADS, when set, is the number instead (a sweep gives each of its
    parallel chapters a share)."""
    if torch.device(device).type == "cpu":
        given = os.environ.get("DIFFGEN_THREADS", "")
        torch.set_num_threads(int(given) if given.isdigit() and int(given) > 0 else max(1, (os.cpu_count() or 1) - 1))
    return torch.get_num_threads()


def thread_share(parts: int) -> int:
    """CPU threads for each of `parts` processes sharing this machine's cores: cpu_count // parts, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, parts))


def sample_generators(seed: int, n: int, offset: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample i = offset..offset+n-1, seeded from (seed, i).

    Sample i then sees the same random numbers whatever the batch size or device (EDM's per-image seeding): its
    x_T through `randn`, and its fresh sampler noise through `sample_normal` keyed by the generator's seed.
    """
    return [torch.Generator().manual_seed(_mix(seed, offset + i)) for i in range(n)]


def stream_generator(seed: int, stream: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on `device` for random stream `stream` >= 0 of `seed`, unrelated to every other (seed, stream)
    and to the per-sample generators of sample_generators (training uses stream 0 for batches, 1 + k for draw
    stream k). On the CPU its numbers are those of every earlier version; on CUDA it is torch's Philox generator with
    the same seed (other numbers, drawn on the GPU with no host work)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream))


def stream_seed(seed: int, stream: int) -> int:
    """The 63-bit seed of stream_generator(seed, stream)."""
    return _mix(seed, -1 - stream)


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


# ------------------------------------------------------------------------- counter-based per-sample normals
# splitmix64 (Steele, Lea, Flood 2014) in int64 tensors: multiplication wraps modulo 2^64 and `_shr` is the logical
# (unsigned) shift, so every value is the uint64 of the reference algorithm read as a signed integer.
_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(v: int) -> int:
    """The int64 whose bits are the uint64 v mod 2^64."""
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >> 63 else v


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def _splitmix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function of the int64 state z (elementwise)."""
    z = (z ^ _shr(z, 30)) * _signed(_M1)
    z = (z ^ _shr(z, 27)) * _signed(_M2)
    return z ^ _shr(z, 31)


def sample_seeds(generators: Sequence[torch.Generator], device=None) -> torch.Tensor:
    """[B] int64 on `device`: the seed of each per-sample generator (its initial_seed(), as int64 bits)."""
    return torch.tensor([_signed(g.initial_seed()) for g in generators], dtype=torch.int64, device=device)


def sample_normal(seeds: torch.Tensor, draw: int, dim: int, *, dtype=torch.float64) -> torch.Tensor:
    """[B, dim] standard normals on seeds' device: row b is draw `draw` >= 0 of the sample with seed seeds[b].

    Counter-based: row b is the splitmix64 stream seeded with splitmix(seeds[b] + (draw + 1) G), G the golden
    gamma; its outputs 2j + 1, 2j + 2 give u1, u2 = (top 53 bits + 1/2) / 2^53 in (0, 1), and Box-Muller in float64
    gives z[2j] = sqrt(-2 ln u1) cos(2 pi u2), z[2j + 1] = sqrt(-2 ln u1) sin(2 pi u2). Each number is a function of
    (seed, draw, coordinate) alone: the same in any batch, on any device, with no generator state and no host work.
    """
    if draw < 0:
        raise ValueError(f"draw must be >= 0; got {draw}")
    stream = _splitmix(seeds.to(torch.int64) + _signed((draw + 1) * _GOLDEN))  # [B]
    pairs = (dim + 1) // 2
    counter = torch.arange(1, 2 * pairs + 1, dtype=torch.int64, device=seeds.device) * _signed(_GOLDEN)
    bits = _splitmix(stream[:, None] + counter)  # [B, 2 pairs]: outputs 1 .. 2 pairs of each row's stream
    u = (_shr(bits, 11).to(torch.float64) + 0.5) * 2.0**-53
    radius, angle = (-2 * u[:, 0::2].log()).sqrt(), (2 * math.pi) * u[:, 1::2]
    z = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=2).reshape(len(seeds), 2 * pairs)
    return z[:, :dim].to(dtype)


def assert_in_range(values: torch.Tensor, low, high, message: str) -> None:
    """Fail unless low <= values <= high elementwise (low, high: numbers or tensors), without a host-device sync
    (torch._assert_async): a ValueError(message) at once on the CPU, a device-side assertion on a GPU."""
    try:
        torch._assert_async(((values >= low) & (values <= high)).all(), message)
    except RuntimeError:  # raised at once only where the values live on the host
        raise ValueError(message) from None


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
