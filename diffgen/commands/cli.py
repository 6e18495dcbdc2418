"""The `diffgen` command.

`diffgen run CHAPTER...` executes chapter notebooks headlessly (diffgen.commands.runner); `diffgen chapters` lists
them and their parameters (diffgen.chapters.registry); `diffgen report [RUN_DIR]` prints the claims table of a run's
results files (diffgen.commands.report); `diffgen book` executes the chapters whose code changed, with progress, and
builds the HTML (at a preset, a copy of the book in a folder of its own);
`diffgen train CHAPTER` trains a chapter's networks ahead of it (diffgen.chapters.plans), in one process or under
torchrun; `diffgen data get NAME...` fetches data sets into the data folder, `diffgen data list` shows them
(diffgen.data.downloads).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from ..chapters.registry import (
    DEVICES,
    BookError,
    UsageError,
    book_dir,
    discover,
    load_presets,
    plan_run,
    read_parameters,
)
from .runner import show_path

# ---------------------------------------------------------------------------------------------------------------
# Commands


def _list_chapters() -> int:
    presets = load_presets()
    for ch in discover().values():
        print(f"{ch.id}  {show_path(ch.path)}")
        rows = [("name", "default", "spec", "description", "presets")]
        for p in read_parameters(ch.path).values():
            set_by = ", ".join(f"{name}: {t[ch.id][p.name]}" for name, t in presets.items() if p.name in t.get(ch.id, {}))
            rows.append((p.name, str(p.default), str(p.spec), p.description, set_by))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + ("  " + row[4]).rstrip())
    return 0


def _run(args: argparse.Namespace) -> int:
    from .runner import run_chapters

    runs = plan_run(args.chapters, args.preset, args.param, args.device)
    out = (args.out or Path("runs") / args.preset).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    _use_data_dir(args.data_dir)
    _check_data_files({run.value("dataset") for run in runs} - {None, "digits"})
    _use_fid_weights(args.fid_weights)
    return run_chapters(runs, out, args.timeout)


def _use_data_dir(data_dir: Path | None) -> None:
    if data_dir is None:
        return
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a folder (it holds MNIST, CIFAR-10, CelebA ... files)")
    os.environ["DIFFGEN_DATA"] = str(data_dir.resolve())  # the chapters' kernels inherit it


def _use_fid_weights(weights: Path | None) -> None:
    """Check the Inception weights file (--fid-weights, else $DIFFGEN_FID_WEIGHTS) before any chapter starts; the
    chapters' kernels inherit its path. Without either, the chapters use their classifier features."""
    if weights is None and not os.environ.get("DIFFGEN_FID_WEIGHTS"):
        return
    from ..measures.fid import WEIGHTS_ENV, read_weights, weights_path

    path = weights_path(weights)
    try:
        read_weights(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    os.environ[WEIGHTS_ENV] = str(path.resolve())


def _train(args: argparse.Namespace) -> int:
    """The chapter's training runs, with its parameters (preset, -p), through the cache: a chapter run with the same
    parameters loads them. Under torchrun every process runs this; rank 0 prints and writes."""
    from ..base import distributed
    from ..chapters.plans import PLANS

    [run] = plan_run([args.chapter], args.preset, args.param, args.device)
    if run.chapter.id not in PLANS:
        raise UsageError(f"chapter {run.chapter.id} has no training plan; diffgen train knows {', '.join(PLANS)}")
    _use_data_dir(args.data_dir)
    _check_data_files({run.value("dataset")} - {None, "digits"})
    params = {name: run.value(name) for name in run.parameters}
    dev = distributed.init(params.get("device", "auto"))
    if not distributed.active():  # under torchrun each process has its share of threads already
        from ..base.util import set_threads
        set_threads(dev)
    say = print if distributed.is_main() else (lambda *a, **k: None)
    try:
        plan = PLANS[run.chapter.id](params, dev)
        unknown = sorted(set(args.only) - set(plan.jobs))
        if unknown:
            raise UsageError(f"--only {', '.join(unknown)}: {run.chapter.id}'s runs are {', '.join(plan.jobs)}")
        jobs = {name: job for name, job in plan.jobs.items() if not args.only or name in args.only}
        say(f"diffgen train {run.chapter.id}: {len(jobs)} run(s) on {distributed.world_size()} process(es), {dev}")
        for name, job in jobs.items():
            result = job.run(dev)
            say(f"  {name}: {len(job.sets)} nets, {job.cfg.train_steps} steps, "
                f"{'loaded' if result.from_cache else 'trained'} -> {show_path(result.path)}")
    finally:
        distributed.shutdown()
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_grid, plan_points, run_sweep

    grid = parse_grid(args.param, args.seeds)
    points = plan_points(args.chapter, grid, args.preset, args.device, args.fixed)
    _use_data_dir(args.data_dir)
    _check_data_files({p.run.value("dataset") for p in points} - {None, "digits"})
    return run_sweep(points, args.out.resolve(), timeout=args.timeout, scheduler=args.scheduler,
                     workers=args.workers, grid=grid, preset=args.preset)


def _check_data_files(datasets: set[str]) -> None:
    """The files of every data set read from local files are there, before any chapter starts."""
    if not datasets:
        return
    from ..data.datasets import FILE_DATASETS, data_folder

    for name in sorted(datasets & set(FILE_DATASETS)):
        try:
            data_folder(name)
        except ValueError as e:
            raise UsageError(str(e)) from None


def _data(args: argparse.Namespace) -> int:
    """`diffgen data get NAME...`: fetch, verify and unpack into the data folder; `diffgen data list`: where each item
    is expected and whether it is there and verified."""
    from ..data import downloads

    given = args.data_dir or os.environ.get("DIFFGEN_DATA") or None
    if given is None:
        raise UsageError("pass --data-dir FOLDER (or set $DIFFGEN_DATA): the folder the data sets go into")
    root = Path(given).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--data-dir {given} is not a folder")
    if args.action == "list":
        return _list_data(root)
    unknown = [name for name in args.names if name not in downloads.ITEMS]
    if unknown:
        raise UsageError(f"unknown name {', '.join(unknown)}; diffgen data get knows {', '.join(downloads.ITEMS)}")
    mirrors = args.mirror or downloads.mirrors_from_env()
    bad = [m for m in mirrors if not m.startswith(("http://", "https://", "file:"))]
    if bad:
        raise UsageError(f"--mirror {bad[0]}: a mirror is an http://, https:// or file: base URL")
    for name in dict.fromkeys(args.names):
        try:
            downloads.get(downloads.ITEMS[name], root, mirrors=mirrors, out=sys.stdout)
        except downloads.DownloadError as e:
            print(f"diffgen data get {name}: error: {e}", file=sys.stderr)
            return 1
    return 0


def _list_data(root: Path) -> int:
    from ..data import downloads
    from ..data.datasets import FILE_DATASETS, data_folder

    print(f"data folder: {root}")
    rows = [("name", "expected in", "state")]
    for item in downloads.ITEMS.values():
        dest = root / item.folder
        problem = downloads.verify(dest)
        found = None
        if problem is not None and item.name in FILE_DATASETS and root.is_dir():
            with contextlib.suppress(ValueError):
                found = data_folder(item.name, root)
        if problem is None:
            state = "present, verified"
        elif found is not None:
            why = "not from diffgen data get" if problem == "missing" else problem
            state = f"present in {found}, not verified ({why})"
        else:
            state = f"missing (diffgen data get {item.name})" if problem == "missing" else f"not usable: {problem}"
        if (root / downloads.DOWNLOADS / item.name).is_dir():
            state += f"; an unfinished download is in {root / downloads.DOWNLOADS / item.name}"
        rows.append((item.name, str(dest), state))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0]:{widths[0]}}  {row[1]:{widths[1]}}  {row[2]}")
    return 0


def _book(args: argparse.Namespace) -> int:
    """Execute the chapters whose code changed (at --preset, into --build-dir's execution cache), then render."""
    from .bookrun import book_parameters, book_stamp, copy_book_sources, execute_book

    root = args.root.resolve()
    if not (root / "_config.yml").is_file() or not (root / "_toc.yml").is_file():
        raise UsageError(f"{args.root} is not a Jupyter Book (no _config.yml and _toc.yml there)")
    build = (args.build_dir or root).resolve()
    if args.preset != "default" and build == root:
        raise UsageError(f"--preset {args.preset} builds into a folder of its own: pass --build-dir DIR (not the "
                         f"book's folder {args.root}), so that its HTML and execution cache never pass for the book's")
    if build != root and build.is_file():
        raise UsageError(f"--build-dir {args.build_dir} exists and is not a folder")
    parameters = book_parameters(root, args.preset)  # validated before anything is copied or runs
    if build != root:
        copy_book_sources(root, build, args.preset)
        parameters = {build / path.relative_to(root): values for path, values in parameters.items()}
    if not execute_book(build, build / "_build" / ".jupyter_cache", timeout=args.timeout,
                        source=book_stamp(build, args.preset), parameters=parameters, jobs=args.jobs or _book_jobs()):
        return 1
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(build), "--warningiserror",
               "--keep-going"]
    if subprocess.run(command).returncode != 0:
        print("diffgen book: jupyter-book build failed (see above)", file=sys.stderr)
        return 1
    html = build / "_build" / "html"
    print(f"The book{'' if args.preset == 'default' else f' at preset {args.preset}'} is at "
          f"file://{html / 'index.html'} ({show_path(html)})")
    return 0


def _book_jobs() -> int:
    """--jobs by default: one chapter per core on a CPU machine; one at a time where torch sees a GPU."""
    import torch

    return 1 if torch.cuda.is_available() else os.cpu_count() or 1


def _report(args: argparse.Namespace) -> int:
    from . import report

    directory = args.run_dir or book_dir()
    try:
        text, rows = report.render(directory, args.format)
    except report.ReportError as e:
        raise UsageError(str(e)) from None
    sys.stdout.write(text)
    return 1 if args.check and report.any_fails(rows) else 0


DATA_DIR_HELP = ("folder of local data files for dataset = mnist, fashion-mnist, cifar10, celeba or folder "
                 "(default: $DIFFGEN_DATA)")


def _positive_int(unit: str = ""):
    """An argparse type: a whole number >= 1 (of `unit`, named in the error)."""
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a positive whole number{unit and ' of ' + unit}; got {text}")
        return int(text)
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffgen", description="Run the book's chapter notebooks and report "
                                                                 "which of the paper's claims they support.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute chapters headlessly with papermill",
                         description="Execute chapters headlessly; write each executed notebook and its "
                                     "<chapter>.results.json into the output folder.")
    run.add_argument("chapters", nargs="+", metavar="CHAPTER", help="ch2, 2 or ch2_empirical_optimum")
    run.add_argument("--preset", default="default", help="smoke, default, large or paper "
                                                         "(diffgen/chapters/presets.toml); default: the notebooks' own "
                                                         "parameters")
    run.add_argument("-p", dest="param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameter in every selected chapter that declares it (repeatable)")
    run.add_argument("--device", choices=DEVICES, help="set every chapter's device parameter")
    run.add_argument("--out", type=Path, help="output folder (default: runs/<preset>)")
    run.add_argument("--data-dir", type=Path, metavar="FOLDER", help=DATA_DIR_HELP)
    run.add_argument("--fid-weights", type=Path, metavar="PATH",
                     help="the Inception-v3 weights file of FID (diffgen data get inception), or a folder holding it; "
                          "default: $DIFFGEN_FID_WEIGHTS; without it, quality is measured in a classifier's features")
    run.add_argument("--timeout", type=_positive_int("seconds"), default=1800, metavar="SECONDS",
                     help="wall-clock limit per chapter, also the per-cell limit (default: %(default)s)")
    train = sub.add_parser("train", help="train a chapter's networks ahead of it (one process or torchrun)",
                           description="Train the networks a chapter trains, with its parameters (notebook defaults < "
                                       "--preset < --device < -p), into the cache, where the chapter run with the "
                                       "same parameters finds them. Several GPUs: torchrun --nproc_per_node=N "
                                       "$(which diffgen) train CHAPTER ... (DDP; the batch is split across "
                                       "processes; rank 0 writes). An interrupted run resumes from its checkpoint.")
    train.add_argument("chapter", metavar="CHAPTER", help="ch3 (the chapters with a training plan)")
    train.add_argument("--preset", default="default",
                       help="smoke, default, large or paper (diffgen/chapters/presets.toml)")
    train.add_argument("-p", dest="param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="override a chapter parameter (repeatable)")
    train.add_argument("--device", choices=DEVICES, help="set the chapter's device parameter")
    train.add_argument("--data-dir", type=Path, metavar="FOLDER", help=DATA_DIR_HELP)
    train.add_argument("--only", nargs="+", default=[], metavar="RUN", help="train only these runs (e.g. main)")
    sweep = sub.add_parser("sweep", help="run a chapter over a grid of parameters on a Dask cluster (resumable)",
                           description="Run CHAPTER once per point of the grid (the product of the values of every "
                                       "-p NAME V1,V2,...; --seeds K adds seed = 0..K-1), each point a diffgen run "
                                       "into OUT/<point>/, on a Dask LocalCluster (one worker per core or per GPU) "
                                       "or the scheduler at --scheduler. Points already done with the same "
                                       "parameters and diffgen source are not rerun; failed ones are retried.")
    sweep.add_argument("chapter", metavar="CHAPTER", help="ch3, 3 or ch3_trained_gap")
    sweep.add_argument("-p", dest="param", nargs=2, action="append", default=[], metavar=("NAME", "V1,V2,..."),
                       help="a swept parameter and its values (repeatable)")
    sweep.add_argument("--set", dest="fixed", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="a parameter held fixed at VALUE in every point (repeatable)")
    sweep.add_argument("--seeds", type=int, metavar="K", help="also sweep seed = 0..K-1 (intervals across seeds)")
    sweep.add_argument("--preset", default="default",
                       help="smoke, default, large or paper (diffgen/chapters/presets.toml)")
    sweep.add_argument("--device", choices=DEVICES, help="set the chapter's device parameter")
    sweep.add_argument("--out", type=Path, required=True, metavar="DIR", help="the sweep's folder")
    sweep.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a LocalCluster)")
    sweep.add_argument("--workers", type=int, metavar="N",
                       help="LocalCluster workers (default: one per GPU, else one per core)")
    sweep.add_argument("--data-dir", type=Path, metavar="FOLDER", help=DATA_DIR_HELP)
    sweep.add_argument("--timeout", type=_positive_int("seconds"), default=3600, metavar="SECONDS",
                       help="wall-clock limit per point (default: %(default)s)")
    data = sub.add_parser("data", help="fetch MNIST, Fashion-MNIST, CIFAR-10 into the data folder; list them",
                          description="The only command that downloads. `diffgen data get NAME...` fetches each "
                                      "item's published files (from --mirror / $DIFFGEN_MIRRORS first, then the "
                                      "published addresses), checks them against their published checksums, resumes "
                                      "a partial download, and unpacks them into the folder the chapters read; "
                                      "nothing happens when they are there and verify. `diffgen data list` shows "
                                      "where each item is expected and whether it is there and verified.")
    data_sub = data.add_subparsers(dest="action", required=True)
    data_get = data_sub.add_parser("get", help="download, verify and unpack data sets into the data folder")
    data_get.add_argument("names", nargs="+", metavar="NAME", help="mnist, fashion-mnist, cifar10")
    data_get.add_argument("--mirror", action="append", default=[], metavar="URL",
                          help="a base URL tried first, as URL/NAME/FILE (repeatable; default: $DIFFGEN_MIRRORS, "
                               "whitespace-separated)")
    data_list = data_sub.add_parser("list", help="each data set, where it is expected, whether it is there and "
                                                 "verified")
    for p in (data_get, data_list):
        p.add_argument("--data-dir", type=Path, metavar="FOLDER",
                       help="the data folder (created if absent; default: $DIFFGEN_DATA)")
    sub.add_parser("chapters", help="list the chapters and their parameters")
    book = sub.add_parser("book", help="execute the chapters whose code changed (with progress), then build the HTML",
                          description="Execute every chapter of the book's table of contents whose code or diffgen "
                                      "source changed since it was last executed (one progress line per cell), "
                                      "cache the executed notebooks where jupyter-book looks for them, and build "
                                      "the HTML into ROOT/_build/html with warnings as errors. With --preset and "
                                      "--build-dir, the same build of a copy of the book, every chapter executed "
                                      "with the preset's parameters, in a folder of its own.")
    book.add_argument("root", nargs="?", type=Path, default=Path("."), metavar="ROOT",
                      help="the book's folder, holding _config.yml and _toc.yml (default: .)")
    book.add_argument("--timeout", type=_positive_int("seconds"), default=3600, metavar="SECONDS",
                      help="wall-clock limit per chapter, also the per-cell limit (default: %(default)s)")
    book.add_argument("--preset", default="default",
                      help="execute every chapter with this preset's parameters, injected as `diffgen run --preset` "
                           "injects them (smoke, large, paper; needs --build-dir); default: the notebooks' own")
    book.add_argument("--build-dir", type=Path, metavar="DIR",
                      help="build a copy of the book's sources in DIR (DIR/_build/html, its own execution cache "
                           "DIR/_build/.jupyter_cache, the chapters' results files in DIR/book/); default: ROOT")
    book.add_argument("--jobs", type=_positive_int(), metavar="N",
                      help="chapters executed at once, each in its own process with cores/N CPU threads "
                           "($DIFFGEN_THREADS, when set), the longest first (default: one per core on a CPU "
                           "machine, 1 where torch sees a GPU: each chapter's memory budget assumes the GPU is its "
                           "own)")
    rep = sub.add_parser("report", help="the paper's claims against what a run measured",
                         description="Print the claims table (C1..C4, C5a, C5b, C6: what each chapter measured, its "
                                     "95%% CI and the verdict) from the <chapter>.results.json files in RUN_DIR. "
                                     "Exit code 0, or with --check 1 when a measured claim fails; 2 when RUN_DIR "
                                     "has no results or a file is malformed. Claims no chapter measured are "
                                     "'not run'.")
    rep.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR",
                     help="folder of results files, e.g. runs/smoke (default: book/, the book build's results)")
    rep.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    rep.add_argument("--check", action="store_true", help="exit 1 when a measured claim does not hold")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    try:
        commands = {"run": _run, "train": _train, "sweep": _sweep, "report": _report, "book": _book,
                    "data": _data, "chapters": lambda _: _list_chapters()}
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
