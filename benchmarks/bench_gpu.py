"""Benchmark for a machine with CUDA GPUs: the empirical optimum and the U-Net at CIFAR-10 size.

What it measures, in one run (synthetic data of CIFAR-10's shape, 3 x 32 x 32, D = 3072):
1. eps* throughput at N = 50 000, D = 3072, B = 1024 queries (EmpiricalOptimum) as a fraction of the throughput of one
   [B, D] x [D, N] matmul of the same dtype in the same run (eps* counted as 4 B N D flops, the matmul as 2 B N D;
   both in IEEE precision, no TF32: denoisers.exact_matmuls), median over interleaved rounds: float32 on the fused
   kernel (the default on CUDA) and on the tiled loop, float64 on the tiled loop (the default). Target: 0.8.
2. DDIM, 100 steps x 1000 samples, with eps* of the 50 000 images: wall-clock seconds in float32 (target: 1.5 s on
   one H100/H200-class GPU) and in float64 (chapter 2's dtype).
3. Training images per second of chapter 3's paper plan as the chapter trains it: the "main" job of
   diffgen.chapters.plans.trained_gap_plan at the paper preset (its U-Nets, 2 seeds on S and on S', trained together at
   the preset's batch size), on synthetic images of CIFAR-10's shape and sizes, on 1 GPU and, when there are several, on
   all of them under torchrun (DistributedDataParallel splits the chapter's global batch). Model-FLOP utilisation =
   images/s x F / P, F = the U-Net's forward + backward FLOPs per image (torch.utils.flop_counter on the meta device
   at batch 1: convolutions, matmuls and attention), P = the same run's bf16 matmul rate (8192^3, median of 10);
   printed with the training levers that are on.

On a machine without a GPU it says so and exits 0.

Usage: .venv/bin/python benchmarks/bench_gpu.py [--quick] [--compile] [--json PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
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
PATHS = ((torch.float32, True), (torch.float32, False), (torch.float64, True))  # (dtype, fused) of each eps* row
WARM_STEPS = 10  # training steps before the clock starts (cuDNN autotuning, allocator, lazy init)


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
    from diffgen.diffusion.optimum import EmpiricalOptimum, exact_matmuls
    from diffgen.diffusion.schedule import linear_schedule

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
    from diffgen.diffusion.optimum import EmpiricalOptimum
    from diffgen.diffusion.samplers import sample_ddim
    from diffgen.diffusion.schedule import linear_schedule

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


def paper_plan_job(device):
    """Chapter 3's "main" training job at the paper preset, on synthetic images of CIFAR-10's shape and sizes."""
    from diffgen.chapters import registry
    from diffgen.chapters.plans import trained_gap_plan
    from diffgen.data.datasets import Dataset

    [run] = registry.plan_run(["ch3"], "paper")
    p = {name: run.value(name) for name in run.parameters}
    g = torch.Generator().manual_seed(2)
    images = lambda n: torch.rand(n, D, generator=g) * 2 - 1  # noqa: E731
    ds = Dataset("synthetic", images(p["n_train"]), images(p["n_heldout"]), SHAPE, p["seed"], images(p["n_train"]))
    return trained_gap_plan(p, device, dataset=ds).jobs["main"]


def train_flops_per_image(model_cfg) -> float:
    """Forward + backward FLOPs of one image through model_cfg.build(SHAPE), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = model_cfg.build(SHAPE)
        x, t = torch.zeros(1, D), torch.ones(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(x, t).sum().backward()
    return float(counter.get_total_flops())


def bf16_matmul_tflops(device, n: int = 8192, rounds: int = 10) -> float:
    """The bf16 matmul rate of this GPU in this run (TFLOP/s, median over rounds): the peak for the utilisation."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    return 2 * n**3 / statistics.median(timed(lambda: a @ b, device) for _ in range(rounds)) / 1e12


def vmapped_conv_dtype(device) -> str:
    """The dtype of a convolution of members stacked under vmap inside bf16 autocast: vmap rewrites conv2d before
    autocast sees it, and on the CPU it then stays float32; if it does on CUDA too, the members' convolutions train
    in float32 (TF32) rather than bf16, which caps the utilisation."""
    w, x = torch.randn(2, 8, 8, 3, 3, device=device), torch.randn(2, 4, 8, 16, 16, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        return str(torch.vmap(lambda w, x: torch.nn.functional.conv2d(x, w))(w, x).dtype).replace("torch.", "")


def train_images_per_second(steps: int, compile: bool) -> dict:
    """Images per second of chapter 3's paper plan in this process (all processes under torchrun), `steps` steps
    timed after WARM_STEPS."""
    from diffgen.base import distributed
    from diffgen.diffusion.train import train_ensemble

    device = distributed.init("cuda")
    job = paper_plan_job(device)
    cfg = dataclasses.replace(job.cfg, train_steps=WARM_STEPS + steps, checkpoint_every=10**6)
    stamps = {}

    def clock(step, losses):
        if step in (WARM_STEPS, WARM_STEPS + steps):
            torch.cuda.synchronize(device)
            stamps[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as cache:
        train_ensemble(job.model_cfg, job.objective, job.sets, job.shape, cfg, seeds=job.seeds, device=device,
                       cache_dir=Path(cache), progress=False, callback=clock, compile=compile)
    rate = steps * len(job.sets) * cfg.batch_size / (stamps[WARM_STEPS + steps] - stamps[WARM_STEPS])
    distributed.shutdown()
    return {"images_per_s": rate, "members": len(job.sets), "batch_size": cfg.batch_size}


def training_levers(compile: bool) -> str:
    from diffgen.diffusion.fit import FUSED_ADAMW

    on = ["members together (vmap)", "bf16 autocast (attention float32)", "cudnn.benchmark",
          "fused AdamW" if "cuda" in FUSED_ADAMW else "foreach AdamW"] + (["torch.compile"] if compile else [])
    off = ([] if compile else ["torch.compile (--compile)"]) + ["CUDA graphs", "channels_last (GroupNorm under vmap)"]
    return f"on: {', '.join(on)}; off: {', '.join(off)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 100 DDIM samples, 20 training steps")
    parser.add_argument("--compile", action="store_true", help="train with torch.compile (off in the chapters)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--train-worker", type=int, metavar="STEPS", help=argparse.SUPPRESS)  # under torchrun
    args = parser.parse_args()
    if args.train_worker:
        measured = train_images_per_second(args.train_worker, args.compile)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(measured))
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
    net_cfg = paper_plan_job("cpu").model_cfg
    train = {"model": repr(net_cfg), "flops_per_image": train_flops_per_image(net_cfg),
             "peak_tflops": bf16_matmul_tflops(device), "levers": training_levers(args.compile),
             "vmapped_conv_dtype": vmapped_conv_dtype(device), "runs": {}}
    report["train"] = train
    for n in sorted({1, gpus}):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
               "--train-worker", str(steps)] + (["--compile"] if args.compile else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-2000:] + done.stderr[-2000:], file=sys.stderr)
            return 1
        run = json.loads(done.stdout.strip().splitlines()[-1])
        run["mfu"] = run["images_per_s"] * train["flops_per_image"] / (train["peak_tflops"] * 1e12)
        train["runs"][str(n)] = run
        report["train_images_per_s"][str(n)] = run["images_per_s"]
    print(f"bench_gpu on {gpus} x {report['gpu']} (torch {torch.__version__})")
    print("\n".join(optimum_report(report["optimum"], report["ddim"])))
    print(f"  ch3 paper plan training ({train['model']}, {train['flops_per_image'] / 1e9:.1f} GFLOP per image "
          f"forward + backward; levers {train['levers']}; vmapped convolutions under autocast compute in "
          f"{train['vmapped_conv_dtype']}):")
    for n, run in train["runs"].items():
        print(f"    {n} GPU(s), {run['members']} nets together at batch {run['batch_size']}: "
              f"{run['images_per_s']:.0f} images/s, model-FLOP utilisation {run['mfu']:.1%} of the same run's bf16 "
              f"matmul rate ({train['peak_tflops']:.0f} TFLOP/s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
