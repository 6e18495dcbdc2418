"""The book's one look: the matplotlib style of every figure and the verdict colours of every figure and
table. Applied by an explicit call (`use()`), never on import.

Verdict colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies), and every
verdict also has a mark (diffgen.claims.rowtext.MARKS), so none is told by colour alone. Figures have an opaque white
background, so they read the same in the book's light and dark modes and in JupyterLab's themes.
"""
from __future__ import annotations

VERDICT_COLORS = {
    "holds": "#009E73",  # bluish green
    "fails": "#D55E00",  # vermillion
    "fails (quality)": "#E69F00",  # orange
    "premise not reached": "#56B4E9",  # sky blue
    "not measurable": "#999999",  # grey
    "not run": "#DDDDDD",  # light grey
}

# Sizes for the book's page at 1280 px wide: the text column is 672 px, a cell tagged `full-width` 920 px. A figure
# wider than its column is scaled down; at 110 dpi a 10-point tick label is 15.3 px tall, so a figure no wider than
# these keeps its tick labels at 12 px (9 points) or more where the page shows them (tests/test_browser.py measures
# the scale of every figure on every page).
TEXT_WIDTH = 7.4  # inches: the widest figure of a normal cell
WIDE_WIDTH = 10.2  # inches: the widest figure of a `full-width` cell
DPI = 110

STYLE = {
    "figure.dpi": DPI,
    "savefig.dpi": "figure",  # the frame sliders' frames too: every figure of the book at DPI
    "figure.figsize": (6.4, 4.0),
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "font.size": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "image.cmap": "gray",
    "axes.prop_cycle": None,  # set in use(): the Okabe-Ito colours in order
}
CYCLE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def use() -> None:
    """Apply the book's matplotlib style (a chapter's setup cell calls it once, through figures.use_style)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({**{k: v for k, v in STYLE.items() if v is not None}, "axes.prop_cycle": cycler(color=CYCLE)})


def verdict_color(verdict: str) -> str:
    """The colour of a verdict ('fails (2 of 6)' is a 'fails'; 'holds (in 1 of 3 regimes)' a 'holds')."""
    for state in ("fails (quality)", *VERDICT_COLORS):
        if verdict.startswith(state):
            return VERDICT_COLORS[state]
    raise ValueError(f"verdict must start with one of {', '.join(VERDICT_COLORS)}; got {verdict!r}")
