"""What chapters train (diffgen.chapters.plans), `diffgen train` in one process and under torchrun, and the image paths of
chapters 3 and 4 (file data sets, the U-Net) end to end on fixture files with a tiny budget."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffgen.chapters import plans, registry
from diffgen.claims.results import read_results
from diffgen.commands import cli
from diffgen.data.fixtures import write_cifar10
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig, UNetConfig, parameter_count

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("shape, mults, blocks, attention", [((1, 8, 8), (1, 2), 1, ()),
                                                             ((1, 28, 28), (1, 2, 2), 2, (14,)),
                                                             ((3, 32, 32), (1, 2, 2, 2), 2, (16,)),
                                                             ((3, 64, 64), (1, 2, 2, 2), 2, (32,))])
def test_unet_layout_follows_the_image_size(shape, mults, blocks, attention):
    cfg = plans.net_config("unet", 64, shape)
    assert cfg == UNetConfig(base=64, mults=mults, blocks=blocks, attention=attention)
    torch.manual_seed(0)
    model = cfg.build(shape)
    x = torch.randn(2, int(torch.tensor(shape).prod()))
    assert model(x, torch.tensor([1, 999])).shape == x.shape


def test_net_config_errors():
    assert plans.net_config("mlp", 32, (2,)) == MLPConfig(hidden=32)
    with pytest.raises(ValueError, match="model must be one of mlp, unet; got 'vit'"):
        plans.net_config("vit", 32, (1, 8, 8))
    with pytest.raises(ValueError, match="needs image data"):
        plans.net_config("unet", 32, (2,))


def test_paper_presets_train_ddpms_cifar10_network():
    """Chapters 3 and 4 at the paper preset: width 128, which net_config makes DDPM's CIFAR-10 U-Net (dropout 0.1,
    35.7 M parameters); width 64 stays the cheaper option without dropout; dropout can be set explicitly."""
    for chapter in ("ch3", "ch4"):
        [run] = registry.plan_run([chapter], "paper")
        cfg = plans.net_config(run.value("model"), run.value("width"), (3, 32, 32))
        assert cfg == UNetConfig(base=128, mults=(1, 2, 2, 2), time_dim=128, blocks=2, attention=(16,), dropout=0.1)
        assert abs(parameter_count(cfg, (3, 32, 32)) - 35.7e6) < 0.1e6
    assert plans.net_config("unet", 64, (3, 32, 32)).dropout == 0.0
    assert plans.net_config("unet", 128, (1, 28, 28)).dropout == 0.0  # DDPM's value is for its CIFAR-10 network
    assert plans.net_config("unet", 128, (3, 32, 32), dropout=0.0).dropout == 0.0
    assert plans.net_config("unet", 32, (3, 32, 32), dropout=0.2).dropout == 0.2
    with pytest.raises(ValueError, match="dropout applies to model = 'unet' only"):
        plans.net_config("mlp", 128, (2,), dropout=0.1)


def _params(preset: str, pairs=()) -> dict:
    [run] = registry.plan_run(["ch3"], preset, list(pairs))
    return {name: run.value(name) for name in run.parameters}


def test_chapter3_plan_from_its_smoke_parameters():
    p = _params("smoke", [("device", "cpu")])
    plan = plans.trained_gap_plan(p, "cpu")
    assert list(plan.jobs) == ["main", "sweep", "width 16", "width 21", "width 27", "width 37"]  # five widths
    main = plan.jobs["main"]
    assert main.seeds == (0, 1, 0, 1) and [len(s) for s in main.sets] == [64] * 4
    assert torch.equal(main.sets[0], plan.ds.train) and torch.equal(main.sets[2], plan.ds.disjoint)
    sweep = plan.jobs["sweep"]
    assert plan.sizes == [8, 64] and sweep.seeds == (0, 1, 0, 1) and [len(s) for s in sweep.sets] == [8] * 4
    assert torch.equal(sweep.sets[0], plan.ds.train[:8]) and torch.equal(sweep.sets[2], plan.ds.disjoint[:8])
    assert plan.members(8) == ("sweep", [0, 1], [2, 3]) and plan.members(64) == ("main", [0, 1], [2, 3])
    assert plan.middle == 64 and [len(s) for s in plan.jobs["width 16"].sets] == [64, 64] and 32 in plan.widths
    assert plan.jobs["width 16"].model_cfg == MLPConfig(hidden=16)
    assert plans.trained_gap_plan(p, "cpu").jobs["main"].key == main.key  # the same parameters, the same key
    assert main.cfg.checkpoint_every == plans.snapshot_interval(main.cfg.train_steps)


@pytest.mark.parametrize("train_steps", [100, 200, 1000, 2000, 4000, 20000])
def test_the_last_snapshot_interval_is_a_full_one(train_steps):
    """The learning curves' last interval says whether a net converged: it spans about train_steps / SNAPSHOTS steps
    (train_steps // 6 left 4 steps at 1000 and 2 at 2000, over which every curve is flat)."""
    cfg = TrainConfig(train_steps=train_steps, checkpoint_every=plans.snapshot_interval(train_steps))
    kept = [step for step in range(1, train_steps + 1) if cfg.keeps(step)]
    assert len(kept) == plans.SNAPSHOTS and kept[-1] == train_steps
    assert kept[-1] - kept[-2] >= 0.8 * train_steps / plans.SNAPSHOTS


def test_train_refuses_a_chapter_without_plan_and_unknown_runs(capsys):
    assert cli.main(["train", "ch2"]) == 2
    assert "chapter ch2 has no training plan; diffgen train knows ch3" in capsys.readouterr().err
    assert cli.main(["train", "ch3", "--preset", "smoke", "--only", "mian", "--device", "cpu"]) == 2
    assert "--only mian: ch3's runs are main, sweep, width 16, width 21, width 27, width 37" in capsys.readouterr().err
    assert cli.main(["train", "ch3", "-p", "dataset", "cifar10", "--data-dir", "/nonexistent"]) == 2
    assert "--data-dir /nonexistent is not a folder" in capsys.readouterr().err


@pytest.mark.notebook("torchrun trains chapter 3's nets, then chapter 3 runs at the paper preset on fixture files")
def test_paper_path_on_fixture_cifar_trained_by_torchrun_then_loaded_by_the_chapter(tmp_path):
    """The `paper` preset of chapter 3 (CIFAR-10, the U-Net) on fixture CIFAR-10 binary files with a tiny budget:
    `diffgen train` under torchrun (2 Gloo processes) trains its nets, then `diffgen run` executes the chapter, which
    finds every net in the cache instead of training it. The least the chapter accepts (a width-8 U-Net, two sizes,
    100 steps, 16 samples, 2 DDIM steps, 4 probed points per net): what is measured does not matter here."""
    write_cifar10(tmp_path / "data", n=12)
    env = {**os.environ, "DIFFGEN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    tiny = ["--preset", "paper", "--device", "cpu", "--data-dir", str(tmp_path / "data"), "-p", "n_train", "16",
            "-p", "n_sizes", "2", "-p", "n_heldout", "8", "-p", "train_steps", "100", "-p", "batch_size", "8",
            "-p", "n_samples", "16", "-p", "steps", "2", "-p", "width", "8", "-p", "toy_n_train", "4",
            "-p", "n_probe", "4"]
    train = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "diffgen.commands.cli", "train",
                            "ch3", *tiny], env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "2 run(s) on 2 process(es)" in train.stdout and train.stdout.count(" trained -> ") == 2
    run = subprocess.run([str(BIN / "diffgen"), "run", "ch3", *tiny, "--out", str(tmp_path / "out"), "--timeout",
                          "600"], env=env, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert log.count("diffgen.diffusion.train: loaded from cache") >= 2 and "trained 4 nets" not in log
    results = (tmp_path / "out" / "ch3.results.json").read_text()
    assert '"dataset": "cifar10"' in results and '"model": "unet"' in results


@pytest.mark.notebook("chapter 4 with the U-Net on fixture idx files")
def test_chapter4_on_labelled_idx_files_with_the_unet(tmp_path):
    """Chapter 4 off digits: MNIST-format idx files (16x16 fixtures, so that n_train_large can exceed D as the
    Gaussian-fit yardstick needs), the U-Net, and quality features from a CNN trained on the files' labels. The
    least the chapter accepts beside that (width 8, 100 steps, 16 samples, 2 DDIM steps, 50 held-out images): what
    is measured does not matter here, only that the file data set, the U-Net and the CNN's features run through."""
    from diffgen.data.fixtures import write_mnist

    write_mnist(tmp_path / "data" / "mnist", n_train=400, n_test=80, side=16)
    env = {**os.environ, "DIFFGEN_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([str(BIN / "diffgen"), "run", "ch4", "--preset", "smoke", "--device", "cpu", "--data-dir",
                          str(tmp_path / "data"), "-p", "dataset", "mnist", "-p", "model", "unet", "-p", "width", "8",
                          "-p", "batch_size", "8", "-p", "n_train_large", "300", "-p", "n_heldout", "50",
                          "-p", "n_samples", "16", "-p", "steps", "2", "-p", "train_steps", "100",
                          "-p", "toy_train_steps", "100", "-p", "toy_samples", "20", "--out", str(tmp_path / "out"),
                          "--timeout", "900"], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    results = read_results(tmp_path / "out" / "ch4.results.json")
    assert results["parameters"]["dataset"] == "mnist" and results["parameters"]["model"] == "unet"
    assert any("mnist n = 300" in c["metric"] for c in results["claims"])
    assert list((tmp_path / "cache" / "quality").glob("*.pt"))  # the CNN of the files' labels, cached
