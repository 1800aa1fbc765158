"""Bivariate plots of one sample's gating hierarchy with the gates drawn.

One PNG, one panel per (parent population, plot axes): the parent's events as dots
coloured by local density, every gate drawn on those axes (rectangle, range, polygon)
with its population name and % of parent. Populations defined by a ``not`` gate are
listed in the panel of the gate they complement. A person checks a sample at a glance.

This module only draws: it is handed the events and the gating result
(:class:`immunomon.gating.template.TemplateGating`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from immunomon.gating.gates import BooleanGate, PolygonGate, RectangleGate

from .figures import savefig_atomic

_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def _panels(gating) -> list[tuple[str | None, tuple[str, str], list[str]]]:
    """Group populations by (parent, plot axes), in hierarchy order."""
    groups: dict[tuple, list[str]] = {}
    for pop, gate in gating.gates.items():
        axes = gating.plots.get(pop)
        if isinstance(gate, BooleanGate) or axes is None:  # a complement, or nothing to draw on
            continue
        groups.setdefault((gating.parents[pop], tuple(axes)), []).append(pop)
    return [(parent, axes, pops) for (parent, axes), pops in groups.items()]


def _limits(x: np.ndarray, marks: list[float]) -> tuple[float, float]:
    """Axis range: 0.2–99.8 % of the data, widened to show gate positions ``marks`` that
    lie within one data range of it."""
    if x.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.quantile(x, [0.002, 0.998]))
    width = hi - lo if hi > lo else 1.0
    near = [m for m in marks if lo - width <= m <= hi + width]
    lo, hi = min([lo, *near]), max([hi, *near])
    pad = 0.06 * (hi - lo if hi > lo else 1.0)
    return lo - pad, hi + pad


def _marks(gates, name: str) -> list[float]:
    """Finite gate positions on dimension ``name`` (rectangle bounds)."""
    out = []
    for gate in gates:
        if isinstance(gate, RectangleGate):
            for dim, (lo, hi) in zip(gate.dimensions, gate.bounds):
                if dim.name == name:
                    out += [v for v in (lo, hi) if v is not None]
    return out


def _density_colours(x: np.ndarray, y: np.ndarray, xlim, ylim, bins: int = 96) -> np.ndarray:
    """Log local density of each point from a smoothed 2-D histogram (fast, deterministic)."""
    from scipy.ndimage import gaussian_filter

    h, xe, ye = np.histogram2d(x, y, bins=bins, range=[xlim, ylim])
    h = gaussian_filter(h, 1.2)
    ix = np.clip(np.searchsorted(xe, x) - 1, 0, bins - 1)
    iy = np.clip(np.searchsorted(ye, y) - 1, 0, bins - 1)
    return np.log1p(h[ix, iy])


def _draw_gate(ax, gate, axes: tuple[str, str], xlim, ylim, colour: str) -> tuple[float, float] | None:
    """Draw ``gate`` on ``ax``; return a label anchor (data coordinates) or None."""
    from matplotlib.patches import Polygon, Rectangle

    xname, yname = axes
    if isinstance(gate, PolygonGate):
        names = [d.name for d in gate.dimensions]
        v = gate.vertices if names == [xname, yname] else gate.vertices[:, ::-1]
        ax.add_patch(Polygon(v, closed=True, fill=False, edgecolor=colour, linewidth=1.8))
        inside = v.copy()
        inside[:, 0] = np.clip(inside[:, 0], *xlim)
        inside[:, 1] = np.clip(inside[:, 1], *ylim)
        return float(inside[:, 0].mean()), float(inside[:, 1].mean())
    if isinstance(gate, RectangleGate):
        box = {xname: list(xlim), yname: list(ylim)}
        for dim, (lo, hi) in zip(gate.dimensions, gate.bounds):
            if dim.name in box:
                box[dim.name] = [lo if lo is not None else box[dim.name][0] - 1e9,
                                 hi if hi is not None else box[dim.name][1] + 1e9]
        (x0, x1), (y0, y1) = box[xname], box[yname]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.8))
        cx = (max(x0, xlim[0]) + min(x1, xlim[1])) / 2
        cy = (max(y0, ylim[0]) + min(y1, ylim[1])) / 2
        return cx, cy
    return None


def _qc_panel(ax, events: pd.DataFrame, removed_by: np.ndarray, steps: list[str], axes: tuple[str, str],
              max_points: int) -> None:
    """Every file event on ``axes``: kept events grey, removed ones coloured by QC step."""
    xname, yname = axes
    idx = np.arange(len(events))
    if idx.size > max_points:
        idx = idx[:: int(np.ceil(idx.size / max_points))]
    x, y, by = events[xname].to_numpy()[idx], events[yname].to_numpy()[idx], removed_by[idx]
    xlim, ylim = _limits(x, []), _limits(y, [])
    kept = by < 0
    ax.scatter(x[kept], y[kept], s=2, c="#b0b0b0", linewidths=0, rasterized=True,
               label=f"kept {100 * np.mean(removed_by < 0):.1f} %")
    for k, step in enumerate(steps):
        sel = by == k
        n = int(np.count_nonzero(removed_by == k))
        if n:
            ax.scatter(x[sel], y[sel], s=5, c=_COLOURS[k % len(_COLOURS)], linewidths=0, rasterized=True,
                       label=f"{step}: {n:,} ({100 * n / removed_by.size:.1f} %)")
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_xlabel(xname)
    ax.set_ylabel(yname)
    ax.set_title(f"QC: all events (n = {removed_by.size:,})", fontsize=10)
    ax.legend(fontsize=7, markerscale=2.5, loc="upper left", framealpha=0.8)
    ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))


def plot_gates(events: pd.DataFrame, gating, *, title: str | None = None, max_points: int = 20_000,
               ncols: int = 4, qc_events: pd.DataFrame | None = None, removed_by: np.ndarray | None = None,
               qc_steps: Sequence[str] | None = None, qc_axes: tuple[str, str] = ("FSC-A", "SSC-A")):
    """Figure with one panel per gated plot of a sample.

    Parameters
    ----------
    events
        The events that were gated (columns = marker names, the scale of the gates).
    gating
        A :class:`~immunomon.gating.template.TemplateGating` of these events.
    title
        Figure title (e.g. the sample id).
    max_points
        At most this many dots per panel (an evenly strided subset; deterministic).
    ncols
        Panels per row.
    qc_events, removed_by, qc_steps
        Optional first panel: every file event (``qc_events``), coloured by the QC step
        that removed it (``removed_by``: index into ``qc_steps``, -1 = kept), on ``qc_axes``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = _panels(gating)
    counts = {p: int(m.sum()) for p, m in gating.memberships.items()}
    complements: Mapping[str, list[str]] = {}
    for pop, gate in gating.gates.items():
        if isinstance(gate, BooleanGate):
            complements.setdefault(gate.operands[0], []).append(pop)

    with_qc = qc_events is not None and removed_by is not None
    nrows = int(np.ceil((len(panels) + with_qc) / ncols))
    fig, axs = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.0 * nrows), squeeze=False)
    flat = list(axs.flat)
    if with_qc:
        _qc_panel(flat.pop(0), qc_events, np.asarray(removed_by), list(qc_steps or []), qc_axes, max_points)
    n_all = len(events)
    for ax, (parent, (xname, yname), pops) in zip(flat, panels):
        mask = gating.memberships[parent] if parent is not None else np.ones(n_all, dtype=bool)
        idx = np.flatnonzero(mask)
        if idx.size > max_points:
            idx = idx[:: int(np.ceil(idx.size / max_points))]
        x = events[xname].to_numpy()[idx]
        y = events[yname].to_numpy()[idx]
        gates = [gating.gates[p] for p in pops]
        xlim, ylim = _limits(x, _marks(gates, xname)), _limits(y, _marks(gates, yname))
        if idx.size:
            c = _density_colours(x, y, xlim, ylim)
            order = np.argsort(c, kind="stable")
            size = 2 if idx.size > 5000 else (4 if idx.size > 500 else 9)
            ax.scatter(x[order], y[order], c=c[order], s=size, cmap="viridis", linewidths=0, rasterized=True)
        n_parent = counts[parent] if parent is not None else n_all
        for k, pop in enumerate(pops):
            colour = _COLOURS[k % len(_COLOURS)]
            anchor = _draw_gate(ax, gating.gates[pop], (xname, yname), xlim, ylim, colour)
            pct = 100.0 * counts[pop] / n_parent if n_parent else float("nan")
            lines = [f"{pop}\n{pct:.1f} %"]
            for other in complements.get(pop, []):
                opct = 100.0 * counts[other] / n_parent if n_parent else float("nan")
                lines.append(f"({other}: {opct:.1f} %)")
            if anchor is not None:
                ax.text(*anchor, "\n".join(lines), color=colour, fontsize=9, fontweight="bold",
                        ha="center", va="center",
                        bbox=dict(boxstyle="round,pad=0.2", facecolor="white", alpha=0.75, edgecolor="none"))
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
        ax.set_xlabel(xname)
        ax.set_ylabel(yname)
        ax.set_title(f"{parent or 'all events'} (n = {n_parent:,})", fontsize=10)
        ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))
    for ax in flat[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def write_gate_plots(path: str | Path, events: pd.DataFrame, gating, *, title: str | None = None,
                     dpi: int = 90, **kwargs) -> Path:
    """Draw :func:`plot_gates` and save it as a PNG at ``path``; returns the path."""
    import matplotlib.pyplot as plt

    fig = plot_gates(events, gating, title=title, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    savefig_atomic(fig, path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return path
