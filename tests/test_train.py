"""Training: the loss falls; a trained net approaches the empirical optimum eps*; runs are deterministic; an
interrupted run resumes bit for bit; finished runs come from the cache; corrupt artifacts are rebuilt."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from diffgen.data.datasets import load_dataset
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig, UNetConfig
from diffgen.diffusion.objectives import EpsLoss
from diffgen.diffusion.optimum import EmpiricalOptimum
from diffgen.diffusion.schedule import linear_schedule
from diffgen.diffusion.train import TrainResult, train, train_key
from diffgen.measures.metrics import gap_on_forward_samples

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
TINY = MLPConfig(hidden=16, depth=1, time_dim=8)
TINY_CFG = TrainConfig(train_steps=60, batch_size=16, warmup=10, checkpoint_every=20, seed=3)
# Measured (this CPU, seeds 0-2): relative gap 0.004-0.010 at t in {100, 200, 300} after 2000 steps of an
# MLP(128, depth 2); 0.3 at t = 10 (noise too small for the net to resolve) and 1.0 untrained. Bound with ~5x margin.
GAP_BOUND = 0.05
GAP_TIMES = (100, 200, 300)


@pytest.fixture(scope="module")
def gmm4():
    return load_dataset("gmm", 4)


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory, gmm4):
    """An MLP trained long enough on 4 points in 2-D to come close to eps* (about 8 s)."""
    cfg = TrainConfig(train_steps=2000, checkpoint_every=500)
    folder = tmp_path_factory.mktemp("gmm_cache")
    result = train(MLPConfig(hidden=128, depth=2), EpsLoss(linear_schedule()), gmm4.train, gmm4.shape, cfg,
                   device="cpu", cache_dir=folder, progress=False)
    return result, cfg, folder


def _tiny(x, cache_dir, cfg=TINY_CFG, **kwargs) -> TrainResult:
    return train(TINY, EpsLoss(linear_schedule()), x, (x.shape[1],), cfg, device="cpu", cache_dir=cache_dir,
                 progress=False, **kwargs)


def _points(seed=0, n=6, d=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_same_run(a: TrainResult, b: TrainResult):
    for ma, mb in ((a.model, b.model), (a.raw_model, b.raw_model)):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), "weights differ"
    assert np.array_equal(a.losses, b.losses)
    assert a.snapshots.keys() == b.snapshots.keys()
    for step in a.snapshots:
        assert all(torch.equal(a.snapshots[step][k], b.snapshots[step][k]) for k in a.snapshots[step])


# ------------------------------------------------------------------------------------------- does it learn

def test_loss_decreases_on_digits(tmp_path):
    ds = load_dataset("digits", 64)
    cfg = TrainConfig(train_steps=300, batch_size=64, warmup=20)
    r = train(MLPConfig(hidden=64, depth=2), EpsLoss(linear_schedule()), ds.train, ds.shape, cfg, device="cpu",
              cache_dir=tmp_path, progress=False)
    tenth = len(r.losses) // 10
    assert r.losses.shape == (300,) and np.isfinite(r.losses).all()
    assert abs(r.losses[:3].mean() - 1.0) < 0.1  # untrained net outputs 0: loss = |eps|^2 / D ~ 1
    assert r.losses[-tenth:].mean() < 0.5 * r.losses[:tenth].mean()  # measured ~0.30


def test_trained_net_approaches_empirical_optimum(gmm_run, gmm4):
    result, _, _ = gmm_run
    sched = linear_schedule()
    opt = EmpiricalOptimum(gmm4.train, sched, dtype=torch.float64)
    x0 = gmm4.train.repeat(256, 1)  # forward samples of the training points
    gaps = gap_on_forward_samples(result.model, opt, x0, sched, GAP_TIMES, torch.Generator().manual_seed(0))
    assert (gaps < GAP_BOUND).all(), gaps
    untrained = gap_on_forward_samples(MLPConfig(hidden=128, depth=2).build((2,)), opt, x0, sched, GAP_TIMES,
                                       torch.Generator().manual_seed(0))
    np.testing.assert_allclose(untrained, 1.0)  # eps_hat = 0: the gap is E|eps*|^2 / E|eps*|^2


def test_result_fields(gmm_run):
    result, cfg, folder = gmm_run
    assert not result.from_cache and result.path.parent == folder / "train" and result.path.exists()
    assert result.losses.shape == (cfg.train_steps,)
    assert sorted(result.snapshots) == [500, 1000, 1500, 2000]
    for m in (result.model, result.raw_model):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert all(v.device.type == "cpu" for v in result.snapshots[500].values())
    last = result.model_at(2000).state_dict()
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in last.items())  # last snapshot = EMA
    early = result.model_at(500).state_dict()
    assert any(not torch.equal(v, last[k]) for k, v in early.items())
    raw = result.raw_model.state_dict()
    assert any(not torch.equal(v, last[k]) for k, v in raw.items())  # EMA != raw weights
    with pytest.raises(ValueError, match=r"snapshot steps \[500, 1000, 1500, 2000\]"):
        result.model_at(700)


def test_second_call_loads_from_cache_without_training(gmm_run, gmm4, monkeypatch, capsys):
    result, cfg, folder = gmm_run

    def no_training(*args, **kwargs):
        raise AssertionError("the optimizer ran: the cached run was not used")

    monkeypatch.setattr(torch.optim.AdamW, "step", no_training)
    again = train(MLPConfig(hidden=128, depth=2), EpsLoss(linear_schedule()), gmm4.train, gmm4.shape, cfg,
                  device="cpu", cache_dir=folder, progress=False)
    assert again.from_cache and again.path == result.path
    assert f"loaded from cache {result.path}" in capsys.readouterr().out
    _assert_same_run(again, result)
    assert not again.model.training and not any(p.requires_grad for p in again.model.parameters())


# ------------------------------------------------------------------------------------- determinism, resume

def test_same_config_gives_bit_identical_weights(tmp_path):
    x = _points()
    a, b = _tiny(x, tmp_path / "a"), _tiny(x, tmp_path / "b")
    assert not a.from_cache and not b.from_cache
    _assert_same_run(a, b)
    c = _tiny(x, tmp_path / "c", cfg=replace(TINY_CFG, seed=4))
    assert not torch.equal(c.model.state_dict()["out.weight"], a.model.state_dict()["out.weight"])


def test_training_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    _tiny(_points(), tmp_path)
    assert torch.equal(torch.rand(3), expected)


class Interrupt(Exception):
    pass


def _artifacts(folder) -> list[str]:
    """Suffixes of the files in a cache folder, the lock files (cache.load_or_compute) aside."""
    return [p.suffix for p in folder.iterdir() if p.suffix != ".lock"]


def test_resume_after_interruption_is_bit_identical(tmp_path, capsys):
    x = _points()
    reference = _tiny(x, tmp_path / "ref")

    def stop_at_45(step, loss):
        if step == 45:
            raise Interrupt

    with pytest.raises(Interrupt):
        _tiny(x, tmp_path / "run", callback=stop_at_45)
    folder = tmp_path / "run" / "train"
    assert _artifacts(folder) == [".ckpt"]  # a checkpoint, no finished artifact
    capsys.readouterr()

    seen = []
    resumed = _tiny(x, tmp_path / "run", callback=lambda step, loss: seen.append(step))
    assert seen == list(range(41, 61))  # resumed after the checkpoint at step 40, not from scratch
    assert "resuming at step 40" in capsys.readouterr().out
    _assert_same_run(resumed, reference)
    assert _artifacts(folder) == [".pt"]  # the checkpoint is gone once the run is stored


def test_corrupt_checkpoint_restarts_from_scratch(tmp_path):
    x = _points()
    reference = _tiny(x, tmp_path / "ref")

    def stop(step, loss):
        if step == 25:
            raise Interrupt

    with pytest.raises(Interrupt):
        _tiny(x, tmp_path / "run", callback=stop)
    ckpt, = (p for p in (tmp_path / "run" / "train").iterdir() if p.suffix == ".ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:-50])
    seen = []
    with pytest.warns(RuntimeWarning, match="deleting unusable artifact"):
        again = _tiny(x, tmp_path / "run", callback=lambda step, loss: seen.append(step))
    assert seen[0] == 1
    _assert_same_run(again, reference)


def test_truncated_artifact_is_rebuilt_not_loaded(tmp_path):
    x = _points()
    first = _tiny(x, tmp_path)
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match="deleting unusable artifact"):
        rebuilt = _tiny(x, tmp_path)
    assert not rebuilt.from_cache
    _assert_same_run(rebuilt, first)
    assert _tiny(x, tmp_path).from_cache  # the rebuilt file is valid


def test_key_identifies_the_run(tmp_path):
    x, sched = _points(), linear_schedule()
    key = train_key(TINY, EpsLoss(sched), x, (3,), TINY_CFG)
    assert key == train_key(TINY, EpsLoss(linear_schedule()), x.clone(), [3], TrainConfig(**vars(TINY_CFG)))
    other = x.clone()
    other[2, 1] += 1e-12
    variants = [train_key(TINY, EpsLoss(sched), x, (3,), replace(TINY_CFG, seed=4)),
                train_key(TINY, EpsLoss(sched), other, (3,), TINY_CFG),
                train_key(TINY, EpsLoss(sched), x.float(), (3,), TINY_CFG),
                train_key(replace(TINY, hidden=17), EpsLoss(sched), x, (3,), TINY_CFG),
                train_key(TINY, EpsLoss(linear_schedule(beta_end=0.03)), x, (3,), TINY_CFG),
                train_key(TINY, EpsLoss(sched), x, (3,), replace(TINY_CFG, train_steps=61))]
    assert len({key, *variants}) == 1 + len(variants)
    assert _tiny(x, tmp_path).path.name == f"{key}.pt"


# ---------------------------------------------------------------------------------------- options, checks

def test_unet_trains_on_digits_and_progress_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DIFFGEN_HEADLESS", raising=False)
    ds = load_dataset("digits", 16)
    cfg = TrainConfig(train_steps=3, batch_size=8, checkpoint_every=2)
    args = (UNetConfig(base=8), EpsLoss(linear_schedule()), ds.train, ds.shape, cfg)
    r = train(*args, device="cpu", cache_dir=tmp_path / "quiet", progress=False)
    assert "train" not in capsys.readouterr().err  # no progress bar
    assert sorted(r.snapshots) == [2, 3] and np.isfinite(r.losses).all()
    assert r.model(ds.train[:2], torch.tensor([5, 6])).shape == (2, 64)
    train(*args, device="cpu", cache_dir=tmp_path / "loud", progress=True)
    assert "train" in capsys.readouterr().err  # tqdm writes its bar to stderr
    monkeypatch.setenv("DIFFGEN_HEADLESS", "1")
    train(*args, device="cpu", cache_dir=tmp_path / "headless", progress=True)
    assert "train" not in capsys.readouterr().err


def test_input_checks(tmp_path):
    x = _points()
    with pytest.raises(ValueError, match=r"prod\(shape\) = D, the width of every set; got widths \[3\]"):
        train(TINY, EpsLoss(linear_schedule()), x, (4,), TINY_CFG, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"x0 must be a non-empty \[N, D\]"):
        train(TINY, EpsLoss(linear_schedule()), x[0], (3,), TINY_CFG, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="device must be one of"):
        train(TINY, EpsLoss(linear_schedule()), x, (3,), TINY_CFG, cache_dir=tmp_path, device="tpu")
    for bad, match in [(dict(train_steps=0), "train_steps must be a positive integer"),
                       (dict(batch_size=1.5), "batch_size must be a positive integer"),
                       (dict(lr=0.0), "lr must be > 0"), (dict(ema_decay=1.0), r"ema_decay must lie in \[0, 1\)"),
                       (dict(grad_clip=0.0), "grad_clip must be > 0 or None"),
                       (dict(warmup=-1), "warmup must be a non-negative integer")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


# ------------------------------------------------------------------------------------------------ benchmark

@pytest.mark.processes("runs benchmarks/bench_train.py --quick as a script")
def test_bench_train_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["threads"] >= 1 and [row["model"] for row in report["rows"]] == ["mlp", "unet"]
    for row in report["rows"]:
        for key in ("samples_per_s", "ms_per_step", "s_per_1000_steps", "steps_timed", "batch_size"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] > 0, (row, key)
