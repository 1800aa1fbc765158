"""Colours shared by the interactive (plotly) and publication (matplotlib) figures."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib import colormaps
from matplotlib.colors import to_hex

#: Okabe–Ito (colour-blind safe) then distinct extras: one colour per disease arm.
QUALITATIVE = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
    "#8C564B", "#7F7F7F", "#17BECF", "#BCBD22", "#9467BD", "#AEC7E8", "#FF9896", "#98DF8A",
)
#: Diverging map for log2 fold changes (blue = down, red = up).
DIVERGING = "RdBu_r"
#: Sequential map for marker expression.
SEQUENTIAL = "viridis"
UP, DOWN, NS = "#C0392B", "#2C7BB6", "#B0B0B0"


def category_colours(categories: Sequence[str]) -> dict[str, str]:
    """``{category: hex colour}`` from :data:`QUALITATIVE`, then ``tab20`` beyond 16."""
    extra = [to_hex(c) for c in colormaps["tab20"].colors]
    pool = list(QUALITATIVE) + [c for c in extra if c not in QUALITATIVE]
    return {c: pool[i % len(pool)] for i, c in enumerate(categories)}


def visit_colours(visits: Sequence[str]) -> dict[str, str]:
    """``{visit: hex colour}``: baseline grey, later visits along ``viridis`` (ordered by day)."""
    cmap = colormaps["viridis"]
    n = max(len(visits) - 1, 1)
    return {v: "#7F7F7F" if i == 0 else to_hex(cmap(0.9 * (i - 1) / max(n - 1, 1)))
            for i, v in enumerate(visits)}
