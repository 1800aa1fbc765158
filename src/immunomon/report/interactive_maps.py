"""Interactive plotly maps of the HTML report: volcano, heatmaps, PCA and UMAP."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import style
from .htmltable import esc
from .interactive import base_layout
from .prep import FDR, colour_limit, label_points

#: At most this many cells per UMAP panel (a fixed, seeded subsample of the embedding table).
UMAP_POINTS = 6000


def _discrete_scale(colours: Sequence[str]) -> list:
    """A plotly colourscale showing integer codes ``0..k-1`` (zmin=-0.5, zmax=k-0.5) flat."""
    k = len(colours)
    scale = []
    for i, c in enumerate(colours):
        scale += [[i / k, c], [(i + 1) / k, c]]
    return scale


def fig_volcano(pooled: pd.DataFrame, visits: Sequence[str], n_labels: int = 4) -> go.Figure:
    """Volcano plots of pooled supervised statistics: one panel per visit, a dropdown per method.

    ``pooled`` is :func:`immunomon.report.prep.pooled_stats` of ``stats_supervised``.
    """
    visits = [v for v in visits if v in set(pooled["visit"].astype(str))]
    methods = list(pd.unique(pooled["method"].astype(str)))
    cols = min(3, len(visits))
    rows = math.ceil(len(visits) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[esc(v) for v in visits],
                        horizontal_spacing=0.07, vertical_spacing=0.14)
    owners = []
    lim = float(np.nanmax(np.abs(pooled["x"]))) * 1.35 or 1.0
    xt = " / ".join(esc(v) for v in pd.unique(pooled["x_label"]))
    for m, method in enumerate(methods):
        for i, visit in enumerate(visits):
            g = pooled[(pooled["method"].astype(str) == method) & (pooled["visit"] == visit)]
            x = g["x"].to_numpy()
            colour = np.where(~g["sig"], style.NS, np.where(x > 0, style.UP, style.DOWN))
            top = set(label_points(g, n_labels))
            text = [esc(p) if idx in top else "" for idx, p in zip(g.index, g["parameter"])]
            q = g["q"].astype(float) if "q" in g.columns else pd.Series(np.nan, index=g.index)
            fig.add_scatter(
                x=x, y=g["mlog10p"], mode="markers+text", text=text,
                textposition=np.where(x < 0, "middle left", "middle right"),
                textfont=dict(size=9), visible=m == 0, showlegend=False,
                customdata=np.column_stack([[esc(p) for p in g["parameter"]], q]),
                marker=dict(color=colour, size=7, line=dict(width=0.4, color="white")),
                hovertemplate="%{customdata[0]}<br>%{x:.3g} (" + xt + ")<br>−log10 p %{y:.2f}"
                              "<br>q %{customdata[1]:.2g}<extra>" + esc(method) + "</extra>",
                row=i // cols + 1, col=i % cols + 1)
            owners.append(m)
    fig.update_xaxes(title_text=xt, zeroline=True, zerolinecolor="#999", range=[-lim, lim])
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(title_text="−log10 p")
    menus = []
    if len(methods) > 1:
        menus = [dict(buttons=[dict(label=esc(mt), method="restyle",
                                    args=[{"visible": [o == m for o in owners]}])
                               for m, mt in enumerate(methods)],
                      x=0, xanchor="left", y=1.12, yanchor="bottom", direction="down")]
    return base_layout(fig, height=330 * rows + 60, updatemenus=menus,
                       margin=dict(l=60, r=20, t=90, b=50))


def _legend_swatches(fig: go.Figure, colours: dict[str, str], group: str) -> None:
    """Legend entries (no data) naming the colours of an annotation strip."""
    for name, colour in colours.items():
        fig.add_scatter(x=[None], y=[None], mode="markers", name=esc(name),
                        marker=dict(color=colour, size=10, symbol="square"),
                        legendgroup=group, legendgrouptitle_text=group)


def fig_fold_heatmap(matrix: pd.DataFrame, cols: pd.DataFrame, visit_colours: dict[str, str],
                     disease_colours: dict[str, str]) -> go.Figure:
    """Heatmap of per-patient log2 fold changes (parameters × patient-visits), both clustered.

    Two strips on top show each column's visit and disease.
    """
    labels = [f"{esc(p)} · {esc(v)}" for p, v in zip(cols["patient_id"], cols["visit"])]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.004,
                        row_heights=[0.025, 0.025, 0.95])
    for r, (col, colours) in enumerate((("visit", visit_colours), ("disease", disease_colours))):
        present = {k: c for k, c in colours.items() if k in set(cols[col])}
        codes = {k: i for i, k in enumerate(present)}
        fig.add_heatmap(z=[[codes[v] for v in cols[col]]], x=labels, y=[col],
                        text=[[esc(v) for v in cols[col]]], showscale=False,
                        colorscale=_discrete_scale(list(present.values())), zmin=-0.5,
                        zmax=len(present) - 0.5, hovertemplate="%{x}<br>%{text}<extra></extra>",
                        row=r + 1, col=1)
        _legend_swatches(fig, present, col)
    lim = colour_limit(matrix.to_numpy())
    fig.add_heatmap(z=matrix.to_numpy(), x=labels, y=[esc(p) for p in matrix.index],
                    colorscale=style.DIVERGING, zmin=-lim, zmax=lim, zmid=0,
                    colorbar=dict(title="log2 FC", len=0.6, y=0.4, x=1.0),
                    hovertemplate="%{y}<br>%{x}<br>log2 FC %{z:.2f}<extra></extra>",
                    row=3, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False)
    fig.update_yaxes(showgrid=False, tickfont=dict(size=10))
    fig.update_yaxes(autorange="reversed", row=3, col=1)
    h = max(420, 14 * len(matrix) + 160)
    return base_layout(fig, height=h, margin=dict(l=230, r=20, t=30, b=20),
                       legend=dict(x=1.08, y=1, groupclick="toggleitem"))


def fig_pca(pca: pd.DataFrame, visit_colours: dict[str, str], disease_colours: dict[str, str],
            axis_titles: tuple[str, str] = ("PC1", "PC2")) -> go.Figure:
    """PC1 × PC2 of samples, coloured by visit (left) and disease (right)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["by visit", "by disease"],
                        horizontal_spacing=0.08)
    for c, (col, colours) in enumerate((("visit", visit_colours), ("disease", disease_colours))):
        for key, colour in colours.items():
            g = pca[pca[col].astype(str) == key]
            if g.empty:
                continue
            fig.add_scatter(x=g["pc1"], y=g["pc2"], mode="markers", name=esc(key),
                            legendgroup=col, legendgrouptitle_text=col,
                            text=[esc(s) for s in g["sample_id"]],
                            marker=dict(color=colour, size=7, opacity=0.85,
                                        line=dict(width=0.4, color="white")),
                            hovertemplate="%{text}<extra>" + esc(key) + "</extra>",
                            row=1, col=c + 1)
    fig.update_xaxes(title_text=axis_titles[0])
    fig.update_yaxes(title_text=axis_titles[1])
    return base_layout(fig, height=460, legend=dict(groupclick="toggleitem"))


def fig_umap(emb: pd.DataFrame, cluster_names: dict, visit_colours: dict[str, str],
             seed: int = 0) -> tuple[go.Figure, int]:
    """UMAP of cells coloured by metacluster (left) and visit (right); returns (fig, n shown).

    ``emb`` is ``embedding`` with a ``visit`` column; at most :data:`UMAP_POINTS` cells are
    drawn (a subsample fixed by ``seed``).
    """
    if len(emb) > UMAP_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(len(emb), UMAP_POINTS, replace=False))
        emb = emb.iloc[idx]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["metacluster", "visit"],
                        horizontal_spacing=0.06)
    clusters = list(cluster_names)
    ccol = style.category_colours([str(c) for c in clusters])
    for c in clusters:
        g = emb[emb["cluster"] == c]
        fig.add_scatter(x=g["umap_1"], y=g["umap_2"], mode="markers", legendgroup="cluster",
                        legendgrouptitle_text="metacluster", name=esc(cluster_names[c]),
                        marker=dict(size=3, color=ccol[str(c)], opacity=0.7),
                        hovertemplate=esc(cluster_names[c]) + "<extra></extra>", row=1, col=1)
    for v, colour in visit_colours.items():
        g = emb[emb["visit"].astype(str) == v]
        if len(g):
            fig.add_scatter(x=g["umap_1"], y=g["umap_2"], mode="markers", legendgroup="visit",
                            legendgrouptitle_text="visit", name=esc(v),
                            marker=dict(size=3, color=colour, opacity=0.7),
                            hovertemplate=esc(v) + "<extra></extra>", row=1, col=2)
    fig.update_xaxes(title_text="UMAP 1", showgrid=False, zeroline=False)
    fig.update_yaxes(title_text="UMAP 2", showgrid=False, zeroline=False)
    return base_layout(fig, height=560, legend=dict(groupclick="toggleitem")), len(emb)


def fig_marker_heatmap(medians: pd.DataFrame, scaled: pd.DataFrame,
                       labels: Sequence[str]) -> go.Figure:
    """Metacluster × marker heatmap: colour = median rescaled 0–1 per marker, hover = median."""
    fig = go.Figure(go.Heatmap(
        z=scaled.to_numpy(), x=[esc(m) for m in medians.columns], y=[esc(v) for v in labels],
        customdata=medians.to_numpy(), colorscale=style.SEQUENTIAL, zmin=0, zmax=1,
        colorbar=dict(title="scaled<br>median"),
        hovertemplate="%{y}<br>%{x}: median %{customdata:.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-45)
    return base_layout(fig, height=max(380, 22 * len(labels) + 140),
                       margin=dict(l=220, r=20, t=30, b=90))


def fig_da_heatmap(da: pd.DataFrame, visits: Sequence[str]) -> go.Figure:
    """Pooled differential abundance: log2 FC per metacluster × visit, ``*`` where q < FDR."""
    prefix = (da["panel"].astype(str) + ": ") if "panel" in da.columns and \
        da["panel"].nunique() > 1 else ""
    da = da.assign(name=prefix + da["cluster"].astype(str) + " · " + da["label"].astype(str))
    z = da.pivot_table(index="name", columns="visit", values="log2fc", aggfunc="first")
    q = da.pivot_table(index="name", columns="visit", values="q", aggfunc="first")
    rows = da.drop_duplicates("name").sort_values(
        [c for c in ("panel", "cluster") if c in da.columns], kind="stable")["name"]
    z = z.reindex(index=list(rows), columns=[v for v in visits if v in z.columns])
    q = q.reindex(index=z.index, columns=z.columns)
    lim = colour_limit(z.to_numpy())
    star = np.where(q.to_numpy() < FDR, "*", "")
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(), x=[esc(v) for v in z.columns], y=[esc(n) for n in z.index],
        text=star, texttemplate="%{text}", textfont=dict(size=20, color="black"), customdata=q.to_numpy(), colorscale=style.DIVERGING,
        zmin=-lim, zmax=lim, zmid=0, colorbar=dict(title="log2 FC"),
        hovertemplate="%{y} %{x}<br>log2 FC %{z:.2f}<br>q %{customdata:.2g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return base_layout(fig, height=max(360, 22 * len(z) + 120),
                       margin=dict(l=220, r=20, t=30, b=50))
