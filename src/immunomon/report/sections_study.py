"""Report sections of the supervised analysis: overview, kinetics, statistics (the plan-led
sections — primary analysis, key secondaries, selectivity, headline — are in
:mod:`.sections_plan`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import interactive as ip
from . import interactive_maps as im
from .htmltable import table_html
from .prep import (FDR, POOLED, fold_change_matrix, pc_labels, pooled_stats,
                   sample_values)
from .rundata import PRIMARY_PARAMETER
from .section import Context, Section, missing_note, para

STATS_COLUMNS = ["parameter", "visit", "disease", "arm", "method", "role", "n", "effect",
                 "effect_scale", "ci_low", "ci_high", "p", "q", "status", "reason"]


def overview(ctx: Context) -> Section:
    """Patients per disease, samples per visit, samples left out with the reason, QC steps."""
    run, body = ctx.run, []
    s = run.get("samples")
    if s is None:
        return Section("overview", "Study overview", missing_note(run, "samples"))
    analysed = run.analysed_samples
    body.append(para(f"{s['patient_id'].nunique()} patients, {len(s)} samples, "
                     f"{len(run.visits)} visits; {len(analysed)} samples analysed."))
    body.append('<div class="row">' +
                ip.plotly_div(ip.fig_patients_per_disease(s, ctx.disease_colours), ctx.plot_id())
                + ip.plotly_div(ip.fig_samples_per_visit(s, run.visits), ctx.plot_id()) + "</div>")
    out = s[~s.index.isin(analysed.index)].copy()
    body.append("<h3>Samples left out of the statistics</h3>")
    if out.empty:
        body.append(para("None: every sample passed QC and none was excluded."))
    else:
        qc = run.get("qc_steps")
        reasons = {}
        if qc is not None and "reason" in qc.columns:
            r = qc[qc["reason"].fillna("").astype(str).str.len() > 0]
            reasons = r.groupby("sample_id")["reason"].agg(lambda x: "; ".join(map(str, x)))
        excl = out.get("excluded_reason", pd.Series("", index=out.index)).fillna("").astype(str)
        out["why"] = np.where(excl.str.len() > 0, "excluded: " + excl,
                              "failed QC: " + out["sample_id"].map(reasons).fillna("").astype(str))
        body.append(table_html(out, columns=["sample_id", "patient_id", "disease", "visit",
                                             "file", "events_total", "events_after_qc", "why"],
                               labels={"why": "reason"}))
    qc = run.get("qc_steps")
    body.append("<h3>Quality-control steps</h3>")
    if qc is None:
        body.append(missing_note(run, "qc_steps"))
    else:
        steps = qc.groupby("step", sort=False).agg(
            samples=("sample_id", "nunique"), events_in=("events_in", "sum"),
            events_removed=("events_removed", "sum")).reset_index()
        body.append(table_html(steps, labels={"events_in": "events in (all samples)",
                                              "events_removed": "events removed"}))
    return Section("overview", "Study overview", "".join(body))


def kinetics(ctx: Context) -> Section:
    """Per-patient trajectories of every parameter over visits, coloured by disease."""
    run, title = ctx.run, "Kinetics of every population"
    vals = sample_values(run)
    if vals is None or vals.empty:
        return Section("kinetics", title, missing_note(run, "samples", "parameters"))
    names = sorted(vals["parameter"].unique())
    names = ([PRIMARY_PARAMETER] if PRIMARY_PARAMETER in names else []) + \
        [p for p in names if p != PRIMARY_PARAMETER]
    fig = ip.fig_trajectories(vals, names, "parameter", "value", run.visits, ctx.disease_colours,
                              title="parameter")
    body = para(f"One line per patient over the visits ({len(names)} parameters; pick one in the "
                "menu, click a disease in the legend to hide or isolate it).")
    return Section("kinetics", title, body + ip.plotly_div(fig, ctx.plot_id()))


def volcano(ctx: Context) -> Section:
    """Volcano plots of the pooled supervised statistics per visit, and the full table."""
    run, title = ctx.run, "Supervised statistics: volcano plots per visit"
    st = run.get("stats_supervised")
    if st is None:
        return Section("volcano", title, missing_note(run, "stats_supervised"))
    pooled = pooled_stats(st, run.baseline)
    body = [para(f"Each point is one parameter, all diseases pooled; red/blue: q < {FDR} "
                 "(up/down), grey: not significant. The menu switches the statistical method.")]
    if len(pooled):
        body.append(ip.plotly_div(im.fig_volcano(pooled, run.visits), ctx.plot_id()))
    else:
        body.append(para("No estimable pooled result to draw.", "missing"))
    order = st.assign(_q=st["q"].astype(float).fillna(2.0)).sort_values(["_q", "p"])
    body.append("<h3>Pooled results</h3>")
    body.append(table_html(order[order["disease"].astype(str) == POOLED], columns=STATS_COLUMNS,
                           source="tables/stats_supervised.csv"))
    body.append("<h3>Per-disease results</h3>")
    per = st[st["disease"].astype(str) != POOLED]
    if "status" in per.columns and len(per):
        bad = per[per["status"].astype(str) != "ok"]
        if len(bad):
            top = bad["reason"].astype(str).value_counts().index[0] if "reason" in bad else ""
            body.append(para(f"{len(bad):,} of {len(per):,} per-disease rows are not estimable "
                             f"(most often: {top}).", "note"))
    body.append(table_html(order[order["disease"].astype(str) != POOLED], columns=STATS_COLUMNS,
                           source="tables/stats_supervised.csv"))
    return Section("volcano", title, "".join(body))


def fold_changes(ctx: Context) -> Section:
    """Heatmap of per-patient log2 fold changes of every parameter, clustered."""
    run, title = ctx.run, "Fold-change heatmap"
    m = fold_change_matrix(run)
    if m is None:
        return Section("foldchange", title, missing_note(run, "fold_changes"))
    matrix, cols = m
    fc = run.get("fold_changes")
    how = ("in the clustering order of the statistics (tables/fold_changes parameter_order and "
           "column_order)" if {"parameter_order", "column_order"} <= set(fc.columns) else
           "ordered by hierarchical clustering (average linkage, Euclidean distance)")
    body = para(f"log2 fold change from baseline of {matrix.shape[0]} parameters (rows) in "
                f"{matrix.shape[1]} patient-visits (columns), rows and columns {how}; the "
                "strips give each column's visit and disease.")
    fig = im.fig_fold_heatmap(matrix, cols, ctx.visit_colours, ctx.disease_colours)
    return Section("foldchange", title, body + ip.plotly_div(fig, ctx.plot_id()))


def pca(ctx: Context) -> Section:
    """Samples on the first two principal components of their parameters."""
    run, title = ctx.run, "Principal component analysis"
    p = run.get("pca")
    if p is None:
        return Section("pca", title, missing_note(run, "pca"))
    body = para(f"{len(p)} samples on the first two principal components of their parameters.")
    fig = im.fig_pca(p, ctx.visit_colours, ctx.disease_colours, pc_labels(run))
    return Section("pca", title, body + ip.plotly_div(fig, ctx.plot_id()))
