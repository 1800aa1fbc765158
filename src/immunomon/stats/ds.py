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


def differential_state(samples: pd.DataFrame, cluster_markers: pd.DataFrame,
                       visits: list[str], strata: list[str],
                       options: StatsOptions) -> pd.DataFrame:
    """``stats_ds`` rows (q not yet added) for every cluster × marker × visit × stratum."""
    smp = samples[samples["visit"].isin(visits)]
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
    pv = smp.drop_duplicates(["patient_id", "visit"])[["patient_id", "visit", "disease"]]
    pv = pv.assign(pv=pv["patient_id"] + "\x1f" + pv["visit"]).sort_values("pv", kind="mergesort")
    Y = wide.reindex(columns=pv["pv"]).to_numpy()
    rows = []
    for s in strata:
        cols = np.ones(len(pv), bool) if s == ALL else (pv["disease"] == s).to_numpy()
        sub, Ys = pv[cols].reset_index(drop=True), Y[:, cols]
        fits = _ols_all(Ys, sub, visits, options.min_sample_fraction)
        ok = [f for f in fits if "s2" in f]
        s0, d0 = fit_f_dist(np.array([f["s2"] for f in ok]), np.array([f["df"] for f in ok], float))
        for (cl, marker), f in zip(wide.index, fits):
            for visit in visits[1:]:
                row = dict(cluster=cl, label=labels[cl], marker=marker, visit=visit,
                           disease=s, method="limma", n=0, effect=np.nan, ci_low=np.nan,
                           ci_high=np.nan, p=np.nan, status=NOT_ESTIMABLE, reason=f.get("reason", ""))
                if "s2" in f and visit in f["coef"]:
                    b, u, n = f["coef"][visit]
                    row.update(n=n, effect=b, _u=u, _s2=f["s2"], _df=f["df"])
                elif "s2" in f:
                    row["reason"] = f"no within-patient pair at {visit}"
                rows.append(row)
        moderate_rows([r for r in rows if r["disease"] == s and "_u" in r], s0, d0, options)
    for r in rows:
        for k in ("_u", "_s2", "_df"):
            r.pop(k, None)
    return pd.DataFrame(rows, columns=[c for c in DS_COLUMNS if c != "q"])


def moderate_rows(rows: list[dict], s0: float, d0: float, options: StatsOptions) -> None:
    """Fill p, CI, status of rows (with ``_u`` unscaled sd, ``_s2``, ``_df``) in place by
    limma's moderated t: posterior variance (d0 s0² + d s²)/(d0 + d) on d0 + d df."""
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
    for r, lo, hi, pv, e in zip(rows, b - tq * se, b + tq * se, p, se):
        r.update(ci_low=float(lo), ci_high=float(hi))
        if r["n"] < options.min_patients:
            r["reason"] = (f"{r['n']} patients at {r['visit']} < {options.min_patients}: "
                           "too few patients to test")
        elif e > 0:
            r.update(p=float(pv), status=OK, reason="")
        else:
            r["reason"] = "no residual variation"


def _ols_all(Y: np.ndarray, pv: pd.DataFrame, visits: list[str], min_fraction: float) -> list[dict]:
    """OLS of every feature (row of Y, columns = patient × visit) on ``~ patient + visit``.

    Features sharing the same pattern of observed columns share one design, so the usual
    case (cluster present everywhere) costs one matrix inverse. Returns per feature either
    ``{"s2", "df", "coef": {visit: (coef, unscaled sd, n pairs)}}`` or ``{"reason"}``."""
    obs = np.isfinite(Y)
    frac_absent = 1 - obs.mean(axis=1) if Y.shape[1] else np.ones(len(Y))
    pats = pv["patient_id"].to_numpy()
    vis = pv["visit"].to_numpy()
    fits: list[dict] = [{} for _ in range(len(Y))]
    patterns: dict[bytes, list[int]] = {}
    for i in range(len(Y)):
        if frac_absent[i] > 1 - min_fraction:
            fits[i] = {"reason": f"cluster absent in {100 * frac_absent[i]:.0f} % of samples"}
        else:
            patterns.setdefault(obs[i].tobytes(), []).append(i)
    for key, idx in patterns.items():
        m = obs[idx[0]]
        p_, v_ = pats[m], vis[m]
        up = sorted(set(p_))
        cols = [np.ones(m.sum())] + [(p_ == p).astype(float) for p in up[1:]]
        vv = [v for v in visits[1:] if (v_ == v).any()]
        cols += [(v_ == v).astype(float) for v in vv]
        X = np.column_stack(cols)
        df = X.shape[0] - X.shape[1]
        if df < 1 or not (v_ == visits[0]).any() or np.linalg.matrix_rank(X) < X.shape[1]:
            for i in idx:
                fits[i] = {"reason": "no residual degrees of freedom" if df < 1 else "design not estimable"}
            continue
        xtx_inv = np.linalg.inv(X.T @ X)
        Ym = Y[np.ix_(idx, np.flatnonzero(m))]
        B = Ym @ X @ xtx_inv
        s2 = ((Ym - B @ X.T) ** 2).sum(axis=1) / df
        k0 = len(up)
        base_p = set(p_[v_ == visits[0]])
        n_pairs = {v: len(set(p_[v_ == v]) & base_p) for v in vv}
        for r, i in enumerate(idx):
            fits[i] = {"s2": float(s2[r]), "df": df,
                       "coef": {v: (float(B[r, k0 + j]), float(np.sqrt(xtx_inv[k0 + j, k0 + j])),
                                    n_pairs[v]) for j, v in enumerate(vv)}}
    return fits
