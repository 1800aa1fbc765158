"""Report sections of the supervised analysis: overview, kinetics, statistics (the plan-led
sections — primary analysis, key secondaries, selectivity, headline — are in
:mod:`.sections_plan`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import interactive as ip
from . import interactive_maps as im
from .htmltable import table_html
from .prep import (FDR, POOLED, fold_change_matrix, in_visit_order, named_strata, pc_labels,
                   pooled_stats, sample_values)
from .rundata import PRIMARY_PARAMETER
from .section import Context, Section, missing_note, para

STATS_COLUMNS = ["parameter", "visit", "disease", "arm", "method", "role", "n", "effect",
                 "effect_scale", "ci_low", "ci_high", "p", "q", "status", "reason"]


def overview(ctx: Context) -> Section:
    """Patients per disease, samples per visit and per acquisition batch, samples left out with
    the reason, the QC steps (ran or skipped, and why) and the gates found at a search bound."""
    run, body = ctx.run, []
    s = run.get("samples")
    if s is None:
        return Section("overview", "Study overview", missing_note(run, "samples"))
    analysed = run.analysed_samples
    batches = _batches(s, run.visits)
    body.append(para(f"{s['patient_id'].nunique()} patients, {len(s)} samples, "
                     f"{len(run.visits)} visit{'s' * (len(run.visits) != 1)}"
                     + (f", {len(batches)} acquisition batches" if len(batches) else "")
                     + f"; {len(analysed)} samples analysed."))
    figs = [ip.fig_samples_per_visit(s, run.visits)]
    if run.diseases and any(run.diseases):
        figs.insert(0, ip.fig_patients_per_disease(s, ctx.disease_colours))
    body.append('<div class="row">' + "".join(ip.plotly_div(f, ctx.plot_id()) for f in figs)
                + "</div>")
    if len(batches):
        body.append("<h3>Samples per acquisition batch</h3>")
        body.append(table_html(batches, labels={"samples": "samples", "analysed": "analysed",
                                                "visits": "visits", "panels": "panels"}))
    out = s[~s.index.isin(analysed.index)].copy()
    body.append("<h3>Samples left out of the statistics</h3>")
    if out.empty:
        body.append(para("None: every sample passed QC and none was excluded."))
    else:
        qc = run.get("qc_steps")
        reasons = {}
        if qc is not None and "reason" in qc.columns:
            ran = qc["status"].astype(str) == "ran" if "status" in qc.columns else True
            r = qc[ran & (qc["events_removed"] > 0)] if "events_removed" in qc.columns else qc[ran]
            reasons = r.groupby("sample_id")["reason"].agg(lambda x: "; ".join(map(str, x)))
        excl = out.get("excluded_reason", pd.Series("", index=out.index)).fillna("").astype(str)
        out["why"] = np.where(excl.str.len() > 0, "excluded: " + excl,
                              "failed QC: " + out["sample_id"].map(reasons).fillna("").astype(str))
        body.append(table_html(out, columns=[c for c in ("sample_id", "patient_id", "disease",
                                                         "visit", "batch", "file", "events_total",
                                                         "events_after_qc", "why")
                                             if c in out.columns],
                               labels={"why": "reason"}))
    body.append("<h3>Quality-control steps</h3>")
    qc = run.get("qc_steps")
    if qc is None:
        body.append(missing_note(run, "qc_steps"))
    else:
        body.append(table_html(qc_summary(qc), labels={
            "events_in": "events in (all samples)", "events_removed": "events removed",
            "ran": "ran in (samples)", "skipped": "skipped in (samples)"}))
    bound = gates_at_bound(run.get("gate_thresholds"))
    if bound is not None:
        body.append("<h3>Gates at their search bound</h3>")
        if bound.empty:
            body.append(para("None: every data-driven gate position found a density valley "
                             "between two populations."))
        else:
            body.append(para(f"{int(bound['positions'].sum())} data-driven gate position(s) of "
                             f"{len(bound)} gate bound(s) found no valley between two populations "
                             "and sit on their search bound: look at these samples' gates (the "
                             "population may be absent, or the bound wrong).", "note"))
            body.append(table_html(bound, labels={"value": "position", "samples": "samples"}))
    return Section("overview", "Study overview", "".join(body))


def _batches(s: pd.DataFrame, visits: list[str]) -> pd.DataFrame:
    """One row per acquisition batch: samples, analysed samples, visits (in study order),
    panels (empty when ``samples`` has no batch)."""
    if "batch" not in s.columns or not s["batch"].fillna("").astype(str).str.len().any():
        return pd.DataFrame()
    s = s.assign(batch=s["batch"].fillna("").astype(str).replace("", "(none)"))
    ok = pd.Series(True, index=s.index)
    if "qc_pass" in s.columns:
        ok &= s["qc_pass"].fillna(False).astype(bool)
    if "excluded_reason" in s.columns:
        ok &= s["excluded_reason"].fillna("").astype(str) == ""
    g = s.assign(_ok=ok).groupby("batch", sort=True)
    out = pd.DataFrame({"samples": g.size(), "analysed": g["_ok"].sum().astype(int),
                        "visits": g["visit"].agg(lambda v: ", ".join(in_visit_order(v, visits)))})
    if "panel" in s.columns and s["panel"].nunique() > 1:
        out["panels"] = g["panel"].agg(lambda v: ", ".join(map(str, pd.unique(v))))
    return out.reset_index()


def qc_summary(qc: pd.DataFrame) -> pd.DataFrame:
    """One row per QC step (and panel): samples where it ran and where it was skipped, events
    in and removed, and why it was skipped."""
    keys = ["panel", "step"] if "panel" in qc.columns and qc["panel"].nunique() > 1 else ["step"]
    status = qc["status"] if "status" in qc.columns else pd.Series("ran", index=qc.index)
    qc = qc.assign(_ran=status.astype(str) == "ran", _skip=status.astype(str) == "skipped")
    g = qc.groupby(keys, sort=False)
    out = pd.DataFrame({"ran": g["_ran"].sum().astype(int), "skipped": g["_skip"].sum().astype(int),
                        "events_in": g["events_in"].sum(), "events_removed": g["events_removed"].sum()})
    why = qc[qc["_skip"]].groupby(keys, sort=False)["reason"].agg(
        lambda r: "; ".join(map(str, pd.unique(r))))
    out["why skipped"] = why.reindex(out.index).fillna("")
    return out.reset_index()


def _first_ids(ids: pd.Series, n: int = 12) -> str:
    unique = [str(x) for x in pd.unique(ids)]
    return ", ".join(unique[:n]) + (f" and {len(unique) - n} more" if len(unique) > n else "")


def gates_at_bound(thresholds: pd.DataFrame | None) -> pd.DataFrame | None:
    """Data-driven gate positions found on their search bound: one row per population ×
    marker × bound, with the samples (None without a ``gate_thresholds`` table)."""
    if thresholds is None or "at_bound" not in thresholds.columns:
        return None
    t = thresholds[thresholds["at_bound"].fillna(False).astype(bool)]
    if t.empty:
        return t.iloc[:0][["population", "dimension", "bound"]]
    keys = [k for k in ("panel", "population", "dimension", "bound") if k in t.columns]
    g = t.groupby(keys, sort=False)
    out = pd.DataFrame({"n": g.size(), "samples": g["sample_id"].agg(_first_ids)})
    return out.reset_index().rename(columns={"dimension": "marker", "n": "positions"})


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
    st = named_strata(st)
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
