"""Benchmark for a machine with CUDA GPUs: the empirical optimum and the U-Net at CIFAR-10 size.

What it measures, in one run (synthetic data of CIFAR-10's shape, 3 x 32 x 32, D = 3072):
1. eps* throughput at N = 50 000, D = 3072 (EmpiricalOptimum, float32, torch's fused attention kernel on CUDA) as a
   fraction of the throughput of one [B, D] x [D, N] float32 matmul in the same run (eps* counted as 4 B N D flops,
   the matmul as 2 B N D), median over interleaved rounds.
2. DDIM, 100 steps x 1000 samples, with eps* of the 50 000 images: wall-clock seconds (target: 60 s on one
   H100-class GPU).
3. Training images per second of chapter 3's paper plan as the chapter trains it: the "main" job of
   diffgen.plans.trained_gap_plan at the paper preset (its U-Nets, 2 seeds on S and on S', trained together at the
   preset's batch size), on synthetic images of CIFAR-10's shape and sizes, on 1 GPU and, when there are several, on
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
DDIM_STEPS, DDIM_SAMPLES, DDIM_TARGET_S = 100, 1000, 60.0
WARM_STEPS = 10  # training steps before the clock starts (cuDNN autotuning, allocator, lazy init)


def timed(fn, device) -> float:
    """Seconds of one call of fn, synchronised."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def optimum_vs_matmul(device, rounds: int, B: int = 1024) -> dict:
    from diffgen.denoisers import EmpiricalOptimum
    from diffgen.schedule import linear_schedule

    g = torch.Generator(device=device).manual_seed(0)
    train = torch.randn(N, D, device=device, generator=g).clamp(-1, 1)
    xt = torch.randn(B, D, device=device, generator=g)
    t = torch.full((B,), 500, device=device)
    opt = EmpiricalOptimum(train, linear_schedule())
    out = torch.empty(B, N, device=device)
    runs = {"eps*": lambda: opt(xt, t), "matmul": lambda: torch.matmul(xt, train.T, out=out)}
    for fn in runs.values():
        fn()
    ratios, seconds = [], {name: [] for name in runs}
    for _ in range(rounds):
        s = {name: timed(fn, device) for name, fn in runs.items()}
        for name, v in s.items():
            seconds[name].append(v)
        ratios.append((4 * B * N * D / s["eps*"]) / (2 * B * N * D / s["matmul"]))
    tflops = {name: 4 * B * N * D / statistics.median(v) / 1e12 if name == "eps*" else
              2 * B * N * D / statistics.median(v) / 1e12 for name, v in seconds.items()}
    return {"B": B, "N": N, "D": D, "eps_vs_matmul": statistics.median(ratios), "tflops": tflops}


def ddim_with_optimum(device, samples: int) -> dict:
    from diffgen import randn, sample_generators
    from diffgen.denoisers import EmpiricalOptimum
    from diffgen.samplers import sample_ddim
    from diffgen.schedule import linear_schedule

    sched = linear_schedule()
    train = torch.rand(N, D, device=device, generator=torch.Generator(device=device).manual_seed(1)) * 2 - 1
    opt = EmpiricalOptimum(train, sched)
    x_T = randn(sample_generators(0, samples), D, device=device)
    seconds = timed(lambda: sample_ddim(opt, x_T, sched, DDIM_STEPS), device)
    return {"samples": samples, "steps": DDIM_STEPS, "seconds": seconds, "target_s": DDIM_TARGET_S,
            "pass": seconds <= DDIM_TARGET_S if samples == DDIM_SAMPLES else None}


def paper_plan_job(device):
    """Chapter 3's "main" training job at the paper preset, on synthetic images of CIFAR-10's shape and sizes."""
    from diffgen import chapters
    from diffgen.data import Dataset
    from diffgen.plans import trained_gap_plan

    [run] = chapters.plan_run(["ch3"], "paper")
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
    from diffgen import distributed
    from diffgen.train import train_ensemble

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
    from diffgen.train import FUSED_ADAMW

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
    o, d = report["optimum"], report["ddim"]
    print(f"bench_gpu on {gpus} x {report['gpu']} (torch {torch.__version__})")
    print(f"  eps* N = {N}, D = {D}, B = {o['B']}: {o['eps_vs_matmul']:.2f} of same-run matmul throughput "
          f"({o['tflops']['eps*']:.1f} vs {o['tflops']['matmul']:.1f} TFLOP/s)")
    print(f"  DDIM {d['steps']} steps x {d['samples']} samples with eps* of {N} images: {d['seconds']:.1f} s "
          f"(target {DDIM_TARGET_S:.0f} s for {DDIM_SAMPLES} samples)")
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
