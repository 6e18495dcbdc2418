"""Sentences from numbers. What a chapter says about its numbers (a value, a direction, where a curve
peaks) is computed when the chapter runs, never typed, so a rerun with other parameters cannot contradict its text.

`say(text)` shows a computed paragraph as Markdown output: the book renders it like the page's own text (the cell's
input is removed), and JupyterLab shows it as rendered Markdown (the input is collapsed), so the numbers read right
in both; myst-nb's `glue` placeholders would stay raw in JupyterLab.
"""
from __future__ import annotations

import math
import textwrap
from typing import Sequence

import numpy as np

from ..base.progress import is_headless


def say(text: str) -> None:
    """Display `text` (Markdown with $math$) as the cell's output."""
    from IPython.display import Markdown, display

    display(Markdown(textwrap.dedent(text).strip()))


def figure_ref(label: str, otherwise: str = "the figure above") -> str:
    """A reference to the figure named `label`: the MyST role {numref} (Figure 2.1) in the book build, where
    computed text is parsed as MyST; `otherwise` in a live notebook, whose Markdown output has no figure numbers."""
    return f"{{numref}}`{label}`" if is_headless() else otherwise


def direction(values: Sequence[float], *, tolerance: float = 0.0) -> str:
    """'rises', 'falls' or 'stays flat': the sign of last - first when it exceeds `tolerance` (for the shape of the
    whole path, peaks and dips included, see `trend`)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        raise ValueError("direction needs at least two values")
    change = v[-1] - v[0]
    if abs(change) <= tolerance:
        return "stays flat"
    return "rises" if change > 0 else "falls"


def trend(x: Sequence[float], y: Sequence[float], *, tolerance: float = 0.0, unit: str = "") -> str:
    """A phrase for how y moves along x: 'rises from a at <unit> x0 to b at <unit> x1', 'falls ...', 'stays flat at
    about ...', or 'peaks at <unit> x (b), between a at ... and c at ...' / 'dips at ...' when the extreme lies
    strictly inside. Values differing by at most `tolerance` count as equal. unit: 't =', 'step', ... or ''."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(y) < 2:
        raise ValueError(f"trend needs x and y of one length >= 2; got {len(x)} and {len(y)}")
    first, last = y[0], y[-1]
    hi, lo = int(np.argmax(y)), int(np.argmin(y))
    if y[hi] - max(first, last) > tolerance and 0 < hi < len(y) - 1:
        return (f"peaks at {_at(x[hi], unit)} ({number(y[hi])}), between {number(first)} at {_at(x[0], unit)} and "
                f"{number(last)} at {_at(x[-1], unit)}")
    if min(first, last) - y[lo] > tolerance and 0 < lo < len(y) - 1:
        return (f"dips at {_at(x[lo], unit)} ({number(y[lo])}), between {number(first)} at {_at(x[0], unit)} and "
                f"{number(last)} at {_at(x[-1], unit)}")
    word = direction(y, tolerance=tolerance)
    if word == "stays flat":
        return f"stays flat at about {number(float(np.mean(y)))}"
    return f"{word} from {number(first)} at {_at(x[0], unit)} to {number(last)} at {_at(x[-1], unit)}"


def _at(x: float, unit: str) -> str:
    return f"{unit} {number(x)}" if unit else number(x)


def number(value: float, digits: int = 3) -> str:
    """`digits` significant digits without trailing zeros, no exponent for ordinary magnitudes: 0.0123, 4.13, 0.5,
    1000, 1.20e-05."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if value == 0:
        return "0"
    if float(value).is_integer() and abs(value) < 10**6:
        return str(int(value))
    magnitude = math.floor(math.log10(abs(value)))
    if -4 <= magnitude < 6:
        text = f"{value:.{max(0, digits - 1 - magnitude)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value:.{digits - 1}e}"


def share(value: float, digits: int = 0) -> str:
    """A proportion as a percentage: 0.934 -> '93%'."""
    return f"{100 * value:.{digits}f}%"


def compare(a: float, b: float, *, tolerance: float = 0.0, more: str = "more", less: str = "less",
            same: str = "about as much") -> str:
    """'more' / 'less' / 'about as much' for a against b (|a - b| <= tolerance counts as the same)."""
    if abs(a - b) <= tolerance:
        return same
    return more if a > b else less
