"""The generated methods paragraph: what was done, with which versions, parameters and tests.

Everything comes from ``provenance.json`` and the tables (counts, the ``method`` names of the
stats tables); unknown method names are quoted as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .htmltable import fmt_num
from .methods_stats import join_words, statistics_sentences
from .rundata import RunData

#: Versions named in the methods text (all versions are in the provenance section).
KEY_PACKAGES = ("python", "numpy", "scipy", "pandas", "statsmodels", "scikit-learn", "umap-learn",
                "inmoose", "flowutils")


def flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"a.b": v}`` for a nested mapping (lists kept as values)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def versions(prov: Mapping) -> dict[str, str]:
    """``{package: version}`` from provenance (``versions`` or ``dependencies``)."""
    v = prov.get("versions") or prov.get("dependencies") or {}
    out = {str(k): str(x) for k, x in v.items()} if isinstance(v, Mapping) else {}
    for key in ("immunomon_version", "immunomon"):
        if isinstance(prov.get(key), str):
            out.setdefault("immunomon", prov[key])
    return out


def methods_paragraphs(run: RunData) -> list[str]:
    """The methods text, one string per paragraph (plain text, to be escaped by the caller):
    the study and design, then per panel what was actually done (instrument, compensation
    only where a matrix was applied, transform, the QC steps that ran, the gating route),
    clustering, statistics, seed."""
    prov, out = run.provenance, []
    params = prov.get("parameters") if isinstance(prov.get("parameters"), Mapping) else {}
    ver = versions(prov)
    samples, analysed = run.get("samples"), run.analysed_samples
    if samples is not None:
        out.append(_study_sentence(run, samples, analysed, ver))
    panels = params.get("panels") if isinstance(params.get("panels"), Mapping) else {}
    done = prov.get("preprocessing") if isinstance(prov.get("preprocessing"), Mapping) else {}
    for name in sorted(set(panels) | set(done)):
        if (panels.get(name) or {}).get("assay") == "citeseq":
            continue  # CITE-seq panels: one paragraph of their own, below
        text = panel_sentences(run, name, panels.get(name) or {}, done.get(name) or {},
                               several=len(panels) > 1)
        if text:
            out.append(text)
    from .sections_citeseq import methods_text  # CITE-seq: cell QC, ADT normalisation, Leiden

    if text := methods_text(run):
        out.append(text)
    st = statistics_sentences(run)
    seed = prov.get("seed", params.get("seed"))
    if seed is not None:
        st.append(f"Every random step used seed {seed}; the same inputs and seed give "
                  "byte-identical tables.")
    if st:
        out.append(" ".join(st))
    return out


def _study_sentence(run: RunData, samples: pd.DataFrame, analysed, ver: dict) -> str:
    n_pat = samples["patient_id"].nunique()
    diseases = [d for d in samples.get("disease", pd.Series(dtype=str)).fillna("").astype(str).unique() if d]
    visits = run.visits
    text = f"{len(samples)} samples from {n_pat} patients"
    if diseases:
        text += f" ({len(diseases)} disease{'s' * (len(diseases) > 1)})"
    if len(visits) > 1:
        text += f" at {len(visits)} visits ({', '.join(visits)}; baseline {run.baseline})"
    else:
        text += f" at a single visit{f' ({visits[0]})' if visits else ''}"
    batches = samples.get("batch", pd.Series(dtype=str)).fillna("").astype(str)
    if batches.str.len().any():
        text += f", acquired in {batches[batches != ''].nunique()} batches,"
    text += " were analysed"
    text += f" with immunomon {ver['immunomon']}" if "immunomon" in ver else ""
    deps = [f"{'Python' if k == 'python' else k} {ver[k]}" for k in KEY_PACKAGES if k in ver]
    text += f" ({', '.join(deps)})." if deps else "."
    tested = any(t is not None and len(t) for t in (run.get(n) for n in (
        "stats_supervised", "stats_da", "stats_ds")))
    text += (" Design: every later visit was compared with the baseline within patients."
             if len(visits) > 1 else " Design: cross-sectional (one visit; groups are compared)."
             if tested else " Design: cross-sectional, one visit and one group: the samples are "
             "described, nothing is compared.")
    n_out = len(samples) - (len(analysed) if analysed is not None else len(samples))
    text += (" No sample was left out of the statistics." if n_out == 0 else
             f" {n_out} sample{'s were' if n_out > 1 else ' was'} left out of the statistics "
             "(failed quality control or excluded in the study manifest; listed with reasons "
             "in the study overview).")
    if {"events_total", "events_after_qc"} <= set(samples.columns) and analysed is not None \
            and len(analysed):
        ev = analysed["events_after_qc"].astype(float)
        total = analysed["events_total"].astype(float).sum()
        text += (f" Analysed samples held a median of {ev.median():,.0f} events after "
                 f"quality control (range {ev.min():,.0f}–{ev.max():,.0f}; "
                 f"{total:,.0f} events acquired).")
    return text


_KIND = {"mass": "mass cytometry", "spectral": "spectral flow cytometry",
         "flow": "flow cytometry"}


def _transform_text(t: Mapping) -> str:
    kind = str(t.get("type", "arcsinh"))
    if kind == "arcsinh":
        cof = (t.get("params") or {}).get("cofactor", t.get("cofactor", 150))
        own = {v.get("cofactor") for v in (t.get("channels") or {}).values() if "cofactor" in v}
        return (f"arcsinh-transformed (cofactor {fmt_num(cof)}"
                + (f"; per-channel cofactors {', '.join(map(fmt_num, sorted(own)))}" if own else "")
                + ")")
    params = dict(t.get("params") or {})
    channels = t.get("channels") or {}
    shared = ", ".join(f"{k} {fmt_num(v)}" for k, v in params.items())
    if channels:
        keys = sorted({k for v in channels.values() for k in v})
        return (f"{kind}-transformed ({shared}{'; ' if shared else ''}{', '.join(keys)} set per "
                f"channel for {len(channels)} channels)")
    return f"{kind}-transformed ({shared})" if shared else f"{kind}-transformed"


def panel_sentences(run: RunData, name: str, config: Mapping, done: Mapping,
                    several: bool = False) -> str:
    """What was done to one panel's files, from its settings, the per-panel provenance record
    and the qc_steps / gate_thresholds / clusters tables."""
    kind = _KIND.get(str(config.get("instrument") or ""), "cytometry")
    n = int(done.get("samples", 0))
    head = f"Panel ‘{name}’ ({kind}" + (f", {n} samples" if n else "") + "): " if several or n \
        else ""
    parts = []
    comp = int(done.get("compensated", 0))
    if comp:
        parts.append("fluorescence was compensated with each file's spillover matrix"
                     + (f" ({comp} of {n} files; the others hold none)" if comp < n else ""))
    elif config.get("compensation") == "none":
        parts.append("no compensation was applied"
                     + (" (mass cytometry)" if config.get("instrument") == "mass" else ""))
    elif done:
        parts.append("no compensation was applied (the files hold no spillover matrix)")
    if isinstance(config.get("transform"), Mapping):
        parts.append("intensity channels were " + _transform_text(config["transform"]))
    sentences = [head + "; ".join(parts) + "." if parts else ""]
    qc = run.get("qc_steps")
    if qc is not None:
        rows = qc[qc["panel"].astype(str) == name] if "panel" in qc.columns else qc
        status = rows["status"].astype(str) if "status" in rows.columns else pd.Series("ran", index=rows.index)
        ran = [str(x) for x in pd.unique(rows.loc[status == "ran", "step"])]
        skipped = [str(x) for x in pd.unique(rows.loc[status == "skipped", "step"]) if x not in ran]
        removed = rows.loc[status == "ran"].groupby("step", sort=False)["events_removed"].sum()
        if ran:
            sentences.append("Quality-control steps that ran: " + join_words(
                [f"‘{st}’ ({fmt_num(removed.get(st, 0))} events removed)" for st in ran]) + ".")
        else:
            sentences.append("No quality-control step could apply to these files.")
        if skipped:
            why = rows.loc[status == "skipped"].groupby("step", sort=False)["reason"].first()
            sentences.append("Skipped: " + join_words([f"‘{st}’ ({why.get(st, '')})" for st in skipped])
                             + ".")
    sentences.append(_gating_sentence(run, name, config, done))
    cl = run.get("clusters")
    if cl is not None:
        rows = cl[cl["panel"].astype(str) == name] if "panel" in cl.columns else cl
        if len(rows):
            clus = config.get("clustering") if isinstance(config.get("clustering"), Mapping) else {}
            markers = [c for c in rows.columns if c not in ("cluster", "label", "confidence",
                                                            "n_cells", "label_rank", "panel")]
            grid = clus.get("grid") or [10, 10]
            table = clus.get("marker_table")
            sentences.append(
                f"All cells were clustered together with a self-organising map "
                f"({'×'.join(map(str, grid))} grid) and consensus metaclustering into "
                f"{len(rows)} metaclusters on {len(markers)} "
                f"{'chosen' if clus.get('markers') else 'lineage (type)'} markers "
                f"({', '.join(markers)})"
                + (f", {fmt_num(rows['n_cells'].astype(float).sum())} cells" if "n_cells" in rows else "")
                + "; metaclusters were named from "
                + (f"the marker table {table}" if table else "the built-in marker table")
                + "; UMAP maps a subsample of cells.")
    return " ".join(x for x in sentences if x)


def _gating_sentence(run: RunData, name: str, config: Mapping, done: Mapping) -> str:
    gating = config.get("gating") if isinstance(config.get("gating"), Mapping) else None
    route = done.get("gating") or next((k for k in ("template", "wsp", "gatingml")
                                        if gating and gating.get(k)), "none")
    if route == "none":
        return ("No gating was applied: populations come from the clustering only "
                "(differential abundance and state of metaclusters).")
    params = run.get("parameters")
    n_par = ""
    if params is not None:
        rows = params[params["panel"].astype(str) == name] if "panel" in params.columns else params
        n_par = f", giving {rows['parameter'].nunique()} parameters per sample"
    if route == "wsp":
        group = f" (group ‘{gating.get('wsp_group')}’)" if gating.get("wsp_group") else ""
        return (f"Gates were those of the FlowJo workspace {gating.get('wsp')}{group}, each FCS "
                "file matched to its workspace sample by $FIL or file name and gated with that "
                f"sample's own gates, compensation and transforms on every event{n_par}.")
    if route == "gatingml":
        return (f"Gates were those of the Gating-ML 2.0 file {gating.get('gatingml')}, applied to "
                f"every event of each file{n_par}.")
    thr = run.get("gate_thresholds")
    bound = ""
    if thr is not None and "at_bound" in thr.columns:
        rows = thr[thr["panel"].astype(str) == name] if "panel" in thr.columns else thr
        k = int(rows["at_bound"].fillna(False).astype(bool).sum())
        bound = (f"; {k} of {len(rows)} data-driven positions found no density valley and sit "
                 "on their search bound (listed in the study overview)" if k else
                 f"; all {len(rows)} data-driven positions were density valleys")
    return (f"A gating hierarchy (template ‘{gating.get('template')}’) was applied identically "
            f"to every sample, gate positions found on each sample's own data{bound}{n_par}.")
