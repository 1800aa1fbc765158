"""Adverse events summary (``adverse_events_summary``) from CDISC AE records."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import UserError
from ._common import ALL

AE_COLUMNS = ["aebodsys", "aedecod", "grade", "serious", "related", "disease", "patients",
              "events", "n_at_risk"]
ANY = "ANY"
SEVERITY = {"MILD": 1, "MODERATE": 2, "SEVERE": 3}
_YES = {"Y", "YES", "TRUE", "1", "RELATED", "POSSIBLE", "POSSIBLY RELATED", "PROBABLE",
        "PROBABLY RELATED", "DEFINITE", "DEFINITELY RELATED"}


def ae_grade(ae: pd.DataFrame) -> pd.Series:
    """Grade 1–3 per event: ``AETOXGR`` (CTCAE; >= 3 counts as 3) when given, else ``AESEV``
    (MILD 1, MODERATE 2, SEVERE 3); ``unknown`` when neither is usable."""
    grade = pd.Series(np.nan, index=ae.index)
    if "AETOXGR" in ae:
        g = pd.to_numeric(ae["AETOXGR"], errors="coerce")
        grade = g.clip(upper=3)
    if "AESEV" in ae:
        sev = ae["AESEV"].astype(str).str.strip().str.upper().map(SEVERITY)
        grade = grade.fillna(sev)
    return grade.map(lambda g: "unknown" if pd.isna(g) or g < 1 else str(int(g)))


def _flag(col: pd.Series | None, n: int) -> np.ndarray:
    if col is None:
        return np.array(["unknown"] * n, dtype=object)
    s = col.fillna("").astype(str).str.strip().str.upper()
    return np.where(s.isin(_YES), "Y", np.where(s == "", "unknown", "N"))


def adverse_events_summary(ae: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """Patients with >= 1 event and events, by system organ class (``aebodsys``) and preferred
    term (``aedecod``), ``ANY`` rows over all classes/terms, per disease and ``all``.

    Rows: grade ``any`` and each grade (a patient counts once, at the worst grade of the
    cell), and, at grade ``any``, ``serious = Y`` and ``related = Y`` subsets; otherwise
    ``serious``/``related`` are ``any``. ``n_at_risk`` = patients of the stratum (from
    ``patients``); the ``ANY``/``ANY``/``any`` row exists for every stratum, even without
    events.
    """
    missing = [c for c in ("USUBJID", "AEBODSYS", "AEDECOD") if c not in ae]
    if missing:
        raise UserError(f"adverse events table: missing column(s) {', '.join(missing)}")
    a = pd.DataFrame({"patient_id": ae["USUBJID"].astype(str),
                      "aebodsys": ae["AEBODSYS"].fillna("").astype(str),
                      "aedecod": ae["AEDECOD"].fillna("").astype(str),
                      "grade": ae_grade(ae).to_numpy(),
                      "serious": _flag(ae.get("AESER"), len(ae)),
                      "related": _flag(ae.get("AEREL"), len(ae))})
    dis = dict(zip(patients["patient_id"], patients["disease"]))
    a["disease"] = a["patient_id"].map(dis).fillna("unknown")
    risk = patients.groupby("disease")["patient_id"].nunique().to_dict()
    unknown = a.loc[~a["patient_id"].isin(dis), "patient_id"].nunique()
    risk[ALL] = patients["patient_id"].nunique() + unknown
    if unknown:
        risk["unknown"] = unknown
    grade_rank = {"unknown": 0, "1": 1, "2": 2, "3": 3}
    rows = []
    strata = [ALL] + sorted(set(patients["disease"]) | set(a["disease"]))
    for d in strata:
        sub = a if d == ALL else a[a["disease"] == d]
        cells = [(ANY, ANY, sub)]
        for soc, g in sub.groupby("aebodsys", sort=True):
            cells.append((soc, ANY, g))
            cells += [(soc, pt, h) for pt, h in g.groupby("aedecod", sort=True)]
        for soc, pt, g in cells:
            def add(grade, serious, related, h, patients_n):
                rows.append(dict(aebodsys=soc, aedecod=pt, grade=grade, serious=serious,
                                 related=related, disease=d, patients=int(patients_n),
                                 events=len(h), n_at_risk=int(risk.get(d, 0))))
            add("any", "any", "any", g, g["patient_id"].nunique())
            if g.empty:
                continue
            worst = g.assign(r=g["grade"].map(grade_rank)).groupby("patient_id")["r"].max()
            for gr in sorted(g["grade"].unique(), key=grade_rank.get):
                add(gr, "any", "any", g[g["grade"] == gr], (worst == grade_rank[gr]).sum())
            for flag in ("serious", "related"):
                h = g[g[flag] == "Y"]
                if len(h):
                    add("any", *(("Y", "any") if flag == "serious" else ("any", "Y")), h,
                        h["patient_id"].nunique())
    out = pd.DataFrame(rows, columns=AE_COLUMNS)
    order = {k: i for i, k in enumerate(strata)}
    key = out.assign(_d=out["disease"].map(order),
                     _s=out["aebodsys"].map(lambda x: (x != ANY, x)).map(str),
                     _t=out["aedecod"].map(lambda x: (x != ANY, x)).map(str))
    idx = key.sort_values(["_d", "_s", "_t"], kind="mergesort").index
    return out.loc[idx].reset_index(drop=True)
