"""Report sections: unsupervised maps, DA/DS, clinical, safety, methods, provenance, figures."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import interactive as ip
from . import interactive_maps as im
from .htmltable import esc, table_html
from .methods import flatten, methods_paragraphs, versions
from .prep import FDR, POOLED, marker_matrix, named_strata, scaled_markers
from .privacy import safe_keywords
from .section import Context, Section, missing_note, para


#: Width (pixels) of the figures shown inline; the full-resolution files are in figures/.
GALLERY_WIDTH = 1400
#: FCS keywords shown per input file (all on the privacy allow-list).
INPUT_KEYWORDS = {"$CYT": "instrument", "$CYTSN": "serial", "$DATE": "acquired", "$TOT": "events"}


def clusters(ctx: Context) -> Section:
    """UMAP by metacluster and visit; metacluster × marker heatmap (per panel)."""
    run, title = ctx.run, "Unsupervised map: UMAP and metaclusters"
    cl, emb = run.get("clusters"), run.get("embedding")
    if cl is None:
        return Section("clusters", title, missing_note(run, "clusters", "embedding"))
    panels = sorted(cl["panel"].astype(str).unique()) if "panel" in cl.columns else [None]
    body = [] if emb is not None else [missing_note(run, "embedding")]
    for panel in panels:
        c = cl if panel is None else cl[cl["panel"].astype(str) == panel]
        if len(panels) > 1:
            body.append(f"<h3>Panel {esc(panel)}</h3>")
        if emb is not None:
            e = emb if panel is None or "panel" not in emb.columns else \
                emb[emb["panel"].astype(str) == panel]
            body.append(_umap(ctx, c, e))
        medians, labels = marker_matrix(c)
        body.append("<h3>Marker expression per metacluster</h3>")
        body.append(para("Median expression of each marker per metacluster (colour: rescaled "
                         "0–1 per marker; hover: median on the transformed scale); rows ordered "
                         "by hierarchical clustering."))
        body.append(ip.plotly_div(im.fig_marker_heatmap(medians, scaled_markers(medians), labels),
                                  ctx.plot_id()))
        body.append(table_html(c, columns=["cluster", "label", "confidence", "n_cells"]))
    return Section("clusters", title, "".join(body))


def _umap(ctx: Context, cl: pd.DataFrame, emb: pd.DataFrame) -> str:
    """The UMAP figure of one panel's embedding cells (with its caption)."""
    names = {c: f"{c} · {lab}" for c, lab in zip(cl["cluster"], cl["label"])}
    s = ctx.run.get("samples")
    visit = dict(zip(s["sample_id"].astype(str), s["visit"].astype(str))) if s is not None else {}
    emb = emb.assign(visit=emb["sample_id"].astype(str).map(visit).fillna("?"))
    fig, shown = im.fig_umap(emb, names, ctx.visit_colours)
    return para(f"UMAP of {shown:,} cells (a fixed subsample of the {len(emb):,} cells of "
                "tables/embedding) coloured by metacluster and by visit.") + \
        ip.plotly_div(fig, ctx.plot_id())


def differential(ctx: Context) -> Section:
    """Differential abundance (heatmap + table) and differential state (table) of metaclusters."""
    run, title, body = ctx.run, "Differential abundance and state of metaclusters", []
    da, ds = (None if t is None else named_strata(t) for t in (run.get("stats_da"), run.get("stats_ds")))
    body.append("<h3>Differential abundance</h3>")
    if da is None:
        body.append(missing_note(run, "stats_da"))
    else:
        pooled = da[(da["disease"].astype(str) == POOLED) & (da["visit"].astype(str) !=
                                                             run.baseline)]
        method = str(pooled["method"].iloc[0]) if len(pooled) else None
        if method is not None:
            body.append(para(f"log2 fold change of each metacluster's abundance versus baseline, "
                             f"all diseases pooled (method {method}); * q < {FDR}."))
            body.append(ip.plotly_div(im.fig_da_heatmap(pooled[pooled["method"].astype(str) ==
                                                               method], run.visits),
                                      ctx.plot_id()))
        body.append(table_html(_by_q(da), columns=["cluster", "label", "visit", "disease",
                                                   "method", "log2fc", "p", "q", "status",
                                                   "reason"], source="tables/stats_da.csv"))
    body.append("<h3>Differential state</h3>")
    if ds is None:
        body.append(missing_note(run, "stats_ds"))
    else:
        body.append(table_html(_by_q(ds), columns=["cluster", "label", "marker", "visit",
                                                   "disease", "method", "effect", "p", "q",
                                                   "status", "reason"],
                               source="tables/stats_ds.csv"))
    return Section("differential", title, "".join(body))


def _by_q(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by q then p (missing last), pooled rows first among ties."""
    return df.assign(_q=df["q"].astype(float).fillna(2.0), _p=df["p"].astype(float).fillna(2.0),
                     _d=df["disease"].astype(str) != POOLED).sort_values(
        ["_q", "_p", "_d"], kind="stable")


def clinical(ctx: Context) -> Section:
    """Clinical scores per patient over visits, and their correlation with immune parameters."""
    run, title, body = ctx.run, "Clinical scores", []
    cc = run.get("clinical_change")
    if cc is None:
        body.append(missing_note(run, "clinical_change"))
    else:
        order = {v: i for i, v in enumerate(run.visits)}
        cc = cc.assign(_v=cc["visit"].astype(str).map(order)).sort_values(
            ["score", "patient_id", "_v"], kind="stable").astype({"visit": str})
        scores = sorted(cc["score"].astype(str).unique())
        body.append(para(f"{len(scores)} clinical scores; one line per patient (pick a score in "
                         "the menu)."))
        body.append(ip.plotly_div(ip.fig_trajectories(
            cc.astype({"score": str}), scores, "score", "value", run.visits,
            ctx.disease_colours, title="score"), ctx.plot_id()))
    cs = run.get("clinical_summary")
    if cs is not None:
        pooled = cs[cs["disease"].astype(str) == POOLED] if "disease" in cs.columns else cs
        order = {v: i for i, v in enumerate(run.visits)}
        pooled = pooled.assign(_v=pooled["visit"].astype(str).map(order)).sort_values(
            ["score", "_v"], kind="stable")
        body.append("<h3>Scores per visit (all diseases)</h3>")
        body.append(table_html(pooled, columns=["score", "visit", "n", "median", "q1", "q3",
                                                "n_change", "median_change", "mean_change"],
                               labels={"q1": "Q1", "q3": "Q3", "n_change": "n (change)"},
                               source="tables/clinical_summary.csv"))
    ci = run.get("clinical_immune")
    body.append("<h3>Clinical score × immune parameter correlations</h3>")
    if ci is None:
        body.append(missing_note(run, "clinical_immune"))
    else:
        body.append(table_html(ci.assign(_p=ci["p"].astype(float).fillna(2.0)).sort_values("_p"),
                               columns=["score", "clinical_measure", "visit", "parameter",
                                        "immune_visit", "n", "rho", "p", "q", "status", "reason"],
                               source="tables/clinical_immune.csv"))
    return Section("clinical", title, "".join(body))


def adverse_events(ctx: Context) -> Section:
    """Adverse events: patients (%) per system organ class, term and grade, all diseases."""
    run, title = ctx.run, "Adverse events"
    ae = run.get("adverse_events_summary")
    if ae is None:
        return Section("safety", title, missing_note(run, "adverse_events_summary"))
    pooled = ae[ae["disease"].astype(str) == POOLED] if "disease" in ae.columns else ae
    body = para("Patients with at least one event (% of patients at risk) per system organ class, "
                "preferred term and grade, all diseases pooled (ANY = all terms); the per-disease "
                "rows are in tables/adverse_events_summary.csv.")
    if "serious" in pooled.columns and not pooled["serious"].astype(str).str.upper().isin(
            ["Y", "YES", "TRUE", "1"]).any():
        body += para("No serious adverse event is recorded.", "headline")
    return Section("safety", title, body + table_html(
        ae_grid(pooled), source="tables/adverse_events_summary.csv", max_rows=1000))


def _is_any(col: pd.Series) -> pd.Series:
    return col.astype(str).str.lower().isin(["any", "all"])


def ae_grid(ae: pd.DataFrame) -> pd.DataFrame:
    """One row per system organ class × term; a column per grade, plus treatment-related and
    serious (any grade) when the table has those rows; cells "patients (x %)"."""
    def cell(r) -> str:
        pct = 100 * float(r["patients"]) / float(r["n_at_risk"]) if r["n_at_risk"] else np.nan
        return f"{int(r['patients'])} ({pct:.0f} %)" if np.isfinite(pct) else str(r["patients"])

    keys = ["aebodsys", "aedecod"]
    flags = [c for c in ("serious", "related") if c in ae.columns and _is_any(ae[c]).any()]
    main = ae
    for c in flags:
        main = main[_is_any(main[c])]
    grid = main.assign(cell=main.apply(cell, axis=1), g=main["grade"].astype(str)).pivot_table(
        index=keys, columns="g", values="cell", aggfunc="first", sort=False)
    grades = sorted(grid.columns, key=lambda g: (g.lower() != "any", g))
    grid = grid[grades].rename(columns=lambda g: "any grade" if g.lower() == "any" else
                               f"grade {g}")
    for c, label in (("related", "related"), ("serious", "serious")):
        if c not in flags:
            continue
        other = [f for f in flags if f != c]
        sub = ae[~_is_any(ae[c]) & _is_any(ae["grade"])]
        for f in other:
            sub = sub[_is_any(sub[f])]
        sub = sub[sub[c].astype(str).str.upper().isin(["Y", "YES", "TRUE", "1"])]
        if len(sub):
            grid[label] = sub.assign(cell=sub.apply(cell, axis=1)).set_index(keys)["cell"]
    out = grid.reset_index().fillna("—")
    order = out["aebodsys"].astype(str).str.upper().ne("ANY").astype(int) * 2 + \
        out["aedecod"].astype(str).str.upper().ne("ANY").astype(int)
    out = out.assign(_o=order).sort_values(["_o", "aebodsys", "aedecod"], kind="stable")
    out.loc[out["_o"] % 2 == 0, "aedecod"] = "(all terms)"
    out.loc[out["_o"] == 0, "aebodsys"] = "Any adverse event"
    out = out.assign(_s=np.where(out["_o"] == 0, "", out["aebodsys"]))
    out = out.sort_values(["_s", "_o"], kind="stable")
    return out.drop(columns=["_o", "_s"]).rename(
        columns={"aebodsys": "system organ class", "aedecod": "term"})


def methods(ctx: Context) -> Section:
    """The generated methods paragraph."""
    paras = methods_paragraphs(ctx.run)
    if not paras:
        return Section("methods", "Methods", missing_note(ctx.run, "samples"))
    html = "".join("<p>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(p)) + "</p>"
                   for p in paras)
    return Section("methods", "Methods", f'<div class="methods">{html}</div>')


def _inputs(prov: Mapping) -> pd.DataFrame:
    """Input files of provenance as a frame (path, sha256, bytes) whatever its layout."""
    raw = prov.get("inputs") or prov.get("input_files") or prov.get("files") or []
    if isinstance(raw, Mapping):
        raw = [dict(path=k, **(v if isinstance(v, Mapping) else {"sha256": v}))
               for k, v in raw.items()]
    rows = [r for r in raw if isinstance(r, Mapping)]
    df = pd.DataFrame(rows)
    if "file" in df.columns and "path" not in df.columns:
        df = df.rename(columns={"file": "path"})
    return df


def _input_keywords(run, inputs: pd.DataFrame) -> list[dict[str, str]]:
    """Allow-listed FCS keywords per input file: from ``inputs[].keywords`` or from
    ``acquisition`` (per sample id, matched to the file by its SHA-256 in ``samples``)."""
    if "keywords" in inputs.columns:
        return [safe_keywords(k if isinstance(k, Mapping) else {}) for k in inputs["keywords"]]
    acq, s = run.provenance.get("acquisition"), run.get("samples")
    if not isinstance(acq, Mapping) or s is None or "sha256" not in s.columns \
            or "sha256" not in inputs.columns:
        return [{} for _ in range(len(inputs))]
    by_sha = {str(h): acq.get(str(sid)) for h, sid in zip(s["sha256"], s["sample_id"])}
    return [safe_keywords(by_sha.get(str(h)) or {}) for h in inputs["sha256"]]


def provenance(ctx: Context) -> Section:
    """Run times, versions, parameters, per-step counts and the input checksums."""
    run, prov, body = ctx.run, ctx.run.provenance, []
    if not prov:
        return Section("provenance", "Provenance", para(
            run.problems.get("provenance", "provenance.json is empty"), "missing"))
    info = {k: prov[k] for k in ("study_id", "command", "started", "finished", "start_time",
                                 "end_time", "host", "seed") if prov.get(k) is not None}
    ver = versions(prov)
    params = flatten(prov["parameters"]) if isinstance(prov.get("parameters"), Mapping) else {}
    kv = [("run", k, v) for k, v in info.items()] + [("version", k, v) for k, v in ver.items()] \
        + [("parameter", k, v) for k, v in params.items()]
    body.append(table_html(pd.DataFrame(kv, columns=["kind", "name", "value"]).astype(str),
                           max_rows=1000))
    steps = prov.get("steps") or prov.get("event_counts")
    if isinstance(steps, list) and steps and all(isinstance(x, Mapping) for x in steps):
        frame = pd.DataFrame(steps)
        first = [c for c in ("step", "wall_s", "main_cpu_s") if c in frame.columns]
        frame = frame[first + [c for c in frame.columns if c not in first]]
        body.append("<h3>Steps</h3>" + table_html(frame.fillna("")))
    inputs = _inputs(prov)
    body.append("<h3>Input files (SHA-256)</h3>")
    if inputs.empty:
        body.append(para("provenance.json lists no input files.", "missing"))
    else:
        cols = [c for c in ("path", "sha256", "bytes", "size") if c in inputs.columns]
        shown = inputs[cols].astype(str)
        kw = _input_keywords(run, inputs)
        for key, label in INPUT_KEYWORDS.items():
            if any(key in k for k in kw):
                shown[label] = [k.get(key, "") for k in kw]
        body.append(table_html(shown, max_rows=5000))
    return Section("provenance", "Provenance", "".join(body))


def _downsized_png(path: Path, width: int = GALLERY_WIDTH) -> bytes:
    """The PNG at ``path``, resized to at most ``width`` pixels wide (keeps the report light)."""
    with Image.open(path) as im:
        if im.width <= width:
            return path.read_bytes()
        small = im.convert("RGBA").resize((width, round(im.height * width / im.width)),
                                          Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def gallery(ctx: Context, figures: list[Path]) -> Section:
    """The publication figures (PNG, also under figures/ with PDFs), inline as base64."""
    items = []
    for f in figures:
        if f.suffix.lower() != ".png" or not f.is_file():
            continue
        data = base64.b64encode(_downsized_png(f)).decode("ascii")
        items.append(f'<figure><img alt="{esc(f.stem)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>figures/{esc(f.name)}</figcaption></figure>")
    if not items:
        return Section("figures", "Figures for publication", para("No figure was drawn.",
                                                                   "missing"))
    body = para("Static figures written to figures/ (PNG and PDF, matplotlib). Click to enlarge.")
    return Section("figures", "Figures for publication",
                   body + f'<div class="gallery">{"".join(items)}</div>')
