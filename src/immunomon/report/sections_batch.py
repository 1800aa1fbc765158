"""Report section "Batch effects": the batch diagnostics and the CytoNorm normalisation.

Draws the ``batch_*`` and ``normalisation`` tables of :mod:`immunomon.stats.batch` (read here
from ``tables/``, since they are this section's alone): warnings, the batch × visit design,
between-batch distances per marker before/after normalisation, the variance shares of batch
and visit, a PCA of the samples by batch, per-batch distributions, the fitted splines and the
extrapolated shares. Publication versions of the distance and spline figures go to
``figures/batch/`` (a sub-folder, so the gallery of top-level figures is unchanged).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from . import interactive as ip
from . import style
from .htmltable import esc, fmt_num, table_html
from .prep import in_visit_order
from .section import Context, Section, para

log = logging.getLogger(__name__)

TABLES = ("batch_design", "batch_warnings", "batch_emd", "batch_variance", "batch_pca",
          "batch_densities", "normalisation", "batch_extrapolation")
STAGE_LABEL = {"transformed": "before normalisation", "normalised": "after normalisation"}
#: The label of the only stage of a panel that is not normalised.
PLAIN = {"transformed": "transformed scale"}
GROUP_LABEL = {"controls": "bridge controls", "holdout": "held-out controls",
               "samples": "trial samples"}


def _read(ctx: Context) -> dict[str, pd.DataFrame]:
    out = {}
    for name in TABLES:
        path = ctx.run.run_dir / "tables" / f"{name}.parquet"
        if path.is_file():
            try:
                out[name] = pd.read_parquet(path)
            except Exception as exc:  # noqa: BLE001 - an unreadable table is left out
                log.warning("cannot read %s: %r", path, exc)
    return out


def _menu(fig: go.Figure, owners: list[str], keys: list[str], title: str) -> None:
    """A drop-down showing the traces of one key at a time (first key shown)."""
    for trace, owner in zip(fig.data, owners):
        trace.visible = owner == keys[0]
    buttons = [dict(label=esc(k), method="update", args=[{"visible": [o == k for o in owners]}])
               for k in keys]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=0, xanchor="left", y=1.18,
                                        yanchor="top", direction="down", showactive=True)])
    fig.add_annotation(text=esc(title), x=0, xref="paper", y=1.19, yref="paper",
                       xanchor="right", yanchor="top", showarrow=False, xshift=-8, yshift=-6)


def _emd_summary(emd: pd.DataFrame, scope: str = "all events") -> pd.DataFrame:
    """Per panel × marker × group: mean between-batch EMD before and after (wide), of one
    ``scope`` (``all events``, or ``within clusters`` of a clustered normalisation; tables
    written before scopes existed hold the first only)."""
    if "scope" in emd:
        emd = emd[emd["scope"] == scope]
    elif scope != "all events":
        emd = emd.iloc[:0]
    mean = emd.groupby(["panel", "marker", "group", "stage"], sort=True)["emd"].mean()
    wide = mean.unstack("stage").reset_index()
    for stage in ("transformed", "normalised"):
        if stage not in wide:
            wide[stage] = np.nan
    wide["change"] = 100 * (wide["normalised"] / wide["transformed"] - 1)
    return wide


def _emd_table(w: pd.DataFrame, normalised: bool) -> str:
    """One panel's rows of :func:`_emd_summary` as a table (before/after/change when
    ``normalised``, else the distance alone)."""
    w["group"] = w["group"].map(GROUP_LABEL).fillna(w["group"])
    shown = ["marker", "group", "transformed"] + (["normalised", "change"] if normalised else [])
    return table_html(w, columns=shown,
                      labels={"transformed": "EMD before" if normalised else "EMD",
                              "normalised": "EMD after", "change": "change (%)"},
                      source="tables/batch_emd.csv")


def fig_emd(wide: pd.DataFrame, panel: str) -> go.Figure:
    w = wide[wide["panel"] == panel]
    fig = go.Figure()
    colours = style.category_colours(list(GROUP_LABEL))
    label = STAGE_LABEL if w["normalised"].notna().any() else PLAIN
    for group in [g for g in GROUP_LABEL if g in set(w["group"])]:
        g = w[w["group"] == group]
        for stage, pattern in (("transformed", ""), ("normalised", "/")):
            if g[stage].notna().any():
                fig.add_bar(x=[esc(m) for m in g["marker"]], y=g[stage],
                            name=esc(f"{GROUP_LABEL[group]}, {label[stage]}"),
                            marker=dict(color=colours[group], pattern_shape=pattern,
                                        opacity=1.0 if stage == "normalised" else 0.55))
    fig.update_layout(barmode="group", yaxis_title="mean EMD between batches (transformed)")
    return ip.base_layout(fig, height=420)


def _labels(stages) -> dict[str, str]:
    """Stage labels: before/after normalisation, or 'transformed scale' alone."""
    return STAGE_LABEL if "normalised" in set(stages) else PLAIN


def fig_variance(var: pd.DataFrame, panel: str) -> go.Figure:
    v = var[var["panel"] == panel]
    label = _labels(v["stage"])
    stages = [s for s in label if s in set(v["stage"])]
    fig = make_subplots(rows=1, cols=len(stages), shared_yaxes=True,
                        subplot_titles=[esc(label[s]) for s in stages])
    colours = {"batch": style.UP, "visit": style.DOWN}
    for i, stage in enumerate(stages):
        for factor in ("batch", "visit"):
            g = v[(v["stage"] == stage) & (v["factor"] == factor)].sort_values("marker")
            fig.add_bar(x=[esc(m) for m in g["marker"]], y=100 * g["share"], row=1, col=i + 1,
                        name=esc(factor), legendgroup=factor, showlegend=i == 0,
                        marker_color=colours[factor])
    fig.update_yaxes(title_text="% of variance of per-sample medians (ω²)", row=1, col=1)
    fig.update_layout(barmode="group")
    return ip.base_layout(fig, height=400)


def fig_pca(pca: pd.DataFrame, panel: str) -> go.Figure:
    p = pca[pca["panel"] == panel]
    batches = sorted(p["batch"].astype(str).unique())
    colours = style.category_colours(batches)
    fig, owners = go.Figure(), []
    label = _labels(p["stage"])
    stages = [s for s in label if s in set(p["stage"])]
    for stage in stages:
        g = p[p["stage"] == stage]
        for b in batches:
            for is_control in (False, True):
                gb = g[(g["batch"].astype(str) == b) & ((g["group"] != "samples") == is_control)]
                if gb.empty:
                    continue
                fig.add_scatter(
                    x=gb["pc1"], y=gb["pc2"], mode="markers",
                    name=esc(f"{b} (control)" if is_control else b),
                    marker=dict(color=colours[b], size=12 if is_control else 7,
                                symbol="diamond" if is_control else "circle",
                                line=dict(width=1, color="#222") if is_control else None),
                    text=[esc(f"{s} · {v}") for s, v in zip(gb["sample_id"], gb["visit"])],
                    hovertemplate="%{text}<extra></extra>")
                owners.append(label[stage])
    first = p[p["stage"] == stages[0]].iloc[0]
    fig.update_layout(xaxis_title=f"PC1 ({100 * first['pc1_share']:.0f} %)",
                      yaxis_title=f"PC2 ({100 * first['pc2_share']:.0f} %)")
    _menu(fig, owners, [label[s] for s in stages], "Medians")
    return ip.base_layout(fig, height=460, margin=dict(t=80))


def fig_densities(dens: pd.DataFrame, panel: str) -> go.Figure:
    d = dens[dens["panel"] == panel]
    groups = [g for g in GROUP_LABEL if g in set(d["group"])]
    label = _labels(d["stage"])
    stages = [s for s in label if s in set(d["stage"])]
    batches = sorted(d["batch"].astype(str).unique())
    colours = style.category_colours(batches)
    fig = make_subplots(rows=len(groups), cols=len(stages), shared_xaxes=True,
                        subplot_titles=[esc(f"{GROUP_LABEL[g]}, {label[s]}")
                                        for g in groups for s in stages],
                        vertical_spacing=0.12, horizontal_spacing=0.06)
    owners = []
    markers = sorted(d["marker"].unique())
    for marker, gm in d.groupby("marker", sort=True):
        for i, group in enumerate(groups):
            for j, stage in enumerate(stages):
                gs = gm[(gm["group"] == group) & (gm["stage"] == stage)]
                for b, gb in gs.groupby("batch", sort=True):
                    fig.add_scatter(x=gb["x"], y=gb["density"], mode="lines", row=i + 1,
                                    col=j + 1, name=esc(str(b)), legendgroup=str(b),
                                    showlegend=i == 0 and j == 0, line=dict(
                                        color=colours[str(b)], width=1.4))
                    owners.append(marker)
    _menu(fig, owners, markers, "Marker")
    return ip.base_layout(fig, height=260 * len(groups) + 80, margin=dict(t=90))


def fig_splines(norm: pd.DataFrame, panel: str) -> go.Figure:
    n = norm[(norm["panel"] == panel) & (norm["cluster"] == 0)]
    batches = sorted(n["batch"].astype(str).unique())
    colours = style.category_colours(batches)
    fig, owners = go.Figure(), []
    markers = sorted(n["marker"].unique())
    for marker, gm in n.groupby("marker", sort=True):
        lo = np.nanmin(gm[["batch_quantile", "goal_quantile"]].to_numpy())
        hi = np.nanmax(gm[["batch_quantile", "goal_quantile"]].to_numpy())
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="identity",
                        line=dict(color="#999", dash="dot"), showlegend=False)
        owners.append(marker)
        for b, gb in gm.groupby("batch", sort=True):
            gb = gb.sort_values("p")
            fig.add_scatter(x=gb["batch_quantile"], y=gb["goal_quantile"], mode="lines+markers",
                            marker=dict(size=3), name=esc(str(b)),
                            line=dict(color=colours[str(b)], width=1.5))
            owners.append(marker)
    fig.update_layout(xaxis_title="batch's control quantile (transformed)",
                      yaxis_title="goal quantile (mean of batches)")
    _menu(fig, owners, markers, "Marker")
    return ip.base_layout(fig, height=460, margin=dict(t=80))


def _publication(ctx: Context, wide: pd.DataFrame, norm: pd.DataFrame | None) -> None:
    """``figures/batch/batch_emd`` and ``batch_splines`` (PNG + PDF), one file per panel."""
    from .figures import save

    out = ctx.run.run_dir / "figures" / "batch"
    for panel, w in wide.groupby("panel", sort=True):
        fig = Figure(figsize=(7.0, 2.8))
        ax = fig.subplots()
        c = w[w["group"] == "controls"] if (w["group"] == "controls").any() else w
        x = np.arange(len(c))
        ax.bar(x - 0.2, c["transformed"], 0.4, label="before", color="#B0B0B0")
        if c["normalised"].notna().any():
            ax.bar(x + 0.2, c["normalised"], 0.4, label="after", color=style.DOWN)
        ax.set_xticks(x, c["marker"], rotation=90)
        ax.set_ylabel("mean EMD between batches")
        ax.set_title(f"{panel}: {GROUP_LABEL[c['group'].iloc[0]]}")
        ax.legend()
        fig.tight_layout()
        save(fig, out, f"batch_emd_{panel}")
        if norm is None or not (norm["panel"] == panel).any():
            continue
        n = norm[(norm["panel"] == panel) & (norm["cluster"] == 0)]
        markers = sorted(n["marker"].unique())
        cols = min(6, len(markers))
        rows = -(-len(markers) // cols)
        fig = Figure(figsize=(1.6 * cols, 1.6 * rows))
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        colours = style.category_colours(sorted(n["batch"].astype(str).unique()))
        for ax, marker in zip(axes, markers):
            for b, gb in n[n["marker"] == marker].groupby("batch", sort=True):
                ax.plot(gb["batch_quantile"], gb["goal_quantile"], lw=0.9,
                        color=colours[str(b)])
            ax.set_title(marker)
            ax.tick_params(labelsize=5)
        for ax in axes[len(markers):]:
            ax.set_axis_off()
        fig.tight_layout()
        save(fig, out, f"batch_splines_{panel}")


def batch_section(ctx: Context) -> Section | None:
    """Batch effects: warnings, design, distances, variance shares, PCA, distributions,
    splines and extrapolation, per panel (None for a study acquired in one batch)."""
    title = "Batch effects"
    t = _read(ctx)
    design = t.get("batch_design")
    if design is None or design.empty:  # one batch (or no batch column): nothing to diagnose
        return None
    body = []
    warn = t.get("batch_warnings")
    items = [f"<li>⚠ {esc(m)}</li>" for m in (warn["message"] if warn is not None else [])]
    var = t.get("batch_variance")
    if var is not None and (var["stage"] == "normalised").any():
        flagged = set() if warn is None else set(
            warn.loc[(warn["kind"] == "batch_over_visit") & (warn["stage"] == "normalised"),
                     "panel"])
        for panel in sorted(set(var.loc[var["stage"] == "normalised", "panel"]) - flagged):
            items.append(f"<li>✓ After normalisation, no marker of panel '{esc(panel)}' has a "
                         f"batch effect on its per-sample medians (F test p < 0.01) larger "
                         f"than its visit effect.</li>")
    if items:
        body.append(f'<ul class="sentences">{"".join(items)}</ul>')
    else:
        body.append(para("No warning: visits are spread over the batches and batch explains "
                         "less of the per-sample medians than visit."))
    norm = t.get("normalisation")
    emd = t.get("batch_emd")
    wide = _emd_summary(emd) if emd is not None and len(emd) else None
    within = _emd_summary(emd, "within clusters") if wide is not None else None
    for panel in sorted(design["panel"].astype(str).unique()):
        if design["panel"].nunique() > 1:
            body.append(f"<h3>Panel {esc(panel)}</h3>")
        d = design[design["panel"] == panel]
        grid = d.pivot_table(index="batch", columns="visit", values="samples", aggfunc="sum",
                             fill_value=0)
        grid = grid[in_visit_order(grid.columns, ctx.run.visits)]  # not alphabetical
        grid["controls"] = d.groupby("batch")["controls"].sum()
        body.append("<h3>Samples per batch and visit</h3>" + table_html(grid.reset_index()))
        if norm is not None and (norm["panel"] == panel).any():
            n = norm[norm["panel"] == panel]
            clusters = int(n["cluster"].max())
            body.append(para(
                f"Normalised with CytoNorm on the bridge controls: {n['batch'].nunique()} "
                f"batches, {n['marker'].nunique()} markers, {n['p'].nunique()} quantiles"
                + (f", {clusters} clusters of the controls" if clusters else "")
                + "; each batch's control quantiles are mapped to their mean over batches by a "
                  "monotone spline (R splinefun monoH.FC) on the transformed scale, before "
                  "QC, gating and clustering."))
        if wide is not None and (wide["panel"] == panel).any():
            w = wide[wide["panel"] == panel].copy()
            normalised = w["normalised"].notna().any()
            body.append("<h3>Distance between batches</h3>" + para(
                "Earth mover's distance between the batches' distributions of each marker "
                "(mean over pairs of batches, transformed units)"
                + (", before and after normalisation." if normalised else "."))
                + ip.plotly_div(fig_emd(wide, panel), ctx.plot_id()))
            body.append(_emd_table(w, normalised))
        if within is not None and (within["panel"] == panel).any():
            body.append("<h4>Within the normalisation's clusters</h4>" + para(
                "The same distance inside each cluster of the controls (mean over clusters, "
                "weighted by their events): the batch effect left within cell populations. "
                "Whole-distribution distances also carry differences in the controls' cluster "
                "proportions between batches, which a per-cluster normalisation does not "
                "remove and should not.")
                + _emd_table(within[within["panel"] == panel].copy(), normalised=True))
        if var is not None and (var["panel"] == panel).any():
            body.append("<h3>Batch versus visit</h3>" + para(
                "Share of the variance of the trial samples' per-sample medians explained by "
                "batch alone and by visit alone (one-way ω²).")
                + ip.plotly_div(fig_variance(var, panel), ctx.plot_id()))
        pca = t.get("batch_pca")
        if pca is not None and (pca["panel"] == panel).any():
            body.append("<h3>Samples by batch</h3>" + para(
                "Principal components of the per-sample marker medians (standardised); "
                "diamonds are controls.") + ip.plotly_div(fig_pca(pca, panel), ctx.plot_id()))
        dens = t.get("batch_densities")
        if dens is not None and (dens["panel"] == panel).any():
            body.append("<h3>Distributions per batch</h3>"
                        + ip.plotly_div(fig_densities(dens, panel), ctx.plot_id()))
        if norm is not None and (norm["panel"] == panel).any():
            body.append("<h3>Normalisation splines</h3>" + para(
                "Each batch's control quantiles (x) against the goal quantiles (y); the "
                "dotted line is no change.") + ip.plotly_div(fig_splines(norm, panel),
                                                              ctx.plot_id()))
        ext = t.get("batch_extrapolation")
        if ext is not None and (ext["panel"] == panel).any():
            e = ext[ext["panel"] == panel]
            worst = (e.groupby(["sample_id", "batch"])["share"].max().reset_index()
                     .sort_values("share", ascending=False))
            body.append("<h3>Extrapolated events</h3>" + para(
                f"Events outside the range of their batch's control events, where the "
                f"spline extrapolates linearly: median {fmt_num(100 * worst['share'].median())} "
                f"%, at most {fmt_num(100 * worst['share'].max())} % of a sample's events in "
                f"one marker.") + table_html(
                    worst.head(10).assign(share=100 * worst["share"].head(10)),
                    labels={"share": "largest share in one marker (%)"},
                    source="tables/batch_extrapolation.csv"))
    if wide is not None:
        try:
            _publication(ctx, wide, norm)
        except Exception as exc:  # noqa: BLE001 - the HTML section does not need them
            log.warning("batch figures failed: %r", exc)
    return Section("batches", title, "".join(body))
