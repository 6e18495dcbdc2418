"""Several processes on CPU: the exact log-sum-exp merge of a sharded empirical optimum and DDP training (Gloo, two
processes under torchrun) against one process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffgen.base import distributed
from diffgen.diffusion.optimum import EmpiricalOptimum, ShardedOptimum, x0_star_reference
from diffgen.diffusion.train import train_ensemble

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

WORKER = Path(worker.__file__)


def torchrun(task: str, out: Path, nproc: int = 2) -> dict:
    """Run the worker's task in nproc Gloo processes; rank 0's results."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(WORKER), task, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out / f"{task}.pt", weights_only=True)


def test_merge_partials_is_the_softmax_mean_of_the_union():
    g = torch.Generator().manual_seed(0)
    logits, values = torch.randn(5, 30, generator=g, dtype=torch.float64) * 40, torch.randn(30, 3, generator=g,
                                                                                           dtype=torch.float64)
    cuts = [(0, 0), (0, 7), (7, 30)]  # an empty shard, a small and a large one
    m, l, acc = [], [], []
    for a, b in cuts:
        part = logits[:, a:b]
        top = part.max(1).values if b > a else torch.full((5,), -torch.inf, dtype=torch.float64)
        p = (part - top[:, None]).exp() if b > a else part
        m.append(top), l.append(p.sum(1)), acc.append(p @ values[a:b])
    merged = distributed.merge_partials(torch.stack(m), torch.stack(l), torch.stack(acc))
    torch.testing.assert_close(merged, torch.softmax(logits, 1) @ values, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"m \[R, B\]"):
        distributed.merge_partials(torch.stack(m)[0], torch.stack(l), torch.stack(acc))


def test_one_process_is_the_plain_optimum():
    train, xt, _ = worker.optimum_case()
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    sharded = ShardedOptimum(train, worker.SCHED, dtype=torch.float64, tile=64)
    plain = EmpiricalOptimum(train, worker.SCHED, dtype=torch.float64, fused=False, tile=64)
    torch.testing.assert_close(sharded.x0_star(xt, 100), plain.x0_star(xt, 100), rtol=0, atol=1e-12)
    torch.testing.assert_close(sharded(xt, 100), plain(xt, 100), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="shard must be a non-empty"):
        ShardedOptimum(train[:0], worker.SCHED)


@pytest.mark.processes("torchrun: two Gloo processes")
def test_sharded_optimum_on_two_processes_matches_float64_reference(tmp_path):
    got = torchrun("optimum", tmp_path)
    assert got["world"] == 2
    train, xt, _ = worker.optimum_case()
    ref = x0_star_reference(xt, train, float(worker.SCHED.abar[100]))
    spread = float(train.std())
    assert float((got["torch.float64"] - ref).abs().max()) < 1e-9 * spread
    assert float((got["torch.float32"].double() - ref).abs().max()) < 1e-3 * spread  # centred on the global mean
    # the yardstick: averaging the shards' own optima is not the optimum of the union
    assert float((got["mean of shard means"] - ref).abs().max()) > 0.1 * spread


@pytest.mark.processes("torchrun: two Gloo processes, twice")
def test_ddp_training_matches_one_process_and_resumes_bit_for_bit(tmp_path):
    model_cfg, objective, sets, shape, cfg, seeds = worker.training_case()
    single = train_ensemble(model_cfg, objective, sets, shape, cfg, seeds=seeds, device="cpu",
                            cache_dir=tmp_path / "single", progress=False)
    ddp = torchrun("ddp", tmp_path)
    assert ddp["world"] == 2 and ddp["rows"] == [cfg.batch_size // 2]  # each process half of the global batch
    assert ddp["name"] == single.path.name  # the same cache key: a chapter loads what torchrun trained
    assert (tmp_path / "ddp" / "train" / single.path.name).exists()
    assert not list((tmp_path / "ddp" / "train").glob("*.ckpt"))
    for k, v in single.raw.items():  # the same global batch each step: equal up to float rounding
        torch.testing.assert_close(ddp["raw"][k], v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ddp["losses"], single.losses, rtol=1e-4, atol=1e-6)
    resumed = torchrun("interrupted", tmp_path)  # stopped at step 6, resumed from the checkpoint of step 4
    for k, v in ddp["raw"].items():
        assert torch.equal(resumed["raw"][k], v), k
    assert torch.equal(resumed["losses"], ddp["losses"])
    assert sorted(resumed["snapshots"]) == sorted(ddp["snapshots"]) == [4, 8, 12]
    for step, state in ddp["snapshots"].items():
        assert all(torch.equal(resumed["snapshots"][step][k], v) for k, v in state.items())


def test_batch_must_split_evenly_across_processes(monkeypatch):
    model_cfg, objective, sets, shape, cfg, seeds = worker.training_case()
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"batch_size \(16\) must be divisible by the number of processes \(3\)"):
        train_ensemble(model_cfg, objective, sets, shape, cfg, seeds=seeds, device="cpu", progress=False)
