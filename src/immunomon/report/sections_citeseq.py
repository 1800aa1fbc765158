"""Report section of CITE-seq panels: cell QC per sample, UMAP by marker, pseudobulk DE
volcano per cluster, and the CITE-seq methods paragraph (UMAP by cluster and visit, DA and
DS are the shared unsupervised sections)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import interactive as ip
from .htmltable import esc, table_html
from .section import Context, Section, para

__all__ = ["citeseq", "methods_text"]

#: Cells drawn in the UMAP-by-marker figure.
MAX_POINTS = 5000
#: Genes labelled per volcano.
N_LABELS = 8


def _citeseq_panels(run) -> list[str]:
    return sorted((run.provenance.get("citeseq") or {}).get("marker_table", {}))


def methods_text(run) -> str:
    """The CITE-seq methods paragraph (plain text) from provenance and the tables: only the
    steps that ran (``qc_steps.status``) and the tests whose tables exist."""
    facts = run.provenance.get("citeseq") or {}
    norm = sorted(set((facts.get("normalisation") or {}).values()))
    panels = (run.provenance.get("parameters") or {}).get("panels", {})
    qc, de = run.get("qc_steps"), run.get("stats_de")
    ran = set()
    if qc is not None and "status" in qc.columns:
        ran = set(qc.loc[qc["status"].astype(str) == "ran", "step"].astype(str))
    parts = []
    for name in _citeseq_panels(run):
        cfg = (panels.get(name) or {}).get("citeseq") or {}
        mad = (cfg.get("qc") or {}).get("mad", 4)
        filters = ["log ADT totals"] + [what for step, what in (
            ("rna_umis", "RNA UMIs"), ("rna_genes", "detected genes")) if step in ran]
        text = (f"CITE-seq panel {name}: Cell Ranger feature-barcode matrices were read with "
                "immunomon (anndata)")
        if "hashtag" in ran:
            text += ("; hashtag-pooled libraries were demultiplexed HTODemux-style (CLR, "
                     "k-means, negative-binomial background, 0.99 quantile)")
        text += (f"; cells were filtered on {', '.join(filters)} within {mad:g} median "
                 "absolute deviations")
        extra = [what for step, what in (("mito", "mitochondrial fraction"),
                                         ("hashtag", "hashtag doublets"),
                                         ("rna_doublets", "scrublet-class RNA doublets"))
                 if step in ran]
        text += (f", {', '.join(extra)}" if extra else "") + " (counts per step in qc_steps). "
        text += ("ADT counts were normalised by " + ("; ".join(norm) if norm else
                                                     "the panel's method")
                 + " (dsb: Mulè, Martins & Tsang 2022; CLR across cells otherwise). ")
        text += (f"Cells were clustered with Leiden (resolution {cfg.get('resolution', 1.0):g}) "
                 f"on the exact {cfg.get('neighbours', 15)}-nearest-neighbour graph (UMAP fuzzy "
                 "weights) of the "
                 + ("ADT type markers" if cfg.get("modality", "adt") == "adt" else
                    "ADT type markers and RNA principal components")
                 + f", at most {cfg.get('graph_cells', 200000):,} cells in the graph (others "
                 "took the majority cluster of their nearest graph cells); clusters were named "
                 f"with the marker table {facts.get('marker_table', {}).get(name, '')}, small "
                 "populations (e.g. Treg) refined cell by cell within their parent's clusters.")
        if de is not None and len(de):
            text += (" Pseudobulk RNA counts per cluster and sample were tested for change "
                     "from baseline with a negative-binomial GLM (patient as block, edgeR-style "
                     "quasi-likelihood F test), Benjamini–Hochberg per cluster × visit.")
        parts.append(text)
    return " ".join(parts)


def _qc_table(run, panel: str) -> str:
    qc, s = run.get("qc_steps"), run.get("samples")
    if qc is None or s is None:
        return ""
    ids = s.loc[s["panel"].astype(str) == panel, "sample_id"].astype(str)
    q = qc[qc["sample_id"].astype(str).isin(ids)]
    if q.empty:
        return ""
    wide = q.pivot_table(index="sample_id", columns="step", values="events_removed",
                         aggfunc="sum", sort=False)
    wide = wide[[c for c in q["step"].drop_duplicates() if c in wide.columns]]
    skipped = q[q["status"] == "skipped"].groupby("step")["sample_id"].nunique()
    wide.columns = [f"{c} (skipped)" if skipped.get(c, 0) == len(wide) else c
                    for c in wide.columns]
    meta = s.set_index(s["sample_id"].astype(str))[["events_total", "events_after_qc",
                                                     "qc_pass"]]
    out = meta.join(wide, how="right").reset_index().rename(
        columns={"index": "sample_id", "events_total": "cells", "events_after_qc": "cells kept"})
    norm = (run.provenance.get("citeseq") or {}).get("normalisation") or {}
    out["normalisation"] = out["sample_id"].map(norm).fillna("")
    return table_html(out)


def _umap_markers(ctx: Context, emb: pd.DataFrame, markers: list[str]) -> str:
    """One UMAP, coloured by a marker chosen in a drop-down."""
    if emb.empty or not markers:
        return ""
    e = emb.iloc[np.linspace(0, len(emb) - 1, min(len(emb), MAX_POINTS)).astype(int)]
    fig = go.Figure()
    for i, m in enumerate(markers):
        v = e[m].astype(float)
        lo, hi = np.nanpercentile(v, [1, 99])
        fig.add_trace(go.Scattergl(
            x=e["umap_1"], y=e["umap_2"], mode="markers", visible=i == 0, name=esc(m),
            marker=dict(size=3, color=v.clip(lo, hi), colorscale="Viridis",
                        colorbar=dict(title=esc(m))),
            hovertemplate=f"{esc(m)} %{{marker.color:.2f}}<extra></extra>"))
    buttons = [dict(label=esc(m), method="update",
                    args=[{"visible": [j == i for j in range(len(markers))]}])
               for i, m in enumerate(markers)]
    ip.base_layout(fig, height=520, xaxis=dict(title="UMAP 1"), yaxis=dict(title="UMAP 2"),
                   updatemenus=[dict(buttons=buttons, x=0, y=1.12, xanchor="left")])
    return para("UMAP of the embedded cells coloured by normalised ADT expression (choose "
                "the marker; colours clipped to the 1st–99th percentile).") + \
        ip.plotly_div(fig, ctx.plot_id())


def _volcanoes(ctx: Context, de: pd.DataFrame, alpha: float = 0.05) -> str:
    """DE volcano per cluster (drop-down), pooled stratum, first post-baseline visit."""
    ok = de[(de["status"] == "ok") & (de["disease"].astype(str) == "all") &
            (de["arm"].astype(str) == "all")]
    if ok.empty:
        reasons = de["reason"].dropna().astype(str).unique()[:3]
        return para("No gene could be tested" + (f" ({'; '.join(reasons)})." if len(reasons)
                                                 else "."))
    visit = ok["visit"].iloc[0]
    ok = ok[ok["visit"] == visit]
    groups = list(ok.groupby(["cluster", "label"], sort=True))
    fig = go.Figure()
    for i, ((cl, label), g) in enumerate(groups):
        y = -np.log10(g["p"].clip(lower=1e-300))
        sig = g["q"] < alpha
        top = g.assign(y=y).nlargest(N_LABELS, "y")
        fig.add_trace(go.Scattergl(
            x=g["log2fc"], y=y, mode="markers", visible=i == 0, name=f"{cl} · {esc(label)}",
            marker=dict(size=6, color=np.where(sig, "#c0392b", "#95a5a6")),
            text=[esc(x) for x in g["gene"]],
            hovertemplate="%{text}<br>log2FC %{x:.2f}<br>-log10 p %{y:.1f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=top["log2fc"], y=top["y"], mode="text", visible=i == 0,
                                 text=[esc(x) for x in top["gene"]], textposition="top center",
                                 showlegend=False, hoverinfo="skip"))
    buttons = [dict(label=f"cluster {cl} · {esc(label)}", method="update",
                    args=[{"visible": [j // 2 == i for j in range(2 * len(groups))]}])
               for i, ((cl, label), _) in enumerate(groups)]
    ip.base_layout(fig, height=480, showlegend=False,
                   xaxis=dict(title=f"log2 fold change {esc(visit)} vs baseline"),
                   yaxis=dict(title="−log10 p"),
                   updatemenus=[dict(buttons=buttons, x=0, y=1.14, xanchor="left")])
    n_sig = ok.groupby(["cluster", "label"])["q"].apply(lambda q: int((q < alpha).sum()))
    summary = n_sig.rename("genes q < 0.05").reset_index()
    return (para(f"Pseudobulk RNA differential expression at {visit} against baseline, all "
                 f"patients (red: q < {alpha:g}); choose the cluster.")
            + ip.plotly_div(fig, ctx.plot_id()) + table_html(summary)
            + "<h4>Top genes</h4>"
            + table_html(ok.nsmallest(15, "p"), columns=["cluster", "label", "gene", "visit",
                                                       "log2fc", "p", "q"]))


def citeseq(ctx: Context) -> Section | None:
    """CITE-seq: QC per sample, UMAP by marker, DE volcano per cluster, methods (None for a
    study without a CITE-seq panel)."""
    run, title = ctx.run, "CITE-seq: cell QC, markers and pseudobulk expression"
    panels = _citeseq_panels(run)
    if not panels:
        return None
    body = []
    emb, de = run.get("embedding"), run.get("stats_de")
    for panel in panels:
        if len(panels) > 1:
            body.append(f"<h3>Panel {esc(panel)}</h3>")
        body.append("<h3>Cell quality control per sample</h3>")
        body.append(para("Cells removed by each step (qc_steps); a step marked skipped did "
                         "not apply (no RNA, not a pooled library)."))
        body.append(_qc_table(run, panel))
        if emb is not None:
            e = emb[emb["panel"].astype(str) == panel] if "panel" in emb.columns else emb
            cl = run.get("clusters")
            markers = [c for c in e.columns if cl is not None and c in cl.columns and
                       c not in ("cluster", "label", "confidence", "label_rank", "n_cells",
                                 "panel")]
            body.append("<h3>UMAP by marker</h3>")
            body.append(_umap_markers(ctx, e, markers))
        body.append("<h3>Differential expression (pseudobulk RNA)</h3>")
        if de is None:
            body.append(para("No RNA (Gene Expression) in the libraries: no pseudobulk "
                             "differential expression."))
        else:
            d = de[de["panel"].astype(str) == panel] if "panel" in de.columns else de
            body.append(_volcanoes(ctx, d))
    body.append("<h3>Methods (CITE-seq)</h3>" + para(methods_text(run)))
    return Section("citeseq", title, "".join(body))
