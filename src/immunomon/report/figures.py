"""Publication figures (matplotlib, PNG at 300 dpi and vector PDF) of the key results.

Each ``plot_*`` function draws one figure from frames prepared by :mod:`immunomon.report.prep`
and returns the :class:`matplotlib.figure.Figure`; :func:`write_figures` draws every figure the
run's tables allow into ``figures/`` (deterministic bytes: no timestamps in the files).
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import style
from .prep import (FDR, colour_limit, fold_change_matrix, label_points, paired_values,
                   pc_labels, pooled_stats, sample_values)
from .rundata import PRIMARY_PARAMETER, RunData

log = logging.getLogger(__name__)

RC = {
    "font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "axes.linewidth": 0.7,
    "xtick.major.width": 0.7, "ytick.major.width": 0.7, "pdf.fonttype": 42,
    "text.parse_math": False, "svg.hashsalt": "immunomon",
}
DPI = 300


def savefig_atomic(fig: Figure, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` into a temporary file beside ``path``, then renamed onto it: a killed
    or failed write never leaves a truncated figure (the format comes from ``path``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` as ``name.png`` (300 dpi) and ``name.pdf`` atomically; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with mpl.rc_context(RC):
        for ext, meta in (("png", {"Software": None}),
                          ("pdf", {"CreationDate": None, "Producer": None, "Creator": None})):
            paths.append(savefig_atomic(fig, out_dir / f"{name}.{ext}", dpi=DPI, metadata=meta))
    return paths


def plot_primary(paired: pd.DataFrame, visits: tuple[str, str], colours: dict[str, str],
                 parameter: str) -> Figure:
    """Paired dot plot: per-patient baseline → end-point value, pooled and per disease."""
    b, v = visits
    groups = ["All"] + sorted(paired["disease"].astype(str).unique())
    with mpl.rc_context(RC):
        fig = Figure(figsize=(max(3.5, 0.62 * len(groups) + 1.2), 3.4), layout="constrained")
        ax = fig.add_subplot()
        for gi, group in enumerate(groups):
            g = paired if gi == 0 else paired[paired["disease"].astype(str) == group]
            for _, row in g.iterrows():
                c = colours.get(str(row["disease"]), "#555")
                ax.plot([gi - 0.18, gi + 0.18], [row[b], row[v]], color=c, lw=0.7, alpha=0.8,
                        marker="o", ms=3, mec="white", mew=0.3)
        ax.set_xticks([x for gi in range(len(groups)) for x in (gi - 0.18, gi + 0.18)])
        ax.set_xticklabels([b, v] * len(groups), fontsize=6, color="#555")
        ax.tick_params(axis="x", length=2, pad=1.5)
        for gi, group in enumerate(groups):
            n = len(paired) if gi == 0 else int((paired["disease"] == group).sum())
            ax.annotate(f"{textwrap.fill(group, 13)}\n(n={n})", xy=(gi, 0),
                        xycoords=("data", "axes fraction"), xytext=(0, -13),
                        textcoords="offset points", ha="center", va="top", fontsize=7)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel(parameter)
        ax.set_title(f"{parameter}, {b} → {v}, per patient")
        ax.axvline(0.5, color="#ccc", lw=0.6)
    return fig


def plot_kinetics(vals: pd.DataFrame, parameters: Sequence[str], visits: Sequence[str],
                  colours: dict[str, str]) -> Figure:
    """Small multiples: per-patient lines of each parameter over visits, median in black."""
    n = len(parameters)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    xpos = {v: i for i, v in enumerate(visits)}
    with mpl.rc_context(RC):
        fig = Figure(figsize=(2.6 * ncol + 1.4, 2.2 * nrow + 0.3), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for ax, par in zip(axes.flat, parameters):
            sub = vals[vals["parameter"] == par]
            for (_, disease), g in sub.groupby(["patient_id", "disease"], sort=True):
                ax.plot(g["visit"].map(xpos), g["value"], color=colours.get(str(disease), "#555"),
                        lw=0.5, alpha=0.6)
            med = sub.groupby("visit")["value"].median().reindex(visits).dropna()
            ax.plot(med.index.map(xpos), med.to_numpy(), color="black", lw=1.6, marker="o", ms=3)
            ax.set_xticks(range(len(visits)))
            ax.set_xticklabels(visits, rotation=45)
            ax.set_title(par, fontsize=8)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=c, lw=1.2, label=d) for d, c in colours.items()]
        handles.append(Line2D([], [], color="black", lw=1.6, marker="o", ms=3, label="median"))
        fig.legend(handles=handles, loc="outside right center")
    return fig


def plot_volcano(pooled: pd.DataFrame, visits: Sequence[str], n_labels: int = 5) -> Figure:
    """Volcano plot per visit (pooled, first method): effect vs −log10 p, q < FDR coloured."""
    method = str(pooled["method"].iloc[0])
    pooled = pooled[pooled["method"].astype(str) == method]
    visits = [v for v in visits if v in set(pooled["visit"].astype(str))]
    ncol = min(3, len(visits))
    nrow = math.ceil(len(visits) / ncol)
    lim = float(np.nanmax(np.abs(pooled["x"]))) * 1.25 or 1.0
    xlabel = " / ".join(pd.unique(pooled["x_label"]))
    with mpl.rc_context(RC):
        fig = Figure(figsize=(2.9 * ncol, 2.6 * nrow + 0.3), layout="constrained")
        axes = fig.subplots(nrow, ncol, squeeze=False)
        for ax, visit in zip(axes.flat, visits):
            g = pooled[pooled["visit"].astype(str) == visit]
            x = g["x"].to_numpy()
            col = np.where(~g["sig"], style.NS, np.where(x > 0, style.UP, style.DOWN))
            ax.scatter(x, g["mlog10p"], c=list(col), s=10, lw=0.3, edgecolors="white")
            for idx in label_points(g, n_labels):
                r = g.loc[idx]
                right = r["x"] >= 0
                ax.annotate(str(r["parameter"]), (r["x"], r["mlog10p"]), fontsize=5.5,
                            xytext=(3 if right else -3, 0), textcoords="offset points",
                            ha="left" if right else "right", va="center")
            ax.axvline(0, color="#999", lw=0.6)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(0, float(g["mlog10p"].max()) * 1.12 + 0.2 if len(g) else 1)
            ax.set_title(visit)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("−log10 p")
        for ax in list(axes.flat)[len(visits):]:
            ax.set_visible(False)
        fig.suptitle(f"Change from baseline, all diseases ({method}); coloured: q < {FDR}",
                     fontsize=9)
    return fig


def plot_fold_heatmap(matrix: pd.DataFrame, cols: pd.DataFrame, visit_colours: dict[str, str],
                      disease_colours: dict[str, str]) -> Figure:
    """Clustered heatmap of per-patient log2 fold changes with visit and disease strips."""
    lim = colour_limit(matrix.to_numpy())
    nrow = matrix.shape[0]
    with mpl.rc_context(RC):
        fig = Figure(figsize=(7.2, 0.13 * nrow + 1.6), layout="constrained")
        gs = fig.add_gridspec(3, 2, height_ratios=[0.25, 0.25, max(nrow * 0.13, 1)],
                              width_ratios=[1, 0.025], hspace=0.02)
        for r, (col, colours) in enumerate((("visit", visit_colours),
                                            ("disease", disease_colours))):
            ax = fig.add_subplot(gs[r, 0])
            rgb = np.array([[mpl.colors.to_rgb(colours.get(str(v), "#999")) for v in cols[col]]])
            ax.imshow(rgb, aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([0])
            ax.set_yticklabels([col])
            ax.spines[:].set_visible(False)
        ax = fig.add_subplot(gs[2, 0])
        im = ax.imshow(matrix.to_numpy(), aspect="auto", cmap=style.DIVERGING, vmin=-lim,
                       vmax=lim, interpolation="nearest")
        ax.set_yticks(range(nrow))
        ax.set_yticklabels(matrix.index, fontsize=5.5 if nrow > 40 else 6.5)
        ax.set_xticks([])
        ax.set_xlabel(f"{matrix.shape[1]} patient-visits (clustered)")
        fig.colorbar(im, cax=fig.add_subplot(gs[2, 1]), label="log2 fold change")
        present = [(k, c, g) for g, cm in (("visit", visit_colours), ("disease", disease_colours))
                   for k, c in cm.items() if k in set(cols[g])]
        fig.legend(handles=[Patch(color=c, label=k) for k, c, _ in present],
                   loc="outside lower center", ncol=min(5, len(present)), fontsize=6)
    return fig


def plot_pca(pca: pd.DataFrame, visit_colours: dict[str, str], disease_colours: dict[str, str],
             axis_titles: tuple[str, str] = ("PC1", "PC2")) -> Figure:
    """PC1 × PC2 of samples coloured by visit and by disease (two panels)."""
    with mpl.rc_context(RC):
        fig = Figure(figsize=(7.4, 3.2), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, (col, colours) in zip(axes, (("visit", visit_colours),
                                             ("disease", disease_colours))):
            for key, c in colours.items():
                g = pca[pca[col].astype(str) == key]
                if len(g):
                    ax.scatter(g["pc1"], g["pc2"], s=12, color=c, lw=0.3, edgecolors="white",
                               label=key)
            ax.set_xlabel(axis_titles[0])
            ax.set_ylabel(axis_titles[1])
            ax.set_title(f"by {col}")
            if ax.get_legend_handles_labels()[0]:  # no groups (e.g. no disease column): no legend
                ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=6, markerscale=1.2)
    return fig


def _kinetic_parameters(run: RunData, vals: pd.DataFrame, n: int = 9) -> list[str]:
    """The primary parameter, then those with the smallest pooled q at any visit."""
    names = list(dict.fromkeys([PRIMARY_PARAMETER] * (PRIMARY_PARAMETER in set(vals["parameter"]))
                               + sorted(vals["parameter"].unique())))
    st = run.get("stats_supervised")
    if st is not None:
        best = pooled_stats(st, run.baseline).groupby("parameter")["q"].min().sort_values()
        names = list(dict.fromkeys(names[:1] + [p for p in best.index if p in names] + names))
    return names[:n]


def write_figures(run: RunData, out_dir: str | Path) -> list[Path]:
    """Draw every key figure the tables allow into ``out_dir``; return the written paths.

    Figures: ``primary_endpoint``, ``kinetics``, ``volcano``, ``fold_change_heatmap``, ``pca``
    (each ``.png`` and ``.pdf``). A figure whose tables are missing is skipped.
    """
    out_dir = Path(out_dir)
    dc, vc = style.category_colours(run.diseases), style.visit_colours(run.visits)
    b, v = run.baseline, run.primary_visit
    written: list[Path] = []
    vals = sample_values(run)
    if vals is not None and not vals.empty and b and v:
        paired = paired_values(run, PRIMARY_PARAMETER, (b, v))
        if not paired.empty:
            written += save(plot_primary(paired, (b, v), dc, PRIMARY_PARAMETER), out_dir,
                            "primary_endpoint")
        written += save(plot_kinetics(vals, _kinetic_parameters(run, vals), run.visits, dc),
                        out_dir, "kinetics")
    st = run.get("stats_supervised")
    if st is not None:
        pooled = pooled_stats(st, b)
        if len(pooled):
            written += save(plot_volcano(pooled, run.visits), out_dir, "volcano")
    fc = fold_change_matrix(run)
    if fc is not None:
        written += save(plot_fold_heatmap(*fc, vc, dc), out_dir, "fold_change_heatmap")
    p = run.get("pca")
    if p is not None:
        written += save(plot_pca(p, vc, dc, pc_labels(run)), out_dir, "pca")
    return written
