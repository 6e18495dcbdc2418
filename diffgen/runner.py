"""Layer 10: executing chapter notebooks headlessly, with progress on the terminal and a wall-clock limit.

One path serves `diffgen run` and `diffgen book`: each notebook runs with papermill in a child process
(`python -m diffgen.runner JOB`) that a timeout can kill. The child prints one line per code cell as it starts,
`ch3 [ 5/14  0:41] runs = {n: train(...`, the progress the chapter reports through diffgen.progress (training
steps and loss), and a heartbeat every 30 s of silence; nothing of that enters the executed notebook.

The book's execution cache (jupyter-cache, as myst-nb uses it) is filled by the same runner: `execute_book`
executes the table of contents' notebooks whose code is not cached yet, caches the executed notebooks, and the
Sphinx build then only renders. The cache is wiped whenever diffgen's source hash changes (`refresh_execution_cache`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .chapters import BookError, Run, UsageError, cell_source, read_parameters
from .progress import HEADLESS, Follower
from .results import fmt_memory

SKIP_TAGS = {"injected-parameters", "papermill-error-cell-tag"}  # cells papermill adds to an executed notebook
STAMP_NAME = "diffgen-source-hash"  # the file in the execution cache that records the source it was filled with
HEARTBEAT = 30.0  # seconds of silence after which the runner says which cell is still running


# ---------------------------------------------------------------------------------------------------------------
# One notebook in a child process


@dataclass(frozen=True)
class Outcome:
    """How one notebook run ended: `failure` None on success, else a one-line reason (with the cell it stopped in);
    `error` the class name of the exception a cell raised (or DeadKernelError); `host_peak_bytes` the kernel's peak
    resident set (None when unknown: killed by the timeout, or no report)."""

    failure: str | None
    error: str | None = None
    host_peak_bytes: int | None = None

    @property
    def out_of_memory(self) -> bool:
        """A cell ran out of GPU or host memory (torch.OutOfMemoryError, MemoryError, an allocator's message)."""
        return self.error in MEMORY_ERRORS or any(text in (self.failure or "") for text in MEMORY_MESSAGES)


MEMORY_ERRORS = {"OutOfMemoryError", "MemoryError"}  # torch.OutOfMemoryError (torch.cuda's too), Python's own
MEMORY_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA's and torch's CPU allocator's messages


def execute_notebook(notebook: Path, output: Path, *, cwd: Path, parameters: dict, timeout: int,
                     label: str, log=None, env: dict | None = None, children: set | None = None) -> Outcome:
    """Execute `notebook` into `output` (written as it runs) with the kernel in `cwd` (environment `env`, default
    this process's); the Outcome. Killed after `timeout` s of wall-clock time. The progress lines go to this
    process's terminal, or to the open file `log`. `children`: a set that holds the child process while it runs
    (for a caller that must stop it from another thread)."""
    with tempfile.TemporaryDirectory(prefix="diffgen-run-") as tmp:
        job, report = Path(tmp) / "job.json", Path(tmp) / "report.json"
        job.write_text(json.dumps({"input": str(notebook), "output": str(output), "cwd": str(cwd), "label": label,
                                   "parameters": parameters, "timeout": timeout, "report": str(report)}))
        proc = subprocess.Popen([sys.executable, "-m", "diffgen.runner", str(job)], stdout=log, stderr=log, env=env)
        children = set() if children is None else children
        children.add(proc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(f"timed out after {timeout} s (--timeout){failed_cell(output)}")
        finally:
            _stop(proc)
            children.discard(proc)
        try:
            done = json.loads(report.read_text())
        except (OSError, ValueError):
            done = {"reason": f"the executor exited with code {proc.returncode}", "error": None}
        if proc.returncode == 0:
            return Outcome(None, host_peak_bytes=done.get("host_peak_bytes"))
        return Outcome(f"failed{failed_cell(output)}: {done['reason']}", done["error"], done.get("host_peak_bytes"))


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the child if it still runs (its kernel notices the parent is gone and exits too)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def failed_cell(notebook: Path) -> str:
    """' in cell index I (`first line`)' for the last cell papermill started, indexed as in the chapter notebook."""
    try:
        cells = json.loads(Path(notebook).read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return ""  # missing, or cut off mid-write by the kill
    cells = [c for c in cells if not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))]
    started = [i for i, c in enumerate(cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return ""
    return f" in cell index {started[-1]} (`{_first_line(cells[started[-1]])}`)"


def _first_line(cell: dict, width: int = 70) -> str:
    line = next((line.strip() for line in cell_source(cell).splitlines() if line.strip()), "")
    return line if len(line) <= width else line[: width - 3] + "..."


class CellPrinter:
    """Progress lines of one notebook run: `label [k/N m:ss] text`, k the code cell running out of the N the
    notebook has (papermill's cell of injected parameters is not counted)."""

    def __init__(self, label: str, n_code: int, stream=None):
        self.label, self.n_code, self.stream = label, n_code, stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.k = 0  # the code cell running, 1-based; 0 before the first
        self.drain = None  # called before a new cell is announced (the follower's pending lines)
        self._lock = threading.RLock()

    def cell_start(self, cell=None, cell_index: int | None = None, **_) -> None:
        """nbclient's on_cell_start hook (called for every cell; code cells are shown)."""
        if cell is None or cell.get("cell_type") != "code":
            return
        if self.drain is not None:
            self.drain()  # progress of the previous cell is shown under its own number
        if SKIP_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            self.show("(parameters injected)")
            return
        self.k += 1
        self.show(_first_line(cell))

    def show(self, text: str) -> None:
        with self._lock:
            elapsed = int(time.monotonic() - self.start)
            print(f"{self.label} [{self.k:>2}/{self.n_code} {elapsed // 60}:{elapsed % 60:02d}] {text}",
                  file=self.stream, flush=True)
            self.last = time.monotonic()

    def heartbeat(self, stop: threading.Event, every: float = HEARTBEAT) -> None:
        """Until `stop` is set: after `every` s without a line, say that the current cell still runs."""
        while not stop.wait(1.0):
            if time.monotonic() - self.last >= every and self.k:
                self.show(f"... still running ({int(time.monotonic() - self.last)} s without news)")


def _child(job_path: str) -> int:
    """The child process: execute one notebook with papermill; write a report (JSON: the one-line reason of a
    failure, the exception's class name, the kernel's peak resident set)."""
    job = json.loads(Path(job_path).read_text())
    os.environ[HEADLESS] = "1"  # the kernel inherits it: no live widgets, progress to the runner
    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    cells = nbformat.read(job["input"], as_version=4).cells
    printer = CellPrinter(job["label"], sum(c.cell_type == "code" for c in cells))
    stop = threading.Event()
    beat = threading.Thread(target=printer.heartbeat, args=(stop,), daemon=True)
    beat.start()
    reason = error = None
    try:
        with Follower(Path(job_path).with_name("progress.txt"), printer.show) as follower:
            printer.drain = follower.drain
            papermill.execute_notebook(job["input"], job["output"], parameters=job["parameters"], cwd=job["cwd"],
                                       kernel_name="python3", progress_bar=False,
                                       execution_timeout=job["timeout"], on_cell_start=printer.cell_start,
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except PapermillExecutionError as e:
        reason, error = f"{e.ename}: {e.evalue}", e.ename
    except CellTimeoutError:
        reason = f"timed out: the cell ran longer than {job['timeout']} s (--timeout)"
    except DeadKernelError as e:
        reason, error = f"the kernel died ({e})", "DeadKernelError"
    except Exception as e:  # noqa: BLE001 - anything else is reported, not re-raised
        reason, error = f"{type(e).__name__}: {e}", type(e).__name__
    finally:
        stop.set()
    Path(job["report"]).write_text(json.dumps({"reason": None if reason is None else (
        reason.strip().splitlines() or [""])[0], "error": error, "host_peak_bytes": _kernel_peak()}))
    return 0 if reason is None else 1


def _kernel_peak() -> int | None:
    """Peak resident set (bytes) of the largest child this process waited for: the kernel; None when none ended."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return peak or None


# ---------------------------------------------------------------------------------------------------------------
# `diffgen run`


def run_chapters(runs: list[Run], out: Path, timeout: int) -> int:
    """Run the chapters in order into `out`; stop at the first failure. Returns the exit code (0 or 1)."""
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        if not run_chapter(run, out, timeout):
            return 1
    return 0


@dataclass(frozen=True)
class ChapterOutcome:
    """The end of one `diffgen run` of a chapter: true when it succeeded; its seconds and peak memory."""

    ok: bool
    seconds: float
    memory: dict  # gpu_peak_bytes (when the chapter recorded it), host_peak_bytes (results.fmt_memory)
    error: str | None = None  # the one-line error, when it failed

    def __bool__(self) -> bool:
        return self.ok


def run_chapter(run: Run, out: Path, timeout: int, log=None) -> ChapterOutcome:
    """Execute one chapter into `out` (replacing its earlier outputs there); print the outcome and its peak memory
    (to `log`, an open file, when given, with the progress lines). Out of memory, the error names the parameters to
    lower (chapters.memory_hint)."""
    ch = run.chapter
    running, final, failed = (out / f"{ch.stem}{suffix}.ipynb" for suffix in (".running", "", ".FAILED"))
    results = out / f"{ch.id}.results.json"
    for stale in (running, final, failed, results):
        stale.unlink(missing_ok=True)
    settings = ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "the notebook's defaults"
    print(f"{ch.id}: running {show_path(ch.path)} with {settings}", file=log or sys.stdout, flush=True)
    start = time.monotonic()
    outcome = execute_notebook(ch.path, running, cwd=out, parameters=run.overrides, timeout=timeout, label=ch.id,
                               log=log)
    seconds = time.monotonic() - start
    failure = outcome.failure or _check_results(results)
    memory = _peaks(outcome, results)
    if failure:
        if running.exists():
            os.replace(running, failed)
        hint = _memory_hint(ch.id, {name: run.value(name) for name in run.parameters}, outcome)
        kept = f"partial notebook kept as {show_path(failed)}" if failed.exists() else "no notebook was written"
        error = f"{ch.id} {failure}{'; ' + hint if hint else ''}; {kept}"
        print(f"diffgen run: error: {error}", file=log or sys.stderr, flush=True)
        print(f"{ch.id}: peak memory {fmt_memory(memory)}", file=log or sys.stdout, flush=True)
        return ChapterOutcome(False, seconds, memory, error)
    os.replace(running, final)  # papermill wrote progressively to `running`: the final name appears only now
    print(f"{ch.id}: done in {seconds:.1f} s: executed notebook {show_path(final)}, results {show_path(results)}",
          file=log or sys.stdout, flush=True)
    print(f"{ch.id}: peak memory {fmt_memory(memory)}", file=log or sys.stdout, flush=True)
    return ChapterOutcome(True, seconds, memory)


def _memory_hint(chapter: str, values: dict, outcome: Outcome) -> str | None:
    """The parameters to lower when the chapter ran out of memory (or its kernel died, which the system's
    out-of-memory killer does); None for other failures."""
    from .chapters import memory_hint

    if outcome.out_of_memory:
        return f"out of memory: {memory_hint(chapter, values)}"
    if outcome.error == "DeadKernelError":
        return f"if it ran out of host memory, {memory_hint(chapter, values)}"
    return None


def _defaults(notebook: Path) -> dict:
    """The parameters a notebook declares, with their defaults; {} for a page without a parameters cell."""
    try:
        return {name: p.default for name, p in read_parameters(notebook).items()}
    except BookError:
        return {}


def _peaks(outcome: Outcome, results: Path) -> dict:
    """The chapter's peak memory: what its results file recorded (results.peak_memory, GPU included), else the
    kernel's peak resident set as the runner measured it."""
    try:
        recorded = json.loads(results.read_text()).get("memory") or {}
    except (OSError, ValueError, AttributeError):
        recorded = {}
    return {"host_peak_bytes": outcome.host_peak_bytes, **recorded}


def _check_results(path: Path) -> str | None:
    if not path.is_file():
        return f"finished without writing {path.name} into its working directory {show_path(path.parent)}"
    try:
        json.loads(path.read_text())
    except ValueError as e:
        return f"wrote {path.name}, but it is not valid JSON ({e})"
    return None


def show_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------------
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
    from .provenance import source_hash, tree_digest

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
    from .chapters import discover, plan_run

    notebooks = book_notebooks(root)
    parameters = {}
    for folder in dict.fromkeys(path.parent for path in notebooks):
        chapters = [ch.id for ch in discover(folder).values() if ch.path in notebooks]
        if chapters:
            parameters |= {run.chapter.path: run.overrides for run in plan_run(chapters, preset, book=folder)}
    return parameters


def copy_book_sources(root: Path, dest: Path, preset: str) -> None:
    """Copy the book at `root` into `dest`: its _toc.yml, its _config.yml with `diffgen_preset` set (diffgen.book
    reads it) and the pages, folders and bibliography these name, leaving out what executing `root`'s notebooks
    wrote beside them (results files, failed notebooks), so that a build in `dest` shows only its own numbers."""
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
    import nbformat
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    from ._util import thread_share

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
                    memory = fmt_memory(_peaks(outcome, path.parent / f"{_label(path)}.results.json"))
                    print(f"{_label(path)}: executed in {seconds:.0f} s, peak memory {memory}", flush=True)
        except BaseException:  # Ctrl-C, a signal to this process alone: no notebook outlives the build
            for proc in list(children):
                _stop(proc)
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
    hint = _memory_hint(_label(path), _defaults(path), outcome)
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


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
