"""Clinical scores: change from baseline, summaries (CGI categories), link to immune response."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ._common import ALL, DESCRIPTIVE, NOT_ESTIMABLE, OK, StatsOptions, sort_rows, too_few
from .multiple import add_q

CHANGE_COLUMNS = ["patient_id", "disease", "score", "visit", "value", "baseline", "change", "reason"]
IMMUNE_COLUMNS = ["score", "parameter", "visit", "immune_visit", "clinical_measure", "n", "rho",
                  "p", "q", "status", "reason"]


def clinical_change(clinical: pd.DataFrame, patients: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """``clinical_change``: value and change (value − baseline value of the same score) per
    patient, score and visit; scores without a baseline value (e.g. CGI-E) keep the value and
    say so in ``reason``."""
    c = clinical.copy()
    for k in ("patient_id", "visit", "score"):
        c[k] = c[k].astype(str)
    c = c.groupby(["patient_id", "score", "visit"], as_index=False)["value"].mean()
    c = c.merge(patients, on="patient_id", how="left")
    c["disease"] = c["disease"].fillna("unknown")
    base = c[c["visit"] == baseline].set_index(["patient_id", "score"])["value"]
    c["baseline"] = base.reindex(pd.MultiIndex.from_frame(c[["patient_id", "score"]])).to_numpy()
    c["change"] = c["value"] - c["baseline"]
    c["reason"] = np.where(c["baseline"].isna(), f"no {baseline} value of this score", "")
    return c[CHANGE_COLUMNS]


def clinical_summary(change: pd.DataFrame, visits: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per score, visit and disease (and ``all``): n, mean, sd, median, quartiles of the values
    and mean/median change; plus, for CGI scores (name starting with ``CGI``), the number and
    fraction of patients in each category."""
    rows, cats = [], []
    for (score, visit), g in change.groupby(["score", "visit"], sort=True):
        for d, h in [(ALL, g)] + list(g.groupby("disease", sort=True)):
            v = h["value"].to_numpy(float)
            ch = h["change"].to_numpy(float)
            v, ch = v[np.isfinite(v)], ch[np.isfinite(ch)]
            q1, med, q3 = np.percentile(v, [25, 50, 75]) if v.size else (np.nan,) * 3
            rows.append(dict(score=score, visit=visit, disease=d, n=v.size,
                             mean=v.mean() if v.size else np.nan,
                             sd=v.std(ddof=1) if v.size > 1 else np.nan, median=med, q1=q1,
                             q3=q3, n_change=ch.size, mean_change=ch.mean() if ch.size else np.nan,
                             median_change=np.median(ch) if ch.size else np.nan))
            if score.upper().startswith("CGI"):
                vals, counts = np.unique(v, return_counts=True)
                for val, k in zip(vals, counts):
                    cats.append(dict(score=score, visit=visit, disease=d, value=val,
                                     patients=int(k), fraction=k / v.size))
    summ = sort_rows(pd.DataFrame(rows), ["score", "visit", "disease"], visits)
    cat = pd.DataFrame(cats, columns=["score", "visit", "disease", "value", "patients", "fraction"])
    return summ, sort_rows(cat, ["score", "visit", "disease", "value"], visits)


def clinical_immune(change: pd.DataFrame, fold: pd.DataFrame, parameters: list[str],
                    visits: list[str], immune_visit: str, options: StatsOptions) -> pd.DataFrame:
    """``clinical_immune``: Spearman correlation, over patients, of the immune response
    (log2 fold change of each parameter at ``immune_visit``) with the clinical
    response at each visit (change from baseline, or the value itself for scores without
    baseline such as CGI-E). BH q per score × visit."""
    imm = fold[(fold["visit"] == immune_visit) & fold["parameter"].isin(parameters)]
    by_par = {p: dict(zip(g["patient_id"], g["log2fc"])) for p, g in imm.groupby("parameter")}
    rows = []
    for (score, visit), g in change.groupby(["score", "visit"], sort=True):
        if visit == visits[0]:
            continue
        use_change = g["change"].notna().any()
        col = g["change" if use_change else "value"]
        clin = dict(zip(g.loc[col.notna(), "patient_id"], col[col.notna()]))
        for par in parameters:
            x = by_par.get(par, {})
            common = sorted(set(x) & set(clin))
            n = len(common)
            row = dict(score=score, parameter=par, visit=visit, immune_visit=immune_visit,
                       clinical_measure="change" if use_change else "value", n=n, rho=np.nan,
                       p=np.nan, status=NOT_ESTIMABLE, reason="")
            a = np.array([x[k] for k in common], float)
            b = np.array([clin[k] for k in common], float)
            if n >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
                r = stats.spearmanr(a, b)
                row["rho"] = float(r.statistic)
                if n >= options.min_patients:
                    row.update(p=float(r.pvalue), status=OK)
                else:
                    row.update(status=DESCRIPTIVE, reason=too_few(n, options))
            else:
                row["reason"] = (f"{n} patients with both responses" if n < 3
                                 else "no variation in one of the responses")
            rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in IMMUNE_COLUMNS if c != "q"])
    out = add_q(out, ["score", "visit"])
    return sort_rows(out[IMMUNE_COLUMNS], ["score", "parameter", "visit"], visits)
