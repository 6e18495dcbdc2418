"""The cache: stable config keys (within and across processes), atomic artifacts with an integrity check,
corrupt files discarded, loading with weights_only=True."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import diffgen.base.cache as cache
from diffgen import source_hash
from diffgen.base.cache import MAGIC, cache_root, config_key, load_artifact, save_artifact
from diffgen.diffusion.schedule import cosine_schedule, linear_schedule

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inner:
    width: int = 8
    scale: float = 0.5


@dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    name: str = "run"
    dims: tuple = (1, 8, 8)
    extra: dict = dataclasses.field(default_factory=lambda: {"b": 2, "a": [1, 2.5, None, True]})


@dataclass(frozen=True)
class Twin:  # same fields as Inner, another class
    width: int = 8
    scale: float = 0.5


def _tensor():
    return torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7


KEY_SCRIPT = """
import torch
from diffgen.base.cache import config_key
from diffgen.diffusion.schedule import linear_schedule
print(config_key({"b": 2, "a": (1, 2.5, None, True)}, torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7,
                 linear_schedule(), "x", 3))
"""


# ---------------------------------------------------------------------------------------------------- keys

def test_key_is_sha256_hex_and_stable_across_calls_and_instances():
    k1 = config_key(Outer(), _tensor(), linear_schedule())
    k2 = config_key(Outer(), _tensor().clone(), linear_schedule())
    assert k1 == k2
    assert len(k1) == 64 and int(k1, 16) >= 0


@pytest.mark.processes("a second interpreter with another str hash seed")
def test_key_is_stable_across_processes():
    here = config_key({"b": 2, "a": (1, 2.5, None, True)}, _tensor(), linear_schedule(), "x", 3)
    env = dict(os.environ, PYTHONHASHSEED="123")  # a different str hash seed: dict/set order must not leak in
    out = subprocess.run([sys.executable, "-c", KEY_SCRIPT], capture_output=True, text=True, cwd=REPO, env=env,
                         check=True)
    assert out.stdout.strip() == here


def test_dict_order_does_not_matter():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})


@pytest.mark.parametrize("changed", [
    Outer(inner=Inner(width=9)),
    Outer(inner=Inner(scale=0.5000000000000001)),
    Outer(name="run2"),
    Outer(dims=(1, 8, 9)),
    Outer(extra={"b": 2, "a": [1, 2.5, None, False]}),
    Outer(extra={"b": 2.0, "a": [1, 2.5, None, True]}),  # 2 and 2.0 are different configs
])
def test_key_changes_with_any_field(changed):
    assert config_key(changed) != config_key(Outer())


def test_key_includes_the_class_name():
    assert config_key(Inner()) != config_key(Twin())


def test_key_changes_with_any_tensor_byte_dtype_or_shape():
    x = _tensor()
    base = config_key(x)
    y = x.clone()
    y.view(-1).view(torch.uint8)[5] ^= 1  # flip one bit of one byte
    assert not torch.equal(x, y)
    assert config_key(y) != base
    assert config_key(x.double()) != base
    assert config_key(x.reshape(4, 3)) != base
    assert config_key(x.T) == config_key(x.T.contiguous())  # the values count, not the memory layout


def test_key_of_schedules_uses_name_and_betas():
    assert config_key(linear_schedule()) == config_key(linear_schedule())
    assert config_key(linear_schedule()) != config_key(linear_schedule(beta_end=0.021))
    assert config_key(linear_schedule()) != config_key(cosine_schedule())


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of diffgen's source that provenance reads instead of the installed one (edit it freely)."""
    import shutil

    from diffgen.base import provenance

    pkg = tmp_path / "diffgen"
    shutil.copytree(provenance.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", pkg)
    return pkg


def _edit(pkg: Path, name: str) -> None:
    with open(pkg / name, "a") as f:
        f.write("\n# edited\n")


def _train_key() -> str:
    from diffgen.diffusion.fit import TrainConfig
    from diffgen.diffusion.models import MLPConfig
    from diffgen.diffusion.objectives import EpsLoss
    from diffgen.diffusion.train import train_key

    return train_key(MLPConfig(hidden=8), EpsLoss(linear_schedule()), _tensor(), (4,), TrainConfig(train_steps=5))


@pytest.mark.parametrize("name", ["chapters/figures.py", "chapters/widgets.py", "commands/report.py", "measures/mi.py",
                                  "commands/cli.py", "commands/book.py", "chapters/presets.toml",
                                  "claims/verdicts.py"])
def test_editing_what_does_not_train_keeps_the_training_key(package_copy, name):
    before = _train_key()
    _edit(package_copy, name)
    assert _train_key() == before


@pytest.mark.parametrize("name", ["diffusion/objectives.py", "diffusion/models.py", "diffusion/train.py",
                                  "diffusion/fit.py", "diffusion/ensemble.py", "diffusion/schedule.py",
                                  "base/cache.py"])
def test_editing_what_trains_changes_the_training_key(package_copy, name):
    before = _train_key()
    _edit(package_copy, name)
    assert _train_key() != before


def test_artifact_key_includes_the_modules_of_its_configs(package_copy):
    """A config class's module is part of the code: the objective's module counts for a key made elsewhere."""
    from diffgen.diffusion.objectives import EpsLoss

    key = lambda: cache.artifact_key("diffgen.measures.quality", EpsLoss(linear_schedule()))  # noqa: E731
    before, plain = key(), cache.artifact_key("diffgen.measures.quality", 1)
    _edit(package_copy, "diffusion/objectives.py")
    assert key() != before
    assert cache.artifact_key("diffgen.measures.quality", 1) == plain  # quality itself does not import objectives


def test_module_closure_is_read_from_the_imports():
    from diffgen.base.provenance import module_closure

    closure = module_closure(["diffgen.diffusion.train"])
    assert {"diffgen.diffusion.train", "diffgen.diffusion.fit", "diffgen.base.cache", "diffgen.diffusion.objectives",
            "diffgen.diffusion.schedule", "diffgen.base.util"} <= set(closure)
    assert not {"diffgen.chapters.figures", "diffgen.chapters.widgets", "diffgen.commands.report",
                "diffgen.measures.mi"} & set(closure)
    with pytest.raises(ValueError, match="not a module"):
        module_closure(["diffgen.nope"])


def test_source_hash_covers_every_module(package_copy):
    from diffgen.base import provenance

    assert provenance.hash_sources() == source_hash()
    _edit(package_copy, "commands/report.py")  # the book's re-execution stamp follows the whole package
    assert provenance.hash_sources() != source_hash()
    assert len(source_hash()) == 16


@pytest.mark.parametrize("bad", [object(), {1, 2}, lambda: 0, Path("x"), Inner])
def test_unsupported_objects_are_type_errors(bad):
    with pytest.raises(TypeError, match="config_key cannot hash"):
        config_key(Inner(), bad)
    with pytest.raises(TypeError):
        config_key({"nested": [bad]})


def test_cache_root_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFGEN_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("DIFFGEN_CACHE")
    assert cache_root() == REPO / ".cache" / "diffgen"


# ----------------------------------------------------------------------------------------------- artifacts

def _payload():
    return {"w": torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), "steps": [1, 2, 3],
            "snap": {500: {"b": torch.zeros(2, dtype=torch.float64)}}, "name": "x", "lr": 2e-3, "flag": None}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    assert torch.equal(a["w"], b["w"]) and torch.equal(a["snap"][500]["b"], b["snap"][500]["b"])
    assert a["steps"] == b["steps"] and a["name"] == b["name"] and a["lr"] == b["lr"] and a["flag"] is None


def test_save_load_round_trip(tmp_path):
    path = save_artifact(tmp_path / "sub" / "a.pt", _payload())
    assert path.read_bytes().startswith(MAGIC)
    _assert_same(load_artifact(path), _payload())
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]  # no temporary file left behind


def test_missing_file_is_none(tmp_path):
    assert load_artifact(tmp_path / "nope.pt") is None


@pytest.mark.parametrize("cut", [0, 5, len(MAGIC) + 10, -1, -100])
def test_truncated_file_is_none_and_removed(tmp_path, cut):
    path = save_artifact(tmp_path / "a.pt", _payload())
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.warns(RuntimeWarning, match="deleting unusable artifact"):
        assert load_artifact(path) is None
    assert not path.exists()


def test_flipped_byte_is_none_and_removed(tmp_path):
    path = save_artifact(tmp_path / "a.pt", _payload())
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="sha256"):
        assert load_artifact(path) is None
    assert not path.exists()


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_artifact(tmp_path / "a.pt", _payload())

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache.torch, "save", boom)
    with pytest.raises(OSError):
        save_artifact(path, {"other": 1})
    monkeypatch.undo()
    _assert_same(load_artifact(path), _payload())
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_load_uses_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cache.torch, "load", spy)
    load_artifact(save_artifact(tmp_path / "a.pt", _payload()))
    assert calls == [True]


class _Evil:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Evil.ran = True
    return "pwned"


def test_pickled_code_is_not_run_and_file_is_discarded(tmp_path):
    """A well-formed file (right magic and digest) whose payload needs arbitrary unpickling: refused, not run."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf)
    payload = buf.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.warns(RuntimeWarning, match="torch.load failed"):
        assert load_artifact(path) is None
    assert not _Evil.ran and not path.exists()


def test_save_refuses_objects_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match="artifacts hold only"):
        save_artifact(tmp_path / "a.pt", {"model": torch.nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="artifacts hold only"):
        save_artifact(tmp_path / "a.pt", [1, Path("x")])
    assert not (tmp_path / "a.pt").exists()
