"""The chapters of the book, their parameters and presets, and the validation of a run request.

A chapter is `<book>/ch*_*.ipynb` (book: <repo>/book, or $DIFFGEN_BOOK_DIR); its id is the stem up to the first
underscore. Its first code cell is tagged `parameters` and holds one `name = <literal>  # description; <spec>` a
line, <spec> being `int in [LO, HI]`, `float in [LO, HI]`, `one of: a, b, c` or `bool`. Presets come from
presets.toml (or $DIFFGEN_PRESETS). `plan_run` validates a whole request before anything runs or is written.
No torch here: the command line answers at once.
"""
from __future__ import annotations

import ast
import io
import json
import os
import re
import tokenize
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..base.provenance import PACKAGE_DIR

DEVICES = ("auto", "cpu", "cuda")  # as diffgen.base.util.DEVICES (not imported here: that module imports torch)
REQUIRED = ("device", "seed")  # every chapter declares these
# The parameters each chapter's memory grows with, the largest lever first: an out-of-memory error names them
# with their values (memory_hint). ch2: the optimum holds n_train images and runs n_samples queries at once.
MEMORY_PARAMETERS = {
    "ch1": ("n_sets", "n_samples", "n_seeds"),
    "ch2": ("n_samples", "n_train"),
    "ch3": ("batch_size", "n_samples", "n_seeds", "n_train"),
    "ch4": ("batch_size", "n_samples", "n_seeds", "n_train_large"),
}


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
    """$DIFFGEN_BOOK_DIR if set, else the book/ folder beside the package (read at call time)."""
    env = os.environ.get("DIFFGEN_BOOK_DIR")
    return Path(env) if env else PACKAGE_DIR.parent / "book"


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
    return parse_parameters(cell_source(code[0]), where=str(path))


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


def cell_source(cell: dict) -> str:
    """A notebook cell's source as one string (nbformat stores a string or a list of lines)."""
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

    def value(self, name: str):
        """The value the chapter will run with: the override, else the notebook's default (None if undeclared)."""
        return self.overrides.get(name, self.parameters[name].default if name in self.parameters else None)


def plan_run(names: list[str], preset: str = "default", pairs: list[tuple[str, str]] | tuple = (),
             device: str | None = None, presets: dict | None = None, book: Path | None = None) -> list[Run]:
    """Validate a whole `diffgen run` request (the chapters of `book`, default book_dir()) and return what to run;
    UsageError on any bad input.

    Overrides, lowest precedence first: notebook default < preset < --device < -p.
    """
    chapters = discover(book)
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
    device = run.value("device")
    if device == "cuda" and not _cuda_available():
        raise UsageError(f"parameter device of {run.chapter.id} is cuda, but torch.cuda.is_available() is False "
                         "here; use --device auto or --device cpu")


def _cuda_available() -> bool:
    import torch  # imported only when CUDA is asked for: it is slow to import

    return torch.cuda.is_available()


def memory_hint(chapter: str, values: dict) -> str:
    """What to lower when `chapter` ran out of memory with parameter `values`: its MEMORY_PARAMETERS and their
    values, as `-p` options."""
    names = [name for name in MEMORY_PARAMETERS.get(chapter, ()) if name in values]
    if not names:
        return "lower the chapter's sizes with -p NAME VALUE (`diffgen chapters` lists them)"
    return f"lower {', '.join(f'{name} (now {values[name]})' for name in names)} with -p NAME VALUE"


def chapter_defaults(chapter: str) -> dict | None:
    """The declared defaults of the book's chapter notebook, or None when it is not found or not readable."""
    try:
        ch = discover().get(chapter)
        return {name: p.default for name, p in read_parameters(ch.path).items()} if ch else None
    except BookError:
        return None
