"""Ensembles of M nets trained at once: each member is an ordinary MLP, training them together is training them
apart (a member never sees another member's data), training fits the data, and the cache returns the same run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffgen.ensemble import EnsembleConfig, EnsembleMLP, train_ensemble
from diffgen.models import time_embedding

TINY = EnsembleConfig(hidden=16, depth=2, time_dim=8, train_steps=60, batch_size=16, warmup=10, snapshots=(30,))


def member_forward(model: EnsembleMLP, m: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Member m written as a plain MLP with F.linear on its slice of the weights (the independent reference)."""
    h = torch.cat([x, time_embedding(t, model.time_dim)], dim=1)
    for k, (w, b) in enumerate(zip(model.weights, model.biases)):
        h = F.linear(h, w[m].T, b[m, 0])
        if k < len(model.weights) - 1:
            h = F.silu(h)
    return h


def test_each_member_is_a_plain_mlp_and_all_start_equal():
    torch.manual_seed(0)
    model = EnsembleMLP(3, 2, hidden=16, depth=2, time_dim=8)
    for w in model.weights:  # randomise every member (the last layer starts at zero) so the check means something
        torch.nn.init.normal_(w)
    x, t = torch.randn(3, 5, 2), torch.randint(1, 1001, (3, 5))
    out = model(x, t)
    assert out.shape == (3, 5, 2)
    for m in range(3):
        torch.testing.assert_close(out[m], member_forward(model, m, x[m], t[m]))
    fresh = EnsembleMLP(4, 2, hidden=16, depth=2, time_dim=8)
    for w in list(fresh.weights) + list(fresh.biases):
        assert torch.equal(w, w[:1].expand_as(w))  # the same initial weights for every member
    with torch.no_grad():
        assert float(fresh(x[:1].expand(4, 5, 2), t[:1].expand(4, 5)).abs().max()) == 0  # zero output layer


def test_training_together_is_training_apart(tmp_path, sched):
    g = torch.Generator().manual_seed(0)
    sets = torch.randn(3, 5, 2, generator=g)
    other = sets.clone()
    other[2] += 3.0  # only member 2's data changes
    a = train_ensemble(sets, sched, TINY, device="cpu", cache_dir=tmp_path, progress=False)
    b = train_ensemble(other, sched, TINY, device="cpu", cache_dir=tmp_path, progress=False)
    for name, wa in a.snapshots[60].items():
        torch.testing.assert_close(wa[:2], b.snapshots[60][name][:2], rtol=0, atol=1e-6)
    assert any(not torch.allclose(wa[2], b.snapshots[60][name][2]) for name, wa in a.snapshots[60].items())
    same = train_ensemble(sets[:1].expand(3, 5, 2).contiguous(), sched, TINY, device="cpu", cache_dir=tmp_path,
                          progress=False)  # identical sets -> identical members
    for w in same.snapshots[60].values():
        torch.testing.assert_close(w, w[:1].expand_as(w), rtol=0, atol=1e-6)


def test_training_fits_each_member_to_its_own_point(tmp_path, sched):
    """n = 1: the optimum of the objective is the denoiser of a point mass, so a trained member's DDIM samples
    land near its own point; two members, two different points."""
    points = torch.tensor([[[1.5, -1.0]], [[-2.0, 0.5]]])
    cfg = EnsembleConfig(hidden=64, depth=2, train_steps=1500, batch_size=64, seed=1)
    run = train_ensemble(points, sched, cfg, device="cpu", cache_dir=tmp_path, progress=False)
    assert float(run.losses[-100:].mean()) < 0.5 * float(run.losses[:100].mean())
    z = run.sample(1500, sched, 64, steps=50, seed=0)
    assert z.shape == (2, 64, 2) and z.dtype == torch.float64
    dist = (z - points.double()).norm(dim=2)
    assert float(dist.median()) < 0.3, dist.median()
    assert torch.equal(z, run.sample(1500, sched, 64, steps=50, seed=0))  # same seed, same samples


def test_cache_returns_the_same_run(tmp_path, sched):
    sets = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(3))
    first = train_ensemble(sets, sched, TINY, device="cpu", cache_dir=tmp_path, progress=False)
    again = train_ensemble(sets, sched, TINY, device="cpu", cache_dir=tmp_path, progress=False)
    assert not first.from_cache and again.from_cache and again.path == first.path
    assert sorted(again.snapshots) == [30, 60]
    for name, w in first.snapshots[60].items():
        assert torch.equal(w, again.snapshots[60][name])
    torch.testing.assert_close(first.losses, again.losses)
    with pytest.raises(ValueError, match="step must be one of"):
        first.model_at(45)


@pytest.mark.parametrize("call, match", [
    (lambda s: EnsembleConfig(train_steps=0), "train_steps must be"),
    (lambda s: EnsembleConfig(time_dim=7), "time_dim must be even"),
    (lambda s: EnsembleConfig(train_steps=10, snapshots=(20,)), "snapshots must be"),
    (lambda s: EnsembleConfig(snapshots=(5, 3)), "snapshots must be"),
    (lambda s: EnsembleConfig(ema_decay=1.0), "ema_decay"),
    (lambda s: train_ensemble(torch.zeros(4, 2), s, TINY), "sets must be"),
    (lambda s: train_ensemble(torch.zeros(2, 4, 2), s, {"steps": 3}), "cfg must be"),
    (lambda s: EnsembleMLP(2, 2)(torch.zeros(3, 4, 2), torch.ones(3, 4, dtype=torch.long)), "need x"),
])
def test_invalid_arguments_name_the_parameter(call, match, sched):
    with pytest.raises(ValueError, match=match):
        call(sched)
