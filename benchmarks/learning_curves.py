"""Learning curves of chapter 4's nets, to choose its schedule and batch size by measurement: the MLP of width 96 on
digits at n = 20, 40 and 400 (3 seeds each, one batched ensemble), trained with one objective, learning rate, batch
size, step count, decay, width and EMA decay; at 12 evenly spaced EMA snapshots the mean over seeds of the relative
gap to eps*, the standard loss on held-out images and the copy rate of 256 DDIM samples (x0 clamped to [-1, 1]), the
curves chapter 4 measures. One thread; training goes to a temporary cache folder.

Usage: .venv/bin/python benchmarks/learning_curves.py --objective std --lr 1e-2 --batch 128 --steps 2000 --decay cosine
       [--width 96] [--ema 0.999] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from diffgen.chapters.plans import snapshot_interval
from diffgen.chapters.training_curves import member_probe, objective_curves
from diffgen.data.datasets import load_dataset
from diffgen.diffusion.fit import DECAYS, TrainConfig
from diffgen.diffusion.models import MLPConfig
from diffgen.diffusion.objectives import EpsLoss, ForwardTimeLoss
from diffgen.diffusion.schedule import linear_schedule
from diffgen.diffusion.train import train_ensemble

SIZES, SEEDS = (20, 40, 400), (0, 1, 2)


def curves(objective: str, lr: float, batch: int, steps: int, decay: str, width: int = 96,
           ema: float = 0.999) -> dict:
    """{"train_s", "eval_s", "train_steps", n: {"gap", "heldout_loss", "rate"} (means over seeds per snapshot)}."""
    sched = linear_schedule()
    ds = load_dataset("digits", max(SIZES), 300, seed=0)
    members = [(n, s) for n in SIZES for s in SEEDS]
    sets = [ds.train[:n] for n, _ in members]
    loss = EpsLoss(sched) if objective == "std" else ForwardTimeLoss(sched, "uniform")
    cfg = TrainConfig(train_steps=steps, batch_size=batch, lr=lr, decay=decay, ema_decay=ema,
                      checkpoint_every=snapshot_interval(steps, 12))  # the last interval a full one
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        run = train_ensemble(MLPConfig(hidden=width), loss, sets, ds.shape, cfg, seeds=[s for _, s in members],
                             device="cpu", cache_dir=folder, progress=False)
        trained = time.perf_counter()
        times = torch.unique(torch.logspace(0, 3, 16).round().long()).tolist()
        probe = member_probe(sets, sched, times, n_probe=128, seed=0)
        c = objective_curves(run, sets, ds.heldout, None, sched, probe, n_samples=256, steps=50, seed=0,
                                         clip=(-1.0, 1.0))
    out = {"train_s": trained - start, "eval_s": time.perf_counter() - trained, "train_steps": list(c.train_steps)}
    for n in SIZES:
        m = [i for i, (size, _) in enumerate(members) if size == n]
        out[n] = {k: getattr(c, k)[m].mean(0).round(4).tolist() for k in ("gap", "heldout_loss", "rate")}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=("std", "new"), default="std", help="standard or forward-time (uniform)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--decay", choices=DECAYS, default="cosine")
    parser.add_argument("--width", type=int, default=96, help="hidden width of the MLP")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0: the raw weights)")
    parser.add_argument("--json", metavar="PATH", help="also write the curves as JSON to PATH")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = curves(args.objective, args.lr, args.batch, args.steps, args.decay, args.width, args.ema)
    print(f"{args.objective}, lr {args.lr:g} ({args.decay}), batch {args.batch}, {args.steps} steps, width "
          f"{args.width}, EMA {args.ema:g}: training {out['train_s']:.0f} s, curves {out['eval_s']:.0f} s (one thread)")
    print(f"  {'step':<22}" + " ".join(f"{s:>6d}" for s in out["train_steps"]))
    for n in SIZES:
        for key in ("gap", "heldout_loss", "rate"):
            print(f"  n = {n:<4} {key:<13}" + " ".join(f"{v:6.3f}" for v in out[n][key]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**vars(args), **{str(k): v for k, v in out.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
