"""Differential state: per cluster × marker, median expression (``stats_ds``), limma
style: change from baseline within arms, arm differences of that change, or group
differences (cross-sectional); designs in :mod:`.contrasts`.

Method ``limma``: for every cluster × marker, ordinary least squares of the sample medians
(transformed units, e.g. arcsinh) on the stratum's design (patient as block, every visit
at once, within-patient contrasts), then limma's empirical Bayes moderation (Smyth 2004):
the residual variances of all cluster × marker features of the stratum are shrunk towards
a common prior fitted by moments to a scaled F distribution (``fitFDist``), and each
coefficient gets a moderated t test on ``d + d0`` degrees of freedom. ``effect`` is the
difference of medians (transformed units) with its moderated 95 % CI; rows below
``min_patients`` are ``descriptive`` (effect and CI, no p).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special, stats

from ._common import ALL, DESCRIPTIVE, NOT_ESTIMABLE, OK, StatsOptions, too_few
from .contrasts import block, coefficient_sets, reported
from .design import Design

DS_COLUMNS = ["cluster", "label", "marker", "visit", "disease", "arm", "comparison", "method",
              "n", "n_missing", "effect", "ci_low", "ci_high", "df", "p", "q", "status", "reason"]


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


def differential_state(samples: pd.DataFrame, cluster_markers: pd.DataFrame,
                       design: Design, options: StatsOptions) -> pd.DataFrame:
    """``stats_ds`` rows (role, q and p_adjusted are added by :mod:`.plan`)."""
    smp = samples[samples["visit"].isin(design.visits)]
    cm = cluster_markers.copy()
    cm["sample_id"] = cm["sample_id"].astype(str)
    if "label" not in cm:
        cm["label"] = cm["cluster"].astype(str)
    cm = cm[cm["sample_id"].isin(smp["sample_id"]) & np.isfinite(cm["median"].astype(float))]
    cm = cm.merge(smp[["sample_id", "patient_id", "visit"]], on="sample_id")
    # one column per patient × visit (replicates averaged)
    cm["pv"] = cm["patient_id"] + "\x1f" + cm["visit"]
    wide = cm.pivot_table(index=["cluster", "marker"], columns="pv", values="median", aggfunc="mean")
    wide = wide.sort_index()
    labels = cm.drop_duplicates("cluster").set_index("cluster")["label"]
    pv = smp.drop_duplicates(["patient_id", "visit"])[["patient_id", "visit", "disease", "arm"]]
    pv = pv.assign(pv=pv["patient_id"] + "\x1f" + pv["visit"]).sort_values("pv", kind="mergesort")
    Y = wide.reindex(columns=pv["pv"]).to_numpy()
    rows = []
    for s in design.strata:
        cols = np.ones(len(pv), bool) if s == ALL else (pv["disease"] == s).to_numpy()
        sub, Ys = pv[cols].reset_index(drop=True), Y[:, cols]
        stratum = []
        for k, coefs in enumerate(coefficient_sets(sub, design)):
            fits = _ols_all(Ys, sub, coefs, design, options.min_sample_fraction)
            if k == 0:
                ok = [f for f in fits if "s2" in f]
                s0, d0 = fit_f_dist(np.array([f["s2"] for f in ok]),
                                    np.array([f["df"] for f in ok], float))
            for (cl, marker), f in zip(wide.index, fits):
                for i in reported(coefs):
                    c = coefs[i]
                    row = dict(cluster=cl, label=labels[cl], marker=marker, visit=c.visit,
                               disease=s, arm=c.arm, comparison=c.comparison, method="limma",
                               n=c.n, n_missing=c.n_missing, effect=np.nan, ci_low=np.nan,
                               ci_high=np.nan, df=np.nan, p=np.nan, status=NOT_ESTIMABLE,
                               reason=f.get("reason", ""), _smallest=c.smallest)
                    if "s2" in f and i in f["coef"]:
                        b, u = f["coef"][i]
                        row.update(effect=b, _u=u, _s2=f["s2"], _df=f["df"])
                    elif "s2" in f:
                        row["reason"] = f"no sample at {c.visit} for this comparison"
                    stratum.append(row)
        moderate_rows([r for r in stratum if "_u" in r], s0 if stratum else np.nan,
                      d0 if stratum else 0.0, options)
        rows += stratum
    for r in rows:
        for k in ("_u", "_s2", "_df", "_smallest"):
            r.pop(k, None)
    return pd.DataFrame(rows, columns=[c for c in DS_COLUMNS if c != "q"])


def moderate_rows(rows: list[dict], s0: float, d0: float, options: StatsOptions) -> None:
    """Fill p, CI, df, status of rows (with ``_u`` unscaled sd, ``_s2``, ``_df``,
    ``_smallest``) in place by limma's moderated t: posterior variance
    (d0 s0² + d s²)/(d0 + d) on d0 + d df."""
    if not rows:
        return
    u = np.array([r["_u"] for r in rows])
    s2 = np.array([r["_s2"] for r in rows])
    df = np.array([r["_df"] for r in rows], float)
    b = np.array([r["effect"] for r in rows])
    if np.isfinite(d0) and d0 > 0:
        s2p, dft = (d0 * s0 + df * s2) / (d0 + df), d0 + df
    elif np.isinf(d0):
        s2p, dft = np.full_like(s2, s0), np.full_like(df, 1e12)
    else:
        s2p, dft = s2, df
    se = np.sqrt(s2p) * u
    tq = stats.t.ppf(0.975, dft)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.t.sf(np.abs(b / se), dft)
    for r, lo, hi, pv, e, d in zip(rows, b - tq * se, b + tq * se, p, se, dft):
        r.update(ci_low=float(lo), ci_high=float(hi), df=float(d))
        if not e > 0:
            r["reason"] = "no residual variation"
        elif r["_smallest"] < options.min_patients:
            r.update(status=DESCRIPTIVE, reason=too_few(r["_smallest"], options))
        else:
            r.update(p=float(pv), status=OK, reason="")


def _ols_all(Y: np.ndarray, pv: pd.DataFrame, coefs, design: Design,
             min_fraction: float) -> list[dict]:
    """OLS of every feature (row of Y, columns = patient × visit) on the block (patient)
    plus the coefficients' indicators.

    Features sharing the same pattern of observed columns share one design, so the usual
    case (cluster present everywhere) costs one matrix inverse. Returns per feature either
    ``{"s2", "df", "coef": {i: (coef, unscaled sd)}}`` or ``{"reason"}``."""
    obs = np.isfinite(Y)
    frac_absent = 1 - obs.mean(axis=1) if Y.shape[1] else np.ones(len(Y))
    fits: list[dict] = [{} for _ in range(len(Y))]
    patterns: dict[bytes, list[int]] = {}
    for i in range(len(Y)):
        if frac_absent[i] > 1 - min_fraction:
            fits[i] = {"reason": f"cluster absent in {100 * frac_absent[i]:.0f} % of samples"}
        else:
            patterns.setdefault(obs[i].tobytes(), []).append(i)
    wanted = reported(coefs)
    for key, idx in patterns.items():
        m = obs[idx[0]]
        tab = pv[m].reset_index(drop=True)
        ind = [c.indicator(tab, design.group_col) for c in coefs]
        present = [i for i in range(len(coefs)) if ind[i].any()]
        X = np.column_stack([block(tab, design)] + [ind[i] for i in present])
        df = X.shape[0] - X.shape[1]
        if df < 1 or np.linalg.matrix_rank(X) < X.shape[1]:
            for i in idx:
                fits[i] = {"reason": "no residual degrees of freedom" if df < 1 else "design not estimable"}
            continue
        xtx_inv = np.linalg.inv(X.T @ X)
        Ym = Y[np.ix_(idx, np.flatnonzero(m))]
        B = Ym @ X @ xtx_inv
        s2 = ((Ym - B @ X.T) ** 2).sum(axis=1) / df
        k0 = X.shape[1] - len(present)
        col = {ci: k0 + j for j, ci in enumerate(present) if ci in wanted}
        for r, i in enumerate(idx):
            fits[i] = {"s2": float(s2[r]), "df": df,
                       "coef": {ci: (float(B[r, j]), float(np.sqrt(xtx_inv[j, j])))
                                for ci, j in col.items()}}
    return fits
