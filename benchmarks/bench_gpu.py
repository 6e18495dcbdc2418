"""Benchmark for a machine with CUDA GPUs: the empirical optimum and the U-Net at CIFAR-10 size.

What it measures, in one run (synthetic data of CIFAR-10's shape, 3 x 32 x 32, D = 3072):
1. eps* throughput at N = 50 000, D = 3072 (EmpiricalOptimum, float32, torch's fused attention kernel on CUDA) as a
   fraction of the throughput of one [B, D] x [D, N] float32 matmul in the same run (eps* counted as 4 B N D flops,
   the matmul as 2 B N D), median over interleaved rounds.
2. DDIM, 100 steps x 1000 samples, with eps* of the 50 000 images: wall-clock seconds (target: 60 s on one
   H100-class GPU).
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
DDIM_STEPS, DDIM_SAMPLES, DDIM_TARGET_S = 100, 1000, 60.0
BATCH = 128


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
    o, d = report["optimum"], report["ddim"]
    print(f"bench_gpu on {gpus} x {report['gpu']} (torch {torch.__version__})")
    print(f"  eps* N = {N}, D = {D}, B = {o['B']}: {o['eps_vs_matmul']:.2f} of same-run matmul throughput "
          f"({o['tflops']['eps*']:.1f} vs {o['tflops']['matmul']:.1f} TFLOP/s)")
    print(f"  DDIM {d['steps']} steps x {d['samples']} samples with eps* of {N} images: {d['seconds']:.1f} s "
          f"(target {DDIM_TARGET_S:.0f} s for {DDIM_SAMPLES} samples)")
    for n, rate in report["train_images_per_s"].items():
        print(f"  U-Net (ch3 paper preset) training on {n} GPU(s): {rate:.0f} images/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
