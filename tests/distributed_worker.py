"""Run under torchrun by tests/test_distributed.py: `python -m torch.distributed.run --standalone --nproc_per_node=2
tests/distributed_worker.py TASK OUT_DIR`. Rank 0 writes its results to OUT_DIR."""
import sys
from pathlib import Path

import torch

from diffgen.base import distributed
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig
from diffgen.diffusion.objectives import EpsLoss
from diffgen.diffusion.optimum import EmpiricalOptimum, ShardedOptimum
from diffgen.diffusion.schedule import linear_schedule
from diffgen.diffusion.train import train_ensemble

SCHED = linear_schedule()


def optimum_case():
    """Training data far from the origin, queries, and where each of two ranks cuts it (shards of unequal size)."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(301, 16, generator=g, dtype=torch.float64) + 1000
    xt = torch.sqrt(SCHED.abar[100]) * train[:8] + torch.randn(8, 16, generator=g, dtype=torch.float64)
    return train, xt, [0, 100, 301]


def training_case():
    g = torch.Generator().manual_seed(1)
    sets = [torch.randn(40, 4, generator=g), torch.randn(25, 4, generator=g)]
    cfg = TrainConfig(train_steps=12, batch_size=16, checkpoint_every=4, warmup=3)
    return MLPConfig(hidden=16, depth=1), EpsLoss(SCHED), sets, (4,), cfg, (0, 5)


class Stop(Exception):
    pass


def main(task: str, out: Path) -> None:
    distributed.init("cpu")
    r = distributed.rank()
    if task == "optimum":
        train, xt, cut = optimum_case()
        x0 = {str(dtype): ShardedOptimum(train[cut[r]:cut[r + 1]].to(dtype), SCHED, dtype=dtype, tile=64)
              .x0_star(xt.to(dtype), 100) for dtype in (torch.float64, torch.float32)}
        naive = EmpiricalOptimum(train[cut[r]:cut[r + 1]], SCHED, dtype=torch.float64).x0_star(xt, 100)
        x0["mean of shard means"] = distributed.all_reduce_mean(naive)
        x0["world"] = distributed.world_size()
    else:
        model_cfg, objective, sets, shape, cfg, seeds = training_case()
        cache = out / task
        rows = set()  # rows of the batch this process computes each step (an attribute, not a field: same key)

        def recording(model, x0, draw):
            rows.add(x0.shape[1])
            return type(objective).loss_from(objective, model, x0, draw)
        object.__setattr__(objective, "loss_from", recording)
        if task == "interrupted":
            def stop_at_6(step, losses):
                if step == 6:
                    raise Stop
            try:
                train_ensemble(model_cfg, objective, sets, shape, cfg, seeds=seeds, device="cpu", cache_dir=cache,
                               progress=False, callback=stop_at_6)
            except Stop:
                pass
            else:
                raise AssertionError("the callback did not stop training")
            assert len(list((cache / "train").glob("*.ckpt"))) == 1, "no checkpoint left to resume from"
        run = train_ensemble(model_cfg, objective, sets, shape, cfg, seeds=seeds, device="cpu", cache_dir=cache,
                             progress=False)
        x0 = {"raw": run.raw, "snapshots": run.snapshots, "losses": run.losses, "name": run.path.name,
              "world": distributed.world_size(), "rows": sorted(rows)}
    if distributed.is_main():
        torch.save(x0, out / f"{task}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
