"""A small, realistic run directory (tables with the architecture's columns) for report tests.

``build_run_dir(root)`` writes ``tables/*.parquet`` and ``provenance.json`` of a synthetic ld-IL2
trial: Treg % of CD4 T doubles at D8 and decays, effector parameters do not move; the statistics
are computed here with scipy so the tables are self-consistent. One patient id is an HTML
injection attempt and the provenance carries identifying FCS keywords, to test escaping and
privacy. (No test lives here; the tests are in ``test_report.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

EVIL = "<script>alert(1)</script>"
IDENTIFYING = {"$SRC": "Jeanne Dupont-Marchal", "$OP": "Operator Zorglub",
               "$SMNO": "SMNO-778899", "COMMENT": "patient born 1961-02-03"}
DISEASES = ("Rheumatoid arthritis", "Systemic lupus erythematosus", "Crohn's disease",
            "Ankylosing spondylitis")
VISITS = (("D1", 1), ("D8", 8), ("D15", 15), ("D29", 29), ("D85", 85), ("D183", 183),
          ("D240", 240))
#: parameter -> (population, measure, baseline median, fold change at D8)
PARAMETERS = {
    "Treg % of CD4 T": ("Treg", "% of parent", 4.5, 2.0),
    "Treg memory % of Treg": ("Treg memory", "% of parent", 55.0, 1.25),
    "Treg Ki67+ %": ("Treg", "marker+ %", 8.0, 2.5),
    "CD25 median in Treg": ("Treg", "median", 3.2, 1.3),
    "CD4 Tconv % of CD4 T": ("CD4 Tconv", "% of parent", 95.0, 0.95),
    "CD8 T % of T cells": ("CD8 T", "% of parent", 30.0, 1.0),
    "CD4 Tconv Ki67+ %": ("CD4 Tconv", "marker+ %", 3.0, 1.0),
    "NK CD56bright % of NK": ("NK CD56bright", "% of parent", 6.0, 1.6),
    "B cells % of Lymphocytes": ("B cells", "% of parent", 10.0, 1.0),
}
DECAY = {"D1": 0.0, "D8": 1.0, "D15": 0.6, "D29": 0.5, "D85": 0.5, "D183": 0.45, "D240": 0.05}
CLUSTER_LABELS = ("Treg", "CD4 Tconv", "CD8 T", "NK", "B cells", "Monocytes")
MARKERS = ("CD3", "CD4", "CD8", "CD25", "CD127", "FOXP3", "CD56", "CD19", "CD14")


def _bh(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        from statsmodels.stats.multitest import multipletests
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


def _samples(rng, n_patients, visits):
    rows = []
    for i in range(n_patients):
        pid = EVIL if i == 1 else f"IL2-{i + 1:03d}"
        disease = DISEASES[i % len(DISEASES)]
        for visit, day in visits:
            sid = f"{pid}_{visit}"
            total = int(rng.integers(1800, 2200))
            after = int(total * rng.uniform(0.85, 0.95))
            rows.append(dict(sample_id=sid, patient_id=pid, disease=disease, visit=visit, day=day,
                             panel="treg", batch=f"B{1 + (i % 2)}", file=f"fcs/{sid}.fcs",
                             sha256=f"{rng.integers(0, 2**63):016x}" * 4, events_total=total,
                             events_after_qc=after, qc_pass=True, excluded_reason=""))
    s = pd.DataFrame(rows)
    nv = len(visits)
    s.loc[2 * nv + min(2, nv - 1), "qc_pass"] = False          # one QC failure (patient 3)
    s.loc[3 * nv + nv - 1, "excluded_reason"] = "haemolysed sample (lab note)"  # patient 4
    return s


def _qc_steps(s):
    rows = []
    for r in s.itertuples():
        n = r.events_total
        for step, frac in (("time_anomaly", 0.01), ("debris", 0.05), ("doublets", 0.03),
                           ("dead", 0.02)):
            removed = int(n * frac)
            reason = "" if r.qc_pass or step != "time_anomaly" else "flow interruption >10 % of events"
            rows.append(dict(sample_id=r.sample_id, step=step, events_in=n, events_removed=removed,
                             reason=reason))
            n -= removed
    return pd.DataFrame(rows)


def _parameters(rng, s):
    rows, base = [], {}
    for r in s.itertuples():
        for par, (pop, measure, median, fc) in PARAMETERS.items():
            key = (r.patient_id, par)
            if key not in base:
                base[key] = median * np.exp(rng.normal(0, 0.25))
            patient_fc = fc ** (DECAY[r.visit] * rng.uniform(0.7, 1.3))
            value = base[key] * patient_fc * np.exp(rng.normal(0, 0.08))
            rows.append(dict(sample_id=r.sample_id, parameter=par, population=pop,
                             measure=measure, value=float(value)))
    return pd.DataFrame(rows)


def _stats(s, params, baseline):
    analysed = s[s["qc_pass"] & (s["excluded_reason"] == "")]
    v = params.merge(analysed[["sample_id", "patient_id", "disease", "visit"]], on="sample_id")
    wide = v.pivot_table(index=["patient_id", "disease", "parameter"], columns="visit",
                         values="value")
    fc_rows, st_rows, resp_rows = [], [], []
    for visit in [c for c in wide.columns if c != baseline]:
        l2 = np.log2(wide[visit] / wide[baseline]).dropna()
        for (pid, disease, par), x in l2.items():
            fc_rows.append(dict(patient_id=pid, disease=disease, visit=visit, parameter=par,
                                log2fc=float(x)))
        frame = l2.reset_index(name="l2")
        for disease in ("all", *sorted(frame["disease"].unique())):
            g = frame if disease == "all" else frame[frame["disease"] == disease]
            for par, gp in g.groupby("parameter"):
                x = gp["l2"].to_numpy()
                resp_rows.append(dict(parameter=par, visit=visit, disease=disease, n=len(x),
                                      n_up=int((x > 0).sum()), fraction_up=float((x > 0).mean())))
                for method in ("wilcoxon", "paired_t"):
                    row = dict(parameter=par, visit=visit, disease=disease, method=method,
                               n=len(x), effect=float(2 ** np.mean(x)), effect_scale="fold change")
                    if len(x) < 3:
                        row.update(ci_low=np.nan, ci_high=np.nan, p=np.nan, status="not estimable",
                                   reason=f"{len(x)} paired patients (< 3)")
                    else:
                        p = (stats.wilcoxon(x).pvalue if method == "wilcoxon"
                             else stats.ttest_1samp(x, 0).pvalue)
                        half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
                        row.update(ci_low=2 ** (np.mean(x) - half), ci_high=2 ** (np.mean(x) + half),
                                   p=float(p), status="ok", reason="")
                    st_rows.append(row)
    st = pd.DataFrame(st_rows)
    st["q"] = np.nan
    for _, idx in st.groupby(["method", "visit", "disease"]).groups.items():
        st.loc[idx, "q"] = _bh(st.loc[idx, "p"].to_numpy())
    return pd.DataFrame(fc_rows), st, pd.DataFrame(resp_rows)


def _selectivity(st):
    rows = []
    treg = st["parameter"].str.startswith("Treg")
    eff = st["parameter"].isin(["CD4 Tconv Ki67+ %", "CD8 T % of T cells"])
    for (visit, disease), g in st[st["method"] == "wilcoxon"].groupby(["visit", "disease"]):
        t = bool((g.loc[treg[g.index], "q"] < 0.05).any())
        e = bool((g.loc[eff[g.index], "q"] < 0.05).any())
        summary = (f"At {visit} ({disease}), Treg parameters "
                   f"{'changed' if t else 'did not change'} and effector parameters "
                   f"{'changed' if e else 'did not change'}.")
        rows.append(dict(visit=visit, disease=disease, treg_changed=t, effector_changed=e,
                         summary=summary))
    return pd.DataFrame(rows)


def _clusters(rng, s, n_cells):
    centers = rng.normal(0, 6, size=(len(CLUSTER_LABELS), 2))
    med = rng.uniform(0, 4, size=(len(CLUSTER_LABELS), len(MARKERS)))
    clusters = pd.DataFrame(med, columns=list(MARKERS))
    clusters.insert(0, "cluster", np.arange(1, len(CLUSTER_LABELS) + 1))
    clusters.insert(1, "label", list(CLUSTER_LABELS))
    clusters.insert(2, "confidence", rng.uniform(0.6, 1.0, len(CLUSTER_LABELS)))
    sid = rng.choice(s["sample_id"].to_numpy(), n_cells)
    cl = rng.integers(0, len(CLUSTER_LABELS), n_cells)
    emb = pd.DataFrame(dict(sample_id=sid, cluster=cl + 1,
                            umap_1=centers[cl, 0] + rng.normal(0, 1, n_cells),
                            umap_2=centers[cl, 1] + rng.normal(0, 1, n_cells)))
    clusters.insert(3, "n_cells", np.bincount(cl, minlength=len(CLUSTER_LABELS)))
    counts = emb.groupby(["sample_id", "cluster"]).size().rename("count").reset_index()
    counts["label"] = counts["cluster"].map(dict(zip(clusters["cluster"], clusters["label"])))
    return clusters, counts, emb


def _da_ds(rng, clusters, visits, baseline):
    da, ds = [], []
    for visit in visits:
        if visit == baseline:
            continue
        for c, label in zip(clusters["cluster"], clusters["label"]):
            for disease in ("all", DISEASES[0]):
                eff = (1.0 * DECAY[visit] if label == "Treg" else 0.0) + rng.normal(0, 0.1)
                p = float(np.clip(np.exp(-abs(eff) * 12) * rng.uniform(0.5, 1), 1e-12, 1))
                da.append(dict(cluster=c, label=label, visit=visit, disease=disease,
                               method="edgeR_glm", log2fc=eff, p=p, status="ok", reason=""))
                for m in MARKERS[:4]:
                    ds.append(dict(cluster=c, label=label, marker=m, visit=visit,
                                   disease=disease, method="lmm", effect=eff / 2,
                                   p=min(1.0, p * 3), status="ok", reason=""))
    da, ds = pd.DataFrame(da), pd.DataFrame(ds)
    for t in (da, ds):
        t["q"] = np.nan
        for _, idx in t.groupby(["visit", "disease", "method"]).groups.items():
            t.loc[idx, "q"] = _bh(t.loc[idx, "p"].to_numpy())
    return da, ds


def _clinical(rng, s):
    rows = []
    pats = s[["patient_id", "disease"]].drop_duplicates()
    for r in pats.itertuples():
        base = rng.uniform(3, 6)
        for visit in ("D1", "D85", "D183", "D240"):
            if visit not in set(s["visit"]):
                continue
            value = base * (1 - 0.2 * (visit != "D1") * rng.uniform(0, 1))
            rows.append(dict(patient_id=r.patient_id, disease=r.disease, score="CGI-S",
                             visit=visit, value=value, change=value - base))
    return pd.DataFrame(rows)


def _provenance(s, seed):
    keywords = {"$CYT": "BD LSRFortessa", "$DATE": "12-MAR-2024", "$TOT": "2000", **IDENTIFYING}
    return {
        "study_id": "LD-IL2-BASKET",
        "seed": seed,
        "started": "2026-01-01T10:00:00+00:00", "finished": "2026-01-01T10:04:00+00:00",
        "versions": {"immunomon": "0.1.0", "python": "3.11.2", "numpy": "1.26.4",
                     "scipy": "1.11.4", "statsmodels": "0.14.1"},
        "parameters": {"baseline": "D1", "workers": 2,
                       "panels": {"treg": {"transform": {"type": "arcsinh", "cofactor": 150},
                                           "clustering": {"grid": [10, 10],
                                                          "metaclusters": 20}}}},
        "inputs": [{"path": f, "sha256": h, "bytes": 123456}
                   for f, h in zip(s["file"], s["sha256"])]
        + [{"path": f, "sha256": "0" * 64, "bytes": 2048} for f in ("clinical.csv", "adverse_events.csv")],
        "acquisition": {sid: dict(keywords) for sid in s["sample_id"]},
        "steps": [{"step": "qc", "samples": len(s), "events": int(s["events_total"].sum())}],
    }


def build_run_dir(root: Path, *, n_patients: int = 8, n_visits: int = 4, n_cells: int = 3000,
                  seed: int = 7, skip: tuple[str, ...] = ()) -> Path:
    """Write a run directory under ``root``; tables named in ``skip`` are left out."""
    rng = np.random.default_rng(seed)
    visits = VISITS[:n_visits]
    s = _samples(rng, n_patients, visits)
    params = _parameters(rng, s)
    fc, st, resp = _stats(s, params, "D1")
    clusters, counts, emb = _clusters(rng, s, n_cells)
    da, ds = _da_ds(rng, clusters, [v for v, _ in visits], "D1")
    wide = params.pivot_table(index="sample_id", columns="parameter", values="value")
    z = np.log(wide.to_numpy())
    z = (z - z.mean(0)) / z.std(0)
    u, sv, _ = np.linalg.svd(z, full_matrices=False)
    pcs = u[:, :3] * sv[:3]
    pca = pd.DataFrame(pcs, columns=["pc1", "pc2", "pc3"]).assign(sample_id=wide.index)
    pca = pca.merge(s[["sample_id", "visit", "disease"]], on="sample_id")
    clin = _clinical(rng, s)
    ci = pd.DataFrame([dict(score="CGI-S", parameter=p, visit="D85", n=n_patients,
                            rho=float(rng.uniform(-0.5, 0.5)), p=float(rng.uniform(0, 1)))
                       for p in PARAMETERS])
    soc = "General disorders and administration site conditions"
    ae = pd.DataFrame(
        [dict(aebodsys=b, aedecod=t, grade=g, serious="any", related=r, disease="all",
              patients=n, events=2 * n, n_at_risk=n_patients)
         for b, t, g, r, n in (
             ("ANY", "ANY", "any", "any", n_patients - 1), ("ANY", "ANY", "1", "any", n_patients - 2),
             ("ANY", "ANY", "2", "any", 1), ("ANY", "ANY", "any", "Y", n_patients - 2),
             (soc, "ANY", "any", "any", n_patients - 2), (soc, "ANY", "1", "any", n_patients - 2),
             (soc, "Injection site reaction", "any", "any", n_patients - 2),
             (soc, "Injection site reaction", "1", "any", n_patients - 2),
             (soc, "Injection site reaction", "any", "Y", n_patients - 2),
             ("Nervous system disorders", "Headache", "2", "any", 1),
             ("Nervous system disorders", "Headache", "any", "any", 1))])
    pops = params[params["measure"] == "% of parent"].rename(columns={"value": "freq_parent"})
    pops = pops.assign(path="/" + pops["population"], parent="", count=100,
                       freq_total=pops["freq_parent"] / 100, abs_per_ul=np.nan)
    tables = dict(samples=s, qc_steps=_qc_steps(s), populations=pops, parameters=params,
                  clusters=clusters, cluster_counts=counts, embedding=emb, stats_supervised=st,
                  responders=resp, selectivity=_selectivity(st), fold_changes=fc, pca=pca,
                  stats_da=da, stats_ds=ds, clinical_change=clin, clinical_immune=ci,
                  adverse_events_summary=ae)
    run = Path(root)
    (run / "tables").mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if name not in skip:
            df.to_parquet(run / "tables" / f"{name}.parquet", index=False)
    (run / "provenance.json").write_text(json.dumps(_provenance(s, seed), indent=2))
    return run
