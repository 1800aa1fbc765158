"""Supervised parameters: each visit versus baseline, pooled and per disease.

Methods (``method`` column of ``stats_supervised``):

* ``paired_t`` — one-sample t test on the per-patient log ratios visit/baseline (complete
  pairs); effect = exp(mean log ratio) = ratio of geometric means, with its t CI.
* ``wilcoxon`` — Wilcoxon signed-rank test on the same log ratios (exact for n <= 50 without
  ties); effect = exp(Hodges–Lehmann estimate), CI from the Walsh averages.
* ``lmm`` — linear mixed model (REML; :func:`fit_random_intercept`, the same model and
  estimates as statsmodels MixedLM, which is the fallback) on log values (logit for
  percentages/fractions) with a random intercept per patient and every available visit:
  pooled ``y ~ visit + disease + (1|patient)``; per disease ``y ~ disease + visit:disease +
  (1|patient)`` (one fit over all patients, a visit effect per disease). Effect = exp(coef):
  fold change (log) or odds ratio (logit), Wald CI and p.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize_scalar

from ._common import ALL, NOT_ESTIMABLE, OK, StatsOptions, is_logit, positive_floor, to_fraction

SUPERVISED_COLUMNS = ["parameter", "visit", "disease", "method", "n", "effect", "effect_scale",
                      "ci_low", "ci_high", "p", "q", "status", "reason"]
RESPONDERS_COLUMNS = ["parameter", "visit", "disease", "n", "n_up", "fraction_up"]
Z95 = stats.norm.ppf(0.975)


def observations(samples: pd.DataFrame, parameters: pd.DataFrame,
                 per_sample: bool = False) -> pd.DataFrame:
    """One row per parameter × patient × visit of kept samples.

    Columns: parameter, population, patient_id, disease, visit, ``log`` (natural log of the
    value), ``model`` (log or logit of the fraction), ``scale`` (``log``/``logit``), ``note``
    (values floored to stay finite). Replicate samples of a patient and visit are averaged
    on both scales, unless ``per_sample`` (then one row per sample, with ``sample_id``).
    """
    cols = ["parameter", "population", "measure", "value"]
    par = parameters[["sample_id"] + [c for c in cols if c in parameters]].copy()
    par["sample_id"] = par["sample_id"].astype(str)
    if "population" not in par:
        par["population"] = ""
    if "measure" not in par:
        par["measure"] = ""
    df = par.merge(samples[["sample_id", "patient_id", "disease", "visit"]], on="sample_id")
    df = df[np.isfinite(df["value"].astype(float))]
    out = []
    for name, g in df.groupby("parameter", sort=True):
        measure = g["measure"].iloc[0]
        logit = is_logit(name, measure)
        raw = g["value"].to_numpy(float)
        v, note = positive_floor(raw)
        g = g.assign(log=np.log(v), scale="logit" if logit else "log")
        if logit:
            f, note = positive_floor(to_fraction(raw, measure, name), upper=1.0)
            g = g.assign(model=np.log(f) - np.log1p(-f))
        else:
            g = g.assign(model=g["log"])
        g = g.assign(note=note)
        out.append(g)
    if not out:
        return pd.DataFrame(columns=["parameter", "population", "patient_id", "disease", "visit",
                                     "log", "model", "scale", "note"])
    df = pd.concat(out)
    if per_sample:
        return df.sort_values(["parameter", "sample_id"], kind="mergesort").reset_index(drop=True)
    keys = ["parameter", "population", "scale", "note", "patient_id", "disease", "visit"]
    df["population"] = df["population"].fillna("").astype(str)
    df = df.groupby(keys, sort=True, as_index=False, dropna=False)[["log", "model"]].mean()
    return df.dropna(subset=["log", "model"]).reset_index(drop=True)


def log_ratios(obs: pd.DataFrame, visits: list[str]) -> dict:
    """Per parameter, per patient log ratios to baseline: parameter -> (diseases (n,),
    D (n, len(visits) - 1)), NaN where the patient lacks the visit or the baseline."""
    wide = obs.pivot_table(index=["parameter", "patient_id"], columns="visit", values="log",
                           aggfunc="mean").reindex(columns=visits)
    dis = obs.drop_duplicates("patient_id").set_index("patient_id")["disease"]
    out = {}
    for name, w in wide.groupby(level=0, sort=True):
        m = w.to_numpy()
        out[name] = (dis.reindex(w.index.get_level_values(1)).to_numpy(), m[:, 1:] - m[:, :1])
    return out


@lru_cache(maxsize=None)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T <= t), t = 0..n(n+1)/2, of the Wilcoxon signed-rank statistic (no ties)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / 2.0 ** n


def signed_rank_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p value (zeros dropped; exact for n <= 50 without ties,
    else normal approximation with tie correction), as ``scipy.stats.wilcoxon``."""
    d = np.asarray(d, float)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 1.0
    r = stats.rankdata(np.abs(d))
    t_plus = float(r[d > 0].sum())
    ties = np.unique(r, return_counts=True)[1]
    if n <= 50 and np.all(ties == 1):
        cdf = _signed_rank_cdf(n)
        t = int(round(min(t_plus, n * (n + 1) / 2 - t_plus)))
        return float(min(1.0, 2 * cdf[t]))
    mu = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - (ties ** 3 - ties).sum() / 48
    return float(2 * stats.norm.sf(abs(t_plus - mu) / np.sqrt(var)))


def hodges_lehmann(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Hodges–Lehmann estimate of the pseudo-median of ``d`` and its signed-rank CI
    (exact for n <= 50, normal approximation above; NaN bounds when n is too small for
    the level)."""
    d = np.sort(np.asarray(d, float))
    n = d.size
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    est = float(np.median(walsh))
    m = walsh.size
    a = (1 - level) / 2
    if n <= 50:
        cdf = _signed_rank_cdf(n)
        k = int(np.searchsorted(cdf, a, side="right"))  # P(T <= k-1) <= a
    else:
        mu, sd = n * (n + 1) / 4, np.sqrt(n * (n + 1) * (2 * n + 1) / 24)
        k = int(np.floor(mu - stats.norm.ppf(1 - a) * sd))
    if k < 1:
        return est, np.nan, np.nan
    return est, float(walsh[k - 1]), float(walsh[m - k])


def _paired_row(d: np.ndarray, method: str, testable: bool, why: str) -> dict:
    n = int(d.size)
    row = dict(n=n, effect=np.nan, effect_scale="fold change", ci_low=np.nan, ci_high=np.nan,
               p=np.nan, status=OK, reason="")
    if n == 0:
        return {**row, "status": NOT_ESTIMABLE, "reason": "no complete pair (baseline and visit)"}
    if method == "paired_t":
        mean = float(d.mean())
        row["effect"] = np.exp(mean)
        if n < 2:
            return {**row, "status": NOT_ESTIMABLE, "reason": why or "1 complete pair: no variance"}
        se = float(d.std(ddof=1) / np.sqrt(n))
        if se == 0:
            return {**row, "status": NOT_ESTIMABLE, "reason": "log ratios have no variation"}
        tq = stats.t.ppf(0.975, n - 1)
        row.update(ci_low=np.exp(mean - tq * se), ci_high=np.exp(mean + tq * se))
        p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    else:
        est, lo, hi = hodges_lehmann(d)
        row.update(effect=np.exp(est), ci_low=np.exp(lo), ci_high=np.exp(hi))
        if np.all(d == 0):
            return {**row, "status": NOT_ESTIMABLE, "reason": "log ratios are all zero"}
        if not np.isfinite(lo):
            why = why or f"n = {n} too small for a 95 % signed-rank interval"
        p = signed_rank_p(d) if testable else np.nan
    if not testable:
        return {**row, "status": NOT_ESTIMABLE, "reason": why}
    return {**row, "p": p, "reason": why if not np.isfinite(row["ci_low"]) else ""}


def paired_tests(obs: pd.DataFrame, visits: list[str], strata: list[str],
                 options: StatsOptions, methods=("paired_t", "wilcoxon")) -> pd.DataFrame:
    """Paired t and Wilcoxon rows of ``stats_supervised`` (q not yet added)."""
    rows = []
    notes = obs.drop_duplicates("parameter").set_index("parameter")["note"]
    for name, (dis, D) in log_ratios(obs, visits).items():
        note = notes[name]
        for j, visit in enumerate(visits[1:]):
            col = D[:, j]
            for s in strata:
                d = col[np.isfinite(col) & ((dis == s) if s != ALL else True)]
                testable = d.size >= options.min_patients
                why = "" if testable else (
                    f"{d.size} complete pairs < {options.min_patients}: too few patients to test")
                for method in methods:
                    r = _paired_row(d, method, testable, why)
                    if note and r["status"] == OK:
                        r["reason"] = "; ".join(x for x in (r["reason"], note) if x)
                    rows.append(dict(parameter=name, visit=visit, disease=s, method=method, **r))
    return pd.DataFrame(rows, columns=[c for c in SUPERVISED_COLUMNS if c != "q"])


def responders(obs: pd.DataFrame, visits: list[str], strata: list[str]) -> pd.DataFrame:
    """``responders``: per parameter, visit and stratum, complete pairs and how many went up
    (visit/baseline ratio > 1)."""
    rows = []
    for name, (dis, D) in log_ratios(obs, visits).items():
        for j, visit in enumerate(visits[1:]):
            col = D[:, j]
            for s in strata:
                d = col[np.isfinite(col) & ((dis == s) if s != ALL else True)]
                n, up = int(d.size), int((d > 0).sum())
                rows.append(dict(parameter=name, visit=visit, disease=s, n=n, n_up=up,
                                 fraction_up=up / n if n else np.nan))
    return pd.DataFrame(rows, columns=RESPONDERS_COLUMNS)


# --------------------------------------------------------------------------- mixed model

def fit_random_intercept(y: np.ndarray, X: np.ndarray, groups: np.ndarray):
    """REML fit of ``y = X b + u[group] + e``, u ~ N(0, tau2), e ~ N(0, s2), by profiling the
    variance ratio ``lam = tau2 / s2`` (the same model and estimates as statsmodels MixedLM,
    one bounded 1-D search instead of a general optimiser).

    Each group of size n is transformed by ``I - (theta/n) J`` with
    ``theta = 1 - 1/sqrt(1 + n lam)``, which turns GLS into OLS. Returns
    ``(b, cov_b, s2, tau2)``; raises ``np.linalg.LinAlgError`` for a rank-deficient design.
    """
    _, g = np.unique(groups, return_inverse=True)
    n_g = np.bincount(g).astype(float)
    N, p = X.shape
    mean = float(y.mean())
    y = y - mean  # centring keeps the normal equations accurate
    xtx0, xty0, yty0 = X.T @ X, X.T @ y, float(y @ y)
    ev = np.linalg.eigvalsh(xtx0)
    if N <= p or ev[0] <= 1e-10 * ev[-1]:
        raise np.linalg.LinAlgError("design not of full rank")
    ybar = np.bincount(g, y) / n_g
    Xbar = np.stack([np.bincount(g, X[:, j]) / n_g for j in range(p)], axis=1)

    def solve(log_lam):
        # Xs'Xs = X'X - sum_g c_g xbar_g xbar_g', c_g = n_g (2 theta_g - theta_g^2)
        lam = 0.0 if log_lam is None else np.exp(log_lam)
        theta = 1 - 1 / np.sqrt(1 + n_g * lam)
        c = n_g * (2 * theta - theta ** 2)
        xtx = xtx0 - (Xbar.T * c) @ Xbar
        xty = xty0 - (Xbar.T * c) @ ybar
        chol = cho_factor(xtx)
        b = cho_solve(chol, xty)
        rss = max(yty0 - float(c @ ybar ** 2) - float(b @ xty), 1e-300)
        obj = ((N - p) * np.log(rss / (N - p)) + np.log1p(n_g * lam).sum()
               + 2 * np.log(np.diag(chol[0])).sum())
        return obj, b, rss, xtx, lam

    grid = np.linspace(-12, 6, 19)
    objs = [solve(x)[0] for x in grid]
    i = int(np.argmin(objs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(lambda x: solve(x)[0], bounds=(lo, hi), method="bounded",
                           options={"xatol": 1e-6})
    cands = [solve(best.x), solve(None)]
    obj, b, rss, xtx, lam = min(cands, key=lambda c: c[0])
    s2 = rss / (N - p)
    b = b + mean * np.linalg.solve(xtx0, X.sum(axis=0))  # undo the centring of y
    return b, s2 * np.linalg.inv(xtx), s2, s2 * lam


def fit_lmm(y: np.ndarray, X: np.ndarray, groups: np.ndarray):
    """Random-intercept LMM: :func:`fit_random_intercept`, falling back to statsmodels
    MixedLM (:func:`fit_mixed`) if it fails. Returns ``(b, cov_b, note)`` or
    ``(None, None, reason)``."""
    try:
        b, cov, *_ = fit_random_intercept(y, X, groups)
        if np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0):
            return b, cov, ""
    except np.linalg.LinAlgError as exc:
        if "full rank" in str(exc):
            return None, None, "design not of full rank"
    return fit_mixed(y, X, groups)


def fit_mixed(y: np.ndarray, X: np.ndarray, groups: np.ndarray):
    """Fit ``y = X b + u[group] + e`` by REML (statsmodels MixedLM).

    Tries the default optimiser chain, then Powell and Nelder–Mead. Returns
    ``(fe_params, fe_cov, note)`` or ``(None, None, reason)`` when nothing converged.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM

    tried = []
    for method in (None, "powell", "nm"):
        kw = {} if method is None else {"method": method, "maxiter": 2000}
        tried.append(method or "bfgs/lbfgs")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = MixedLM(y, X, groups=groups).fit(reml=True, **kw)
        except (np.linalg.LinAlgError, ValueError) as exc:  # singular designs, bad starts
            last = str(exc)
            continue
        k = X.shape[1]
        cov = np.asarray(res.cov_params())[:k, :k]
        if res.converged and np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0):
            return np.asarray(res.fe_params), cov, ("" if method is None else f"fitted with {method}")
        last = "not converged"
    return None, None, f"mixed model did not converge ({', '.join(tried)}): {last}"


def _design(g: pd.DataFrame, visits: list[str], by_disease: bool):
    """Fixed-effects design: intercept, disease dummies, and visit dummies (pooled) or one
    visit dummy per disease (``by_disease``). Returns X and {(visit, stratum): column}."""
    diseases = sorted(g["disease"].unique())
    cols, names = [np.ones(len(g))], {}
    for d in diseases[1:]:
        cols.append((g["disease"] == d).to_numpy(float))
    base_dis = set(g.loc[g["visit"] == visits[0], "disease"])
    for v in visits[1:]:
        at_v = (g["visit"] == v).to_numpy()
        if not by_disease:
            if at_v.any():
                names[(v, ALL)] = len(cols)
                cols.append(at_v.astype(float))
            continue
        for d in diseases:
            cell = at_v & (g["disease"] == d).to_numpy()
            if cell.any() and d in base_dis:
                names[(v, d)] = len(cols)
                cols.append(cell.astype(float))
    return np.column_stack(cols), names


def lmm_tests(obs: pd.DataFrame, visits: list[str], strata: list[str],
              options: StatsOptions) -> pd.DataFrame:
    """``lmm`` rows of ``stats_supervised`` (q not yet added)."""
    rows = []
    per_disease = [s for s in strata if s != ALL]
    for name, g in obs.groupby("parameter", sort=True):
        g = g[g["visit"].isin(visits)].reset_index(drop=True)
        logit = g["scale"].iloc[0] == "logit"
        scale = "odds ratio" if logit else "fold change"
        note = g["note"].iloc[0]
        fits = {}
        for by_disease, wanted in ((False, [ALL]), (True, per_disease)):
            if not wanted:
                continue
            X, names = _design(g, visits, by_disease)
            if g["patient_id"].nunique() < 2:
                fits[by_disease] = (None, None, "fewer than 2 patients", names)
                continue
            b, cov, msg = fit_lmm(g["model"].to_numpy(), X, g["patient_id"].to_numpy())
            fits[by_disease] = (b, cov, msg, names)
        n_at = g.groupby(["visit", "disease"])["patient_id"].nunique()
        for visit in visits[1:]:
            for s in strata:
                at = n_at[n_at.index.get_level_values(0) == visit]
                n = int(at.sum() if s == ALL else at.get((visit, s), 0))
                b, cov, msg, names = fits[s != ALL]
                row = dict(parameter=name, visit=visit, disease=s, method="lmm", n=n,
                           effect=np.nan, effect_scale=scale, ci_low=np.nan, ci_high=np.nan,
                           p=np.nan, status=NOT_ESTIMABLE, reason="")
                j = names.get((visit, s))
                if b is None:
                    row["reason"] = msg
                elif j is None:
                    row["reason"] = (f"no observation at {visit}" if n == 0
                                     else f"no baseline ({visits[0]}) observation in this stratum")
                else:
                    est, se = b[j], np.sqrt(cov[j, j])
                    row.update(effect=np.exp(est), ci_low=np.exp(est - Z95 * se),
                               ci_high=np.exp(est + Z95 * se))
                    if n < options.min_patients:
                        row["reason"] = (f"{n} patients at {visit} < {options.min_patients}: "
                                         "too few patients to test")
                    else:
                        row.update(p=float(2 * stats.norm.sf(abs(est / se))), status=OK,
                                   reason="; ".join(x for x in (msg, note) if x))
                rows.append(row)
    return pd.DataFrame(rows, columns=[c for c in SUPERVISED_COLUMNS if c != "q"])
