"""The per-chapter results file: strict JSON, atomic writes, validation on write and on read."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from diffgen import __version__, source_hash
from diffgen.base.util import atomic_write
from diffgen.claims.results import (
    PAPER_CLAIMS,
    Claim,
    Comparison,
    Condition,
    Equivalence,
    claim_from_json,
    paper_row,
    read_results,
    results_path,
    write_results,
)

KEYS = {"chapter", "parameters", "diffgen_version", "source_hash", "claims", "finding", "memory"}
CLAIM_KEYS = {"id", "source", "statement", "metric", "value", "ci", "expected", "holds", "seeds", "premise",
              "quality", "flattened", "rule_holds", "rule", "interval", "regime", "equivalence", "label"}


def _strict_json(text: str):
    """json.loads that rejects the non-standard NaN / Infinity tokens Python's json module emits by default."""
    def bad(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=bad)


def _claims():
    return [
        Claim("C2", "abstract", "closed form of the empirical optimum", "max |x0* - brute force|", 1.5e-12, None,
              "< 1e-9", True),
        Claim("C3", "abstract", "deterministic sampler copies", "copy rate", np.float64(0.98),
              (np.float32(0.95), 1.0), ">= 0.9", np.bool_(True), seeds=3),
    ]


def test_write_results_valid_json_with_required_keys(tmp_path):
    params = {"n_train": 200, "steps": 50, "dataset": "digits", "seeds": [0, 1]}
    path = write_results(tmp_path / "out", "ch3", params, _claims())
    assert path == results_path(tmp_path / "out", "ch3") == tmp_path / "out" / "ch3.results.json"
    doc = _strict_json(path.read_text())
    assert set(doc) == KEYS
    assert doc["chapter"] == "ch3" and doc["parameters"] == params
    assert doc["diffgen_version"] == __version__
    assert doc["source_hash"] == source_hash() and len(doc["source_hash"]) == 16
    assert [c["id"] for c in doc["claims"]] == ["C2", "C3"]
    for c in doc["claims"]:
        assert set(c) == CLAIM_KEYS
        assert isinstance(c["value"], float) and isinstance(c["holds"], bool)
    assert doc["claims"][0]["ci"] is None and doc["claims"][0]["seeds"] is None and doc["claims"][1]["seeds"] == 3
    assert doc["claims"][1]["ci"] == [pytest.approx(0.95), 1.0] and doc["claims"][1]["value"] == pytest.approx(0.98)
    assert sorted(os.listdir(tmp_path / "out")) == ["ch3.results.json"]  # no temp file left behind
    assert doc["memory"]["gpu_peak_bytes"] is None  # no GPU was used here
    assert 50 * 2**20 < doc["memory"]["host_peak_bytes"] <= peak_now()  # this process holds torch


def peak_now() -> int:
    """This process's peak resident set so far, bytes (Linux's /proc)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def test_the_gpu_peak_is_torchs_largest_over_the_gpus_it_used(monkeypatch):
    import torch

    from diffgen.claims.results import fmt_memory, peak_memory

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda k: [3 * 2**30, 5 * 2**29][k])
    memory = peak_memory()
    assert memory["gpu_peak_bytes"] == 3 * 2**30
    assert fmt_memory(memory) == f"GPU 3.00 GiB, host {memory['host_peak_bytes'] / 2**30:.2f} GiB"
    assert fmt_memory({"gpu_peak_bytes": None, "host_peak_bytes": 2**31}) == "GPU not used, host 2.00 GiB"
    assert fmt_memory({"host_peak_bytes": None}) == "GPU unknown, host unknown"
    assert fmt_memory(None) == "not recorded"


def test_results_without_memory_still_read_and_bad_memory_is_an_error(tmp_path):
    path = write_results(tmp_path, "ch2", {}, _claims())
    doc = json.loads(path.read_text())
    del doc["memory"]  # a file written before the memory record
    path.write_text(json.dumps(doc))
    assert "memory" not in read_results(path)
    for bad in ({"gpu_peak_bytes": -1}, {"host_peak_bytes": 1.5}, {"disk": 3}, [1]):
        path.write_text(json.dumps({**doc, "memory": bad}))
        with pytest.raises(ValueError, match="memory must map gpu_peak_bytes, host_peak_bytes"):
            read_results(path)


def test_read_results_round_trip(tmp_path):
    claims = _claims()
    path = write_results(tmp_path, "ch2", {"a": 1.5}, claims)
    doc = read_results(path)
    assert doc == json.loads(path.read_text())
    for c, d in zip(claims, doc["claims"]):
        back = claim_from_json(d)
        assert back.id == c.id and back.statement == c.statement and back.metric == c.metric
        assert back.value == pytest.approx(float(c.value), rel=1e-15)
        assert back.holds == bool(c.holds) and back.expected == c.expected
    # rewriting replaces the file
    write_results(tmp_path, "ch2", {"a": 2.5}, claims[:1])
    doc = read_results(path)
    assert doc["parameters"] == {"a": 2.5} and len(doc["claims"]) == 1


def test_a_chapters_finding_is_written_and_read_back(tmp_path):
    """The chapter's computed reading travels in its results file; a file without one (older code) reads as none;
    a finding that is not text is an error, writing or reading."""
    path = write_results(tmp_path, "ch4", {}, _claims(), finding="At every matched progress it copies less.")
    assert read_results(path)["finding"] == "At every matched progress it copies less."
    assert read_results(write_results(tmp_path, "ch4", {}, _claims()))["finding"] == ""
    with pytest.raises(TypeError, match="finding must be a str"):
        write_results(tmp_path, "ch4", {}, _claims(), finding=["a list"])
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "finding": 3}))
    with pytest.raises(ValueError, match=r"ch4.results.json: finding must be a string"):
        read_results(path)
    del doc["finding"]
    path.write_text(json.dumps(doc))
    assert "finding" not in read_results(path)


@pytest.mark.parametrize("bad_id", ["C0", "C7", "c1", "", "claim1", "R0", "R", "R1a"])
def test_bad_claim_id_raises(bad_id):
    with pytest.raises(ValueError, match="claim id"):
        Claim(bad_id, "ours", "s", "m", 1.0, None, "e", True)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_non_finite_value_raises(value):
    with pytest.raises(ValueError, match="finite"):
        Claim("C1", "abstract", "s", "m", value, None, "e", False)


def test_claim_ids_sources_and_seeds():
    assert list(PAPER_CLAIMS) == ["C1", "C2", "C3", "C4", "C5a", "C5b", "C6"]
    for cid, paper in PAPER_CLAIMS.items():
        Claim(cid, paper.source, "s", "m", 0.0, (0.0, 0.0), "e", True)
        Claim(cid, "ours", "an extension of ours", "m", 0.0, None, "e", True)
    Claim("R12", "ours", "a reconstruction check", "m", 0.0, None, "e", True)
    with pytest.raises(ValueError, match="source must be one of"):
        Claim("C1", "paper", "s", "m", 0.0, None, "e", True)
    with pytest.raises(ValueError, match="reconstruction check: its source must be 'ours'"):
        Claim("R1", "abstract", "s", "m", 0.0, None, "e", True)
    with pytest.raises(ValueError, match="comes from the revision"):
        Claim("C6", "abstract", "s", "m", 0.0, None, "e", True)
    with pytest.raises(ValueError, match="seeds must be"):
        Claim("C4", "abstract", "s", "m", 0.0, None, "e", True, seeds=0)
    row = paper_row("C4", "m", 0.5, (0.4, 0.6), "e", np.bool_(True), seeds=3)
    assert row.statement == PAPER_CLAIMS["C4"].statement and row.source == "abstract" and row.holds is True


def test_non_finite_ci_never_reaches_the_file(tmp_path):
    """A NaN/inf interval bound must be rejected (on construction or on write): json.dump would otherwise write the
    non-standard tokens NaN/Infinity, which strict JSON readers reject."""
    try:
        claim = Claim("C1", "abstract", "s", "m", 0.1, (math.nan, 0.2), "e", True)
        path = write_results(tmp_path, "ch1", {}, [claim])
    except ValueError:
        assert not os.listdir(tmp_path)
        return
    _strict_json(path.read_text())


def test_non_finite_parameter_never_reaches_the_file(tmp_path):
    try:
        path = write_results(tmp_path, "ch1", {"lr": math.inf}, _claims())
    except ValueError:
        assert not os.listdir(tmp_path)  # atomic: neither the file nor a temp file
        return
    _strict_json(path.read_text())


def test_read_results_rejects_malformed(tmp_path):
    path = write_results(tmp_path, "ch4", {}, _claims())
    doc = json.loads(path.read_text())
    del doc["source_hash"]
    bad = tmp_path / "bad.results.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="source_hash"):
        read_results(bad)
    doc = json.loads(path.read_text())
    doc["claims"][0]["id"] = "C9"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="claim id"):
        read_results(bad)


# ---------------------------------------------------------------- atomic_write
def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "x.json"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as f:
            f.write('{"partial": ')
            raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(tmp_path / "sub") == []  # the temporary file was removed too


def test_atomic_write_failure_keeps_previous_content(tmp_path):
    target = tmp_path / "x.json"
    with atomic_write(target) as f:
        f.write("old")
    assert target.read_text() == "old"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write("new, half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.json"]


def test_write_results_failure_inside_json_dump_leaves_nothing(tmp_path):
    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_results(tmp_path / "r", "ch5", {"obj": Unserialisable()}, _claims())
    assert os.listdir(tmp_path / "r") == []


def test_atomic_write_binary_mode(tmp_path):
    target = tmp_path / "b.bin"
    with atomic_write(target, "wb") as f:
        f.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_respects_umask_like_open(tmp_path):
    """The atomically written file must get the permissions a plain open(path, "w") would give (0o666 & ~umask);
    a temp file from tempfile.mkstemp is 0o600, which would make results files unreadable to other users."""
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        with atomic_write(tmp_path / "atomic.txt") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(plain) == 0o644


def test_unmeasurable_value_is_null_and_cannot_hold(tmp_path):
    path = write_results(tmp_path, "ch9", {}, [Claim("C6", "revision", "s", "m", None, None, "< 0", False)])
    assert json.loads(path.read_text())["claims"][0]["value"] is None
    assert read_results(path)["claims"][0]["holds"] is False
    with pytest.raises(ValueError, match="cannot hold"):
        Claim("C6", "revision", "s", "m", None, None, "< 0", True)


def test_verdict_states_follow_premise_quality_and_rule():
    """Five states: a conditional row whose premise is not reached is not evaluated, a memorization row whose
    generator fails the quality gate fails for that reason, else the rule decides."""
    from diffgen.claims.results import FAILS, HOLDS, NOT_MEASURABLE, PREMISE, QUALITY

    def row(holds, **conditions):
        return paper_row("C4", "copy rate", 0.1, (0.0, 0.2), "<= 0.5", holds, 5, **conditions)

    assert row(True).verdict == HOLDS and row(False).verdict == FAILS
    premise = dict(premise=Condition("the nets approximate eps*", False, (Comparison("lower end", 0.2, ">", 0.5),)))
    assert row(True, **premise).verdict == PREMISE and not row(True, **premise).holds
    gate = dict(quality=Condition("good samples", False, (Comparison("energy distance", 2.6, "<=", 0.27, "a fit"),)))
    assert row(True, **gate).verdict == QUALITY and not row(True, **gate).holds
    assert row(False, **gate).verdict == FAILS  # the rule fails by itself: the gate does not decide
    assert row(False, **gate).rule_holds is False and row(True, **gate).rule_holds is True
    assert row(True, premise=Condition("p", True), quality=Condition("q", True)).verdict == HOLDS
    assert Claim("C4", "abstract", "s", "m", None, None, "e", False).verdict == NOT_MEASURABLE
    with pytest.raises(ValueError, match="cannot hold"):
        Claim("C4", "abstract", "s", "m", 0.1, None, "e", True, premise=Condition("p", False))
    with pytest.raises(ValueError, match="contradicts its tests"):
        Condition("p", True, (Comparison("lower end", 0.2, ">", 0.5),))
    with pytest.raises(ValueError, match="its tests say otherwise"):
        Claim("C4", "abstract", "s", "m", 0.1, None, "e", True, rule=(Comparison("upper end", 0.7, "<=", 0.5),))
    with pytest.raises(ValueError, match="relation must be one of"):
        Comparison("x", 1.0, "=<", 2.0)


def test_conditions_rules_and_designs_round_trip_through_the_file(tmp_path):
    rule = (Comparison("lower end", 0.6, ">", np.float64(0.5)), Comparison("upper end", np.float32(0.9), "<=", 1.0, "a bound"))
    claim = paper_row("C5a", "ratio", 1.02, (0.9, 1.1), "inside [0.8, 1.25]", True, 5, rule=rule,
                      premise=Condition("sufficient training", True, (Comparison("fall", 0.01, "<=", 0.05),)),
                      quality=Condition("q", True, (Comparison("energy", 0.1, "<=", 0.3, "a fit"),), "any"),
                      interval="t interval across 5 seeds", regime={"n": 40, "train_steps": 2000},
                      equivalence=Equivalence(0.223, 0.05, 0.97, 3), label="a similar model (n = 40)")
    back = claim_from_json(read_results(write_results(tmp_path, "ch4", {}, [claim]))["claims"][0])
    assert back == claim and back.rule[1].of == "a bound" and back.quality.combine == "any"
    assert back.premise_met is True and back.quality_ok is True and back.equivalence.seeds_for_80 == 3


def test_results_files_without_the_newer_fields_still_read(tmp_path):
    path = write_results(tmp_path, "ch2", {}, _claims())
    doc = json.loads(path.read_text())
    for c in doc["claims"]:
        for key in ("premise", "quality", "flattened", "rule_holds", "rule", "interval", "regime", "equivalence",
                    "label"):
            del c[key]
    path.write_text(json.dumps(doc))
    assert [c["id"] for c in read_results(path)["claims"]] == ["C2", "C3"]


def test_files_of_older_code_with_premise_sentences_still_read(tmp_path):
    """Before premises and gates were measured tests, they were a sentence with their outcome beside it."""
    path = write_results(tmp_path, "ch3", {}, _claims())
    doc = json.loads(path.read_text())
    doc["claims"][1] |= {"premise": "the nets approximate eps*", "premise_met": False, "quality": "q",
                         "quality_ok": True, "holds": False}
    path.write_text(json.dumps(doc))
    row = claim_from_json(read_results(path)["claims"][1])
    assert row.premise == Condition("the nets approximate eps*", False) and row.verdict == "premise not reached"
