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


def find(params: Mapping[str, object], *words: str) -> object | None:
    """First flattened parameter whose key contains every one of ``words`` (lower case)."""
    for k, v in params.items():
        if all(w in k.lower() for w in words):
            return v
    return None


def versions(prov: Mapping) -> dict[str, str]:
    """``{package: version}`` from provenance (``versions`` or ``dependencies``)."""
    v = prov.get("versions") or prov.get("dependencies") or {}
    out = {str(k): str(x) for k, x in v.items()} if isinstance(v, Mapping) else {}
    for key in ("immunomon_version", "immunomon"):
        if isinstance(prov.get(key), str):
            out.setdefault("immunomon", prov[key])
    return out


def methods_paragraphs(run: RunData) -> list[str]:
    """The methods text, one string per paragraph (plain text, to be escaped by the caller)."""
    prov, out = run.provenance, []
    params = flatten(prov.get("parameters") or {}) if isinstance(prov.get("parameters"),
                                                                 Mapping) else {}
    ver = versions(prov)
    samples, analysed = run.get("samples"), run.analysed_samples
    if samples is not None:
        n_pat = samples["patient_id"].nunique()
        text = (f"{len(samples)} samples from {n_pat} patients "
                f"({samples['disease'].nunique()} diseases) at {len(run.visits)} visits "
                f"({', '.join(run.visits)}; baseline {run.baseline}) were analysed")
        text += f" with immunomon {ver['immunomon']}" if "immunomon" in ver else ""
        deps = [f"{'Python' if k == 'python' else k} {ver[k]}" for k in KEY_PACKAGES if k in ver]
        text += f" ({', '.join(deps)})." if deps else "."
        n_out = len(samples) - (len(analysed) if analysed is not None else len(samples))
        text += (" No sample was left out of the statistics." if n_out == 0 else
                 f" {n_out} sample{'s were' if n_out > 1 else ' was'} left out of the statistics "
                 "(failed quality control or excluded in the study manifest; listed with reasons "
                 "in the study overview).")
        if {"events_total", "events_after_qc"} <= set(samples.columns) and analysed is not None:
            ev = analysed["events_after_qc"].astype(float)
            total = analysed["events_total"].astype(float).sum()
            text += (f" Analysed samples held a median of {ev.median():,.0f} events after "
                     f"quality control (range {ev.min():,.0f}–{ev.max():,.0f}; "
                     f"{total:,.0f} events acquired).")
        out.append(text)
    pre = []
    qc = run.get("qc_steps")
    if qc is not None:
        pre.append("Quality control removed events in the steps " +
                   join_words([f"‘{s}’" for s in pd.unique(qc["step"].astype(str))]) + ".")
    cof = find(params, "cofactor")
    if cof is not None:
        pre.append(f"Fluorescence was compensated with each file's spillover matrix and "
                   f"arcsinh-transformed (cofactor {cof}).")
    pops = run.get("parameters")
    if pops is not None:
        pre.append(f"A gating hierarchy applied identically to every sample gave "
                   f"{pops['parameter'].nunique()} parameters per sample (population "
                   f"frequencies, counts and marker expression).")
    clusters = run.get("clusters")
    if clusters is not None:
        grid, n_cells = find(params, "grid"), fmt_num(clusters["n_cells"].astype(float).sum()) \
            if "n_cells" in clusters.columns else None
        pre.append(f"All cells were clustered together with a self-organising map"
                   f"{f' ({grid} grid)' if grid is not None else ''} and consensus "
                   f"metaclustering into {len(clusters)} metaclusters"
                   f"{f' ({n_cells} cells)' if n_cells else ''}; UMAP maps a subsample of cells.")
    if pre:
        out.append(" ".join(pre))
    st = statistics_sentences(run)
    seed = prov.get("seed", find(params, "seed"))
    if seed is not None:
        st.append(f"Every random step used seed {seed}; the same inputs and seed give "
                  "byte-identical tables.")
    if st:
        out.append(" ".join(st))
    return out
