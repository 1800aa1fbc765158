"""Figures of the unsupervised branch (matplotlib): UMAP maps and the marker heatmap.

Every function draws what the ``embedding`` and ``clusters`` tables hold (see
``docs/architecture.md``) and returns the :class:`matplotlib.figure.Figure`; pass
``path`` to also save it (the suffix picks PNG or PDF).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from .figures import savefig_atomic

__all__ = ["umap_map", "umap_panels", "marker_heatmap", "draw_cluster_figures"]

_NON_MARKERS = {"sample_id", "cluster", "label", "umap_1", "umap_2", "patient_id", "visit",
                "disease", "panel", "day", "batch"}


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        meta = {"Software": None} if str(path).endswith(".png") else \
            {"Creator": None, "Producer": None, "CreationDate": None}
        savefig_atomic(fig, path, dpi=150, bbox_inches="tight", metadata=meta)
    return fig


def _cluster_names(table: pd.DataFrame) -> pd.Series:
    """``"<cluster> <label>"`` per row (e.g. ``"7 Treg"``)."""
    return table["cluster"].astype(str) + " " + table["label"].astype(str)


def _draw(ax, embedding: pd.DataFrame, color: str, point_size: float | None) -> None:
    if point_size is None:  # about constant ink whatever the number of cells
        point_size = float(np.clip(4_000 / max(len(embedding), 1), 0.3, 8.0))
    x, y = embedding["umap_1"].to_numpy(), embedding["umap_2"].to_numpy()
    if color in ("cluster", "label"):
        values = _cluster_names(embedding) if color == "cluster" else embedding["label"]
    else:
        values = embedding[color]
    if pd.api.types.is_numeric_dtype(values) and color not in ("cluster",):
        sc = ax.scatter(x, y, c=values.to_numpy(), s=point_size, cmap="viridis", linewidths=0,
                        vmin=np.nanpercentile(values, 1), vmax=np.nanpercentile(values, 99))
        ax.figure.colorbar(sc, ax=ax, shrink=0.7)
    else:
        order = (sorted(values.unique(), key=lambda v: int(v.split()[0])) if color == "cluster"
                 else sorted(values.astype(str).unique()))
        cmap = colormaps["tab20" if len(order) > 10 else "tab10"]
        code = pd.Categorical(values.astype(str), categories=order).codes
        shuffle = np.random.default_rng(0).permutation(len(x))  # no level hides another
        ax.scatter(x[shuffle], y[shuffle], s=point_size, c=np.asarray(cmap(code % cmap.N))[shuffle],
                   linewidths=0)
        handles = [Line2D([], [], marker="o", linestyle="", color=cmap(i % cmap.N), markersize=4,
                          label=level) for i, level in enumerate(order)]
        ax.legend(handles=handles, fontsize=6, frameon=False, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), ncol=1 + len(order) // 16)
    ax.set_title(color, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xticks([])
    ax.set_yticks([])


def umap_map(embedding: pd.DataFrame, color: str = "cluster", path: str | Path | None = None,
             point_size: float | None = None) -> Figure:
    """One UMAP map coloured by ``color``: a marker column (continuous), or ``cluster``,
    ``label``, ``visit``, ``disease`` (categories)."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    _draw(ax, embedding, color, point_size)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    return _save(fig, path)


def umap_panels(embedding: pd.DataFrame, colors: list[str] | None = None, path: str | Path | None = None,
                ncols: int = 4, point_size: float | None = None) -> Figure:
    """Small multiples of the UMAP map: by cluster, visit, disease, then every marker."""
    if colors is None:
        colors = [c for c in ("cluster", "visit", "disease") if c in embedding]
        colors += [c for c in embedding.columns if c not in _NON_MARKERS]
    nrows = int(np.ceil(len(colors) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.6 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, color in zip(axes.flat, colors):
        _draw(ax, embedding, color, point_size)
    for ax in axes.flat[len(colors):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def marker_heatmap(clusters: pd.DataFrame, markers: list[str] | None = None, path: str | Path | None = None) -> Figure:
    """Marker × metacluster heatmap of the cluster medians, each marker scaled to 0–1
    over the clusters (colour), raw median printed in each cell; columns are
    ``"<cluster> <label>"`` with the cell count."""
    if markers is None:
        skip = {"cluster", "label", "confidence", "n_cells", "label_rank", "panel"}
        markers = [c for c in clusters.columns if c not in skip]
    values = clusters[markers].to_numpy(dtype=np.float64).T  # markers × clusters
    lo, hi = np.nanmin(values, axis=1, keepdims=True), np.nanmax(values, axis=1, keepdims=True)
    scaled = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    fig = Figure(figsize=(0.55 * len(clusters) + 2.5, 0.35 * len(markers) + 2.2))
    ax = fig.subplots()
    im = ax.imshow(scaled, aspect="auto", cmap="magma", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=5,
                    color="white" if scaled[i, j] < 0.6 else "black")
    names = _cluster_names(clusters)
    if "n_cells" in clusters:
        names = names + " (" + clusters["n_cells"].astype("Int64").astype(str) + ")"
    ax.set_xticks(range(len(clusters)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(markers)), markers, fontsize=7)
    ax.set_title("Median expression per metacluster (colour: scaled 0-1 per marker)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.6)
    fig.tight_layout()
    return _save(fig, path)


def draw_cluster_figures(tables: dict[str, pd.DataFrame], out_dir: str | Path,
                         formats: tuple[str, ...] = ("png",)) -> dict[str, Figure]:
    """Draw the unsupervised figures of a run (one set per panel) into ``out_dir``.

    Returns figure name → Figure (``umap_clusters``, ``umap_panels``, ``cluster_heatmap``,
    suffixed ``_<panel>`` when the tables hold several panels).
    """
    out_dir = Path(out_dir)
    embedding, clusters = tables["embedding"], tables["clusters"]
    panels = sorted(clusters["panel"].unique()) if "panel" in clusters else [None]
    figures = {}
    for panel in panels:
        suffix = f"_{panel}" if panel is not None and len(panels) > 1 else ""
        emb = embedding if panel is None else embedding[embedding["panel"] == panel]
        cl = clusters if panel is None else clusters[clusters["panel"] == panel]
        drawn = {"umap_clusters": lambda p: umap_map(emb, "cluster", p),
                 "umap_panels": lambda p: umap_panels(emb, path=p),
                 "cluster_heatmap": lambda p: marker_heatmap(cl, path=p)}
        for name, draw in drawn.items():
            fig = draw(None)
            for fmt in formats:
                _save(fig, out_dir / f"{name}{suffix}.{fmt}")
            figures[name + suffix] = fig
    return figures
