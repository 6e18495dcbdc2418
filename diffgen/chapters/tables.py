"""Markdown tables of the chapters (errors, copy rates, band shares, excess risks, quality), for
`display(Markdown(...))`."""
from __future__ import annotations

import re

import numpy as np


def markdown_table(headers, rows) -> str:
    """A Markdown table from a header list and rows of already formatted cells (a "|" in a cell is escaped)."""
    line = lambda cells: "| " + " | ".join(re.sub(r"(?<!\\)\|", r"\\|", str(c)) for c in cells) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(row) for row in rows)])


def error_table(errors: dict) -> str:
    """Markdown table of optimum.reference_errors: one row per (t, query kind), one column per denoiser."""
    names = list(next(iter(errors.values())))
    rows = [[t, kind, *(f"{row[name]:.1e}" for name in names)] for (t, kind), row in errors.items()]
    return markdown_table(["t", "queries", *names], rows)


def copy_table(summaries: dict, extra: dict | None = None) -> str:
    """Markdown table of metrics.CopySummary per generator: copy rate [95% Wilson interval] (count), median
    d1 / sqrt(D); `extra` adds columns {header: {generator: cell}} (a missing cell reads as a dash)."""
    extra = extra or {}
    rows = [[name, f"{s.rate:.3f}", f"{s.median_d1:.2g}", *(col.get(name, "-") for col in extra.values())]
            for name, s in summaries.items()]
    return markdown_table(["generator", "copy rate [95% CI] (copies)", "median $d_1/\\sqrt{D}$", *extra], rows)


def band_share_table(shares: list[dict]) -> str:
    """Markdown table: each denoiser's share per band, mean over the seeds (min to max: a cell that can wrap)."""
    bands = list(shares[0])
    names = list(shares[0][bands[0]])
    cell = lambda v: f"{np.mean(v):.3g} ({min(v):.3g} to {max(v):.3g})" if len(v) > 1 else f"{v[0]:.3g}"  # noqa: E731
    rows = [[name, *(cell([sh[b][name] for sh in shares]) for b in bands)] for name in names]
    return markdown_table(["denoiser", *(f"t in {lo}..{hi}" for lo, hi in bands)], rows)


def excess_risk_table(risks: dict) -> str:
    """Markdown table of mi.ExcessRisk terms per row name: total, I(z; m), KL(P_z || P) and their gap."""
    rows = [[name, f"{r.total:.3f}", f"{r.mi:.3f}", f"{r.marginal:.3f}", f"{r.gap:+.3f}"] for name, r in risks.items()]
    return markdown_table(["generator", "E_S KL(P_z|S || P)", "I(z; m)", "KL(P_z || P)", "gap"], rows)


def quality_rows(energy: dict, difference: dict, features: dict, gates: dict, fid_name: str) -> str:
    """Markdown table per (objective, n): energy distance to held-out images (mean over seeds), the difference to the
    standard objective (seed by seed, t interval), the quality gate, and the Fréchet distance and KID with their t
    intervals across seeds (fid.SampleQuality; a bootstrap that resamples images with replacement biases KID upward,
    so its interval could miss the estimate)."""
    from ..measures.metrics import across_seeds

    rows = []
    for (name, n), e in energy.items():
        diff = "" if name == "standard" else f"{across_seeds(difference[name, n]):.3g}"
        q = features[name, n]
        fid, kid = (q.fid_across_seeds, q.kid_across_seeds) if q.seeds > 1 else (q.fid, q.kid)  # both across seeds
        gate = "passes" if gates[name, n].passes else "fails"
        rows.append([name, str(n), f"{np.mean(e):.4g}", diff, f"{gates[name, n].yardstick_value:.4g} ({gate})",
                     f"{fid:.4g}", "" if kid is None else f"{kid:.3g}"])
    return markdown_table(["objective", "n", "energy distance", "minus standard [95% CI]",
                           "crude Gaussian (gate)", f"{fid_name} [95% CI]", "KID [95% CI]"], rows)
