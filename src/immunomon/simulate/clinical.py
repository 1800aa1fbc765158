"""Simulated clinical scores and adverse events of the low-dose IL-2 trial.

Clinical scores (long table ``patient_id, visit, score, value``):

- the disease-specific activity score (``SCORES``, e.g. DAS28 for RA, SLEDAI for SLE) and CRP
  (mg/L, log-normal, median 4) at every visit;
- CGI-S (severity 1-7) and EQ-5D index (0-1) at baseline and at visits from day 85;
  CGI-E (therapeutic effect, 1 = unchanged or worse ... 4 = marked) at visits from day 85.

The response is weak: activity falls by ``0.12 + 0.1 × log(r_treg) + N(0, 0.15)`` (a fraction
of baseline; better in stronger Treg responders) reached linearly by day 85, kept to day 183,
70 % of it at day 240; visit noise sd 10 % of the baseline spread.

Adverse events (CDISC SDTM AE columns): in the first week, mostly mild injection-site
reactions and flu-like symptoms (related); later, sparse injection-site reactions, common
infections, disease flares (not related) and, in ~4 % of patients, one serious unrelated event.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .model import Patient, rng_for

#: disease -> (score, baseline median, baseline sd, minimum, maximum, decimals)
SCORES = {
    "RA": ("DAS28", 4.6, 0.8, 0.0, 9.4, 2), "AS": ("BASDAI", 5.2, 1.2, 0.0, 10.0, 1),
    "SLE": ("SLEDAI", 8.0, 3.0, 0.0, 105.0, 0), "psoriasis": ("PASI", 11.0, 4.0, 0.0, 72.0, 1),
    "Behcet": ("BDCAF", 5.0, 2.0, 0.0, 12.0, 0), "GPA": ("BVAS", 9.0, 3.0, 0.0, 63.0, 0),
    "Takayasu": ("ITAS2010", 6.0, 2.0, 0.0, 44.0, 0), "Crohn": ("HBI", 8.0, 3.0, 0.0, 40.0, 0),
    "UC": ("Mayo", 7.0, 2.0, 0.0, 12.0, 0), "AIH": ("ALT", 80.0, 30.0, 5.0, 2000.0, 0),
    "SC": ("ALP", 250.0, 80.0, 20.0, 3000.0, 0),
}

SOC_GENERAL = "General disorders and administration site conditions"
#: (AETERM, AEDECOD, AEBODSYS, probability per patient, first day, last day, p(grade 2),
#:  related)
_EARLY = (
    ("redness and swelling at injection site", "Injection site reaction", SOC_GENERAL,
     0.6, 1, 7, 0.1, "RELATED"),
    ("flu-like symptoms", "Influenza like illness", SOC_GENERAL, 0.3, 1, 7, 0.2, "RELATED"),
    ("tiredness", "Fatigue", SOC_GENERAL, 0.2, 1, 7, 0.1, "POSSIBLY RELATED"),
    ("headache", "Headache", "Nervous system disorders", 0.15, 1, 7, 0.1, "POSSIBLY RELATED"),
    ("nausea", "Nausea", "Gastrointestinal disorders", 0.08, 1, 7, 0.0, "POSSIBLY RELATED"),
)
_LATE = (
    ("injection site erythema", "Injection site reaction", SOC_GENERAL, 0.3, 8, 183, 0.0,
     "RELATED"),
    ("common cold", "Nasopharyngitis", "Infections and infestations", 0.25, 8, 240, 0.1,
     "NOT RELATED"),
    ("joint pain", "Arthralgia", "Musculoskeletal and connective tissue disorders", 0.1, 8, 240,
     0.3, "NOT RELATED"),
    ("disease flare", "Condition aggravated", SOC_GENERAL, 0.1, 29, 240, 0.6, "NOT RELATED"),
)
_SERIOUS = ("appendicitis", "Appendicitis", "Infections and infestations")
_SEVERITY = {1: "MILD", 2: "MODERATE", 3: "SEVERE"}


def _visit_fraction(day: float) -> float:
    """Fraction of the clinical response reached at ``day``."""
    return float(np.interp(day, [1, 85, 183, 240], [0.0, 1.0, 1.0, 0.7]))


def clinical_scores(patient: Patient, visits: list[tuple[str, int]], effect: str,
                    effect_size: float, rng: np.random.Generator) -> list[tuple]:
    """Rows (patient_id, visit, score, value) of one patient."""
    name, median, sd, lo, hi, decimals = SCORES[patient.disease]
    base = max(median + sd * rng.normal(), lo + 0.1 * sd)
    resp = 0.12 + 0.1 * np.log(patient.r_treg) + rng.normal(0.0, 0.15)
    if effect != "planted":
        resp = 0.0
    resp *= effect_size
    crp = np.exp(np.log(4.0) + rng.normal(0.0, 0.8))
    cgi = int(np.clip(np.round(rng.normal(4.0, 0.8)), 2, 6))
    eq5d = float(np.clip(rng.normal(0.65, 0.15), 0.0, 1.0))
    baseline_day = visits[0][1]
    rows = []
    for visit, day in visits:
        g = _visit_fraction(day) * resp
        value = np.clip(base * (1 - g) + 0.1 * sd * rng.normal(), lo, hi)
        value = int(round(float(value))) if decimals == 0 else round(float(value), decimals)
        rows.append((patient.patient_id, visit, name, value))
        rows.append((patient.patient_id, visit, "CRP",
                     round(float(crp * (1 - 0.5 * g) * np.exp(rng.normal(0.0, 0.4))), 1)))
        if day == baseline_day or day >= 85:
            cgi_v = int(np.clip(np.round(cgi - 2.5 * g + rng.normal(0.0, 0.5)), 1, 7))
            rows.append((patient.patient_id, visit, "CGI-S", cgi_v))
            eq = float(np.clip(eq5d + 0.3 * g + rng.normal(0.0, 0.05), 0.0, 1.0))
            rows.append((patient.patient_id, visit, "EQ-5D", round(eq, 3)))
        if day >= 85 and day != baseline_day:
            rows.append((patient.patient_id, visit, "CGI-E",
                         int(np.clip(np.round(1.5 + 6 * g + rng.normal(0.0, 0.7)), 1, 4))))
    return rows


def adverse_events(patient: Patient, study_id: str, rng: np.random.Generator) -> list[dict]:
    """The AE records of one patient (CDISC SDTM AE domain columns)."""
    records = []
    for term, decod, soc, prob, first, last, p2, rel in _EARLY + _LATE:
        n = int(rng.random() < prob) * (1 + int(rng.random() < 0.3))
        for _ in range(n):
            start = int(rng.integers(first, last + 1))
            grade = 2 if rng.random() < p2 else 1
            records.append((term, decod, soc, start, start + int(rng.integers(0, 4)),
                            grade, "N", rel))
    if rng.random() < 0.04:
        start = int(rng.integers(20, 240))
        records.append((*_SERIOUS, start, start + 10, 3, "Y", "NOT RELATED"))
    records.sort(key=lambda r: (r[3], r[1]))
    return [
        {"STUDYID": study_id, "DOMAIN": "AE", "USUBJID": patient.patient_id, "AESEQ": i + 1,
         "AETERM": r[0], "AEDECOD": r[1], "AEBODSYS": r[2], "AESTDY": r[3], "AEENDY": r[4],
         "AESEV": _SEVERITY[r[5]], "AETOXGR": r[5], "AESER": r[6], "AEREL": r[7]}
        for i, r in enumerate(records)
    ]


def clinical_tables(patients: list[Patient], visits, study_id: str, effect: str,
                    effect_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``clinical`` and ``adverse_events`` tables of a cohort (deterministic in ``seed``)."""
    scores, aes = [], []
    for p in patients:
        rng = rng_for(seed, "clinical", p.patient_id)
        scores += clinical_scores(p, visits, effect, effect_size, rng)
        aes += adverse_events(p, study_id, rng)
    clinical = pd.DataFrame(scores, columns=["patient_id", "visit", "score", "value"])
    columns = ["STUDYID", "DOMAIN", "USUBJID", "AESEQ", "AETERM", "AEDECOD", "AEBODSYS",
               "AESTDY", "AEENDY", "AESEV", "AETOXGR", "AESER", "AEREL"]
    return clinical, pd.DataFrame(aes, columns=columns)
