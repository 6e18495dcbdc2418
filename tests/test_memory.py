"""Peak host memory of the functions the chapters call on the whole training set, at CIFAR-10's sizes (N = 50 000,
the chapters' query counts), each in a fresh process (tests/memory_worker.py): the peak resident set above what the
inputs hold must stay under a bound computed from the sizes, far below what one [B, N, D] or [N, N] tensor, or one
more copy of the set, would take. Most cases use 512 values per row (the bounds do not depend on D's size); the
slowest CIFAR-10's 3072 and the data loader on 60 000 fixture images. All are left out of `make test-fast`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("memory_worker.py")
N = 50_000
MiB = 2**20
SLACK = 64 * MiB  # the interpreter's and allocator's own movement between two reads of the resident set
TILE_ROWS = 4096  # rows of the set that the optimum's construction and the tiled loops convert at once

pytestmark = [pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads Linux's /proc"),
              pytest.mark.processes("each case measures its peak in a fresh worker process (memory_worker.py)")]


def run(*args) -> dict:
    # glibc's dynamic mmap threshold keeps some freed blocks in the heap or not from run to run (the x0 reference at
    # D = 3072 peaked at 306 to 507 MB over identical runs); a fixed threshold measures what the code allocates
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_optimum(dim: int, dtype: str) -> None:
    """One key matrix [N, D + 1 rounded up to 8] and a tile of float64 rows: not the three copies it once held."""
    got = run("optimum", dim, dtype)
    bound = got["keys"] + 2 * TILE_ROWS * dim * 8 + SLACK
    assert got["extra"] <= bound, f"{got['extra'] / MiB:.0f} MiB > {bound / MiB:.0f} MiB"
    assert 2 * got["keys"] > bound  # one more copy of the set would break the bound


def check_reference(dim: int, kind: str) -> None:
    """One chunk of differences, [B, N] logits and weights, a tile of rows: never the [B, N, D] differences."""
    got = run("reference", dim, kind)
    bound = got["chunk_bytes"] + 4 * got["B"] * N * 8 + TILE_ROWS * dim * 8 + SLACK
    assert got["extra"] <= bound, f"{got['extra'] / MiB:.0f} MiB > {bound / MiB:.0f} MiB"
    assert got["B"] * N * dim * 8 > bound


def check_neighbours(dim: int) -> None:
    """A tile of the set in float64 and the [B, tile] distances: no float64 copy of the float32 set."""
    got = run("neighbours", dim)
    bound = 3 * TILE_ROWS * dim * 8 + SLACK
    assert got["extra"] <= bound, f"{got['extra'] / MiB:.0f} MiB > {bound / MiB:.0f} MiB"
    assert N * dim * 8 > bound


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_optimum_of_50000_rows_holds_one_key_matrix(dtype):
    check_optimum(512, dtype)


@pytest.mark.parametrize("kind", ["x0", "forward-time"])
def test_the_brute_force_references_tile_over_50000_rows(kind):
    check_reference(512, kind)


def test_nearest_neighbours_among_50000_rows_convert_one_tile_at_a_time():
    check_neighbours(512)


@pytest.mark.parametrize("kind, dim", [("median", 8), ("kid", 64)])
def test_median_bandwidth_and_kid_hold_tiles_of_pairs_not_all_pairs(kind, dim):
    got = run("pairwise", dim, kind)
    bound = 5 * got["pairs_bytes"] + SLACK
    assert got["extra"] <= bound, f"{got['extra'] / MiB:.0f} MiB > {bound / MiB:.0f} MiB"
    assert got["n"] ** 2 * 8 > bound


@pytest.mark.processes("CIFAR-10's 50 000 x 3072 float64 rows in a worker: 20 to 60 s per case here")
@pytest.mark.parametrize("case", [("optimum", "float64"), ("optimum", "float32"), ("reference", "x0"),
                                  ("reference", "forward-time"), ("neighbours",)])
def test_at_cifar10_width(case):
    {"optimum": check_optimum, "reference": check_reference, "neighbours": check_neighbours}[case[0]](3072, *case[1:])


@pytest.mark.processes("writes 60 000 fixture images, then a worker loads them as float64 (a minute)")
def test_loading_cifar10_holds_the_result_and_the_uint8_images_only(tmp_path):
    from diffgen.data.fixtures import write_cifar10

    write_cifar10(tmp_path, n=10_000, smooth=True)
    got = run("loader", 3072, tmp_path)
    uint8 = 3 * 60_000 * 3072  # the decoded files, the rows drawn from them and the pieces they are joined from
    bound = got["result"] + uint8 + SLACK
    assert got["extra"] <= bound, f"{got['extra'] / MiB:.0f} MiB > {bound / MiB:.0f} MiB"
    assert 2 * got["result"] > bound  # scaling the pools before drawing rows (the former loader) breaks it
