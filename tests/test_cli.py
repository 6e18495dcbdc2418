"""diffgen.chapters.registry and diffgen.commands.cli: parameters-cell parsing, validation of `diffgen run` (exit 2, nothing written), and end-to-end
execution of tiny fixture chapters in a temporary book folder (DIFFGEN_BOOK_DIR)."""
from __future__ import annotations

import json
import re
import time
import tomllib

import nbformat
import pytest

from diffgen.chapters import registry
from diffgen.commands import cli

CH1_PARAMS = """\
n = 3  # how many items; int in [1, 10]
scale = 0.5  # a scale factor; this one; has semicolons; float in [0, 1]
mode = "a"  # which mode; one of: a, b
flag = False  # switch it on; bool
device = "auto"  # where to run; one of: auto, cpu, cuda
seed = 0  # random seed; int in [0, 2147483647]
"""

# ch2's parameters as the chapter declares them: presets.toml must validate against these.
CH2_PARAMS = """\
dataset = "digits"  # training set; one of: digits, mnist, cifar10
n_train = 500  # training images; int in [2, 1797]
n_heldout = 300  # held-out images; int in [2, 1795]
n_samples = 1024  # generated samples; int in [2, 4096]
steps = 50  # sampler steps; int in [2, 1000]
toy_dataset = "moons"  # 2-D toy; one of: gmm, moons, circle
toy_n_train = 16  # toy training points; int in [2, 512]
seed = 0  # random seed; int in [0, 2147483647]
device = "auto"  # where to run; one of: auto, cpu, cuda
"""

BASE_PARAMS = """\
device = "auto"  # where to run; one of: auto, cpu, cuda
seed = 0  # random seed; int in [0, 2147483647]
"""

WRITE_RESULTS = """\
import json, os
print("hello from", {cid!r}, "n =", n)
with open({cid!r} + ".results.json", "w") as f:
    json.dump({{"chapter": {cid!r}, "n": n, "headless": os.environ.get("DIFFGEN_HEADLESS"),
               "data": os.environ.get("DIFFGEN_DATA")}}, f)
"""


def write_notebook(path, params, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), nbformat.v4.new_code_cell(params)]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def book(tmp_path, monkeypatch):
    book = tmp_path / "book"
    book.mkdir()
    write_notebook(book / "ch1_toy.ipynb", CH1_PARAMS, WRITE_RESULTS.format(cid="ch1"))
    write_notebook(book / "ch2_empirical_optimum.ipynb", CH2_PARAMS)
    write_notebook(book / "ch3_fails.ipynb", BASE_PARAMS, "x = 1", "raise ValueError('boom')\n# more")
    write_notebook(book / "ch4_slow.ipynb", BASE_PARAMS, "import time; time.sleep(60)")
    write_notebook(book / "ch5_silent.ipynb", BASE_PARAMS, "print('no results')")
    write_notebook(book / "ch6_dies.ipynb", BASE_PARAMS, "import os; os._exit(3)")
    monkeypatch.setenv("DIFFGEN_BOOK_DIR", str(book))
    monkeypatch.chdir(tmp_path)
    return book


@pytest.fixture
def presets(tmp_path, monkeypatch):
    path = tmp_path / "presets.toml"
    path.write_text('[smoke.ch1]\nn = 2\nmode = "b"\n\n[bad.ch1]\nn = 50\n\n[typo.ch1]\nnn = 2\n\n'
                    '[wrongtype.ch1]\nn = "2"\n\n[nochapter.ch9]\nn = 2\n')
    monkeypatch.setenv("DIFFGEN_PRESETS", str(path))
    return path


# --- parsing ---------------------------------------------------------------------------------------------------


def test_parameters_cell_parsed(book):
    params = registry.read_parameters(book / "ch1_toy.ipynb")
    assert list(params) == ["n", "scale", "mode", "flag", "device", "seed"]
    n, scale, mode, flag = (params[k] for k in ("n", "scale", "mode", "flag"))
    assert (n.default, n.spec.kind, n.spec.low, n.spec.high, n.description) == (3, "int", 1, 10, "how many items")
    assert (scale.default, scale.spec.kind, scale.spec.low, scale.spec.high) == (0.5, "float", 0, 1)
    assert scale.description == "a scale factor; this one; has semicolons"  # the spec follows the last ';'
    assert (mode.default, mode.spec.kind, mode.spec.choices) == ("a", "choice", ("a", "b"))
    assert (flag.default, flag.spec.kind, flag.description) == (False, "bool", "switch it on")
    assert params["seed"].spec.high == 2147483647
    assert str(n.spec) == "int in [1, 10]" and str(mode.spec) == "one of: a, b"


@pytest.mark.parametrize("spec, expected", [
    ("int in [2, 1797]", registry.Spec("int", 2, 1797)),
    (" float in [-1.5,2] ", registry.Spec("float", -1.5, 2)),
    ("one of: gmm, moons, circle", registry.Spec("choice", choices=("gmm", "moons", "circle"))),
    ("bool", registry.Spec("bool")),
])
def test_parse_spec(spec, expected):
    assert registry.parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["int in [1.5, 3]", "int in [5, 1]", "integer", "one of:", "float in [a, 1]",
                                  "int in (1, 3)", "int in [1, 2**4]"])
def test_parse_spec_rejects(spec):
    with pytest.raises(ValueError):
        registry.parse_spec(spec)


@pytest.mark.parametrize("source, line, says", [
    ("seed = 0  # seed; int in [0, 9]\nx = 1  # no spec\ndevice = 'cpu'  # d; one of: cpu\n", 2, "no spec"),
    ("seed = 0  # seed; int in [0, 9]\nx = 1\n", 2, "no spec"),
    ("seed = 0  # seed; int in [0, 9]\nx = 1  # x; integer\n", 2, "unrecognised spec"),
    ("seed = 0  # seed; int in [0, 9]\nx = 11  # x; int in [0, 9]\n", 2, "default 11 of x"),
    ("seed = 0  # seed; int in [0, 9]\nx = f(1)  # x; int in [0, 9]\n", 2, "not a Python literal"),
    ("seed = 0  # seed; int in [0, 9]\nimport os\n", 2, "expected `name = <literal>"),
    ("seed = 0  # seed; int in [0, 9]\nx = 's # t'  # x; int in [0, 9]\n", 2, "default 's # t' of x"),
])
def test_bad_parameters_cell_names_notebook_and_line(source, line, says):
    with pytest.raises(registry.BookError, match=f"nb.ipynb, parameters cell line {line}: .*{says}"):
        registry.parse_parameters(source, where="nb.ipynb")


def test_device_and_seed_required():
    with pytest.raises(registry.BookError, match="no 'device' parameter"):
        registry.parse_parameters("seed = 0  # seed; int in [0, 9]\n", where="nb.ipynb")


def test_first_code_cell_must_be_tagged(book):
    nb = nbformat.read(book / "ch5_silent.ipynb", as_version=4)
    nb.cells[1].metadata["tags"] = []
    nbformat.write(nb, book / "ch5_silent.ipynb")
    with pytest.raises(registry.BookError, match="ch5_silent.ipynb: the first code cell must be tagged 'parameters'"):
        registry.read_parameters(book / "ch5_silent.ipynb")


@pytest.mark.parametrize("name", ["ch2", "2", "ch2_empirical_optimum", "book/ch2_empirical_optimum.ipynb"])
def test_chapter_names(book, name):
    assert [ch.id for ch in registry.resolve_chapters([name, "ch1", "1"], registry.discover())] == ["ch2", "ch1"]


# --- validation: exit 2, one stderr line naming the culprit, nothing written -------------------------------------


@pytest.mark.parametrize("args, says", [
    (["ch9"], "unknown chapter 'ch9'; known chapters: ch1_toy, ch2_empirical_optimum"),
    (["ch1", "--preset", "huge"], "unknown preset 'huge'; choose from default, smoke, bad"),
    (["ch1", "-p", "nn", "3"], "unknown parameter nn: not declared by ch1"),
    (["ch1", "ch3", "-p", "n_train", "3"], "unknown parameter n_train: not declared by ch1, ch3"),
    (["ch1", "-p", "n", "three"], "parameter n of ch1 must be an int in [1, 10]; got three"),
    (["ch1", "-p", "n", "2.0"], "parameter n of ch1 must be an int in [1, 10]; got 2.0"),
    (["ch1", "-p", "n", "11"], "parameter n of ch1 must be an int in [1, 10]; got 11"),
    (["ch1", "-p", "scale", "1.5"], "parameter scale of ch1 must be a float in [0, 1]; got 1.5"),
    (["ch1", "-p", "scale", "nan"], "parameter scale of ch1 must be a float in [0, 1]; got nan"),
    (["ch1", "-p", "mode", "c"], "parameter mode of ch1 must be one of a, b; got c"),
    (["ch1", "-p", "flag", "yes"], "parameter flag of ch1 must be a bool (true, false, 1 or 0); got yes"),
    (["ch1", "ch2", "-p", "seed", "-1"], "parameter seed of ch1 must be an int in [0, 2147483647]; got -1"),
    (["ch2", "-p", "n_train", "5000"], "parameter n_train of ch2 must be an int in [2, 1797]; got 5000"),
    (["ch1", "--preset", "bad"], "preset bad: parameter n of ch1 must be an int in [1, 10]; got 50"),
    (["ch1", "--preset", "wrongtype"], "preset wrongtype: parameter n of ch1 must be an int in [1, 10]; got '2'"),
    (["ch1", "--preset", "typo"], "preset typo: ch1 has no parameter nn"),
    (["ch1", "--preset", "nochapter"], "preset nochapter sets parameters of ch9, which is not a chapter"),
    (["ch1", "--device", "cuda"], "parameter device of ch1 is cuda, but torch.cuda.is_available() is False"),
    (["ch1", "-p", "device", "cuda"], "parameter device of ch1 is cuda"),
    (["ch2", "-p", "dataset", "mnist"], "dataset 'mnist' is read from local files: pass data_dir= (`diffgen run "
                                        "--data-dir`, or set $DIFFGEN_DATA) to a folder holding the four idx files"),
    (["ch2", "-p", "dataset", "cifar10", "--data-dir", "."], "no cifar10 files under"),
    (["ch2", "--data-dir", "nowhere"], "--data-dir nowhere is not a folder"),
])
def test_bad_input_exits_2_and_writes_nothing(book, presets, capsys, monkeypatch, args, says):
    monkeypatch.setattr(registry, "_cuda_available", lambda: False)
    monkeypatch.setenv("DIFFGEN_DATA", "")  # restored after the test (`--data-dir` sets it)
    out = book.parent / "out"
    assert cli.main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffgen run: error: ") and says in err, err
    assert not out.exists()


def test_argparse_errors_exit_2(book, capsys):
    assert cli.main(["run", "ch1", "--timeout", "0"]) == 2
    assert cli.main(["run", "ch1", "--device", "tpu"]) == 2
    assert cli.main(["run"]) == 2
    assert not (book.parent / "runs").exists()


def test_precedence_default_preset_device_p(book, presets, monkeypatch):
    monkeypatch.setattr(registry, "_cuda_available", lambda: True)
    [run] = registry.plan_run(["1"], "smoke", [("mode", "a"), ("flag", "1"), ("scale", "1")], device="cuda")
    assert run.overrides == {"n": 2, "mode": "a", "device": "cuda", "flag": True, "scale": 1.0}
    [run] = registry.plan_run(["1"], "smoke", [("device", "cpu")], device="cuda")
    assert run.overrides["device"] == "cpu"
    [run] = registry.plan_run(["1"])
    assert run.overrides == {}


@pytest.mark.parametrize("preset", ["smoke", "large"])
def test_shipped_presets_validate_against_ch2(book, preset):
    """The digits presets against the fixture book's digits-only ch2 (`paper`, on CIFAR-10, against the real book:
    test_shipped_presets_validate_against_the_book)."""
    presets = registry.load_presets()
    assert "default" not in presets and set(presets) >= {"smoke", "large", "paper"}
    [run] = registry.plan_run(["ch2"], preset, presets=presets)
    assert run.overrides == tomllib.loads(registry.presets_path().read_text())[preset]["ch2"]
    assert run.overrides.get("n_train", 500) + run.overrides.get("n_heldout", 300) <= 1797  # digits' size


def test_shipped_presets_validate_against_the_book():
    """The real book's chapters (those that exist yet) accept every shipped preset."""
    known = registry.discover()
    for preset, table in registry.load_presets().items():
        names = [cid for cid in table if cid in known]
        if names:
            registry.plan_run(names, preset)


def test_chapters_lists_parameters(book, presets, capsys):
    assert cli.main(["chapters"]) == 0
    out = capsys.readouterr().out
    assert "ch1  book/ch1_toy.ipynb" in out and "ch5  book/ch5_silent.ipynb" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("n "))
    assert line.split()[:5] == ["n", "3", "int", "in", "[1,"] and "how many items" in line and "smoke: 2" in line


# --- execution (a kernel per test: seconds each) ------------------------------------------------------------------


@pytest.mark.notebook("runs a fixture chapter in a kernel")
def test_run_writes_executed_notebook_and_results(book, capsys, monkeypatch):
    out = book.parent / "out"
    monkeypatch.setenv("DIFFGEN_DATA", "")  # restored after the test (`--data-dir` sets it for the kernels)
    assert cli.main(["run", "ch1", "-p", "n", "7", "--device", "cpu", "--out", str(out), "--timeout", "120",
                     "--data-dir", str(book)]) == 0
    assert json.loads((out / "ch1.results.json").read_text()) == {"chapter": "ch1", "n": 7, "headless": "1",
                                                                   "data": str(book)}
    nb = nbformat.read(out / "ch1_toy.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n = 7" in injected[0].source and 'device = "cpu"' in injected[0].source
    assert "hello from ch1 n = 7" in nb.cells[-1].outputs[0]["text"]
    assert sorted(p.name for p in out.iterdir()) == ["ch1.results.json", "ch1_toy.ipynb"]
    stdout = capsys.readouterr().out
    assert "ch1: done" in stdout and "ch1_toy.ipynb" in stdout and "ch1.results.json" in stdout


@pytest.mark.notebook("runs a fixture chapter in a kernel")
def test_failing_cell_keeps_failed_notebook(book, capsys):
    out = book.parent / "out"
    assert cli.main(["run", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "ch3 failed in cell index 3 (`raise ValueError('boom')`): ValueError: boom" in err
    assert (out / "ch3_fails.FAILED.ipynb").exists() and not (out / "ch3_fails.ipynb").exists()
    assert not (out / "ch3_fails.running.ipynb").exists()


@pytest.mark.notebook("runs a fixture chapter in a kernel")
def test_missing_results_is_a_failure(book, capsys):
    out = book.parent / "out"
    assert cli.main(["run", "ch5", "--out", str(out)]) == 1
    assert "ch5 finished without writing ch5.results.json" in capsys.readouterr().err
    assert (out / "ch5_silent.FAILED.ipynb").exists() and not (out / "ch5_silent.ipynb").exists()


@pytest.mark.notebook("runs a fixture chapter in a kernel")
def test_kernel_death_is_a_failure(book, capsys):
    out = book.parent / "out"
    assert cli.main(["run", "ch6", "--out", str(out)]) == 1
    assert "ch6 failed in cell index 2 (`import os; os._exit(3)`): the kernel died" in capsys.readouterr().err
    assert (out / "ch6_dies.FAILED.ipynb").exists()


@pytest.mark.notebook("runs a fixture chapter in a kernel")
def test_timeout_kills_a_stalled_chapter(book, capsys):
    out = book.parent / "out"
    start = time.monotonic()
    # 20 s: the kernel must reach the stalled cell within the limit on a loaded machine too (10 s was not enough)
    assert cli.main(["run", "ch4", "--out", str(out), "--timeout", "20"]) == 1
    assert time.monotonic() - start < 45
    err = capsys.readouterr().err
    assert "ch4 timed out after 20 s (--timeout) in cell index 2 (`import time; time.sleep(60)`)" in err, err
    assert (out / "ch4_slow.FAILED.ipynb").exists() and not (out / "ch4_slow.ipynb").exists()


# --- memory: the peaks each run prints, and what an out-of-memory error says to lower ---------------------------

OOM_PARAMS = """\
batch_size = 128  # batch; int in [8, 4096]
n_samples = 256  # samples; int in [16, 4096]
n_seeds = 3  # seeds; int in [2, 16]
n_train = 500  # training images; int in [8, 50000]
device = "auto"  # where to run; one of: auto, cpu, cuda
seed = 0  # random seed; int in [0, 2147483647]
"""

RAISE_OOM = """\
import torch
raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 73.00 GiB (GPU 0; 139.8 GiB total)")
"""

WRITE_REAL_RESULTS = """\
import numpy as np
from diffgen.claims.results import Claim, write_results
ballast = np.ones(40 * 2**20 // 8)  # 40 MiB more resident
write_results(".", "ch2", {}, [Claim("C2", "abstract", "closed form", "max error", 1e-12, None, "< 1e-9", True)])
"""


def test_out_of_memory_names_the_chapters_memory_parameters_with_their_values():
    from diffgen.commands.runner import Outcome, oom_hint

    values = {"batch_size": 512, "n_samples": 1000, "n_seeds": 2, "n_train": 5000, "seed": 0}
    oom = Outcome("failed in cell index 4 (`runs = ...`): OutOfMemoryError: CUDA out of memory.", "OutOfMemoryError")
    assert oom.out_of_memory and oom_hint("ch3", values, oom) == (
        "out of memory: lower batch_size (now 512), n_samples (now 1000), n_seeds (now 2), n_train (now 5000) "
        "with -p NAME VALUE")
    cpu = Outcome("failed: RuntimeError: [enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory",
                  "RuntimeError")
    assert cpu.out_of_memory and "lower batch_size (now 512)" in oom_hint("ch3", values, cpu)
    died = Outcome("failed in cell index 4: the kernel died (Kernel died)", "DeadKernelError")
    assert not died.out_of_memory and oom_hint("ch3", values, died).startswith("if it ran out of host memory, lower batch_size")
    assert oom_hint("ch3", values, Outcome("failed: ValueError: boom", "ValueError")) is None
    assert "lower the chapter's sizes" in oom_hint("ch9", values, oom)  # no declared list


def test_every_declared_memory_parameter_is_a_parameter_of_its_chapter():
    found = registry.discover(registry.PACKAGE_DIR.parent / "book")
    assert set(registry.MEMORY_PARAMETERS) <= set(found)
    for cid, names in registry.MEMORY_PARAMETERS.items():
        declared = registry.read_parameters(found[cid].path)
        assert set(names) <= set(declared), cid


@pytest.mark.notebook("runs a fixture chapter in a kernel")
def test_a_chapter_out_of_memory_says_what_to_lower_and_runs_print_their_peaks(tmp_path, monkeypatch, capsys):
    book = tmp_path / "book"
    book.mkdir()
    write_notebook(book / "ch3_oom.ipynb", OOM_PARAMS, "x = 1", RAISE_OOM)
    write_notebook(book / "ch2_memory.ipynb", BASE_PARAMS, WRITE_REAL_RESULTS)
    monkeypatch.setenv("DIFFGEN_BOOK_DIR", str(book))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "ch3", "-p", "n_samples", "1000", "--out", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "ch3 failed in cell index 3 (`import torch`): OutOfMemoryError: CUDA out of " \
        "memory. Tried to allocate 73.00 GiB" in err, err
    assert "; out of memory: lower batch_size (now 128), n_samples (now 1000), n_seeds (now 3), n_train (now 500) " \
        "with -p NAME VALUE; partial notebook kept as" in err, err
    peak = re.search(r"ch3: peak memory GPU unknown, host (\d+\.\d\d) GiB", out)
    assert peak and 0.05 < float(peak[1]) < 4, out  # the kernel's own peak, measured by the runner
    assert cli.main(["run", "ch2", "--out", str(tmp_path / "out")]) == 0
    recorded = json.loads((tmp_path / "out" / "ch2.results.json").read_text())["memory"]
    assert recorded["gpu_peak_bytes"] is None and recorded["host_peak_bytes"] > 40 * 2**20
    assert f"ch2: peak memory GPU not used, host {recorded['host_peak_bytes'] / 2**30:.2f} GiB" in \
        capsys.readouterr().out
