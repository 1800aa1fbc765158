"""Differential state: per cluster × marker, median expression at each visit vs baseline
(``stats_ds``), limma style.

Method ``limma``: for every cluster × marker, ordinary least squares of the sample medians
(transformed units, e.g. arcsinh) on ``~ patient + visit`` (patient as block, every visit at
once, within-patient contrasts), then limma's empirical Bayes moderation (Smyth 2004): the
residual variances of all cluster × marker features of the stratum are shrunk towards a
common prior fitted by moments to a scaled F distribution (``fitFDist``), and each visit
coefficient gets a moderated t test on ``d + d0`` degrees of freedom. ``effect`` is the
difference of medians (visit − baseline, transformed units) with its moderated 95 % CI.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special, stats

from ._common import ALL, NOT_ESTIMABLE, OK, StatsOptions

DS_COLUMNS = ["cluster", "label", "marker", "visit", "disease", "method", "n", "effect",
              "ci_low", "ci_high", "p", "q", "status", "reason"]


def _trigamma_inverse(x: float) -> float:
    """Solve trigamma(y) = x (limma's Newton iteration)."""
    if x > 1e7:
        return 1 / np.sqrt(x)
    if x < 1e-6:
        return 1 / x
    y = 0.5 + 1 / x
    for _ in range(50):
        tri = special.polygamma(1, y)
        dif = tri * (1 - tri / x) / special.polygamma(2, y)
        y += dif
        if -dif / y < 1e-8:
            break
    return float(y)


def fit_f_dist(s2: np.ndarray, df: np.ndarray) -> tuple[float, float]:
    """limma ``fitFDist``: prior (s0², d0) of residual variances ``s2`` on ``df`` df by moments
    of log s2. ``d0 = inf`` when there is no extra variability, 0 with < 2 features."""
    ok = np.isfinite(s2) & (s2 > 0) & (df > 0)
    s2, df = s2[ok], df[ok]
    if s2.size < 2:
        return float("nan"), 0.0
    z = np.log(s2)
    e = z - special.digamma(df / 2) + np.log(df / 2)
    emean = e.mean()
    evar = ((e - emean) ** 2).sum() / (e.size - 1) - special.polygamma(1, df / 2).mean()
    if evar > 0:
        d0 = 2 * _trigamma_inverse(evar)
        s0 = np.exp(emean + special.digamma(d0 / 2) - np.log(d0 / 2))
    else:
        d0, s0 = np.inf, np.exp(emean)
    return float(s0), float(d0)


def _features(cluster_markers: pd.DataFrame, smp: pd.DataFrame) -> pd.DataFrame:
    cm = cluster_markers.copy()
    cm["sample_id"] = cm["sample_id"].astype(str)
    if "label" not in cm:
        cm["label"] = cm["cluster"].astype(str)
    return cm.merge(smp[["sample_id", "patient_id", "disease", "visit"]], on="sample_id")


def differential_state(samples: pd.DataFrame, cluster_markers: pd.DataFrame,
                       visits: list[str], strata: list[str],
                       options: StatsOptions) -> pd.DataFrame:
    """``stats_ds`` rows (q not yet added) for every cluster × marker × visit × stratum."""
    smp = samples[samples["visit"].isin(visits)]
    cm = _features(cluster_markers, smp)
    cm = cm[np.isfinite(cm["median"].astype(float))]
    keys = (cm[["cluster", "label", "marker"]].drop_duplicates(["cluster", "marker"])
            .sort_values(["cluster", "marker"], kind="mergesort"))
    rows = []
    for s in strata:
        ss = smp if s == ALL else smp[smp["disease"] == s]
        n_samples = len(ss)
        cs = cm if s == ALL else cm[cm["disease"] == s]
        groups = dict(tuple(cs.groupby(["cluster", "marker"], sort=False)))
        fits = []
        for _, (cl, label, marker) in keys.iterrows():
            g = groups.get((cl, marker))
            present = 0 if g is None else len(g)
            frac = 1 - present / n_samples if n_samples else 1.0
            fit = dict(cluster=cl, label=label, marker=marker, reason="")
            if frac > 1 - options.min_sample_fraction:
                fit["reason"] = f"cluster absent in {100 * frac:.0f} % of samples"
            else:
                fit.update(_ols(g, visits))
            fits.append(fit)
        ok = [f for f in fits if "s2" in f]
        s0, d0 = fit_f_dist(np.array([f["s2"] for f in ok]), np.array([f["df"] for f in ok], float))
        for f in fits:
            for visit in visits[1:]:
                row = dict(cluster=f["cluster"], label=f["label"], marker=f["marker"], visit=visit,
                           disease=s, method="limma", n=0, effect=np.nan, ci_low=np.nan,
                           ci_high=np.nan, p=np.nan, status=NOT_ESTIMABLE, reason=f["reason"])
                if "s2" in f and visit in f["coef"]:
                    b, u, n = f["coef"][visit]
                    if np.isfinite(d0) and d0 > 0:
                        s2p = (d0 * s0 + f["df"] * f["s2"]) / (d0 + f["df"])
                        dft = d0 + f["df"]
                    elif np.isinf(d0):
                        s2p, dft = s0, np.inf
                    else:
                        s2p, dft = f["s2"], f["df"]
                    se = np.sqrt(s2p) * u
                    tq = stats.t.ppf(0.975, dft) if np.isfinite(dft) else stats.norm.ppf(0.975)
                    row.update(n=n, effect=b, ci_low=b - tq * se, ci_high=b + tq * se)
                    if n < options.min_patients:
                        row["reason"] = f"{n} patients at {visit} < {options.min_patients}: too few patients to test"
                    elif se > 0:
                        tt = b / se
                        p = 2 * (stats.t.sf(abs(tt), dft) if np.isfinite(dft) else stats.norm.sf(abs(tt)))
                        row.update(p=float(p), status=OK)
                    else:
                        row["reason"] = "no residual variation"
                elif "s2" in f:
                    row["reason"] = f"no within-patient pair at {visit}"
                rows.append(row)
    return pd.DataFrame(rows, columns=[c for c in DS_COLUMNS if c != "q"])


def _ols(g: pd.DataFrame, visits: list[str]) -> dict:
    """OLS of one feature on ``~ patient + visit``: s2, df and {visit: (coef, unscaled sd, n)}."""
    g = g.groupby(["patient_id", "visit"], as_index=False)["median"].mean()
    # patients seen once carry no within-patient information
    g = g[g.groupby("patient_id")["visit"].transform("size") > 1]
    if g.empty:
        return {"reason": "no patient with two visits"}
    pats = sorted(g["patient_id"].unique())
    cols = [np.ones(len(g))] + [(g["patient_id"] == p).to_numpy(float) for p in pats[1:]]
    base = g["visit"] == visits[0]
    vis = [v for v in visits[1:] if (g["visit"] == v).any()]
    cols += [(g["visit"] == v).to_numpy(float) for v in vis]
    X = np.column_stack(cols)
    y = g["median"].to_numpy(float)
    df = len(y) - X.shape[1]
    if df < 1 or not base.any() or np.linalg.matrix_rank(X) < X.shape[1]:
        return {"reason": "no residual degrees of freedom" if df < 1 else "design not estimable"}
    xtx_inv = np.linalg.inv(X.T @ X)
    b = xtx_inv @ X.T @ y
    s2 = float(((y - X @ b) ** 2).sum() / df)
    k0 = 1 + len(pats) - 1
    coef = {}
    for i, v in enumerate(vis):
        pv = set(g.loc[g["visit"] == v, "patient_id"])
        n = len(pv & set(g.loc[base, "patient_id"]))
        coef[v] = (float(b[k0 + i]), float(np.sqrt(xtx_inv[k0 + i, k0 + i])), n)
    return {"s2": s2, "df": df, "coef": coef}
