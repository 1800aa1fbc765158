"""Differential abundance of clusters (``stats_da``): change from baseline within arms, arm
differences of that change, or group differences (cross-sectional), per stratum (``all``
and each disease); designs in :mod:`.contrasts`.

Sample-level models in the diffcyt style:

* ``edger_ql`` (main) — negative-binomial GLM, patient as block, every visit at once,
  offsets log(cells of the sample), common Cox–Reid dispersion and edgeR's
  quasi-likelihood F test per coefficient with the QL prior trended on abundance
  (:func:`.nbglm.ql_ftest`; clusters sharing a sample's total makes the spread of a
  cluster depend on its size). Its 95 % CI of the log2 fold change inverts the F test
  (SE = |log2 FC| / sqrt(F), t on the QL df), so it excludes 0 exactly when p < 0.05.
* ``edger_lrt`` (option) — the same GLM with edgeR's tagwise dispersions and the
  likelihood-ratio test (``glmFit`` + ``glmLRT``); asymptotic chi-square, a little
  liberal, and more so in small studies: not run by default.
* ``gee_binomial`` — a *population-averaged* binomial model, not a GLMM: a GEE
  (statsmodels) with logit link and binomial variance on the cluster proportions weighted
  by the cells of each sample, intercept and arm main effects as block, exchangeable
  working correlation within patient, sandwich standard errors, and t tests and CIs on
  G − p df (G patients, p parameters) for the small sample. (statsmodels' bias-reduced
  sandwich fails with weights and unequal cluster sizes; on 200 simulated null trials of
  46 patients the robust sandwich gives 4.8 % false positives with t on G − p df, 5.6 %
  with z, 3.4 % with the extra factor G / (G − p).) ``log2fc`` is then a log2 odds ratio.

A cluster is tested in a stratum when it has >= ``min_cells`` cells in at least
``min_sample_fraction`` of the stratum's samples; otherwise its rows say why. Rows with
fewer than ``min_patients`` patients (the smaller group for differences) are
``descriptive``: log2 FC and CI, no p.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from . import nbglm
from ._common import ALL, DESCRIPTIVE, NOT_ESTIMABLE, OK, StatsOptions, too_few
from .contrasts import Coefficient, block, coefficient_sets, reported
from .design import Design

DA_COLUMNS = ["cluster", "label", "visit", "disease", "arm", "comparison", "method", "n",
              "n_missing", "log2fc", "ci_low", "ci_high", "df", "p", "q", "status", "reason"]


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


def _row(cl, c: Coefficient, s: str, method: str, **kw) -> dict:
    base = dict(cluster=cl["cluster"], label=cl["label"], visit=c.visit, disease=s, arm=c.arm,
                comparison=c.comparison, method=method, n=c.n, n_missing=c.n_missing,
                log2fc=np.nan, ci_low=np.nan, ci_high=np.nan, df=np.nan, p=np.nan,
                status=NOT_ESTIMABLE, reason="")
    base.update(kw)
    return base


def _estimate(lfc: float, stat: float, df: float, p: float, c: Coefficient,
              options: StatsOptions) -> dict:
    """log2 FC, its CI from the test statistic (F or chi-square on 1 df, df = inf), p and
    status of one row."""
    se = abs(lfc) / np.sqrt(stat) if stat > 0 else np.nan
    half = (stats.t.ppf(0.975, df) if np.isfinite(df) else stats.norm.ppf(0.975)) * se
    out = dict(log2fc=lfc, ci_low=lfc - half, ci_high=lfc + half, df=df)
    if c.smallest < options.min_patients:
        return dict(out, status=DESCRIPTIVE, reason=too_few(c.smallest, options))
    return dict(out, p=p, status=OK)


def _gee(y: np.ndarray, lib: np.ndarray, sub: pd.DataFrame, X: np.ndarray, cols: list[int]):
    """GEE binomial fit of one cluster: {column: (log2 OR, se in log2, df)} or a reason."""
    from statsmodels.genmod import families
    from statsmodels.genmod.cov_struct import Exchangeable
    from statsmodels.genmod.generalized_estimating_equations import GEE

    groups = sub["patient_id"].to_numpy()
    df = len(np.unique(groups)) - X.shape[1]
    if df < 1:
        return "GEE: no residual df (patients <= parameters)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = GEE(y / np.maximum(lib, 1), X, groups=groups, family=families.Binomial(),
                      cov_struct=Exchangeable(), weights=lib).fit(cov_type="robust", maxiter=100)
            # a negative robust variance gives NaN (reported below), not a terminal warning
            b, se = np.asarray(res.params), np.asarray(res.bse)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError) as exc:
        return f"GEE failed: {exc}"
    if not np.all(np.isfinite(se[cols])) or np.any(se[cols] <= 0):
        return "GEE standard errors not finite"
    return {j: (b[j] / np.log(2), se[j] / np.log(2), float(df)) for j in cols}


def differential_abundance(samples: pd.DataFrame, cluster_counts: pd.DataFrame,
                           design: Design, options: StatsOptions) -> pd.DataFrame:
    """``stats_da`` rows (role, q and p_adjusted are added by :mod:`.plan`)."""
    clusters, counts, smp = count_matrix(samples, cluster_counts)
    smp = smp[smp["visit"].isin(design.visits)]
    counts = counts[:, smp.index.to_numpy()]
    smp = smp.reset_index(drop=True)
    lib = counts.sum(axis=0)
    rows = []
    pooled = None  # dispersions of the pooled fit, reused by too-small strata
    for s in design.strata:
        m = np.ones(len(smp), bool) if s == ALL else (smp["disease"] == s).to_numpy()
        sub, y, lb = smp[m].reset_index(drop=True), counts[:, m], lib[m]
        sets = coefficient_sets(sub, design)
        frac_low = (y < options.min_cells).mean(axis=1) if y.shape[1] else np.ones(len(clusters))
        tested = frac_low <= 1 - options.min_sample_fraction
        rows_t = np.flatnonzero(tested)
        n_pat = sub["patient_id"].nunique()
        reuse = n_pat < options.min_patients and pooled is not None
        for coefs in sets:
            X = np.column_stack([block(sub, design)] + [c.indicator(sub, design.group_col)
                                                        for c in coefs])
            k0 = X.shape[1] - len(coefs)
            idx = [k0 + i for i in reported(coefs)]
            res, why_nb = {}, ""
            if X.shape[0] <= X.shape[1] or np.linalg.matrix_rank(X) < X.shape[1]:
                why_nb = "no residual degrees of freedom" if X.shape[0] <= X.shape[1] \
                    else "design not estimable"
            elif rows_t.size:
                if "edger_lrt" in options.da_methods:
                    phi = (np.array([pooled["tagwise"].get(k, pooled["common"]) for k in rows_t])
                           if reuse else None)
                    res["edger_lrt"] = nbglm.lrt(y[tested], lb, X, idx, dispersion=phi)
                if "edger_ql" in options.da_methods:
                    res["edger_ql"] = nbglm.ql_ftest(y[tested], lb, X, idx,
                                                     dispersion=pooled["common"] if reuse else None)
                if s == ALL and pooled is None and res:
                    first = next(iter(res.values()))
                    pooled = {"common": first["common_dispersion"],
                              "tagwise": dict(zip(rows_t, res["edger_lrt"]["dispersion"]))
                              if "edger_lrt" in res else {}}
            Xg = (np.column_stack([block(sub, design, "arms")] +
                                  [c.indicator(sub, design.group_col) for c in coefs]))
            kg = Xg.shape[1] - len(coefs)
            for k, cl in clusters.iterrows():
                gee = None
                if "gee_binomial" in options.da_methods and tested[k]:
                    gee = _gee(y[k], lb, sub, Xg, [kg + i for i in reported(coefs)])
                for i in reported(coefs):
                    c = coefs[i]
                    for method in options.da_methods:
                        if not tested[k]:
                            rows.append(_row(cl, c, s, method, reason=(
                                f"cluster has < {options.min_cells} cells in "
                                f"{100 * frac_low[k]:.0f} % of samples" if y.shape[1]
                                else "no sample in this stratum")))
                        elif method == "gee_binomial":
                            if not isinstance(gee, dict):
                                rows.append(_row(cl, c, s, method, reason=gee or "GEE not fitted"))
                                continue
                            lfc, se, df = gee[kg + i]
                            t = (lfc / se) ** 2
                            rows.append(_row(cl, c, s, method, **_estimate(
                                lfc, t, df, float(2 * stats.t.sf(np.sqrt(t), df)), c, options)))
                        elif method not in res:
                            rows.append(_row(cl, c, s, method, reason=why_nb or "not fitted"))
                        else:
                            r, j = res[method], idx.index(k0 + i)
                            row_k = int(np.flatnonzero(rows_t == k)[0])
                            stat = r["f"][row_k, j] if method == "edger_ql" else r["lr"][row_k, j]
                            df = r["df_total"] if method == "edger_ql" else np.inf
                            rows.append(_row(cl, c, s, method, **_estimate(
                                r["log2fc"][row_k, j], stat, df, r["p"][row_k, j], c, options)))
    return pd.DataFrame(rows, columns=[c for c in DA_COLUMNS if c != "q"])
