"""Ensembles (train.train_ensemble): M members of one architecture trained at once are M separate runs; members of
one seed share their initialisation and draws and differ only through their sets; any architecture, any objective."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import torch

from diffgen.chapters.generators import training_sets
from diffgen.data.datasets import eight_gaussians, load_dataset
from diffgen.diffusion.ensemble import Ensemble
from diffgen.diffusion.fit import TrainConfig
from diffgen.diffusion.models import MLPConfig, PlainMLPConfig, UNetConfig
from diffgen.diffusion.objectives import EpsLoss, ForwardTimeLoss, WeightedEpsLoss
from diffgen.diffusion.train import train, train_ensemble

TINY = PlainMLPConfig(hidden=16, depth=2, time_dim=8)
CFG = TrainConfig(train_steps=40, batch_size=16, warmup=5, checkpoint_every=20)


def _close(a: torch.nn.Module, b: torch.nn.Module, atol=1e-5):
    x = torch.randn(6, a.dim, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([1, 5, 50, 200, 600, 1000])
    torch.testing.assert_close(a(x, t), b(x, t), atol=atol, rtol=1e-4)


def test_members_are_the_separate_runs_of_their_seeds(sched, tmp_path):
    sets = training_sets(eight_gaussians(), n_sets=3, n_train=5, seed=0)
    run = train_ensemble(TINY, EpsLoss(sched), sets, (2,), CFG, seeds=(3, 4, 5), device="cpu", cache_dir=tmp_path,
                         progress=False)
    assert run.n_members == 3 and run.losses.shape == (40, 3) and run.snapshot_steps == [20, 40]
    for m, seed in enumerate((3, 4, 5)):
        alone = train(TINY, EpsLoss(sched), sets[m], (2,), replace(CFG, seed=seed), device="cpu",
                      cache_dir=tmp_path, progress=False)
        _close(run.model_at().member(m), alone.model)
        _close(run.model_at(20).member(m), alone.model_at(20))
        torch.testing.assert_close(run.losses[:, m].numpy(), alone.losses, atol=1e-5, rtol=1e-4)


def test_members_of_one_seed_differ_only_through_their_sets(sched, tmp_path):
    sets = training_sets(eight_gaussians(), n_sets=4, n_train=5, seed=0)
    sets[2] = sets[0]  # two members on one set, with one seed: the same net
    run = train_ensemble(TINY, EpsLoss(sched), sets, (2,), CFG, device="cpu", cache_dir=tmp_path, progress=False)
    model = run.model_at()
    _close(model.member(0), model.member(2), atol=1e-6)
    moved = sets.clone()
    moved[3] += 1.0  # another member's data changes: member 1 does not
    other = train_ensemble(TINY, EpsLoss(sched), moved, (2,), CFG, device="cpu", cache_dir=tmp_path, progress=False)
    _close(other.model_at().member(1), model.member(1), atol=1e-6)
    with pytest.raises(AssertionError):
        _close(other.model_at().member(3), model.member(3))


def test_sets_of_different_sizes_and_any_objective(sched, tmp_path):
    digits = load_dataset("digits", 20, seed=0).train
    sets = [digits[:5], digits[:20], digits[5:12]]
    for objective in (EpsLoss(sched), ForwardTimeLoss(sched, "one")):
        run = train_ensemble(MLPConfig(hidden=16, depth=1, time_dim=8), objective, sets, (1, 8, 8), CFG,
                             seeds=(0, 1, 2), device="cpu", cache_dir=tmp_path, progress=False)
        assert bool(torch.isfinite(run.losses).all()) and run.losses.shape == (40, 3)
        assert [len(s) for s in sets] == [5, 20, 7]
    unet = train_ensemble(UNetConfig(base=8, mults=(1, 2), time_dim=8), EpsLoss(sched), sets[:2], (1, 8, 8),
                          TrainConfig(train_steps=3, batch_size=4, checkpoint_every=3), seeds=(0, 1), device="cpu",
                          cache_dir=tmp_path, progress=False)
    z = unet.sample(None, sched, 3, steps=2)
    assert z.shape == (2, 3, 64) and bool(torch.isfinite(z).all())


@dataclass
class Recording:
    """An objective that records the clean batches x0 [M, B, D] it is handed (what the batch stream chose)."""

    inner: object
    seen: list = field(default_factory=list)

    def draw(self, x0, generator):
        return self.inner.draw(x0, generator)

    def loss_from(self, model, x0, draw):
        self.seen.append(x0.detach().clone())
        return self.inner.loss_from(model, x0, draw)


def test_objectives_trained_with_one_seed_see_the_same_batches(sched, tmp_path):
    """Batch positions have their own random stream: objectives that draw different numbers of random values per
    step (EpsLoss: t and eps; ForwardTimeLoss 'uniform': t, the gap, xi and eps_s) still see identical batches."""
    sets = training_sets(eight_gaussians(), n_sets=2, n_train=7, seed=0)
    runs = [Recording(EpsLoss(sched)), Recording(ForwardTimeLoss(sched, "uniform")),
            Recording(WeightedEpsLoss(ForwardTimeLoss(sched, "one")))]
    for rec in runs:
        train_ensemble(TINY, rec, sets, (2,), CFG, seeds=(3, 4), device="cpu", cache_dir=tmp_path, progress=False)
    assert len(runs[0].seen) == CFG.train_steps
    for rec in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0].seen, rec.seen))
    assert not torch.equal(runs[0].seen[0][0], runs[0].seen[0][1])  # two seeds: two batch streams


def test_members_of_several_objectives_train_in_one_pass_as_they_would_alone(sched, tmp_path):
    """One ensemble of the standard objective, the forward-time objective and its weighted control (with two seeds
    and a rerun stream): each member is the member of a one-objective ensemble of its seed and stream."""
    sets = training_sets(eight_gaussians(), n_sets=2, n_train=6, seed=0)
    objectives = [EpsLoss(sched), ForwardTimeLoss(sched, "uniform"), WeightedEpsLoss(ForwardTimeLoss(sched, "one"))]
    members = [(o, seed, stream) for o in range(3) for seed in (3, 4) for stream in ((0, 1) if o == 0 else (0,))]
    mixed = train_ensemble(TINY, [objectives[o] for o, _, _ in members], [sets[s - 3] for _, s, _ in members], (2,),
                           CFG, seeds=[s for _, s, _ in members], streams=[k for _, _, k in members], device="cpu",
                           cache_dir=tmp_path, progress=False)
    for m, (o, seed, stream) in enumerate(members):
        alone = train_ensemble(TINY, objectives[o], [sets[seed - 3]], (2,), CFG, seeds=[seed], streams=[stream],
                               device="cpu", cache_dir=tmp_path, progress=False)
        _close(mixed.model_at().member(m), alone.model_at().member(0))
        torch.testing.assert_close(mixed.losses[:, m], alone.losses[:, 0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(mixed.losses[:, 0], mixed.losses[:, 2])  # seed 3: the standard objective and its rerun
    with pytest.raises(ValueError, match="one objective or 2, one per set"):
        train_ensemble(TINY, objectives, sets, (2,), CFG, device="cpu", cache_dir=tmp_path, progress=False)
    same = train_ensemble(TINY, [objectives[0]] * 2, sets, (2,), CFG, device="cpu", cache_dir=tmp_path,
                          progress=False)
    assert same.path == train_ensemble(TINY, objectives[0], sets, (2,), CFG, device="cpu", cache_dir=tmp_path,
                                       progress=False).path  # one objective for all: the same run, the same key


def test_draw_streams_share_initialisation_and_batches_but_not_noise(sched, tmp_path):
    sets = training_sets(eight_gaussians(), n_sets=1, n_train=7, seed=0).expand(2, -1, -1)
    rec = Recording(EpsLoss(sched))
    run = train_ensemble(TINY, rec, sets, (2,), CFG, seeds=(3, 3), streams=(0, 1), device="cpu", cache_dir=tmp_path,
                         progress=False)
    assert all(torch.equal(x0[0], x0[1]) for x0 in rec.seen)  # one seed: one batch stream
    with pytest.raises(AssertionError):
        _close(run.model_at().member(0), run.model_at().member(1))  # other t and noise: another net
    same = train_ensemble(TINY, EpsLoss(sched), sets, (2,), CFG, seeds=(3, 3), streams=(1, 1), device="cpu",
                          cache_dir=tmp_path, progress=False)
    _close(same.model_at().member(0), same.model_at().member(1), atol=1e-6)
    _close(same.model_at().member(0), run.model_at().member(1), atol=1e-5)  # (seed 3, stream 1) is one run


def test_training_fits_each_member_to_its_own_point(sched, tmp_path):
    points = torch.tensor([[[1.5, 0.0]], [[-1.0, 1.0]], [[0.0, -2.0]]], dtype=torch.float64)
    cfg = TrainConfig(train_steps=1500, batch_size=64, grad_clip=None, ema_decay=0.995, checkpoint_every=1500)
    run = train_ensemble(PlainMLPConfig(hidden=64, depth=2), EpsLoss(sched), points, (2,), cfg, seeds=(1, 1, 1),
                         device="cpu", cache_dir=tmp_path, progress=False)
    z = run.sample(None, sched, 64, steps=50, seed=0)
    assert z.shape == (3, 64, 2)
    for m in range(3):  # one training point: DDIM lands on it
        assert float((z[m] - points[m]).norm(dim=1).median()) < 0.1
    assert torch.equal(z, run.sample(None, sched, 64, steps=50, seed=0))  # same seed, same samples


def test_the_cache_returns_the_same_run_and_resumes(sched, tmp_path):
    sets = training_sets(eight_gaussians(), n_sets=2, n_train=4, seed=0)
    first = train_ensemble(TINY, EpsLoss(sched), sets, (2,), CFG, seeds=(0, 1), device="cpu", cache_dir=tmp_path,
                           progress=False)
    again = train_ensemble(TINY, EpsLoss(sched), sets, (2,), CFG, seeds=(0, 1), device="cpu", cache_dir=tmp_path,
                           progress=False)
    assert not first.from_cache and again.from_cache
    assert all(torch.equal(first.snapshots[40][k], again.snapshots[40][k]) for k in first.snapshots[40])

    def stop(step, losses):
        if step == 25:
            raise KeyboardInterrupt

    folder = tmp_path / "resume"
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(TINY, EpsLoss(sched), sets, (2,), CFG, seeds=(0, 1), device="cpu", cache_dir=folder,
                       progress=False, callback=stop)
    resumed = train_ensemble(TINY, EpsLoss(sched), sets, (2,), CFG, seeds=(0, 1), device="cpu", cache_dir=folder,
                             progress=False)
    assert all(torch.equal(first.snapshots[40][k], resumed.snapshots[40][k]) for k in first.snapshots[40])
    assert torch.equal(first.losses, resumed.losses)


def test_per_member_clipping_leaves_the_other_members_alone(sched, tmp_path):
    """Clipping is per member: scaling one member's data (and its gradients) does not change the others."""
    sets = training_sets(eight_gaussians(), n_sets=2, n_train=4, seed=0)
    cfg = TrainConfig(train_steps=20, batch_size=8, grad_clip=1e-3, checkpoint_every=20)
    a = train_ensemble(TINY, EpsLoss(sched), sets, (2,), cfg, seeds=(0, 1), device="cpu", cache_dir=tmp_path,
                       progress=False)
    big = sets.clone()
    big[1] *= 50
    b = train_ensemble(TINY, EpsLoss(sched), big, (2,), cfg, seeds=(0, 1), device="cpu", cache_dir=tmp_path,
                       progress=False)
    _close(a.model_at().member(0), b.model_at().member(0), atol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda s: train_ensemble(TINY, EpsLoss(s), [], (2,), CFG), "sets must be"),
    (lambda s: train_ensemble(TINY, EpsLoss(s), [torch.zeros(3, 2), torch.zeros(3, 3)], (2,), CFG), "width"),
    (lambda s: train_ensemble(TINY, EpsLoss(s), [torch.zeros(3, 2)], (2,), CFG, seeds=(0, 1)), "seeds must be"),
    (lambda s: train_ensemble(TINY, EpsLoss(s), [torch.zeros(3, 2)], (2,), CFG, streams=(-1,)), "streams must be"),
    (lambda s: train_ensemble(TINY, EpsLoss(s), [torch.zeros(3, 2)], (2,), {"steps": 3}), "cfg must be"),
    (lambda s: TrainConfig(train_steps=10, snapshots=(20,)), "snapshots must be"),
    (lambda s: TrainConfig(snapshots=(5, 3)), "snapshots must be"),
    (lambda s: Ensemble(TINY.build((2,)), {k: v[None] for k, v in TINY.build((2,)).state_dict().items()})(
        torch.zeros(3, 4, 2), torch.ones(3, 4, dtype=torch.long)), "need x"),
])
def test_invalid_arguments_name_the_parameter(call, match, sched):
    with pytest.raises(ValueError, match=match):
        call(sched)
