"""Executing chapter notebooks headlessly, with progress on the terminal and a wall-clock limit.

One path serves `diffgen run` and `diffgen book`: each notebook runs with papermill in a child process
(`python -m diffgen.commands.runner JOB`) that a timeout can kill. The child prints one line per code cell as it starts,
`ch3 [ 5/14  0:41] runs = {n: train(...`, the progress the chapter reports through diffgen.base.progress (training
steps and loss), and a heartbeat every 30 s of silence; nothing of that enters the executed notebook.

The book's execution cache (jupyter-cache, as myst-nb uses it) is filled by the same runner: `execute_book`
executes the table of contents' notebooks whose code is not cached yet, caches the executed notebooks, and the
Sphinx build then only renders. The cache is wiped whenever diffgen's source hash changes (`refresh_execution_cache`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..base.progress import HEADLESS, Follower
from ..chapters.registry import BookError, Run, cell_source, read_parameters
from ..claims.results import fmt_memory

SKIP_TAGS = {"injected-parameters", "papermill-error-cell-tag"}  # cells papermill adds to an executed notebook
STAMP_NAME = "diffgen-source-hash"  # the file in the execution cache that records the source it was filled with
HEARTBEAT = 30.0  # seconds of silence after which the runner says which cell is still running


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
        proc = subprocess.Popen([sys.executable, "-m", "diffgen.commands.runner", str(job)], stdout=log, stderr=log,
                                env=env)
        children = set() if children is None else children
        children.add(proc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(f"timed out after {timeout} s (--timeout){failed_cell(output)}")
        finally:
            stop_process(proc)
            children.discard(proc)
        try:
            done = json.loads(report.read_text())
        except (OSError, ValueError):
            done = {"reason": f"the executor exited with code {proc.returncode}", "error": None}
        if proc.returncode == 0:
            return Outcome(None, host_peak_bytes=done.get("host_peak_bytes"))
        return Outcome(f"failed{failed_cell(output)}: {done['reason']}", done["error"], done.get("host_peak_bytes"))


def stop_process(proc: subprocess.Popen) -> None:
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
    exit_with_parent()
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


def exit_with_parent(poll: float = 1.0) -> None:
    """Exit this process as soon as its parent is gone (a `diffgen run`, `book` or sweep worker killed before it could
    stop us), instead of executing on as an orphan; the kernel, whose parent this process is, then exits too
    (ipykernel polls its parent)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _kernel_peak() -> int | None:
    """Peak resident set (bytes) of the largest child this process waited for: the kernel; None when none ended."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return peak or None


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
    memory = peak_memory(outcome, results)
    if failure:
        if running.exists():
            os.replace(running, failed)
        hint = oom_hint(ch.id, {name: run.value(name) for name in run.parameters}, outcome)
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


def oom_hint(chapter: str, values: dict, outcome: Outcome) -> str | None:
    """The parameters to lower when the chapter ran out of memory (or its kernel died, which the system's
    out-of-memory killer does); None for other failures."""
    from ..chapters.registry import memory_hint

    if outcome.out_of_memory:
        return f"out of memory: {memory_hint(chapter, values)}"
    if outcome.error == "DeadKernelError":
        return f"if it ran out of host memory, {memory_hint(chapter, values)}"
    return None


def notebook_defaults(notebook: Path) -> dict:
    """The parameters a notebook declares, with their defaults; {} for a page without a parameters cell."""
    try:
        return {name: p.default for name, p in read_parameters(notebook).items()}
    except BookError:
        return {}


def peak_memory(outcome: Outcome, results: Path) -> dict:
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


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
