"""Layer 6: the command line.

`diffgen run CHAPTER...` executes chapter notebooks headlessly with papermill; `diffgen chapters` lists them;
`diffgen report [RUN_DIR]` prints the claims table from a run's results files (diffgen.report).

A chapter is `<book>/ch*_*.ipynb` (book: <repo>/book, or $DIFFGEN_BOOK_DIR); its id is the stem up to the first
underscore. Its first code cell is tagged `parameters` and holds one `name = <literal>  # description; <spec>` a
line, <spec> being `int in [LO, HI]`, `float in [LO, HI]`, `one of: a, b, c` or `bool`. Presets come from
presets.toml (or $DIFFGEN_PRESETS). A run is validated completely before anything runs or is written; then each
chapter runs in a child process (`python -m diffgen.cli _execute JOB`) so that its wall-clock limit can kill it.
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tokenize
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import diffgen

DEVICES = ("auto", "cpu", "cuda")  # as diffgen._util.DEVICES (not imported here: that module imports torch)
REQUIRED = ("device", "seed")  # every chapter declares these
SKIP_TAGS = {"injected-parameters", "papermill-error-cell-tag"}  # cells papermill adds to an executed notebook


class UsageError(Exception):
    """A bad request on the command line or in a preset (exit code 2)."""


class BookError(Exception):
    """A malformed chapter notebook or presets file: a developer error (exit code 1)."""


# ---------------------------------------------------------------------------------------------------------------
# Parameter specs


@dataclass(frozen=True)
class Spec:
    """The values a parameter accepts: kind 'int' or 'float' (inclusive bounds), 'choice' (strings) or 'bool'."""

    kind: str
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind in ("int", "float"):
            return f"{self.kind} in [{self.low}, {self.high}]"
        return "one of: " + ", ".join(self.choices) if self.kind == "choice" else "bool"

    def allowed(self) -> str:
        """The accepted values, in words, for error messages."""
        if self.kind in ("int", "float"):
            return f"a{'n' if self.kind == 'int' else ''} {self.kind} in [{self.low}, {self.high}]"
        return "one of " + ", ".join(self.choices) if self.kind == "choice" else "a bool (true, false, 1 or 0)"

    def validate(self, value):
        """`value` if it has the right type and is allowed (ints widened to float for 'float'); else ValueError."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "int" and number and isinstance(value, int) and self.low <= value <= self.high:
            return value
        if self.kind == "float" and number and self.low <= value <= self.high:
            return float(value)
        if self.kind == "bool" and isinstance(value, bool):
            return value
        if self.kind == "choice" and isinstance(value, str) and value in self.choices:
            return value
        raise ValueError(value)

    def from_text(self, text: str):
        """Parse a command-line VALUE with this spec's type and validate it; ValueError if either fails."""
        if self.kind == "int":
            return self.validate(int(text))
        if self.kind == "float":
            return self.validate(float(text))
        if self.kind == "bool":
            bools = {"true": True, "1": True, "false": False, "0": False}
            if text.strip().lower() not in bools:
                raise ValueError(text)
            return bools[text.strip().lower()]
        return self.validate(text)


_RANGE = re.compile(r"(int|float) in \[([^,\]]+),([^,\]]+)\]")


def parse_spec(text: str) -> Spec:
    """`int in [LO, HI]` | `float in [LO, HI]` | `one of: a, b, c` | `bool` -> Spec; ValueError otherwise."""
    text = text.strip()
    if text == "bool":
        return Spec("bool")
    if text.startswith("one of:"):
        choices = tuple(c.strip() for c in text[len("one of:"):].split(","))
        if not all(choices):
            raise ValueError(f"empty choice in spec {text!r}")
        return Spec("choice", choices=choices)
    match = _RANGE.fullmatch(text)
    if not match:
        raise ValueError(f"unrecognised spec {text!r}; expected 'int in [LO, HI]', 'float in [LO, HI]', "
                         "'one of: a, b, c' or 'bool'")
    kind = match[1]
    low, high = _bound(kind, match[2]), _bound(kind, match[3])
    if low > high:
        raise ValueError(f"empty range in spec {text!r}")
    return Spec(kind, low, high)


def _bound(kind: str, text: str) -> int | float:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = None
    types = (int,) if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"bound {text.strip()!r} of an {kind} range is not a{'n' if kind == 'int' else ''} {kind}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Chapters and their parameters cells


@dataclass(frozen=True)
class Parameter:
    name: str
    default: object
    spec: Spec
    description: str


@dataclass(frozen=True)
class Chapter:
    id: str  # "ch2"
    path: Path  # <book>/ch2_empirical_optimum.ipynb

    @property
    def stem(self) -> str:
        return self.path.stem


def book_dir() -> Path:
    env = os.environ.get("DIFFGEN_BOOK_DIR")
    return Path(env) if env else Path(diffgen.__file__).resolve().parents[1] / "book"


def discover(book: Path | None = None) -> dict[str, Chapter]:
    """Chapter id -> Chapter for every `ch*_*.ipynb` in the book folder, in chapter order (ch2 before ch10)."""
    chapters: dict[str, Chapter] = {}
    for path in sorted((book or book_dir()).glob("ch*_*.ipynb"), key=_chapter_order):
        cid = path.stem.split("_", 1)[0]
        if cid in chapters:
            raise BookError(f"two notebooks for chapter {cid}: {chapters[cid].path.name} and {path.name}")
        chapters[cid] = Chapter(cid, path)
    return chapters


def _chapter_order(path: Path) -> tuple:
    number = path.stem.split("_", 1)[0][2:]
    return (0, int(number), path.name) if number.isdigit() else (1, 0, path.name)


def resolve_chapters(names: list[str], chapters: dict[str, Chapter]) -> list[Chapter]:
    """`ch2`, `2`, `ch2_empirical_optimum` (or that .ipynb) -> chapters, in the order given, without repeats."""
    aliases = {}
    for ch in chapters.values():
        aliases.update({ch.id: ch, ch.id[2:]: ch, ch.stem: ch})
    selected = []
    for name in names:
        key = Path(name).stem if name.endswith(".ipynb") else name
        if key not in aliases:
            known = ", ".join(ch.stem for ch in chapters.values()) or f"none (no ch*_*.ipynb in {book_dir()})"
            raise UsageError(f"unknown chapter {name!r}; known chapters: {known}")
        if aliases[key] not in selected:
            selected.append(aliases[key])
    return selected


def read_parameters(path: Path) -> dict[str, Parameter]:
    """The parameters declared by a chapter notebook's first code cell, which must be tagged `parameters`."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError) as e:
        raise BookError(f"{path}: not a readable notebook ({e})") from e
    code = [c for c in cells if c.get("cell_type") == "code"]
    if not code or "parameters" not in code[0].get("metadata", {}).get("tags", []):
        raise BookError(f"{path}: the first code cell must be tagged 'parameters'")
    return parse_parameters(_source(code[0]), where=str(path))


def parse_parameters(source: str, where: str = "<parameters cell>") -> dict[str, Parameter]:
    """Parse `name = <literal>  # description; <spec>` lines; anything else is a BookError naming `where` and line."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise _cell_error(where, e.lineno, f"not valid Python: {e.msg}") from e
    comments = _comments(source)
    params: dict[str, Parameter] = {}
    for node in tree.body:
        param = _parameter(node, comments, where)
        if param.name in params:
            raise _cell_error(where, node.lineno, f"{param.name} is declared twice")
        params[param.name] = param
    for name in REQUIRED:
        if name not in params:
            raise BookError(f"{where}: the parameters cell declares no {name!r} parameter (every chapter needs one)")
    return params


def _parameter(node: ast.stmt, comments: dict[int, str], where: str) -> Parameter:
    line = node.lineno
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
        raise _cell_error(where, line, "expected `name = <literal>  # description; <spec>`")
    name = node.targets[0].id
    try:
        default = ast.literal_eval(node.value)
    except (ValueError, TypeError, SyntaxError) as e:
        raise _cell_error(where, line, f"the value of {name} is not a Python literal") from e
    comment = next((comments[i] for i in range(node.end_lineno, line - 1, -1) if i in comments), "")
    description, semicolon, spec_text = comment.rpartition(";")
    if not semicolon:
        raise _cell_error(where, line, f"{name} has no spec; end the line with `# description; <spec>`")
    try:
        spec = parse_spec(spec_text)
    except ValueError as e:
        raise _cell_error(where, line, f"{name}: {e}") from e
    try:
        default = spec.validate(default)
    except ValueError as e:
        raise _cell_error(where, line, f"the default {default!r} of {name} is not {spec.allowed()}") from e
    return Parameter(name, default, spec, description.strip())


def _cell_error(where: str, line: int | None, message: str) -> BookError:
    return BookError(f"{where}, parameters cell line {line}: {message}")


def _comments(source: str) -> dict[int, str]:
    """Line number -> text of the comment on that line (tokenized, so a '#' inside a string is not one)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0]: t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT}


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


# ---------------------------------------------------------------------------------------------------------------
# Presets and validation of a run


def presets_path() -> Path:
    env = os.environ.get("DIFFGEN_PRESETS")
    return Path(env) if env else Path(__file__).with_name("presets.toml")


def load_presets(path: Path | None = None) -> dict[str, dict[str, dict]]:
    """Preset -> chapter id -> overrides, as written in presets.toml ('default' is implicit: no overrides)."""
    path = path or presets_path()
    try:
        presets = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BookError(f"{path}: {e}") from e
    if "default" in presets:
        raise BookError(f"{path}: 'default' must not be a table (it means the notebooks' own parameters)")
    for preset, table in presets.items():
        if not isinstance(table, dict) or not all(isinstance(t, dict) for t in table.values()):
            raise BookError(f"{path}: preset {preset} must hold only [{preset}.<chapter id>] tables")
    return presets


@dataclass
class Run:
    """One validated chapter run: the chapter, its declared parameters and the overrides to inject."""

    chapter: Chapter
    parameters: dict[str, Parameter]
    overrides: dict[str, object] = field(default_factory=dict)


def plan_run(names: list[str], preset: str = "default", pairs: list[tuple[str, str]] | tuple = (),
             device: str | None = None, presets: dict | None = None) -> list[Run]:
    """Validate a whole `diffgen run` request and return what to run; UsageError on any bad input.

    Overrides, lowest precedence first: notebook default < preset < --device < -p.
    """
    chapters = discover()
    selected = resolve_chapters(names, chapters)
    table = _preset_table(load_presets() if presets is None else presets, preset, chapters)
    runs = [Run(ch, read_parameters(ch.path)) for ch in selected]
    for run in runs:
        run.overrides.update(_preset_overrides(preset, table.get(run.chapter.id, {}), run))
    for name, text in ([("device", device)] if device else []) + [tuple(p) for p in pairs]:
        _apply_text(name, text, runs)
    for run in runs:
        _check_device(run)
    return runs


def _preset_table(presets: dict, preset: str, chapters: dict[str, Chapter]) -> dict[str, dict]:
    if preset == "default":
        return {}
    if preset not in presets:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(['default', *presets])}")
    for cid in presets[preset]:
        if cid not in chapters:
            raise UsageError(f"preset {preset} sets parameters of {cid}, which is not a chapter "
                             f"(chapters: {', '.join(chapters)})")
    return presets[preset]


def _preset_overrides(preset: str, values: dict, run: Run) -> dict:
    cid, declared = run.chapter.id, run.parameters
    overrides = {}
    for name, value in values.items():
        if name not in declared:
            raise UsageError(f"preset {preset}: {cid} has no parameter {name} (its parameters: {', '.join(declared)})")
        try:
            overrides[name] = declared[name].spec.validate(value)
        except ValueError:
            raise UsageError(f"preset {preset}: parameter {name} of {cid} must be "
                             f"{declared[name].spec.allowed()}; got {value!r}") from None
    return overrides


def _apply_text(name: str, text: str, runs: list[Run]) -> None:
    """Apply `-p NAME VALUE` to every selected chapter that declares NAME (an error if none does)."""
    targets = [run for run in runs if name in run.parameters]
    if not targets:
        ids = ", ".join(run.chapter.id for run in runs)
        known = sorted({p for run in runs for p in run.parameters})
        raise UsageError(f"unknown parameter {name}: not declared by {ids} (parameters: {', '.join(known)})")
    for run in targets:
        spec = run.parameters[name].spec
        try:
            run.overrides[name] = spec.from_text(text)
        except ValueError:
            raise UsageError(f"parameter {name} of {run.chapter.id} must be {spec.allowed()}; got {text}") from None


def _check_device(run: Run) -> None:
    device = run.overrides.get("device", run.parameters["device"].default)
    if device == "cuda" and not _cuda_available():
        raise UsageError(f"parameter device of {run.chapter.id} is cuda, but torch.cuda.is_available() is False "
                         "here; use --device auto or --device cpu")


def _cuda_available() -> bool:
    import torch  # imported only when CUDA is asked for: it is slow to import

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------------------
# Execution


def execute(runs: list[Run], out: Path, timeout: int) -> int:
    """Run the chapters in order into `out`; stop at the first failure. Returns the exit code (0 or 1)."""
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        if not run_chapter(run, out, timeout):
            return 1
    return 0


def run_chapter(run: Run, out: Path, timeout: int) -> bool:
    """Execute one chapter into `out` (replacing its earlier outputs there); print the outcome."""
    ch = run.chapter
    running, final, failed = (out / f"{ch.stem}{suffix}.ipynb" for suffix in (".running", "", ".FAILED"))
    results = out / f"{ch.id}.results.json"
    for stale in (running, final, failed, results):
        stale.unlink(missing_ok=True)
    settings = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "the notebook's defaults"
    print(f"{ch.id}: running {_show(ch.path)} with {settings}", flush=True)
    start = time.monotonic()
    failure = _execute_in_child(ch.path, running, out, run.overrides, timeout)
    if failure:
        _keep_failed(running, failed)
        headline, reason = failure
        return _fail(f"{ch.id} {headline}{_failed_cell(failed)}{': ' + reason if reason else ''}", failed)
    problem = _check_results(results)
    if problem:
        _keep_failed(running, failed)
        return _fail(f"{ch.id} {problem}", failed)
    os.replace(running, final)  # papermill wrote progressively to `running`: the final name appears only now
    print(f"{ch.id}: done in {time.monotonic() - start:.1f} s: executed notebook {_show(final)}, "
          f"results {_show(results)}", flush=True)
    return True


def _keep_failed(running: Path, failed: Path) -> None:
    if running.exists():
        os.replace(running, failed)


def _fail(message: str, failed: Path) -> bool:
    kept = f"partial notebook kept as {_show(failed)}" if failed.exists() else "no notebook was written"
    print(f"diffgen run: error: {message}; {kept}", file=sys.stderr)
    return False


def _execute_in_child(notebook: Path, output: Path, cwd: Path, parameters: dict,
                      timeout: int) -> tuple[str, str] | None:
    """Run `_execute_job` in a child process killed after `timeout` s; None on success, else (headline, reason)."""
    with tempfile.TemporaryDirectory(prefix="diffgen-run-") as tmp:
        job, report = Path(tmp) / "job.json", Path(tmp) / "report.txt"
        job.write_text(json.dumps({"input": str(notebook), "output": str(output), "cwd": str(cwd),
                                   "parameters": parameters, "timeout": timeout, "report": str(report)}))
        proc = subprocess.Popen([sys.executable, "-m", "diffgen.cli", "_execute", str(job)])
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout} s (--timeout)", ""
        finally:
            _stop(proc)
        if proc.returncode == 0:
            return None
        return "failed", report.read_text() if report.exists() else f"the executor exited with code {proc.returncode}"


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the child if it still runs (its kernel notices the parent is gone and exits too)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _check_results(path: Path) -> str | None:
    if not path.is_file():
        return f"finished without writing {path.name} into its working directory {_show(path.parent)}"
    try:
        json.loads(path.read_text())
    except ValueError as e:
        return f"wrote {path.name}, but it is not valid JSON ({e})"
    return None


def _failed_cell(notebook: Path) -> str:
    """' in cell index I (`first line`)' for the last cell papermill started, indexed as in the chapter notebook."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return ""  # missing, or cut off mid-write by the kill
    cells = [c for c in cells if not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))]
    started = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return ""
    first_line = next((line.strip() for line in _source(cells[started[-1]]).splitlines() if line.strip()), "")
    return f" in cell index {started[-1]} (`{first_line}`)"


def _execute_job(job_path: str) -> int:
    """The child process: execute one notebook with papermill; on failure write a one-line reason to the report."""
    job = json.loads(Path(job_path).read_text())
    os.environ["DIFFGEN_HEADLESS"] = "1"  # the kernel inherits it; live widgets stall headless nbclient
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(job["input"], job["output"], parameters=job["parameters"], cwd=job["cwd"],
                                   kernel_name="python3", progress_bar=True, execution_timeout=job["timeout"])
        return 0
    except PapermillExecutionError as e:
        reason = f"{e.ename}: {e.evalue}"
    except CellTimeoutError:
        reason = f"timed out: the cell ran longer than {job['timeout']} s (--timeout)"
    except DeadKernelError as e:
        reason = f"the kernel died ({e})"
    except Exception as e:  # noqa: BLE001 - anything else is reported, not re-raised
        reason = f"{type(e).__name__}: {e}"
    Path(job["report"]).write_text((reason.strip().splitlines() or [""])[0])
    return 1


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------------
# Commands


def _list_chapters() -> int:
    presets = load_presets()
    for ch in discover().values():
        print(f"{ch.id}  {_show(ch.path)}")
        rows = [("name", "default", "spec", "description", "presets")]
        for p in read_parameters(ch.path).values():
            set_by = ", ".join(f"{name}: {t[ch.id][p.name]}" for name, t in presets.items() if p.name in t.get(ch.id, {}))
            rows.append((p.name, str(p.default), str(p.spec), p.description, set_by))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + ("  " + row[4]).rstrip())
    return 0


def _run(args: argparse.Namespace) -> int:
    runs = plan_run(args.chapters, args.preset, args.param, args.device)
    out = (args.out or Path("runs") / args.preset).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    return execute(runs, out, args.timeout)


def _report(args: argparse.Namespace) -> int:
    from . import report

    directory = args.run_dir or book_dir()
    try:
        text, rows = report.render(directory, args.format)
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(text)
    return 1 if args.check and report.any_fails(rows) else 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number of seconds; got {text}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffgen", description="Run the book's chapter notebooks and report "
                                                                 "which of the paper's claims they support.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute chapters headlessly with papermill",
                         description="Execute chapters headlessly; write each executed notebook and its "
                                     "<chapter>.results.json into the output folder.")
    run.add_argument("chapters", nargs="+", metavar="CHAPTER", help="ch2, 2 or ch2_empirical_optimum")
    run.add_argument("--preset", default="default", help="smoke, default or paper (diffgen/presets.toml); "
                                                         "default: the notebooks' own parameters")
    run.add_argument("-p", dest="param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameter in every selected chapter that declares it (repeatable)")
    run.add_argument("--device", choices=DEVICES, help="set every chapter's device parameter")
    run.add_argument("--out", type=Path, help="output folder (default: runs/<preset>)")
    run.add_argument("--timeout", type=_positive_int, default=1800, metavar="SECONDS",
                     help="wall-clock limit per chapter, also the per-cell limit (default: %(default)s)")
    sub.add_parser("chapters", help="list the chapters and their parameters")
    rep = sub.add_parser("report", help="the paper's claims against what a run measured",
                         description="Print the claims table (C1..C6: what each chapter measured, its 95%% CI and "
                                     "the verdict) from the <chapter>.results.json files in RUN_DIR. Exit code 0, "
                                     "or with --check 1 when a measured claim fails; 2 when RUN_DIR has no "
                                     "results or a file is malformed. Claims no chapter measured are 'not run'.")
    rep.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR",
                     help="folder of results files, e.g. runs/smoke (default: book/, the book build's results)")
    rep.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    rep.add_argument("--check", action="store_true", help="exit 1 when a measured claim does not hold")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_execute"]:  # internal: the child process of `run`
        return _execute_job(argv[1])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        commands = {"run": _run, "report": _report, "chapters": lambda _: _list_chapters()}
        return commands[args.command](args)
    except UsageError as e:
        print(f"diffgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BookError as e:
        print(f"diffgen {args.command}: error in the book: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"diffgen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
