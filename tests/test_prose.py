"""Computed text: the words a chapter uses for its numbers follow the numbers."""
from __future__ import annotations

import pytest

from diffgen.claims import prose


def test_direction_and_trend_follow_the_numbers():
    assert prose.direction([1, 2, 3]) == "rises" and prose.direction([3, 1]) == "falls"
    assert prose.direction([1, 1.01], tolerance=0.05) == "stays flat"
    assert prose.trend([1, 10, 100], [0.5, 0.2, 0.1], unit="t =") == "falls from 0.5 at t = 1 to 0.1 at t = 100"
    assert prose.trend([1, 2, 3], [0.1, 0.9, 0.2], unit="step").startswith("peaks at step 2 (0.9), between 0.1")
    assert prose.trend([1, 2, 3], [0.5, 0.1, 0.4]).startswith("dips at 2 (0.1)")
    assert prose.trend([1, 2, 3], [0.2, 0.21, 0.2], tolerance=0.05) == "stays flat at about 0.203"
    with pytest.raises(ValueError, match="two values"):
        prose.direction([1])
    with pytest.raises(ValueError, match="one length"):
        prose.trend([1, 2], [1, 2, 3])


def test_numbers_read_as_people_write_them():
    assert [prose.number(v) for v in (0, 0.012345, 4.1299, 1000, 1.2e-5, 3e7, float("nan"))] == \
        ["0", "0.0123", "4.13", "1000", "1.20e-05", "3.00e+07", "n/a"]
    assert prose.share(0.934) == "93%" and prose.share(0.934, 1) == "93.4%"
    assert prose.compare(2, 1) == "more" and prose.compare(1, 2) == "less" and prose.compare(1, 1.01, tolerance=0.1) \
        == "about as much"


def test_figure_refs_are_roles_in_the_book_and_words_in_a_live_notebook(monkeypatch):
    monkeypatch.setenv("DIFFGEN_HEADLESS", "1")
    assert prose.figure_ref("fig-ch2-paths") == "{numref}`fig-ch2-paths`"
    monkeypatch.delenv("DIFFGEN_HEADLESS")
    assert prose.figure_ref("fig-ch2-paths", "the figure below") == "the figure below"


def test_say_displays_dedented_markdown(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    prose.say("""
        **Table 1.** $x$ = 3.
    """)
    assert type(shown[0]).__name__ == "Markdown" and shown[0].data == "**Table 1.** $x$ = 3."
