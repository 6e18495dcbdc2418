"""Benchmark for a machine with CUDA GPUs: the empirical optimum and the U-Net at CIFAR-10 size.

What it measures, in one run (synthetic data of CIFAR-10's shape, 3 x 32 x 32, D = 3072):
1. eps* throughput at N = 50 000, D = 3072, B = 1024 queries (EmpiricalOptimum) as a fraction of the throughput of one
   [B, D] x [D, N] matmul of the same dtype in the same run (eps* counted as 4 B N D flops, the matmul as 2 B N D;
   both in IEEE precision, no TF32: denoisers.exact_matmuls), median over interleaved rounds: float32 on the fused
   kernel (the default on CUDA) and on the tiled loop, float64 on the tiled loop (the default). Target: 0.8.
2. DDIM, 100 steps x 1000 samples, with eps* of the 50 000 images: wall-clock seconds in float32 (target: 1.5 s on
   one H100/H200-class GPU) and in float64 (chapter 2's dtype).
3. Training images per second of chapter 3's `paper` U-Net (diffgen.plans.net_config("unet", 64, (3, 32, 32)),
   bf16 autocast) at batch 128 per step, on 1 GPU and, when there are several, on all of them under torchrun
   (DistributedDataParallel; the global batch is 128 x N, so each GPU keeps a batch of 128).

On a machine without a GPU it says so and exits 0.

Usage: .venv/bin/python benchmarks/bench_gpu.py [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

N, D, SHAPE = 50_000, 3072, (3, 32, 32)
DDIM_STEPS, DDIM_SAMPLES, DDIM_TARGET_S = 100, 1000, 1.5
OPTIMUM_TARGET = 0.8  # eps* throughput over same-run matmul throughput
BATCH = 128
PATHS = ((torch.float32, True), (torch.float32, False), (torch.float64, True))  # (dtype, fused) of each eps* row


def timed(fn, device) -> float:
    """Seconds of one call of fn, synchronised (on CUDA)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda device: None)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def optimum_vs_matmul(device, rounds: int, B: int = 1024, n: int = N, dim: int = D) -> list[dict]:
    """One row per (dtype, fused) of PATHS: the path that ran, eps* over same-run matmul throughput, TFLOP/s (n
    training points of dim values: N and D but in the CPU test of this script)."""
    from diffgen.denoisers import EmpiricalOptimum, exact_matmuls
    from diffgen.schedule import linear_schedule

    rows = []
    for dtype, fused in PATHS:
        g = torch.Generator(device=device).manual_seed(0)
        train = torch.randn(n, dim, device=device, generator=g, dtype=dtype).clamp(-1, 1)
        xt = torch.randn(B, dim, device=device, generator=g, dtype=dtype)
        t = torch.full((B,), 500, device=device)
        opt = EmpiricalOptimum(train, linear_schedule(), dtype=dtype, fused=fused)
        out = torch.empty(B, n, device=device, dtype=dtype)

        def matmul():
            with exact_matmuls(device.type):
                torch.matmul(xt, train.T, out=out)

        runs = {"eps*": lambda: opt(xt, t), "matmul": matmul}
        for fn in runs.values():
            fn()
        ratios, seconds = [], {name: [] for name in runs}
        for _ in range(rounds):
            s = {name: timed(fn, device) for name, fn in runs.items()}
            for name, v in s.items():
                seconds[name].append(v)
            ratios.append(2 * s["matmul"] / s["eps*"])  # (4 B N D / s_eps*) / (2 B N D / s_matmul)
        ratio = statistics.median(ratios)
        rows.append({"dtype": str(dtype).removeprefix("torch."), "fused": fused, "path": opt.path(device),
                     "B": B, "N": n, "D": dim, "eps_vs_matmul": ratio, "target": OPTIMUM_TARGET,
                     "pass": ratio >= OPTIMUM_TARGET,
                     "tflops": {"eps*": 4 * B * n * dim / statistics.median(seconds["eps*"]) / 1e12,
                                "matmul": 2 * B * n * dim / statistics.median(seconds["matmul"]) / 1e12}})
        del train, xt, opt, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def ddim_with_optimum(device, samples: int, n: int = N, dim: int = D, steps: int = DDIM_STEPS) -> dict:
    """Seconds of DDIM (`steps` steps, `samples` samples) under eps* of n images, per dtype of the optimum."""
    from diffgen import randn, sample_generators
    from diffgen.denoisers import EmpiricalOptimum
    from diffgen.samplers import sample_ddim
    from diffgen.schedule import linear_schedule

    sched = linear_schedule()
    train = torch.rand(n, dim, device=device, generator=torch.Generator(device=device).manual_seed(1)) * 2 - 1
    x_T = randn(sample_generators(0, samples), dim, device=device)
    out = {}
    for dtype in (torch.float32, torch.float64):
        opt = EmpiricalOptimum(train, sched, dtype=dtype)
        opt(x_T[:8], 500)  # kernels loaded, workspaces allocated
        seconds = timed(lambda: sample_ddim(opt, x_T, sched, steps), device)
        out[str(dtype).removeprefix("torch.")] = {"path": opt.path(device), "seconds": seconds}
        del opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    full = (samples, n, steps) == (DDIM_SAMPLES, N, DDIM_STEPS)
    return {"samples": samples, "N": n, "steps": steps, "target_s": DDIM_TARGET_S, "per_dtype": out,
            "pass": out["float32"]["seconds"] <= DDIM_TARGET_S if full else None}


def optimum_report(optimum: list[dict], ddim: dict) -> list[str]:
    """The lines bench_gpu prints for the empirical optimum (throughput ratios and DDIM seconds of one run)."""
    met = lambda ok: "met" if ok else "missed"  # noqa: E731
    first = optimum[0]
    lines = [f"  eps* N = {first['N']}, D = {first['D']}, B = {first['B']}, against same-run matmul of the same dtype "
             f"(IEEE precision, no TF32; target {OPTIMUM_TARGET}):"]
    for row in optimum:
        lines.append(f"    {row['dtype']}, {row['path']} path: {row['eps_vs_matmul']:.2f} of matmul throughput "
                     f"({row['tflops']['eps*']:.1f} vs {row['tflops']['matmul']:.1f} TFLOP/s): {met(row['pass'])}")
    seconds = {dtype: f"{v['seconds']:.2f} s ({v['path']} path)" for dtype, v in ddim["per_dtype"].items()}
    target = (f"target {DDIM_TARGET_S} s for float32: {met(ddim['pass'])}" if ddim["pass"] is not None else
              f"target {DDIM_TARGET_S} s is for {DDIM_STEPS} steps x {DDIM_SAMPLES} samples of {N} images")
    lines.append(f"  DDIM {ddim['steps']} steps x {ddim['samples']} samples with eps* of {ddim['N']} images: float32 "
                 f"{seconds['float32']}, float64 {seconds['float64']} ({target})")
    return lines


def train_images_per_second(steps: int) -> float:
    """Images per second of the U-Net's training loop in this process (all processes under torchrun)."""
    from diffgen import distributed
    from diffgen.objectives import EpsLoss
    from diffgen.plans import net_config
    from diffgen.schedule import linear_schedule
    from diffgen.train import TrainConfig, train_ensemble

    device = distributed.init("cuda")
    world = distributed.world_size()
    data = torch.rand(5000, D) * 2 - 1
    cfg = TrainConfig(train_steps=steps + 10, batch_size=BATCH * world, checkpoint_every=10 ** 6)
    stamps = {}

    def clock(step, losses):
        if step in (10, steps + 10):
            torch.cuda.synchronize(device)
            stamps[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as cache:
        train_ensemble(net_config("unet", 64, SHAPE), EpsLoss(linear_schedule()), [data], SHAPE, cfg, device=device,
                       cache_dir=Path(cache), progress=False, callback=clock)
    rate = steps * BATCH * world / (stamps[steps + 10] - stamps[10])
    distributed.shutdown()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 100 DDIM samples, 20 training steps")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--train-worker", type=int, metavar="STEPS", help=argparse.SUPPRESS)  # under torchrun
    args = parser.parse_args()
    if args.train_worker:
        rate = train_images_per_second(args.train_worker)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps({"images_per_s": rate}))
        return 0
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to measure.")
        return 0
    device, gpus = torch.device("cuda"), torch.cuda.device_count()
    steps = 20 if args.quick else 200
    report = {"gpu": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__,
              "optimum": optimum_vs_matmul(device, rounds=3 if args.quick else 10),
              "ddim": ddim_with_optimum(device, 100 if args.quick else DDIM_SAMPLES),
              "train_images_per_s": {}}
    for n in sorted({1, gpus}):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
               "--train-worker", str(steps)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:] + done.stderr[-2000:], file=sys.stderr)
            return 1
        report["train_images_per_s"][str(n)] = json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]
    print(f"bench_gpu on {gpus} x {report['gpu']} (torch {torch.__version__})")
    print("\n".join(optimum_report(report["optimum"], report["ddim"])))
    for n, rate in report["train_images_per_s"].items():
        print(f"  U-Net (ch3 paper preset) training on {n} GPU(s): {rate:.0f} images/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
