"""The book's execution: which notebooks _toc.yml names, their parameters per preset, the stamp of the code and
data they ran with, and the execution of every stale page into the execution cache (used by diffgen.commands.book)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..chapters.registry import UsageError
from ..claims.results import fmt_memory
from .runner import (
    SKIP_TAGS,
    STAMP_NAME,
    Outcome,
    execute_notebook,
    notebook_defaults,
    oom_hint,
    peak_memory,
    show_path,
    stop_process,
)

# The book's execution cache


def refresh_execution_cache(cache_dir: Path, current: str) -> bool:
    """Delete `cache_dir` unless it is stamped with `current`; leave it stamped. Returns True when it was stale."""
    stamp = Path(cache_dir) / STAMP_NAME
    stale = not stamp.is_file() or stamp.read_text().strip() != current
    if stale:
        shutil.rmtree(cache_dir, ignore_errors=True)
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        stamp.write_text(current + "\n")
    return stale


def book_stamp(root: Path, preset: str = "default") -> str:
    """What the book's executed notebooks depend on beyond their own code: diffgen's source and the sweep data a
    page reads (book/sweeps/); a change of either re-executes the book. A build at another preset than the default
    carries its name, so its execution cache never passes for the default build's."""
    from ..base.provenance import source_hash, tree_digest

    stamp = f"{source_hash()}+{tree_digest(Path(root) / 'book' / 'sweeps')}"
    return stamp if preset == "default" else f"{stamp}+{preset}"


def toc_files(root: Path) -> list[str]:
    """The pages of the book's table of contents (`_toc.yml`: root, parts, chapters, sections), in reading order, as
    written there (paths without suffix, relative to `root`)."""
    import yaml

    toc = yaml.safe_load((Path(root) / "_toc.yml").read_text())
    entries, files = [toc], []
    while entries:
        entry = entries.pop(0)
        if "file" in entry or "root" in entry:
            files.append(entry.get("file") or entry.get("root"))
        for key in ("parts", "chapters", "sections"):
            entries[:0] = entry.get(key, [])
    return files


def book_notebooks(root: Path) -> list[Path]:
    """The notebooks of the book's table of contents, in reading order."""
    return [Path(root) / f"{f}.ipynb" for f in toc_files(root) if (Path(root) / f"{f}.ipynb").is_file()]


def book_parameters(root: Path, preset: str) -> dict[Path, dict]:
    """Notebook -> the parameters papermill injects into it in a book build at `preset`, validated as `diffgen run
    --preset` validates them (chapters.plan_run); the default preset injects nothing. UsageError on a bad preset."""
    if preset == "default":
        return {}
    from ..chapters.registry import discover, plan_run

    notebooks = book_notebooks(root)
    parameters = {}
    for folder in dict.fromkeys(path.parent for path in notebooks):
        chapters = [ch.id for ch in discover(folder).values() if ch.path in notebooks]
        if chapters:
            parameters |= {run.chapter.path: run.overrides for run in plan_run(chapters, preset, book=folder)}
    return parameters


def copy_book_sources(root: Path, dest: Path, preset: str) -> None:
    """Copy the book at `root` into `dest`: its _toc.yml, its _config.yml with `diffgen_preset` set
    (diffgen.commands.book reads it) and the pages, folders and bibliography these name, leaving out what executing
    `root`'s notebooks wrote beside them (results files, failed notebooks), so that a build in `dest` shows only its own
    numbers."""
    import yaml

    root, dest = Path(root).resolve(), Path(dest).resolve()
    config = yaml.safe_load((root / "_config.yml").read_text()) or {}
    config.setdefault("sphinx", {}).setdefault("config", {})["diffgen_preset"] = preset
    named = [Path(f) for f in toc_files(root) + list(config.get("bibtex_bibfiles", []))]
    folders = {path.parts[0] for path in named if len(path.parts) > 1}
    pages = [page for path in named if len(path.parts) == 1 for page in root.glob(f"{path.stem}.*")]
    written_beside = {path.parent for path in book_notebooks(root)}

    def left_out(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in (".ipynb_checkpoints", "__pycache__") or n.endswith(".FAILED.ipynb")
                or (Path(folder) in written_beside and n.endswith(".results.json"))]

    inside = [f for f in sorted(folders) if dest.is_relative_to(root / f)]
    if inside:
        raise UsageError(f"--build-dir {dest} lies inside {root / inside[0]}, which the build copies")
    dest.mkdir(parents=True, exist_ok=True)
    for folder in sorted(folders):
        shutil.copytree(root / folder, dest / folder, ignore=left_out, dirs_exist_ok=True)
    for page in pages:
        shutil.copy2(page, dest / page.name)
    shutil.copy2(root / "_toc.yml", dest / "_toc.yml")
    written = dest / "_config.yml.part"
    written.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(written, dest / "_config.yml")


def execute_book(root: Path, cache_dir: Path, *, timeout: int, source: str,
                 parameters: dict[Path, dict] | None = None, jobs: int = 1) -> bool:
    """Execute every notebook of the book at `root` whose code the execution cache does not hold yet (kernel in the
    notebook's folder, as the book build runs it; `parameters[path]` injected by papermill) and cache it with the
    notebook's own code cells; True when all succeeded.

    `jobs` notebooks run at once, each in its own process with its share of the CPU threads (thread_share; unless
    $DIFFGEN_THREADS is set; one notebook alone keeps set_threads' cores - 1), the longest first (expected_seconds),
    so that the slowest chapter does not start last. Chapters that share trained networks compute each once (the
    training cache's file locks). After a failure no further notebook starts (they are named); the ones running
    finish and are cached. Interrupted, it stops every notebook it started."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    from ..base.util import thread_share

    if refresh_execution_cache(cache_dir, source):
        print(f"diffgen book: execution cache {show_path(cache_dir)} is new or was filled by other code "
              f"(source {source}): every chapter executes", flush=True)
    cache = get_cache(str(cache_dir))
    todo = []
    for path in book_notebooks(root):
        nb = nbformat.read(path, as_version=4)
        try:
            cache.match_cache_notebook(nb)
            print(f"{_label(path)}: unchanged since it was executed (cached)", flush=True)
        except KeyError:
            todo.append((path, nb))
    todo.sort(key=lambda item: -expected_seconds(item[1]))  # stable: equal estimates keep the reading order
    jobs = max(1, min(jobs, len(todo)))
    env = dict(os.environ)
    if jobs > 1:
        env.setdefault("DIFFGEN_THREADS", str(thread_share(jobs)))
        print(f"diffgen book: {len(todo)} notebook(s) to execute, {jobs} at once with "
              f"{env['DIFFGEN_THREADS']} CPU thread(s) each", flush=True)
    children: set[subprocess.Popen] = set()  # the notebooks' processes, stopped if this one is interrupted

    def execute(path: Path, output: Path) -> tuple[Outcome, float]:
        start = time.monotonic()
        try:
            outcome = execute_notebook(path, output, cwd=path.parent, parameters=(parameters or {}).get(path, {}),
                                       timeout=timeout, label=_label(path), env=env, children=children)
        except Exception as e:  # noqa: BLE001 - reported as this notebook's failure
            outcome = Outcome(f"failed to start: {type(e).__name__}: {e}", type(e).__name__)
        return outcome, time.monotonic() - start

    ok, queue = True, list(enumerate(todo))
    with tempfile.TemporaryDirectory(prefix="diffgen-book-") as tmp, ThreadPoolExecutor(jobs) as pool:
        running = {}
        try:
            while queue or running:
                while ok and queue and len(running) < jobs:
                    k, (path, nb) = queue.pop(0)
                    output = Path(tmp) / str(k) / path.name  # a folder each: pages may share a file name
                    output.parent.mkdir()
                    running[pool.submit(execute, path, output)] = (path, nb, output)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    path, nb, output = running.pop(future)
                    outcome, seconds = future.result()
                    try:
                        executed = None if outcome.failure else _outputs_onto(nb, nbformat.read(output, 4))
                    except (OSError, ValueError) as e:
                        outcome = Outcome(f"wrote an unreadable notebook ({type(e).__name__}: {e})")
                    if outcome.failure:
                        ok = False
                        _report_failure(path, output, outcome)
                        continue
                    cache.cache_notebook_bundle(CacheBundleIn(executed, str(path), data={
                        "execution_seconds": seconds}), check_validity=False, overwrite=True)
                    memory = fmt_memory(peak_memory(outcome, path.parent / f"{_label(path)}.results.json"))
                    print(f"{_label(path)}: executed in {seconds:.0f} s, peak memory {memory}", flush=True)
        except BaseException:  # Ctrl-C, a signal to this process alone: no notebook outlives the build
            for proc in list(children):
                stop_process(proc)
            raise
    if queue:
        print(f"diffgen book: not started after the failure: {', '.join(_label(p) for _, (p, _) in queue)}",
              file=sys.stderr, flush=True)
    return ok


def expected_seconds(nb) -> float:
    """The notebook's `diffgen.expected_seconds` metadata (its last measured wall time at the default preset on
    2 CPU cores, benchmarks/bench_chapters.py): the order of a parallel book build only; 0 when absent."""
    return float(nb.metadata.get("diffgen", {}).get("expected_seconds", 0))


def _label(path: Path) -> str:
    return path.stem.split("_", 1)[0]


def _report_failure(path: Path, output: Path, outcome: Outcome) -> None:
    """The one-line error of a failed book notebook; its partial output kept beside it as <name>.FAILED.ipynb."""
    kept = path.with_suffix(".FAILED.ipynb")
    if output.exists():
        shutil.copy(output, kept)
    hint = oom_hint(_label(path), notebook_defaults(path), outcome)
    print(f"diffgen book: error: {_label(path)} {outcome.failure}{'; ' + hint if hint else ''}"
          f"{'; partial notebook kept as ' + show_path(kept) if kept.exists() else ''}", file=sys.stderr, flush=True)


def _outputs_onto(source, executed):
    """The notebook `source` with the outputs and execution counts of `executed` (the same notebook run by
    papermill, which adds metadata of its own; the cache hashes cell metadata, so the source's is kept)."""
    import copy

    nb = copy.deepcopy(source)
    ran = [c for c in executed.cells if c.cell_type == "code"
           and not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))]
    code = [c for c in nb.cells if c.cell_type == "code"]
    if len(ran) != len(code):
        raise ValueError(f"the executed notebook has {len(ran)} code cells, its source {len(code)}")
    for mine, theirs in zip(code, ran):
        mine.outputs, mine.execution_count = theirs.outputs, theirs.execution_count
    return nb
