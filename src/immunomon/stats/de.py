"""Pseudobulk RNA differential expression per cluster (CITE-seq) → ``stats_de``.

>>> from immunomon.stats.de import differential_expression
>>> de = differential_expression(samples, pseudobulk, visits=["D1", "D8"])  # doctest: +SKIP

For each cluster, the RNA counts of its cells are summed per sample (``pseudobulk``:
sample_id, cluster, gene, count) and each gene is tested for change from the baseline
visit with the negative-binomial GLM that differential abundance uses
(:func:`immunomon.stats.nbglm.ql_ftest`: ``~ patient + visit``, patient as block, edgeR's
quasi-likelihood F test with the abundance-trended prior; library size = the sample's
pseudobulk total in that cluster × its TMM normalisation factor, as edgeR's
``calcNormFactors``: without it a few strongly changed genes of a small gene panel shift
every other gene's share). Strata: all patients (``disease = all``), each disease
with at least ``min_patients`` patients, and each arm of a multi-arm study (``arm``).
Genes are tested when they have at least ``min_count`` counts in at least half the
cluster's samples; Benjamini–Hochberg q values per cluster × visit × stratum × method.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import nbglm
from ._common import ALL, NOT_ESTIMABLE, OK, StatsOptions
from .multiple import bh

__all__ = ["differential_expression", "tmm_factors", "DE_COLUMNS"]

DE_COLUMNS = ["cluster", "label", "gene", "visit", "disease", "arm", "method", "n", "log2fc",
              "p", "q", "status", "reason"]
METHOD = "edger_ql"


def _design(smp: pd.DataFrame, visits: list[str]) -> tuple[np.ndarray, dict]:
    pats = sorted(smp["patient_id"].unique())
    cols = [np.ones(len(smp))] + [(smp["patient_id"] == p).to_numpy(float) for p in pats[1:]]
    idx = {}
    for v in visits[1:]:
        at = (smp["visit"] == v).to_numpy(float)
        if at.any():
            idx[v] = len(cols)
            cols.append(at)
    return np.column_stack(cols), idx


def tmm_factors(counts: np.ndarray, log_ratio_trim: float = 0.3, sum_trim: float = 0.05
                ) -> np.ndarray:
    """edgeR's TMM normalisation factors (``calcNormFactors``, Robinson & Oshlack 2010) of a
    genes × samples count matrix, scaled to a geometric mean of 1; the reference is the
    sample whose upper-quartile proportion is closest to the mean."""
    from scipy.stats import rankdata

    y = np.asarray(counts, dtype=float)
    lib = y.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f75 = np.quantile(y / lib, 0.75, axis=0)
    ref = int(np.argmin(np.abs(f75 - f75.mean())))
    factors = np.ones(y.shape[1])
    for k in range(y.shape[1]):
        if k == ref or lib[k] == 0:
            continue
        a, b, na, nb = y[:, k], y[:, ref], lib[k], lib[ref]
        ok = (a > 0) & (b > 0)
        if ok.sum() < 3:
            continue
        a, b = a[ok], b[ok]
        log_r = np.log2((a / na) / (b / nb))
        abs_e = (np.log2(a / na) + np.log2(b / nb)) / 2
        var = (na - a) / na / a + (nb - b) / nb / b
        n = len(log_r)
        lo_l, lo_s = np.floor(n * log_ratio_trim) + 1, np.floor(n * sum_trim) + 1
        r_l, r_s = rankdata(log_r), rankdata(abs_e)
        keep = (r_l >= lo_l) & (r_l <= n + 1 - lo_l) & (r_s >= lo_s) & (r_s <= n + 1 - lo_s)
        if keep.any():
            factors[k] = 2 ** (np.sum(log_r[keep] / var[keep]) / np.sum(1 / var[keep]))
    return factors / np.exp(np.mean(np.log(factors)))


def _strata(samples: pd.DataFrame, options: StatsOptions) -> list[tuple[str, str, np.ndarray]]:
    out = [(ALL, ALL, np.ones(len(samples), dtype=bool))]
    if options.per_disease and samples["disease"].nunique() > 1:
        out += [(d, ALL, (samples["disease"] == d).to_numpy())
                for d in sorted(samples["disease"].unique()) if d]
    arms = samples["arm"].fillna("").astype(str) if "arm" in samples else pd.Series(dtype=str)
    if arms.nunique() > 1:
        out += [(ALL, a, (arms == a).to_numpy()) for a in sorted(arms.unique()) if a]
    return out


def differential_expression(samples: pd.DataFrame, pseudobulk: pd.DataFrame,
                            visits: list[str], options: StatsOptions | None = None,
                            cluster_counts: pd.DataFrame | None = None,
                            min_count: int = 5) -> pd.DataFrame:
    """``stats_de`` rows: every cluster × tested gene × visit × stratum.

    Parameters
    ----------
    samples
        sample_id, patient_id, visit, disease[, arm] of the analysed samples.
    pseudobulk
        sample_id, cluster, gene, count (zeros may be left out).
    visits
        Visit names, baseline first.
    cluster_counts
        Its ``label`` column names the clusters (per ``panel`` when both tables have one).
    """
    if "panel" in pseudobulk.columns:
        parts = []
        for panel, pb in pseudobulk.groupby("panel", sort=True):
            cc = cluster_counts
            if cc is not None and "panel" in cc.columns:
                cc = cc[cc["panel"] == panel]
            parts.append(differential_expression(samples, pb.drop(columns="panel"), visits,
                                                 options, cc, min_count).assign(panel=panel))
        return pd.concat(parts, ignore_index=True)
    options = (options or StatsOptions()).resolved()
    labels = {} if cluster_counts is None or "label" not in cluster_counts else \
        dict(zip(cluster_counts["cluster"], cluster_counts["label"]))
    rows = []
    smp_all = samples[samples["visit"].isin(visits)].copy()
    smp_all["disease"] = smp_all["disease"].fillna("").astype(str)
    pb = pseudobulk[pseudobulk["sample_id"].isin(smp_all["sample_id"])]
    for cluster, part in pb.groupby("cluster", sort=True):
        wide = part.pivot_table(index="gene", columns="sample_id", values="count",
                                aggfunc="sum", fill_value=0)
        lib_all = wide.sum(axis=0)
        smp_c = smp_all[smp_all["sample_id"].isin(lib_all.index[lib_all > 0])]
        smp_c = smp_c.sort_values("sample_id", kind="mergesort").reset_index(drop=True)
        label = labels.get(cluster, str(cluster))
        for disease, arm, mask in _strata(smp_c, options):
            sub = smp_c[mask].reset_index(drop=True)
            base = dict(cluster=cluster, label=label, disease=disease, arm=arm, method=METHOD)
            n_pat = sub["patient_id"].nunique()
            if len(visits) < 2:
                rows.append({**base, "gene": "", "visit": "", "n": n_pat,
                             "reason": "a single visit: no change from baseline to test"})
                continue
            y = wide[sub["sample_id"]].to_numpy(dtype=float)
            lib = y.sum(axis=0)
            keep = ((y >= min_count).mean(axis=1) >= 0.5) if y.shape[1] else \
                np.zeros(len(wide), bool)
            genes = wide.index[keep]
            X, idx = _design(sub, visits) if len(sub) else (np.zeros((0, 1)), {})
            why = ""
            if n_pat < options.min_patients:
                why = f"{n_pat} patients < {options.min_patients}: too few patients to test"
            elif not keep.any():
                why = f"no gene with >= {min_count} counts in half the samples"
            elif X.shape[0] <= X.shape[1] or not idx:
                why = "no residual degrees of freedom" if idx else "no sample after baseline"
            if why:
                for v in visits[1:]:
                    rows.append({**base, "gene": "", "visit": v, "n": n_pat, "reason": why})
                continue
            res = nbglm.ql_ftest(y[keep], lib * tmm_factors(y), X, list(idx.values()))
            for j, v in enumerate(idx):
                n_v = int(sub.loc[sub["visit"] == v, "patient_id"].nunique())
                for g, lfc, p in zip(genes, res["log2fc"][:, j], res["p"][:, j]):
                    rows.append({**base, "gene": g, "visit": v, "n": n_v, "log2fc": lfc,
                                 "p": p, "status": OK})
            for v in visits[1:]:
                if v not in idx:
                    rows.append({**base, "gene": "", "visit": v, "n": 0,
                                 "reason": f"no sample at {v}"})
    out = pd.DataFrame(rows, columns=[c for c in DE_COLUMNS if c != "q"])
    out["status"] = out["status"].fillna(NOT_ESTIMABLE)
    out["reason"] = out["reason"].fillna("")
    out["q"] = np.nan
    ok = out["status"] == OK
    for _, grp in out[ok].groupby(["cluster", "visit", "disease", "arm", "method"], sort=False):
        out.loc[grp.index, "q"] = bh(grp["p"].to_numpy())
    return out[DE_COLUMNS].reset_index(drop=True)
