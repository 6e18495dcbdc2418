"""Parameter sweeps of a chapter on a Dask cluster, resumable, one results file per grid point.

`run_sweep(chapter, grid, out, ...)` runs the chapter once per point of the grid (the cartesian product of the
values given per parameter, times `seeds` values of the chapter's `seed`), each point a `diffgen run` of its own
(runner.run_chapter: the same validation, limit and FAILED-notebook handling) in its folder out/<point>/, on the
workers of a Dask cluster: a LocalCluster on this machine by default (one single-threaded worker per core, one
chapter per worker; one worker per GPU, holding that GPU, where CUDA is there), or the scheduler at `scheduler`.
out/sweep.json records every point's parameters, status and source hash, rewritten atomically as each point ends,
so an interrupted sweep loses no finished point. A point whose results file exists with the same parameters and the
same diffgen source hash is not rerun; a failed point is, on the next call. Points that need the same trained network
share it through the cache (cache.load_or_compute holds a per-artifact file lock while it computes).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..base.provenance import source_hash
from ..base.util import atomic_write, thread_share
from ..chapters.registry import Run, UsageError, plan_run
from ..claims.results import SWEEP_FILE
from .runner import run_chapter, show_path

DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass(frozen=True)
class Point:
    """One grid point: its folder name and the validated chapter run."""

    name: str  # e.g. "n_train=64,train_steps=300,seed=0"
    values: dict  # the swept parameters' values
    run: Run


def parse_grid(pairs: list[tuple[str, str]], seeds: int | None = None) -> dict[str, list[str]]:
    """{name: [value texts]} from -p NAME V1,V2,... pairs (each name once); seeds=K adds seed = 0..K-1."""
    grid: dict[str, list[str]] = {}
    for name, text in pairs:
        if name in grid:
            raise UsageError(f"-p {name} is given twice; list its values once, separated by commas")
        values = [v.strip() for v in text.split(",")]
        if not all(values) or len(set(values)) != len(values):
            raise UsageError(f"-p {name} {text}: give distinct, non-empty values separated by commas")
        grid[name] = values
    if seeds is not None:
        if seeds < 1:
            raise UsageError(f"--seeds must be a positive integer; got {seeds}")
        if "seed" in grid:
            raise UsageError("give either --seeds or -p seed, not both")
        grid["seed"] = [str(k) for k in range(seeds)]
    if not grid:
        raise UsageError("a sweep needs at least one -p NAME V1,V2,... (or --seeds K)")
    return grid


def plan_points(chapter: str, grid: dict[str, list[str]], preset: str = "default", device: str | None = None,
                fixed: list[tuple[str, str]] = ()) -> list[Point]:
    """Every grid point as a validated chapter run (UsageError on the first bad value, before anything runs)."""
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        [run] = plan_run([chapter], preset, list(fixed) + list(values.items()), device)
        typed = {name: run.value(name) for name in grid}
        points.append(Point(",".join(f"{k}={v}" for k, v in typed.items()), typed, run))
    return points


def is_current(point: Point, folder: Path, source: str) -> bool:
    """The point's results file exists, ran with these parameters and with this diffgen source."""
    path = folder / point.name / f"{point.run.chapter.id}.results.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    wanted = {name: point.run.value(name) for name in point.run.parameters}
    return doc.get("source_hash") == source and all(doc.get("parameters", {}).get(k) == v for k, v in wanted.items())


def run_point(point: Point, folder: Path, timeout: int, threads: int | None = None) -> dict:
    """Execute one point into folder/<point.name> (on a Dask worker; `threads`: CPU threads of its chapter); its
    output goes to run.log there."""
    out = folder / point.name
    out.mkdir(parents=True, exist_ok=True)
    gpu = _worker_gpu()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # the chapter's kernel sees this worker's GPU only
    if threads:
        os.environ["DIFFGEN_THREADS"] = str(threads)  # read by the chapter's set_threads
    start = time.monotonic()
    with open(out / "run.log", "w") as log:
        ok = run_chapter(point.run, out, timeout, log=log)
    errors = [line for line in (out / "run.log").read_text().splitlines() if "error:" in line]
    return {"status": DONE if ok else FAILED, "seconds": round(time.monotonic() - start, 1),
            "error": None if ok else (errors[-1] if errors else "failed (see run.log)")}


def _worker_gpu() -> str | None:
    """The GPU index of this Dask worker when it is a LocalCluster worker holding a GPU (named 0, 1, ..., one per
    GPU); None elsewhere (a batch-system worker sees only its own GPU already)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    held = worker.state.total_resources.get("GPU")
    return str(worker.name) if held and isinstance(worker.name, int) else None


def _record(folder: Path, doc: dict) -> None:
    with atomic_write(folder / SWEEP_FILE) as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def _cluster(scheduler: str | None, workers: int | None = None):
    """A Dask client: of the scheduler at `scheduler`, or of a new LocalCluster of `workers` single-threaded workers
    (default: one per GPU if there are GPUs, each holding one, else one per core)."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s"), None
    import torch

    gpus = torch.cuda.device_count()
    workers = workers or gpus or (os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           resources={"GPU": 1} if gpus else None, dashboard_address=":0",
                           silence_logs=40)
    return Client(cluster), cluster


def _dashboard(client, local: bool) -> str:
    """The Dask dashboard's address (a LocalCluster serves it only where bokeh is installed)."""
    if local:
        try:
            import bokeh  # noqa: F401
        except ImportError:
            return "off (it needs bokeh: .venv/bin/pip install bokeh==3.9.2)"
    return client.dashboard_link


def _has_gpus(client) -> bool:
    return any(w.get("resources", {}).get("GPU") for w in client.scheduler_info(n_workers=-1)["workers"].values())


def run_sweep(points: list[Point], folder: Path, *, timeout: int, scheduler: str | None = None,
              workers: int | None = None, grid: dict | None = None, preset: str = "default") -> int:
    """Run every point that is not current; returns 0 when all points are done, else 1."""
    from distributed import as_completed

    folder.mkdir(parents=True, exist_ok=True)
    source = source_hash()
    doc = {"chapter": points[0].run.chapter.id, "preset": preset, "grid": grid or {}, "source_hash": source,
           "points": {p.name: {"parameters": {k: p.run.value(k) for k in p.run.parameters}, "values": p.values,
                               "status": "pending"} for p in points}}
    todo = []
    for p in points:
        if is_current(p, folder, source):
            doc["points"][p.name].update(status=SKIPPED, source_hash=source)
        else:
            todo.append(p)
    print(f"diffgen sweep {doc['chapter']}: {len(points)} points, {len(points) - len(todo)} already done, "
          f"{len(todo)} to run -> {show_path(folder)}", flush=True)
    _record(folder, doc)
    if not todo:
        return 0
    client, cluster = _cluster(scheduler, workers)
    try:
        resources = {"GPU": 1} if _has_gpus(client) else None  # one point per GPU at a time
        print(f"  cluster: {len(client.scheduler_info(n_workers=-1)['workers'])} workers, dashboard "
              f"{_dashboard(client, local=cluster is not None)}", flush=True)
        # on this machine the workers share its cores: each point's chapter gets its share of threads
        threads = thread_share(len(client.scheduler_info(n_workers=-1)["workers"])) if cluster is not None else None
        futures = {client.submit(run_point, p, folder, timeout, threads, key=f"point-{p.name}", pure=False,
                                 resources=resources): p for p in todo}
        done = failed = 0
        for future in as_completed(futures):
            p = futures[future]
            try:
                outcome = future.result()
            except Exception as e:  # a worker that died, or a task that raised: the point failed, the rest go on
                outcome = {"status": FAILED, "error": f"{type(e).__name__}: {e}"}
            doc["points"][p.name].update(outcome, source_hash=source, notebook=str(_notebook(folder, p)))  # relative
            _record(folder, doc)
            done += outcome["status"] == DONE
            failed += outcome["status"] == FAILED
            running = len(todo) - done - failed
            tail = f": {outcome['error']}" if outcome["status"] == FAILED else ""
            print(f"  [{done} done, {running} running or queued, {failed} failed] {p.name} {outcome['status']}"
                  f"{tail}", flush=True)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if failed:
        print(f"diffgen sweep: {failed} point(s) failed (see {SWEEP_FILE} and each point's run.log); rerun the same "
              f"command to retry only those", file=sys.stderr)
    return 1 if failed else 0


def _notebook(folder: Path, p: Point) -> Path:
    stem = p.run.chapter.stem
    failed = Path(p.name) / f"{stem}.FAILED.ipynb"
    return failed if (folder / failed).exists() else Path(p.name) / f"{stem}.ipynb"
