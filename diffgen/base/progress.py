"""Progress of long work, shown where the person who started it is looking.

- A person at a notebook (JupyterLab): tqdm's notebook bars and printed notes, as usual.
- A headless run (`diffgen run`, `diffgen book`, sweeps): nothing goes into the notebook's outputs, which become the
  book's pages. The runner that executes the chapter sets $DIFFGEN_PROGRESS to a file it follows and prints on its
  terminal; `progress` and `note` append lines to that file (training steps, loss, "loaded from cache").
- Headless without a runner (a plain `jupyter-book build`): silent.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

CHANNEL = "DIFFGEN_PROGRESS"  # path of the file a runner follows
HEADLESS = "DIFFGEN_HEADLESS"  # "1" in runs without a frontend: no live widgets, no progress bars in outputs
T = TypeVar("T")


def is_headless() -> bool:
    """True when run without a frontend (`diffgen run`, the book build and the tests set DIFFGEN_HEADLESS=1)."""
    return os.environ.get(HEADLESS, "") == "1"


def _channel() -> Path | None:
    path = os.environ.get(CHANNEL, "")
    return Path(path) if path and is_headless() else None


def note(message: str) -> None:
    """One line for the person running the work: printed in a live notebook, sent to the runner when headless."""
    channel = _channel()
    if channel is not None:
        with open(channel, "a") as f:  # one short write per line: lines of concurrent writers do not interleave
            f.write(message.replace("\n", " ") + "\n")
    elif not is_headless():
        print(message, flush=True)


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, initial: int = 0,
             status: Callable[[], str] | None = None, every: float = 5.0) -> Iterator[T]:
    """Iterate over `iterable` showing progress: a tqdm bar in a live notebook; headless, a line
    'desc: k/total (rate) status()' to the runner at most every `every` seconds and at the end."""
    if not is_headless():
        from tqdm.auto import tqdm

        bar = tqdm(iterable, desc=desc, total=total, initial=initial)
        for k, item in enumerate(bar, start=initial + 1):
            yield item
            if status is not None and (k % 25 == 0 or k == total):
                bar.set_postfix_str(status(), refresh=False)
        return
    if _channel() is None:
        yield from iterable
        return
    total = total if total is not None else (len(iterable) + initial if hasattr(iterable, "__len__") else None)
    start = last = time.monotonic()
    k = shown = initial
    for k, item in enumerate(iterable, start=initial + 1):
        yield item
        now = time.monotonic()
        if now - last >= every:
            last, shown = now, k
            note(_line(desc, k, total, initial, now - start, status))
    if k > shown:
        note(_line(desc, k, total, initial, time.monotonic() - start, status))


def _line(desc: str, k: int, total: int | None, initial: int, elapsed: float, status) -> str:
    rate = (k - initial) / elapsed if elapsed > 0 else 0.0
    of = f"/{total}" if total else ""
    extra = f", {status()}" if status is not None else ""
    return f"{desc}: {k}{of} ({rate:.1f}/s){extra}"


class Follower:
    """The runner's side: sets $DIFFGEN_PROGRESS (for processes started inside the block) to a fresh file and calls
    show(line) for each line appended to it, from a background thread, until the block ends."""

    def __init__(self, path: Path, show: Callable[[str], None], poll: float = 0.5):
        self.path, self.show, self.poll = Path(path), show, poll
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending = ""
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> "Follower":
        self.path.write_text("")
        self._file = open(self.path)
        self._previous = os.environ.get(CHANNEL)
        os.environ[CHANNEL] = str(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._previous is None:
            os.environ.pop(CHANNEL, None)
        else:
            os.environ[CHANNEL] = self._previous

    def drain(self) -> None:
        """Show every complete line written so far (also called by the runner, e.g. before announcing a cell)."""
        with self._lock:
            self._pending += self._file.read()
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self.show(line)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll):
            self.drain()
        self.drain()
        self._file.close()
