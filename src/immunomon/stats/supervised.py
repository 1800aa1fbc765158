"""Supervised parameters (``stats_supervised``): change from baseline within arms, arm
differences of that change, or group differences at a visit (cross-sectional studies),
pooled (``disease = all``) and per disease, every method on one analysis scale.

Analysis scale of a parameter (``effect_scale``), the same for every method:

* a finite ``value_transformed`` (intensities on the panel's transformed scale) —
  differences on that scale (``difference (arcsinh(150))``), as diffcyt;
* percentages and fractions (``measure`` percent, pct_positive, fraction, proportion, or
  ``%`` in the name) — logits, effect = **odds ratio**;
* other positive values (counts, ratios, linear medians) — logs, effect = fold change.

Methods (``method``):

* ``mmrm`` — :mod:`.mmrm`. The change within an arm: every visit, the baseline included,
  is a response with a mean per arm and visit, and the change is the contrast visit −
  baseline (the paired t with complete data). Differences between arms: the change from
  baseline at every post-baseline visit, ``change ~ visit + baseline × visit + arm × visit
  (+ disease when pooled)`` (baseline centred at the mean of the analysed patients).
  Unstructured covariance with the fallback order, REML, Kenward–Roger df
  (``StatsOptions.df_method``), SEs with the observed information's β–θ term
  (:meth:`.mmrm.MMRMFit.contrast`: MAR dropout), all available data. One fit per stratum:
  per-disease strata have their own covariance.
* ``paired_t``, ``wilcoxon`` — within-arm changes of complete pairs (:mod:`.classical`).
* ``welch_t``, ``rank_sum`` — arm differences of the change from baseline, or group
  differences of the values in a cross-sectional study.

Every row has ``n`` (patients contributing at that visit), ``n_missing`` (patients of the
stratum with a baseline but no value at the visit), ``df``/``df_method``, ``covariance``
(mmrm), ``status`` ``ok``, ``descriptive`` (below ``min_patients``: estimate and CI, no p)
or ``not estimable``, and ``reason``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import classical
from ._common import (ALL, DESCRIPTIVE, NOT_ESTIMABLE, OK, StatsOptions, is_logit, positive_floor,
                      to_fraction, too_few)
from .design import Design
from .mmrm import STRUCTURE_NAMES, MMRMError, fit_mmrm_fallback

SUPERVISED_COLUMNS = ["parameter", "visit", "disease", "arm", "comparison", "method", "role",
                      "n", "n_missing", "effect", "effect_scale", "ci_low", "ci_high", "df",
                      "df_method", "covariance", "p", "p_adjusted", "q", "status", "reason"]
RESPONDERS_COLUMNS = ["parameter", "visit", "disease", "arm", "n", "threshold", "n_responders",
                      "fraction", "ci_low", "ci_high"]
OBS_COLUMNS = ["parameter", "population", "patient_id", "disease", "arm", "visit", "value",
               "log", "model", "effect_scale", "note"]
DF_NAMES = {"kr": "Kenward-Roger", "satterthwaite": "Satterthwaite"}


def _scale(g: pd.DataFrame, name: str) -> tuple[str, np.ndarray, str]:
    """(effect_scale, model-scale values, note) of one parameter's rows."""
    raw = g["value"].to_numpy(float)
    measure = g["measure"].iloc[0]
    vt = g["value_transformed"].to_numpy(float) if "value_transformed" in g else None
    if vt is not None and np.isfinite(vt).any():
        tr = g["transform"].dropna().astype(str) if "transform" in g else pd.Series(dtype=str)
        tr = tr[tr != ""]
        return f"difference ({tr.iloc[0] if len(tr) else 'transformed'})", vt, ""
    if is_logit(name, measure):
        f, note = positive_floor(to_fraction(raw, measure, name), upper=1.0)
        return "odds ratio", np.log(f) - np.log1p(-f), note
    v, note = positive_floor(raw)
    return "fold change", np.log(v), note


def observations(samples: pd.DataFrame, parameters: pd.DataFrame,
                 per_sample: bool = False) -> pd.DataFrame:
    """One row per parameter × patient × visit of kept samples (:data:`OBS_COLUMNS`).

    ``value`` is the linear value, ``log`` its natural log (floored to stay finite),
    ``model`` the value on the analysis scale (see the module docstring) and ``note`` says
    when values were floored. Replicate samples of a patient and visit are averaged on
    each scale, unless ``per_sample`` (then one row per sample, with ``sample_id``).
    """
    cols = ["parameter", "population", "measure", "value", "value_transformed", "transform"]
    par = parameters[["sample_id"] + [c for c in cols if c in parameters]].copy()
    par["sample_id"] = par["sample_id"].astype(str)
    for c in ("population", "measure"):
        if c not in par:
            par[c] = ""
    df = par.merge(samples[["sample_id", "patient_id", "disease", "arm", "visit"]], on="sample_id")
    vt = df["value_transformed"].astype(float) if "value_transformed" in df else None
    ok = np.isfinite(df["value"].astype(float))
    df = df[ok | (np.isfinite(vt) if vt is not None else False)]
    out = []
    for name, g in df.groupby("parameter", sort=True):
        scale, model, note = _scale(g, name)
        v, _ = positive_floor(g["value"].to_numpy(float))
        g = g.assign(log=np.log(v), model=model, effect_scale=scale, note=note)
        out.append(g[np.isfinite(g["model"])])
    if not out:
        return pd.DataFrame(columns=OBS_COLUMNS)
    df = pd.concat(out)
    df["population"] = df["population"].fillna("").astype(str)
    if per_sample:
        return df.sort_values(["parameter", "sample_id"], kind="mergesort").reset_index(drop=True)
    keys = ["parameter", "population", "effect_scale", "note", "patient_id", "disease", "arm", "visit"]
    df = df.groupby(keys, sort=True, as_index=False, dropna=False)[["value", "log", "model"]].mean()
    return df[OBS_COLUMNS].reset_index(drop=True)


# ----------------------------------------------------------------------- repeated visits

def _mmrm(W: pd.DataFrame, info: pd.DataFrame, design: Design, pooled: bool):
    """Fit the ANCOVA-type MMRM of one stratum for the differences between arms: change at
    each later visit ~ visit + baseline (a covariate, slope per visit) + arm × visit.
    ``W``: patients × visits on the model scale. Returns (fit, {(active arm, visit): L},
    note) or (None, {}, reason); within-arm changes come from :func:`_mmrm_within`."""
    post = list(design.visits[1:])
    base = W[design.baseline].to_numpy()
    D = W[post].to_numpy() - base[:, None]
    later = np.isfinite(W[post].to_numpy()).any(axis=1)
    no_base = int((~np.isfinite(base) & later).sum())
    keep = np.isfinite(base) & later
    if keep.sum() < 2:
        return None, {}, "fewer than 2 patients with a baseline and a later visit"
    i, j = np.nonzero(np.isfinite(D) & keep[:, None])
    change, pid = D[i, j], W.index.to_numpy()[i]
    arm_of, dis_of = info["arm"].to_numpy()[i], info["disease"].to_numpy()[i]
    bc = base[i] - base[keep].mean()
    vis = sorted(set(j.tolist()))
    arms = [a for a in design.arms if (info["arm"][keep] == a).any()]
    active = [a for a in design.active if a in arms] if design.control in arms else []
    slope_per_visit = min(np.sum(j == v) for v in vis) >= 2 + len(active) + 2
    cols, names = [], []
    for v in vis:
        cols.append(j == v)
        names.append(("visit", v))
    if slope_per_visit:
        cols += [(j == v) * bc for v in vis]
        names += [("base", v) for v in vis]
    else:
        cols.append(bc)
        names.append(("base", None))
    for a in active:
        cols += [(j == v) & (arm_of == a) for v in vis]
        names += [("arm", a, v) for v in vis]
    if pooled and design.arms:
        for d in sorted(set(dis_of))[1:]:
            x = (dis_of == d).astype(float)
            cols.append(x - x.mean())
            names.append(("disease", d))
    X = np.column_stack(cols).astype(float)
    if pooled and design.arms and np.linalg.matrix_rank(X) < X.shape[1]:
        kept = [k for k, n in enumerate(names) if n[0] != "disease"]
        X, names = X[:, kept], [names[k] for k in kept]
    try:
        fit = fit_mmrm_fallback(change, X, pid, np.searchsorted(vis, j), n_visits=len(vis))
    except MMRMError as err:
        return None, {}, f"MMRM not fitted: {err}"
    pos = {n: k for k, n in enumerate(names)}
    diff = {}
    for v in vis:
        for a in active:
            L = np.zeros(len(names))
            L[pos[("arm", a, v)]] = 1.0
            diff[(a, post[v])] = L
    notes = [f"{no_base} patients without a baseline value left out"] if no_base else []
    if fit.notes:
        notes.append(f"covariance fallback ({'; '.join(fit.notes)})")
    if not slope_per_visit:
        notes.append("one baseline slope for all visits (too few patients at a visit)")
    return fit, diff, "; ".join(notes)


def _mmrm_within(W: pd.DataFrame, info: pd.DataFrame, design: Design):
    """The MMRM of change from baseline within each arm: every visit, the baseline
    included, is a response, with a mean per arm and visit and an unstructured covariance
    over all visits; the change at a visit is the contrast visit − baseline. With complete
    data it equals the paired t; with missing visits it uses every observed value (valid
    under MAR). The baseline is a response here, not a covariate: a baseline covariate
    conditions on the sample's own mean baseline, and the change tested at that mean then
    carries its regression to the mean, which the model's SE ignores (false positives of
    7-10 % at alpha 5 % when visits correlate weakly). Returns (fit, {(arm, visit): L},
    note) or (None, {}, reason)."""
    visits = list(design.visits)
    Y = W[visits].to_numpy()
    i, j = np.nonzero(np.isfinite(Y))
    if len(set(W.index.to_numpy()[i[j == 0]])) < 2 or not (j > 0).any():
        return None, {}, "fewer than 2 patients with a baseline and a later visit"
    arm_of = info["arm"].to_numpy()[i]
    arms = [a for a in design.arms if (arm_of == a).any()] if design.arms else [ALL]
    cols, names = [], []
    for a in arms:
        in_arm = (arm_of == a) if design.arms else np.ones(len(i), bool)
        for v in range(len(visits)):
            if (in_arm & (j == v)).any():
                cols.append(in_arm & (j == v))
                names.append((a, v))
    X = np.column_stack(cols).astype(float)
    try:
        fit = fit_mmrm_fallback(Y[i, j], X, W.index.to_numpy()[i], j, n_visits=len(visits))
    except MMRMError as err:
        return None, {}, f"MMRM not fitted: {err}"
    pos = {n: k for k, n in enumerate(names)}
    within = {}
    for a in arms:
        for v in range(1, len(visits)):
            if (a, 0) in pos and (a, v) in pos:
                L = np.zeros(len(names))
                L[[pos[(a, v)], pos[(a, 0)]]] = (1.0, -1.0)
                within[(a, visits[v])] = L
    note = f"covariance fallback ({'; '.join(fit.notes)})" if fit.notes else ""
    return fit, within, note


def _mmrm_row(fit, L, n: int, testable: bool, why: str, note: str, options: StatsOptions) -> dict:
    c = fit.contrast(L, options.df_method)
    lo, hi = c.ci()
    row = dict(estimate=c.estimate, ci_low=lo, ci_high=hi, df=c.df,
               df_method=DF_NAMES[options.df_method], covariance=STRUCTURE_NAMES[fit.structure],
               p=c.p, status=OK, reason=note)
    if not testable:
        row.update(p=np.nan, status=DESCRIPTIVE, reason="; ".join(x for x in (why, note) if x))
    return row


def _repeated_rows(name: str, W: pd.DataFrame, info: pd.DataFrame, disease: str,
                   design: Design, options: StatsOptions) -> list[dict]:
    """Rows of one parameter in one stratum of a study with a baseline."""
    methods = options.supervised_methods
    base = W[design.baseline]
    fit = wfit = None
    if "mmrm" in methods:
        wfit, within, wnote = _mmrm_within(W, info, design)
        if design.active:  # arm differences: ANCOVA on change, the baseline a covariate
            fit, diff, note = _mmrm(W, info, design, disease == ALL)
    rows = []

    def put(visit, arm, comparison, method, n, n_missing, r):
        rows.append({"parameter": name, "visit": visit, "disease": disease, "arm": arm,
                     "comparison": comparison, "method": method, "n": n, "n_missing": n_missing,
                     "df_method": classical.DF_METHOD.get(method, ""), "covariance": "", **r})

    for visit in design.visits[1:]:
        d = W[visit] - base
        has_base = base.notna()
        per_arm = {}
        for arm in design.arm_labels:
            in_arm = (info["arm"] == arm) if design.arms else pd.Series(True, index=info.index)
            darm = d[in_arm].dropna().to_numpy()
            n, miss = darm.size, int((in_arm & has_base & W[visit].isna()).sum())
            per_arm[arm] = (darm, miss)
            testable = n >= options.min_patients
            why = "" if testable else too_few(n, options, "complete pairs")
            if not (in_arm & has_base).any():
                continue
            for method in ("paired_t", "wilcoxon"):
                if method in methods:
                    put(visit, arm, "change_from_baseline", method, n, miss,
                        classical.paired(darm, method, testable, why))
            if "mmrm" in methods:
                put(visit, arm, "change_from_baseline", "mmrm", n, miss,
                    _mmrm_row(wfit, within[(arm, visit)], n, testable,
                              too_few(n, options), wnote, options)
                    if wfit is not None and (arm, visit) in within else
                    dict(status=NOT_ESTIMABLE, reason=wnote if wfit is None else
                         f"no observation at {visit}" + (f" in {arm}" if design.arms else "")))
        for arm in design.active:
            if design.control not in per_arm or arm not in per_arm:
                continue
            (x, mx), (y, my) = per_arm[arm], per_arm[design.control]
            n, miss = x.size + y.size, mx + my
            testable = min(x.size, y.size) >= options.min_patients
            why = "" if testable else too_few(min(x.size, y.size), options, "patients in an arm")
            label = design.difference_label(arm)
            for method in ("welch_t", "rank_sum"):
                if method in methods:
                    put(visit, label, "arm_difference", method, n, miss,
                        classical.two_group(x, y, method, testable, why))
            if "mmrm" in methods:
                put(visit, label, "arm_difference", "mmrm", n, miss,
                    _mmrm_row(fit, diff[(arm, visit)], n, testable, why, note, options)
                    if fit is not None and (arm, visit) in diff else
                    dict(status=NOT_ESTIMABLE, reason=note if fit is None else
                         f"no observation at {visit} in both arms"))
    return rows


def _group_rows(name: str, g: pd.DataFrame, disease: str, design: Design,
                options: StatsOptions) -> list[dict]:
    """Cross-sectional study: each group minus the reference group at each visit."""
    rows = []
    for visit in design.visits:
        at = g[g["visit"] == visit]
        y = at.loc[at[design.group_col] == design.reference, "model"].to_numpy()
        for grp in sorted(set(at[design.group_col]) - {design.reference, ""}):
            x = at.loc[at[design.group_col] == grp, "model"].to_numpy()
            testable = min(x.size, y.size) >= options.min_patients
            why = "" if testable else too_few(min(x.size, y.size), options, "patients in a group")
            label = f"{grp} vs {design.reference}"
            for method in ("welch_t", "rank_sum"):
                if method not in options.supervised_methods:
                    continue
                r = classical.two_group(x, y, method, testable, why)
                rows.append(dict(parameter=name, visit=visit,
                                 disease=label if design.group_col == "disease" else disease,
                                 arm=label if design.group_col == "arm" else ALL,
                                 comparison="group_difference", method=method,
                                 n=int(x.size + y.size), n_missing=0,
                                 df_method=classical.DF_METHOD[method], covariance="", **r))
    return rows


def supervised_tests(obs: pd.DataFrame, design: Design, options: StatsOptions) -> pd.DataFrame:
    """``stats_supervised`` rows (role, q and p_adjusted are added by :mod:`.plan`)."""
    rows = []
    for name, g in obs.groupby("parameter", sort=True):
        scale, note = g["effect_scale"].iloc[0], g["note"].iloc[0]
        new = []
        if design.repeated:
            W = g.pivot_table(index="patient_id", columns="visit", values="model",
                              aggfunc="mean").reindex(columns=list(design.visits))
            info = g.drop_duplicates("patient_id").set_index("patient_id")[["disease", "arm"]]
            info = info.reindex(W.index)
            for s in design.strata:
                m = (info["disease"] == s) if s != ALL else pd.Series(True, index=info.index)
                new += _repeated_rows(name, W[m], info[m], s, design, options)
        elif design.group_col:
            for s in design.strata:
                new += _group_rows(name, g if s == ALL else g[g["disease"] == s], s, design, options)
        for r in new:
            r["effect_scale"] = scale
            if note and r["status"] == OK:
                r["reason"] = "; ".join(x for x in (r["reason"], note) if x)
        rows += new
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[c for c in SUPERVISED_COLUMNS
                                     if c not in ("role", "p_adjusted", "q")])
    ratio = ~df["effect_scale"].str.startswith("difference")
    for src, dst in (("estimate", "effect"), ("ci_low", "ci_low"), ("ci_high", "ci_high")):
        v = df[src].astype(float)
        df[dst] = np.where(ratio, np.exp(v), v)
    df["n_missing"] = df["n_missing"].astype(int)
    df["reason"] = df["reason"].fillna("")
    return df[[c for c in SUPERVISED_COLUMNS if c not in ("role", "p_adjusted", "q")]]


# ----------------------------------------------------------------------- responders

def clopper_pearson(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson) CI of k successes in n trials (NaN where n = 0)."""
    from scipy import stats

    k, n = np.asarray(k, float), np.asarray(n, float)
    a = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(a, k, n - k + 1), 0.0)
        hi = np.where(k < n, stats.beta.ppf(1 - a, k + 1, n - k), 1.0)
    return np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def responders(obs: pd.DataFrame, design: Design, ratio: float) -> pd.DataFrame:
    """``responders``: per parameter, visit, stratum and arm, the complete pairs and how many
    patients reached ``visit/baseline >= ratio`` (the value ratio; exp of the difference on
    a transformed scale), with the exact (Clopper–Pearson) 95 % CI of the fraction."""
    rows = []
    if not design.repeated:
        return pd.DataFrame(columns=RESPONDERS_COLUMNS)
    for name, g in obs.groupby("parameter", sort=True):
        col = "model" if g["effect_scale"].iloc[0].startswith("difference") else "log"
        W = g.pivot_table(index="patient_id", columns="visit", values=col,
                          aggfunc="mean").reindex(columns=list(design.visits))
        info = g.drop_duplicates("patient_id").set_index("patient_id").reindex(W.index)
        D = W[list(design.visits[1:])].sub(W[design.baseline], axis=0)
        for s in design.strata:
            for arm in design.arm_labels:
                m = np.ones(len(D), bool) if s == ALL else (info["disease"] == s).to_numpy()
                if design.arms:
                    m &= (info["arm"] == arm).to_numpy()
                sub = D[m]
                n = sub.notna().sum().to_numpy()
                k = (sub >= np.log(ratio)).sum().to_numpy()
                for visit, nv, kv in zip(design.visits[1:], n, k):
                    rows.append((name, visit, s, arm, int(nv), ratio, int(kv)))
    df = pd.DataFrame(rows, columns=RESPONDERS_COLUMNS[:7])
    df["fraction"] = np.where(df["n"] > 0, df["n_responders"] / df["n"].clip(lower=1), np.nan)
    df["ci_low"], df["ci_high"] = clopper_pearson(df["n_responders"], df["n"])
    return df[RESPONDERS_COLUMNS]
