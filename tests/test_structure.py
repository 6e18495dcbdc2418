"""The package's structure: seven folders on seven floors (diffgen.FOLDERS, bottom first); a module imports only from
its own folder and the folders below it (lazy imports included), with no cycle; every folder says what it is for; the
README maps every folder; no module outgrows one job; notebooks use the public API only."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from diffgen import FOLDERS
from diffgen.base.provenance import PACKAGE_DIR, imported_modules, module_files

REPO = Path(__file__).resolve().parents[1]
MOST_LINES = 480  # "about 450": a module longer than this has outgrown one job


def _folder(module: str) -> str | None:
    """'diffgen.claims.verdicts' -> 'claims'; the package root -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _arrows(files: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imported_modules(path, set(files), name) for name, path in files.items()}


def wrong_imports(arrows: dict[str, set[str]], folders=FOLDERS) -> list[str]:
    """The imports that go to a higher folder (the root may import any folder; no folder imports the root)."""
    floor = {f: i for i, f in enumerate(folders)}
    wrong = []
    for name, deps in arrows.items():
        for dep in sorted(deps):
            here, there = _folder(name), _folder(dep)
            if there is None and here is not None:
                wrong.append(f"{name} imports the package root {dep}")
            elif here is not None and floor[there] > floor[here]:
                wrong.append(f"{name} ({here}, floor {floor[here]}) imports {dep} ({there}, floor {floor[there]})")
    return wrong


def import_cycle(arrows: dict[str, set[str]]) -> list[str] | None:
    """One cycle of imports (a list of modules, the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for dep in sorted(arrows.get(name, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(arrows):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_every_module_lives_in_a_folder_of_the_order():
    stray = [str(path.relative_to(PACKAGE_DIR)) for name, path in module_files().items()
             if name != "diffgen" and _folder(name) not in FOLDERS]
    assert not stray, f"modules outside the folders of diffgen.FOLDERS {FOLDERS}: {stray}"
    assert sorted(p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(FOLDERS)


def test_every_import_goes_to_the_own_folder_or_below():
    wrong = wrong_imports(_arrows(module_files()))
    assert not wrong, "imports must stay in their folder or go to a lower one:\n" + "\n".join(wrong)


def test_no_import_cycle():
    cycle = import_cycle(_arrows(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_order_check_sees_lazy_imports_upward_imports_and_cycles(tmp_path):
    """A function-level import of a higher folder is caught like a module-level one; a cycle inside a folder too."""
    for folder in ("low", "high"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text('"""A folder."""\n')
    (tmp_path / "low" / "a.py").write_text("def f():\n    from ..high import b\n")
    (tmp_path / "high" / "b.py").write_text("from ..low.a import f\nfrom . import c\n")
    (tmp_path / "high" / "c.py").write_text("from .b import f\n")
    files = module_files(tmp_path)
    arrows = {name: imported_modules(path, set(files), name) for name, path in files.items()}
    assert arrows["diffgen.low.a"] == {"diffgen.high.b"} and arrows["diffgen.high.b"] == {"diffgen.low.a",
                                                                                           "diffgen.high.c"}
    assert wrong_imports(arrows, ("low", "high")) == [
        "diffgen.low.a (low, floor 0) imports diffgen.high.b (high, floor 1)"]
    assert import_cycle(arrows) == ["diffgen.high.b", "diffgen.high.c", "diffgen.high.b"]
    assert wrong_imports(arrows, ("high", "low")) == [
        "diffgen.high.b (high, floor 0) imports diffgen.low.a (low, floor 1)"]


def test_every_folder_says_what_it_is_for_and_the_readme_maps_it():
    readme = (REPO / "README.md").read_text()
    for folder in FOLDERS:
        doc = ast.get_docstring(ast.parse((PACKAGE_DIR / folder / "__init__.py").read_text())) or ""
        assert "import" in doc.lower(), f"diffgen/{folder}/__init__.py: say what the folder is for and what it may import"
        assert re.search(rf"^\|\s*`{folder}/`", readme, flags=re.M), f"README.md: 'Where things are' must map {folder}/"


def test_every_module_has_one_job_in_at_most_about_450_lines():
    long = {str(path.relative_to(PACKAGE_DIR)): n for path in module_files().values()
            if (n := len(path.read_text().splitlines())) > MOST_LINES}
    assert not long, f"modules over {MOST_LINES} lines (split them by job): {long}"
    undocumented = [str(path.relative_to(PACKAGE_DIR)) for path in module_files().values()
                    if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not undocumented, f"modules without a docstring stating their job: {undocumented}"


def _notebook_imports(path: Path) -> list[tuple[str, list[str]]]:
    cells = json.loads(path.read_text())["cells"]
    found = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "diffgen":
                found.append((node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "diffgen"]
    return found


@pytest.mark.parametrize("path", sorted((REPO / "book").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_import_only_the_public_api(path):
    private = [f"{module}: {names}" for module, names in _notebook_imports(path)
               if any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names)]
    assert not private, f"{path.name} imports private names: {private}"


def test_no_merge_conflict_markers_in_tracked_files():
    """A merge left half-resolved shows as <<<<<<< / >>>>>>> lines; none may reach a commit."""
    skip = {"_build", "runs", "node_modules", "__pycache__"}  # outputs; hidden folders (.git, .venv) go too
    files = [path for path in REPO.rglob("*") if path.is_file()
             and not any(part in skip or part.startswith(".") for part in path.relative_to(REPO).parts[:-1])
             and (path.suffix in {".py", ".md", ".toml", ".txt", ".yml", ".ipynb"} or path.name == "Makefile")]
    marked = [str(path.relative_to(REPO)) for path in files
              if re.search(r"^(<{7}|>{7}) ", path.read_text(errors="replace"), re.M)]
    assert not marked, f"merge conflict markers in {marked}"
