"""Differential abundance of clusters between each visit and baseline (``stats_da``).

Sample-level models in the diffcyt style, per stratum (``all`` and each disease):

* ``edger_ql`` — negative-binomial GLM, design ``~ patient + visit`` (patient as block,
  every visit at once), offsets log(cells of the sample), common Cox–Reid dispersion and
  edgeR's quasi-likelihood F test per visit coefficient with the QL prior trended on
  abundance (:func:`.nbglm.ql_ftest`; clusters sharing a sample's total makes the spread
  of a cluster depend on its size): the default (calibration in
  benchmarks/bench_stats_calibration.py).
* ``edger_lrt`` — the same GLM with edgeR's tagwise dispersions and likelihood-ratio test
  (``glmFit`` + ``glmLRT``, :func:`.nbglm.lrt`; matches R's edgeR; slightly liberal with
  ~46 patients).
* ``gee_binomial`` — a *population-averaged* binomial model, not a GLMM: a GEE (statsmodels)
  with logit link and binomial variance on the cluster proportions, visit as covariate,
  exchangeable working correlation within patient and bias-reduced (Mancl–DeRouen) sandwich
  standard errors; Wald z tests. (statsmodels' binomial GLMMs are Bayesian on 0/1 outcomes
  and do not take counts of thousands of cells.)

A cluster is tested in a stratum when it has >= ``min_cells`` cells in at least
``min_sample_fraction`` of the stratum's samples; otherwise its rows say why.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from . import nbglm
from ._common import ALL, NOT_ESTIMABLE, OK, StatsOptions

DA_COLUMNS = ["cluster", "label", "visit", "disease", "method", "n", "log2fc", "p", "q",
              "status", "reason"]


def count_matrix(samples: pd.DataFrame, cluster_counts: pd.DataFrame):
    """(clusters table, counts (k, n) int array, sample table aligned with the columns)."""
    cc = cluster_counts.copy()
    cc["sample_id"] = cc["sample_id"].astype(str)
    cc = cc[cc["sample_id"].isin(samples["sample_id"])]
    if "label" not in cc:
        cc["label"] = cc["cluster"].astype(str)
    clusters = (cc[["cluster", "label"]].drop_duplicates("cluster")
                .sort_values("cluster", kind="mergesort").reset_index(drop=True))
    wide = cc.pivot_table(index="cluster", columns="sample_id", values="count",
                          aggfunc="sum", fill_value=0)
    smp = samples[samples["sample_id"].isin(wide.columns)].sort_values("sample_id", kind="mergesort")
    wide = wide.reindex(index=clusters["cluster"], columns=smp["sample_id"], fill_value=0)
    return clusters, wide.to_numpy(dtype=float), smp.reset_index(drop=True)


def _block_design(smp: pd.DataFrame, visits: list[str]):
    """``~ patient + visit``: intercept, patient dummies, visit dummies; {visit: column}."""
    pats = sorted(smp["patient_id"].unique())
    cols = [np.ones(len(smp))] + [(smp["patient_id"] == p).to_numpy(float) for p in pats[1:]]
    idx = {}
    for v in visits[1:]:
        at = (smp["visit"] == v).to_numpy(float)
        if at.any():
            idx[v] = len(cols)
            cols.append(at)
    return np.column_stack(cols), idx


def _row(cl, visit, s, method, n, **kw):
    base = dict(cluster=cl["cluster"], label=cl["label"], visit=visit, disease=s, method=method,
                n=n, log2fc=np.nan, p=np.nan, status=NOT_ESTIMABLE, reason="")
    base.update(kw)
    return base


def _gee(prop: np.ndarray, smp: pd.DataFrame, visits: list[str]):
    """GEE binomial fit of one cluster's proportions: {visit: (log2 OR, p)} or a reason."""
    from statsmodels.genmod import families
    from statsmodels.genmod.cov_struct import Exchangeable
    from statsmodels.genmod.generalized_estimating_equations import GEE

    vis = [v for v in visits[1:] if (smp["visit"] == v).any()]
    X = np.column_stack([np.ones(len(smp))] + [(smp["visit"] == v).to_numpy(float) for v in vis])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = GEE(prop, X, groups=smp["patient_id"].to_numpy(), family=families.Binomial(),
                      cov_struct=Exchangeable()).fit(cov_type="bias_reduced", maxiter=100)
        b, se = np.asarray(res.params), np.asarray(res.bse)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:
        return f"GEE failed: {exc}"
    if not np.all(np.isfinite(se)) or np.any(se <= 0):
        return "GEE standard errors not finite"
    return {v: (b[i + 1] / np.log(2), float(2 * stats.norm.sf(abs(b[i + 1] / se[i + 1]))))
            for i, v in enumerate(vis)}


def differential_abundance(samples: pd.DataFrame, cluster_counts: pd.DataFrame,
                           visits: list[str], strata: list[str],
                           options: StatsOptions) -> pd.DataFrame:
    """``stats_da`` rows (q not yet added) for every cluster × visit × stratum × method."""
    clusters, counts, smp = count_matrix(samples, cluster_counts)
    smp = smp[smp["visit"].isin(visits)]
    counts = counts[:, smp.index.to_numpy()]
    smp = smp.reset_index(drop=True)
    lib = counts.sum(axis=0)
    rows = []
    pooled = None  # dispersions of the pooled fit, reused by too-small strata
    for s in strata:
        m = np.ones(len(smp), bool) if s == ALL else (smp["disease"] == s).to_numpy()
        sub, y, lb = smp[m].reset_index(drop=True), counts[:, m], lib[m]
        n_at = {v: int(sub.loc[sub["visit"] == v, "patient_id"].nunique()) for v in visits[1:]}
        n_base = int(sub.loc[sub["visit"] == visits[0], "patient_id"].nunique())
        frac_low = (y < options.min_cells).mean(axis=1) if y.shape[1] else np.ones(len(clusters))
        tested = frac_low <= 1 - options.min_sample_fraction
        why = {}
        for k in np.flatnonzero(~tested):
            why[k] = (f"cluster has < {options.min_cells} cells in {100 * frac_low[k]:.0f} % of "
                      "samples" if y.shape[1] else "no sample in this stratum")
        X, idx = _block_design(sub, visits) if len(sub) else (None, {})
        res_nb, nb_reason = {}, ""
        n_pat = sub["patient_id"].nunique()
        too_small = n_pat < options.min_patients
        nb_methods = [m for m in ("edger_ql", "edger_lrt") if m in options.da_methods]
        if nb_methods and tested.any() and idx:
            if X.shape[0] <= X.shape[1]:
                nb_reason = "no residual degrees of freedom"
            else:
                reuse = too_small and pooled is not None
                rows_t = np.flatnonzero(tested)
                if "edger_lrt" in nb_methods:
                    phi = None
                    if reuse:
                        phi = np.array([pooled["tagwise"].get(k, pooled["common"]) for k in rows_t])
                    res_nb["edger_lrt"] = nbglm.lrt(y[tested], lb, X, list(idx.values()), dispersion=phi)
                if "edger_ql" in nb_methods:
                    res_nb["edger_ql"] = nbglm.ql_ftest(y[tested], lb, X, list(idx.values()),
                                                        dispersion=pooled["common"] if reuse else None)
                if s == ALL:
                    first = res_nb[nb_methods[0]]
                    pooled = {"common": first["common_dispersion"],
                              "tagwise": dict(zip(rows_t, res_nb["edger_lrt"]["dispersion"]))
                              if "edger_lrt" in res_nb else {}}
        for k, cl in clusters.iterrows():
            gee = None
            if "gee_binomial" in options.da_methods and tested[k]:
                gee = (f"{n_pat} patients < {options.min_patients}: too few patients to test"
                       if too_small else _gee(y[k] / np.maximum(lb, 1), sub, visits))
            for visit in visits[1:]:
                n = n_at[visit]
                small = n < options.min_patients
                small_why = f"{n} patients at {visit} < {options.min_patients}: too few patients to test"
                for method in options.da_methods:
                    if not tested[k]:
                        rows.append(_row(cl, visit, s, method, n, reason=why[k]))
                    elif visit not in idx or n_base == 0:
                        rows.append(_row(cl, visit, s, method, n, reason=(
                            f"no sample at {visit}" if visit not in idx else "no baseline sample")))
                    elif method in ("edger_lrt", "edger_ql"):
                        if method not in res_nb:
                            rows.append(_row(cl, visit, s, method, n, reason=nb_reason or "not fitted"))
                            continue
                        i, j = int(np.flatnonzero(tested).tolist().index(k)), list(idx).index(visit)
                        lfc, p = res_nb[method]["log2fc"][i, j], res_nb[method]["p"][i, j]
                        rows.append(_row(cl, visit, s, method, n, log2fc=lfc,
                                         **({"reason": small_why} if small else {"p": p, "status": OK})))
                    else:
                        if not isinstance(gee, dict) or visit not in gee:
                            rows.append(_row(cl, visit, s, method, n,
                                             reason=gee if isinstance(gee, str) else "GEE not fitted"))
                            continue
                        lfc, p = gee[visit]
                        rows.append(_row(cl, visit, s, method, n, log2fc=lfc,
                                         **({"reason": small_why} if small else {"p": p, "status": OK})))
    return pd.DataFrame(rows, columns=[c for c in DA_COLUMNS if c != "q"])
