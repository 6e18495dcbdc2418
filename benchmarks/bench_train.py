"""Benchmark of diffgen.diffusion.train.train: training throughput of the default models and of chapter 4's
ensembles, measured in one run.

What it measures: samples per second (batch_size x optimizer steps per second) of the full training loop of
`diffgen.diffusion.train.train` -- batch draw, EpsLoss forward, backward, gradient clipping, AdamW, EMA update,
checkpoints -- for MLPConfig() on digits (D = 64) and UNetConfig() on digits as images (1, 8, 8), batch 128. The clock
runs between the callbacks of step `warmup` and step `warmup + steps` (the first steps pay for lazy initialisation and
are left out). Training goes to a temporary cache folder that is deleted afterwards, so nothing is reused.
The two models are timed alternately in rounds (median over rounds), so load from other processes hits both alike.

Ensembles (train.train_ensemble, MLP of width 96 on digits, one CPU thread: samples per second per core): chapter 4
as it trained before (one objective per ensemble of 10 members at batch 128, AdamW foreach), the same with AdamW
fused (the CPU default now), and as it trains now (75 members of three objectives and two reruns in one ensemble, at
batch 32). Timed alternately in rounds like the models; the ratios are of one run.

Usage: .venv/bin/python benchmarks/bench_train.py [--quick] [--json PATH] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from diffgen import resolve_device
from diffgen.data.datasets import load_dataset
from diffgen.diffusion import fit
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig, UNetConfig
from diffgen.diffusion.objectives import EpsLoss, ForwardTimeLoss, WeightedEpsLoss
from diffgen.diffusion.schedule import linear_schedule
from diffgen.diffusion.train import train, train_ensemble

MODELS = {"mlp": MLPConfig(), "unet": UNetConfig()}  # name -> config, both on digits (1, 8, 8) / D = 64
BATCH = 128


def time_run(model_cfg, data, shape, steps: int, warmup: int, device, seed: int) -> float:
    """Seconds per optimizer step of train() between the callbacks of steps `warmup` and `warmup + steps`."""
    stamps = {}

    def clock(step, loss):
        if step in (warmup, warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps[step] = time.perf_counter()

    cfg = TrainConfig(train_steps=warmup + steps, batch_size=BATCH, checkpoint_every=warmup + steps, seed=seed)
    with tempfile.TemporaryDirectory() as folder:
        train(model_cfg, EpsLoss(linear_schedule()), data, shape, cfg, device=device, cache_dir=folder,
              progress=False, callback=clock)
    return (stamps[warmup + steps] - stamps[warmup]) / steps


def time_ensemble(objectives, sets, shape, batch: int, steps: int, warmup: int, device, fused: bool) -> float:
    """Seconds per optimizer step of train_ensemble (MLP width 96) with members' objectives and sets, AdamW fused or
    foreach."""
    stamps = {}

    def clock(step, losses):
        if step in (warmup, warmup + steps):
            stamps[step] = time.perf_counter()

    before = fit.FUSED_ADAMW
    fit.FUSED_ADAMW = (device.type,) if fused else ()
    try:
        cfg = TrainConfig(train_steps=warmup + steps, batch_size=batch, checkpoint_every=warmup + steps)
        with tempfile.TemporaryDirectory() as folder:
            train_ensemble(MLPConfig(hidden=96), objectives, sets, shape, cfg, seeds=[m % 5 for m in range(len(sets))],
                           device=device, cache_dir=folder, progress=False, callback=clock)
    finally:
        fit.FUSED_ADAMW = before
    return (stamps[warmup + steps] - stamps[warmup]) / steps


def ensembles(ds, device, steps: int, warmup: int, rounds: int) -> list[dict]:
    """Chapter 4's training before and now (module docstring), one thread; samples per second per core."""
    sched = linear_schedule()
    new = ForwardTimeLoss(sched, "uniform")
    objectives = [EpsLoss(sched), new, WeightedEpsLoss(new), EpsLoss(sched), EpsLoss(sched)]
    sizes = (20, 40, 400)
    mixed = [objectives[o] for o in range(5) for n in sizes for _ in range(5)]
    mixed_sets = [ds.train[:n] for _ in range(5) for n in sizes for _ in range(5)]
    cases = {"before: 1 objective, 10 members, batch 128, AdamW foreach": ([objectives[0]] * 10,
                                                                           [ds.train[:40]] * 10, 128, False),
             "1 objective, 10 members, batch 128, AdamW fused": ([objectives[0]] * 10, [ds.train[:40]] * 10, 128,
                                                                  True),
             "now: 3 objectives + 2 reruns, 75 members, batch 32, fused": (mixed, mixed_sets, 32, True)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = {name: [] for name in cases}
        for _ in range(rounds):
            for name, (objs, sets, batch, fused) in cases.items():
                times[name].append(time_ensemble(objs, sets, ds.shape, batch, steps, warmup, device, fused))
    finally:
        torch.set_num_threads(threads)
    rows = []
    for name, (objs, sets, batch, fused) in cases.items():
        sec = statistics.median(times[name])
        rows.append({"case": name, "members": len(sets), "batch_size": batch, "ms_per_step": 1e3 * sec,
                     "member_steps_per_s": len(sets) / sec, "samples_per_s_per_core": len(sets) * batch / sec})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps, one round (smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    steps, warmup, rounds = (10, 3, 1) if args.quick else (100, 10, 3)
    ds = load_dataset("digits", 512)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads ({os.cpu_count()} CPUs), device {device}, "
          f"batch {BATCH}, {steps} timed steps after {warmup} warm-up steps, median of {rounds} alternating rounds")

    times = {name: [] for name in MODELS}
    for r in range(rounds):
        for name, model_cfg in MODELS.items():
            times[name].append(time_run(model_cfg, ds.train, ds.shape, steps, warmup, device, seed=r))

    rows = []
    print(f"\n  {'model':<6}{'params':>10}{'ms/step':>10}{'samples/s':>12}{'s/1000 steps':>14}")
    for name, model_cfg in MODELS.items():
        sec = statistics.median(times[name])
        params = sum(p.numel() for p in model_cfg.build(ds.shape).parameters())
        row = {"model": name, "config": repr(model_cfg), "params": params, "batch_size": BATCH,
               "steps_timed": steps, "rounds": rounds, "ms_per_step": 1e3 * sec, "samples_per_s": BATCH / sec,
               "s_per_1000_steps": 1e3 * sec}
        rows.append(row)
        print(f"  {name:<6}{params:>10}{row['ms_per_step']:>10.2f}{row['samples_per_s']:>12.0f}"
              f"{row['s_per_1000_steps']:>14.1f}")
    print(f"\n  unet / mlp time per step: {rows[1]['ms_per_step'] / rows[0]['ms_per_step']:.1f}x")

    ens = ensembles(ds, device, steps // 2 if device.type == "cpu" else steps, warmup, rounds)
    print(f"\n  chapter 4's ensembles, one thread:\n  {'case':<60}{'members':>8}{'ms/step':>9}"
          f"{'member-steps/s':>16}{'samples/s/core':>16}")
    for row in ens:
        print(f"  {row['case']:<60}{row['members']:>8}{row['ms_per_step']:>9.1f}{row['member_steps_per_s']:>16.0f}"
              f"{row['samples_per_s_per_core']:>16.0f}")
    print(f"\n  fused / foreach AdamW, samples per second: "
          f"{ens[1]['samples_per_s_per_core'] / ens[0]['samples_per_s_per_core']:.2f}x; now / before, member-steps "
          f"per second: {ens[2]['member_steps_per_s'] / ens[0]['member_steps_per_s']:.2f}x, samples per second: "
          f"{ens[2]['samples_per_s_per_core'] / ens[0]['samples_per_s_per_core']:.2f}x")

    if args.json:
        report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device), "rows": rows,
                  "ensembles": ens}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
