"""Smoke tests of the benchmarks: they run and write complete JSON reports (no timing assertions)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_empirical.py"
VARIANTS = ("matmul", "fused", "tiled", "naive")


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.processes("runs benchmarks/bench_empirical.py --quick as a script")
def test_bench_empirical_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())

    assert report["threads"] >= 1
    for case, errors in report["correctness"]["max_abs_err"].items():
        for name in ("fused", "tiled", "naive"):
            err = errors[name]
            assert math.isfinite(err["abs"]) and math.isfinite(err["rel"]), (case, name)
            assert err["rel"] <= report["correctness"]["tolerance"], (case, name)

    assert [row["D"] for row in report["shapes"]] == [64, 784, 3072]
    for row in report["shapes"]:
        numbers = [row["B"], row["N"], row["bxn_f32_mib"], row["cpu_share"],
                   row["fused_vs_matmul"], row["tiled_vs_matmul"], row["naive_vs_matmul"],
                   row["fused_speedup_vs_naive"], row["tiled_speedup_vs_naive"]]
        numbers += [row[key][name] for key in ("ms", "gflops", "peak_mib") for name in VARIANTS]
        assert all(_finite_positive(x) for x in numbers), row
        assert row["fused_kernel"]

    for key in ("fused_vs_matmul", "fused_speedup_vs_naive", "tiled_vs_matmul", "tiled_speedup_vs_naive"):
        goal = report["targets"][key]
        assert _finite_positive(goal["value"]) and _finite_positive(goal["target"]) and isinstance(goal["pass"], bool)


@pytest.mark.processes("runs benchmarks/bench_train.py --quick as a script")
def test_bench_train_quick_reports_models_and_chapter_4s_ensembles(tmp_path):
    out = tmp_path / "train.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick", "--json", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["model"] for r in report["rows"]] == ["mlp", "unet"]
    cases = [r["case"] for r in report["ensembles"]]
    assert len(cases) == 3 and cases[0].startswith("before") and cases[2].startswith("now")
    assert report["ensembles"][2]["members"] == 75 and all(r["samples_per_s_per_core"] > 0
                                                           for r in report["ensembles"])
    assert "fused / foreach AdamW" in done.stdout and "now / before" in done.stdout


@pytest.mark.notebook("bench_chapters.py executes chapter 2 at the smoke preset three times")
def test_chapter_benchmark_reports_cold_warm_and_busy_times_per_cell(tmp_path):
    out = tmp_path / "chapters.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_chapters.py"), "--preset", "smoke",
                           "--chapters", "ch2", "--busy", "--json", str(out)], timeout=600, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(out.read_text())
    assert row["chapter"] == "ch2" and all(row[f"{k}_s"] > 0 for k in ("cold", "warm", "cold_busy"))
    cells = row["cold_cells"]
    assert cells and all(s >= 0 for s, _ in cells) and [s for s, _ in cells] == sorted((s for s, _ in cells),
                                                                                      reverse=True)
    assert "beside a busy process" in done.stdout


@pytest.mark.processes("runs benchmarks/bench_gpu.py as a script without CUDA")
def test_bench_gpu_without_a_gpu_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--quick"],
                          capture_output=True, text=True, timeout=120, env={"CUDA_VISIBLE_DEVICES": "",
                                                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA GPU on this machine" in done.stdout


def test_bench_gpu_measures_and_reports_the_optimum_on_any_device():
    """The eps* and DDIM measurements of bench_gpu.py, run on the CPU at toy sizes: every path row and both DDIM
    dtypes come back with finite numbers, and the report prints them (the GPU run is then only a matter of sizes)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cpu = torch.device("cpu")
    rows = bench.optimum_vs_matmul(cpu, rounds=2, B=8, n=64, dim=16)
    assert [(r["dtype"], r["path"]) for r in rows] == [("float32", "fused"), ("float32", "tiled"),
                                                        ("float64", "fused")]  # on CUDA float64 runs tiled
    assert all(_finite_positive(r["eps_vs_matmul"]) and _finite_positive(r["tflops"]["eps*"]) for r in rows)
    assert all(r["pass"] == (r["eps_vs_matmul"] >= bench.OPTIMUM_TARGET) for r in rows)
    ddim = bench.ddim_with_optimum(cpu, 4, n=32, dim=8, steps=5)
    assert set(ddim["per_dtype"]) == {"float32", "float64"} and ddim["pass"] is None  # not the benchmark's sizes
    assert all(_finite_positive(v["seconds"]) for v in ddim["per_dtype"].values())
    lines = bench.optimum_report(rows, ddim)
    assert "float32, fused path" in lines[1] and "float64, fused path" in lines[3]
    assert "DDIM 5 steps x 4 samples with eps* of 32 images: float32" in lines[4]
    assert "target 1.5 s is for 100 steps x 1000 samples of 50000 images" in lines[4]


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.processes("runs benchmarks/gpu_check.py as a script without CUDA")
def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gpu_check: no CUDA GPU on this machine" in done.stdout
    assert not any(tmp_path.iterdir())  # nothing written


def test_gpu_check_plan_table_and_exit_code():
    check = _gpu_check()
    assert [(c, p) for c, p, _ in check.PLAN] == [(f"ch{k}", preset) for preset in ("smoke", "paper")
                                                  for k in range(1, 5)]
    assert all(extra.get("train_steps", 300) <= 300 for _, p, extra in check.PLAN)  # paper presets cut short
    assert check.select(["ch3:paper", "ch9:smoke"]) == [("ch3", "paper", {"train_steps": 300}), ("ch9", "smoke", {})]
    with pytest.raises(SystemExit, match="CHAPTER:PRESET"):
        check.select(["ch3"])
    ok = check.Row("ch2", "smoke", True, 12.34, {"gpu_peak_bytes": 3 * 2**29, "host_peak_bytes": 2**31})
    failed = check.Row("ch3", "paper, train_steps=300", False, 99.0, {"host_peak_bytes": 2**30})
    table = check.summary([ok, failed]).splitlines()
    assert table[0].split() == ["chapter", "preset", "status", "seconds", "peak", "GPU", "peak", "host"]
    assert table[1].split() == ["ch2", "smoke", "ok", "12.3", "1.50", "GiB", "2.00", "GiB"]
    assert table[2].split() == ["ch3", "paper,", "train_steps=300", "FAILED", "99.0", "-", "1.00", "GiB"]
    assert table[3] == "2 runs, 1 failed" and check.exit_code([ok, failed]) == 1
    assert check.exit_code([ok]) == 0 and check.summary([ok]).endswith("1 runs, all ok")
    assert check.exit_code([]) == 1  # nothing ran: not a pass


@pytest.mark.notebook("two fixture chapters through gpu_check.py's runner")
def test_gpu_check_runs_its_plan_through_the_runner_and_fails_on_any_failure(tmp_path):
    """The stand-in: --device cpu on a fixture book (DIFFGEN_BOOK_DIR) of one chapter that records its results and
    one that raises; the table shows both, with the first one's peaks, and the exit code is 1."""
    import nbformat

    book = tmp_path / "book"
    book.mkdir()
    cells = {"ch1_fine": ("from diffgen.claims.results import Claim, write_results\n"
                          "write_results('.', 'ch1', {}, [Claim('C1', 'abstract', 's', 'm', 1.0, None, '> 0', True)])"),
             "ch2_broken": "raise ValueError('broken on purpose')"}
    for stem, body in cells.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
            'device = "auto"  # d; one of: auto, cpu, cuda\nseed = 0  # s; int in [0, 9]'), nbformat.v4.new_code_cell(body)])
        nb.cells[0].metadata["tags"] = ["parameters"]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, book / f"{stem}.ipynb")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--no-bench",
                           "--only", "ch1:default", "--only", "ch2:default", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DIFFGEN_BOOK_DIR": str(book)})
    assert done.returncode == 1, done.stdout + done.stderr
    table = done.stdout[done.stdout.index("chapter "):].splitlines()
    fine, broken = table[1].split(), table[2].split()
    assert fine[:3] == ["ch1", "default", "ok"] and fine[4] == "-" and fine[6] == "GiB"  # no GPU used; the host peak
    assert broken[:3] == ["ch2", "default", "FAILED"]
    assert table[3] == "2 runs, 1 failed"
    assert "ValueError: broken on purpose" in done.stderr
    assert (tmp_path / "out" / "data" / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size == 10_000 * 3073
