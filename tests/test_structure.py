"""The package's structure: every module states its layer, imports only from lower layers (lazy imports included),
and the README lists every module with its layer; notebooks use the public API only."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from diffgen.provenance import PACKAGE_DIR, imported_modules, module_files

REPO = Path(__file__).resolve().parents[1]
LAYER = re.compile(r"^Layer (\d+): ")


def _layers(files: dict[str, Path]) -> dict[str, int]:
    layers = {}
    for name, path in files.items():
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        match = LAYER.match(doc)
        assert match, f"{path.name}: the module docstring must start with 'Layer N: <its one job>'"
        layers[name] = int(match[1])
    return layers


def test_every_import_goes_to_a_lower_layer():
    files = module_files()
    layers = _layers(files)
    wrong = [f"{name} (layer {layers[name]}) imports {dep} (layer {layers[dep]})"
             for name, path in files.items() for dep in sorted(imported_modules(path, set(files)))
             if layers[dep] >= layers[name]]
    assert not wrong, "imports must go to strictly lower layers:\n" + "\n".join(wrong)


def test_the_layer_check_sees_lazy_imports(tmp_path):
    """A function-level import of a higher layer is caught like a module-level one."""
    (tmp_path / "low.py").write_text('"""Layer 0: low."""\ndef f():\n    from . import high\n')
    (tmp_path / "high.py").write_text('"""Layer 1: high."""\nfrom .low import f\n')
    files = {f"diffgen.{p.stem}": p for p in tmp_path.glob("*.py")}
    assert imported_modules(tmp_path / "low.py", set(files)) == {"diffgen.high"}
    assert imported_modules(tmp_path / "high.py", set(files)) == {"diffgen.low"}


def test_readme_lists_every_module_with_its_layer():
    readme = (REPO / "README.md").read_text()
    layers = _layers(module_files())
    for name, layer in layers.items():
        module = "__init__" if name == "diffgen" else name.split(".", 1)[1]
        assert re.search(rf"\|\s*{layer}\s*\|[^\n]*`{re.escape(module)}`", readme), \
            f"README.md: the design notes must list `{module}` in its layer {layer}"
    listed = set(re.findall(r"^\|\s*\d+\s*\|\s*`(\w+)`", readme, flags=re.M))
    known = {"__init__" if name == "diffgen" else name.split(".", 1)[1] for name in layers}
    assert listed <= known, f"README.md lists modules that do not exist: {sorted(listed - known)}"


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


@pytest.mark.parametrize("path", sorted((REPO / "book").glob("ch*_*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_import_only_the_public_api(path):
    private = [f"{module}: {names}" for module, names in _notebook_imports(path)
               if any(part.startswith("_") for part in module.split(".")) or any(n.startswith("_") for n in names)]
    assert not private, f"{path.name} imports private names: {private}"


def test_package_has_no_stray_files():
    assert not list(PACKAGE_DIR.glob("*/*.py")), "the package is flat: one module per file"


def test_no_merge_conflict_markers_in_tracked_files():
    """A merge left half-resolved shows as <<<<<<< / >>>>>>> lines; none may reach a commit."""
    skip = {"_build", "runs", "node_modules", "__pycache__"}  # outputs; hidden folders (.git, .venv) go too
    files = [path for path in REPO.rglob("*") if path.is_file()
             and not any(part in skip or part.startswith(".") for part in path.relative_to(REPO).parts[:-1])
             and (path.suffix in {".py", ".md", ".toml", ".txt", ".yml", ".ipynb"} or path.name == "Makefile")]
    marked = [str(path.relative_to(REPO)) for path in files
              if re.search(r"^(<{7}|>{7}) ", path.read_text(errors="replace"), re.M)]
    assert not marked, f"merge conflict markers in {marked}"
