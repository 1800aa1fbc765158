"""Table-level trial simulator: the tidy inputs of :func:`immunomon.stats.analyze` without
events, for calibration studies and tests of the statistics (hundreds of trials a minute).

It mirrors the biology of :mod:`immunomon.simulate.model` (same diseases dealt round-robin,
baselines, patient sd 0.3 on logits, visit sd 0.12, responsiveness ``r_treg = exp(N(0,
0.35))`` clipped to [0.4, 2.1], planted peak effects Treg % of CD4 T ×2 (fraction), Treg
memory odds ×2, Treg Ki67+ odds ×3.5, Treg HLA-DR+ odds ×2.2, CD25 median in Treg ×1.5,
NK CD56bright % of NK ×1.6, and the same time profile), but draws parameter values directly
instead of cells. Cluster counts are negative binomial (dispersion 0.0144, i.e. the 12 % visit
CV) around per-patient cluster proportions; cluster medians are normal around per-cluster
marker levels (arcsinh units). Patients drop out after a random visit (``dropout``), single
visits go missing (``missing``), a few samples fail QC or are excluded.

>>> from immunomon.simulate.tables import simulate_tables
>>> t = simulate_tables(seed=1)
>>> sorted(t)  # doctest: +NORMALIZE_WHITESPACE
['adverse_events', 'clinical', 'cluster_counts', 'cluster_effects', 'cluster_markers',
 'effects', 'parameters', 'patients', 'samples']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from immunomon.simulate.model import (DISEASES as _DISEASE_SHIFTS, EFFECTS, MAX_TREG,
                                      VISIT_SD, _expit, _logit, profile)

VISITS = (("D1", 1), ("D8", 8), ("D15", 15), ("D29", 29), ("D85", 85), ("D183", 183),
          ("D240", 240))
DISEASES = tuple(name for name, _ in _DISEASE_SHIFTS)
#: log shift of the baseline Treg % of CD4 T per disease (as simulate.model).
TREG_SHIFT = {name: shift for name, shift in _DISEASE_SHIFTS if shift}
PATIENT_SD = 0.3
NB_DISPERSION = VISIT_SD ** 2

#: Binary fractions: state -> (parameter, population, baseline probability, patient sd).
FRACTIONS = {
    "treg": ("Treg % of CD4 T", "Treg", 0.045, 0.3),
    "treg_mem": ("Treg memory % of Treg", "Treg memory", 0.55, 0.4),
    "nk_bright": ("NK CD56bright % of NK", "NK CD56bright", 0.07, 0.3),
    "ki67_treg": ("Treg Ki67+ %", "Treg", 0.08, 0.3),
    "hladr_treg": ("Treg HLA-DR+ %", "Treg", 0.15, 0.3),
    "helios_treg": ("Treg HELIOS+ %", "Treg", 0.75, 0.3),
    "ki67_tconv": ("CD4 Tconv Ki67+ %", "CD4 Tconv", 0.03, 0.3),
    "hladr_tconv": ("CD4 Tconv HLA-DR+ %", "CD4 Tconv", 0.05, 0.3),
    "ki67_cd8": ("CD8 T Ki67+ %", "CD8 T", 0.03, 0.3),
    "hladr_cd8": ("CD8 T HLA-DR+ %", "CD8 T", 0.08, 0.4),
    "lymph": ("Lymphocytes % of Live", "Lymphocytes", 0.70, 0.25),
    "t": ("T cells % of Lymphocytes", "T cells", 0.70, 0.25),
    "nk": ("NK % of Lymphocytes", "NK", 0.12, 0.25),
    "b": ("B cells % of Lymphocytes", "B cells", 0.12, 0.25),
    "cd4": ("CD4 T % of T cells", "CD4 T", 0.62, 0.25),
    "cd8": ("CD8 T % of T cells", "CD8 T", 0.30, 0.25),
}
#: Linear medians: state -> (parameter, population, baseline median, patient log sd).
MEDIANS = {
    "cd25_treg": ("CD25 median in Treg", "Treg", 2000.0, 0.15),
    "foxp3_treg": ("FOXP3 median in Treg", "Treg", 1500.0, 0.15),
    "cd25_tconv": ("CD25 median in CD4 Tconv", "CD4 Tconv", 300.0, 0.15),
}
#: Metaclusters: (label, baseline proportion, planted state whose effect it follows or None).
CLUSTERS = (
    ("CD4 T naive", 0.20, None), ("CD4 T memory", 0.17, None), ("CD8 T naive", 0.08, None),
    ("CD8 T memory", 0.07, None), ("Treg naive", 0.010, "treg"), ("Treg memory", 0.012, "treg"),
    ("NK CD56dim", 0.07, None), ("NK CD56bright", 0.006, "nk_bright"), ("B naive", 0.05, None),
    ("B memory", 0.03, None), ("Monocytes classical", 0.15, None),
    ("Monocytes non-classical", 0.02, None), ("DN T", 0.02, None), ("gd T", 0.02, None),
    ("MAIT", 0.015, None), ("pDC", 0.004, None), ("mDC", 0.01, None), ("Basophils", 0.004, None),
    ("Plasmablasts", 0.001, None), ("Rare", 0.00003, None),
)
MARKERS = ("CD25", "CD127", "FOXP3", "CD45RA", "Ki67", "HLA-DR", "HELIOS", "CD56")
SCORES = {"RA": "DAS28", "AS": "BASDAI", "SLE": "SLEDAI", "psoriasis": "PASI"}
AE_TERMS = (  # (SOC, PT, probability per patient, serious, related)
    ("General disorders and administration site conditions", "Injection site reaction", 0.6,
     "N", "Y"),
    ("General disorders and administration site conditions", "Influenza like illness", 0.3,
     "N", "Y"),
    ("General disorders and administration site conditions", "Fatigue", 0.15, "N", "Y"),
    ("Nervous system disorders", "Headache", 0.15, "N", "N"),
    ("Infections and infestations", "Nasopharyngitis", 0.12, "N", "N"),
    ("Infections and infestations", "Appendicitis", 0.025, "Y", "N"),
)


def _log_fold(state: str, k: float, r: dict) -> tuple[str, float]:
    scale, fold, responder = EFFECTS[state]
    return scale, k * r[responder] * np.log(fold)


def _sample_values(base: dict, r: dict, k: float, lymph: float, rng,
                   extra: dict[str, float] | None = None) -> dict[str, float]:
    """Parameter string -> value for one sample of a patient (``k`` = effect at the visit;
    ``extra``: state -> log odds shift of off-target effects at the visit)."""
    logits = {s: v + rng.normal(0.0, VISIT_SD) for s, v in base["logit"].items()}
    for s, shift in (extra or {}).items():
        logits[s] += shift
    for s in ("treg", "treg_mem", "ki67_treg", "hladr_treg", "nk_bright"):
        scale, lf = _log_fold(s, k, r)
        if scale == "odds":
            logits[s] += lf
        else:
            logits[s] = float(_logit(min(_expit(logits[s]) * np.exp(lf), MAX_TREG)))
    p = {s: float(_expit(v)) for s, v in logits.items()}
    med = {s: v * np.exp(rng.normal(0.0, VISIT_SD / 2)) for s, v in base["median"].items()}
    med["cd25_treg"] *= np.exp(_log_fold("cd25_treg", k, r)[1])
    out = {FRACTIONS[s][0]: 100 * v for s, v in p.items()}
    out["Treg naive % of Treg"] = 100 * (1 - p["treg_mem"])
    out["CD4 Tconv % of CD4 T"] = 100 * (1 - p["treg"])
    out["NK CD56dim % of NK"] = 100 * (1 - p["nk_bright"])
    out.update({MEDIANS[s][0]: v for s, v in med.items()})
    lymph = lymph * np.exp(rng.normal(0.0, VISIT_SD))
    t, cd4 = lymph * p["t"], lymph * p["t"] * p["cd4"]
    out.update({"T cells count/uL": t, "CD4 T count/uL": cd4, "CD8 T count/uL": t * p["cd8"],
                "Treg count/uL": cd4 * p["treg"], "NK count/uL": lymph * p["nk"],
                "B cells count/uL": lymph * p["b"],
                "Treg/CD4 Tconv ratio": p["treg"] / (1 - p["treg"]),
                "CD4 T/CD8 T ratio": p["cd4"] / p["cd8"]})
    return out


def _measure(parameter: str) -> tuple[str, str]:
    """(population, measure) of a parameter string of this simulator."""
    for s, (name, pop, *_) in {**FRACTIONS, **MEDIANS}.items():
        if name == parameter:
            return pop, ("median" if s in MEDIANS else ("pct_positive" if "+ %" in name
                                                          else "percent"))
    if parameter.endswith("count/uL"):
        return parameter[: -len(" count/uL")], "count_per_ul"
    if parameter.endswith("ratio"):
        return parameter.split("/")[0], "ratio"
    return parameter.split(" % of ")[0], "percent"


def _state_of(name: str) -> str:
    """The binary state of a fraction parameter string (or the state name itself)."""
    for s, (parameter, *_) in FRACTIONS.items():
        if name in (s, parameter):
            return s
    raise ValueError(f"off_target: {name!r} is not a fraction of the simulator "
                     f"({', '.join(v[0] for v in FRACTIONS.values())})")


def simulate_tables(patients: int = 46, visits=VISITS, *, seed: int = 1,
                    effect: str = "planted", effect_size: float = 1.0, dropout: float = 0.1,
                    missing: float = 0.03, qc_fail: float = 0.02, n_clusters: int = 20,
                    events: tuple[int, int] = (20_000, 60_000), arms: tuple[str, ...] | None = None,
                    off_target: dict[str, float] | None = None) -> dict[str, pd.DataFrame]:
    """Simulate the tidy tables of one trial.

    Parameters
    ----------
    patients
        Number of patients, dealt round-robin over the 11 diseases.
    visits
        ``(name, study day)`` pairs, the baseline first.
    seed
        Seed of the random generator (same seed -> identical tables).
    effect, effect_size
        ``"planted"`` (the effects above, log fold changes scaled by ``effect_size``) or
        ``"none"`` (null trial).
    dropout, missing, qc_fail
        Probability that a patient drops out after a random visit from the third on; that a
        single post-baseline visit is missing; that a sample fails QC.
    n_clusters
        Number of metaclusters (<= 20; the first ``n_clusters`` of :data:`CLUSTERS`).
    events
        Range of events per sample (uniform) for the cluster counts.
    arms
        Treatment arms, the control first (e.g. ``("placebo", "ld-IL2")``): patients are
        randomised in balanced blocks and the treatment effects (planted and off-target)
        act only in the other arms; ``samples`` gets an ``arm`` column. None: one arm.
    off_target
        Extra effects on fractions the treatment does not change in the model trial, as
        odds fold at the peak visit with the same time profile (e.g. ``{"CD8 T Ki67+ %":
        3.0}``), in every treated patient.

    Returns
    -------
    dict of DataFrames: ``samples``, ``parameters``, ``cluster_counts``, ``cluster_markers``,
    ``clinical``, ``adverse_events``, ``patients`` (inputs of :func:`immunomon.stats.analyze`),
    ``effects`` (parameter, visit, fold_change, log2_fold_change, kind: planted effects of the
    typical patient, r = 1) and ``cluster_effects`` (cluster, label, visit, log2_fold_change, kind).
    """
    if effect not in ("planted", "none"):
        raise ValueError("effect must be 'planted' or 'none'")
    rng = np.random.default_rng(seed)
    size = effect_size if effect == "planted" else 0.0
    visits = [(str(v), float(d)) for v, d in visits]
    clusters = CLUSTERS[:n_clusters]
    base_prop = np.array([c[1] for c in clusters])
    marker_level = np.random.default_rng(12345).uniform(0.5, 4.0, (len(clusters), len(MARKERS)))
    sample_rows, par_rows, count_rows, marker_rows, clin_rows, ae_rows, pat_rows = ([] for _ in range(7))
    if arms:
        blocks = [np.random.default_rng([seed, b]).permutation(len(arms))
                  for b in range(-(-patients // len(arms)))]
        arm_of = [arms[int(x)] for x in np.concatenate(blocks)[:patients]]
    extra = {_state_of(k): np.log(v) for k, v in (off_target or {}).items()}
    for i in range(patients):
        pid, disease = f"P{i + 1:03d}", DISEASES[i % len(DISEASES)]
        arm = arm_of[i] if arms else ""
        treated = not arms or arm != arms[0]
        pat_rows.append((pid, disease))
        base = {"logit": {}, "median": {}}
        for s, (_, _, p0, sd) in FRACTIONS.items():
            dev = rng.normal(0.0, sd)
            if s == "treg":
                base["logit"][s] = float(_logit(min(p0 * np.exp(dev + TREG_SHIFT.get(disease, 0)), MAX_TREG)))
            else:
                base["logit"][s] = float(_logit(p0) + dev)
        for s, (_, _, m0, sd) in MEDIANS.items():
            base["median"][s] = m0 * np.exp(rng.normal(0.0, sd))
        z = rng.normal(0.0, 0.35)
        r = {"treg": float(np.clip(np.exp(z), 0.4, 2.1)),
             "nk": float(np.clip(np.exp(0.5 * z + rng.normal(0.0, 0.15)), 0.55, 1.5))}
        lymph = 1800.0 * np.exp(rng.normal(0.0, 0.3))
        log_prop = np.log(base_prop) + rng.normal(0.0, 0.25, len(clusters))
        marker_shift = rng.normal(0.0, 0.06, len(MARKERS))
        last = len(visits)
        if rng.random() < dropout and len(visits) > 2:
            last = int(rng.integers(2, len(visits)))
        for j, (visit, day) in enumerate(visits[:last]):
            if j > 0 and rng.random() < missing:
                continue
            sid = f"{pid}_{visit}"
            k = profile(day) * size * treated
            qc = bool(rng.random() >= qc_fail)
            sample_rows.append((sid, pid, disease, arm, visit, day, "treg", qc, ""))
            shifts = {st: profile(day) * treated * lf for st, lf in extra.items()}
            for name, value in _sample_values(base, r, k, lymph, rng, shifts).items():
                par_rows.append((sid, name, value if qc else value * 5.0))
            lp = log_prop.copy()
            for c, (_, _, state) in enumerate(clusters):
                if state is not None:
                    lp[c] += _log_fold(state, k, r)[1]
            mu = rng.integers(*events) * np.exp(lp) / np.exp(lp).sum()
            n_nb = 1.0 / NB_DISPERSION
            counts = rng.negative_binomial(n_nb, n_nb / (n_nb + mu))
            for c, (label, _, state) in enumerate(clusters):
                count_rows.append((sid, c + 1, label, int(counts[c])))
                if counts[c] == 0:
                    continue
                level = marker_level[c] + marker_shift
                if state == "treg":
                    level = level + k * r["treg"] * np.array([0.25 if m == "CD25" else 0.4 if m == "Ki67" else 0.0 for m in MARKERS])
                noise = rng.normal(0.0, 0.04 + 0.5 / np.sqrt(counts[c]), len(MARKERS))
                for m, v in zip(MARKERS, level + noise):
                    marker_rows.append((sid, c + 1, label, m, float(v)))
        _clinical(pid, disease, visits[:last], size * treated, r["treg"], rng, clin_rows)
        _adverse_events(pid, rng, ae_rows)
    samples = pd.DataFrame(sample_rows, columns=["sample_id", "patient_id", "disease", "arm", "visit",
                                                 "day", "panel", "qc_pass", "excluded_reason"])
    if len(samples) > 3:  # one excluded sample, as a manifest exclusion would give
        samples.loc[3, "excluded_reason"] = "haemolysed (simulated exclusion)"
    params = pd.DataFrame(par_rows, columns=["sample_id", "parameter", "value"])
    pm = {p: _measure(p) for p in params["parameter"].unique()}
    params.insert(2, "population", params["parameter"].map(lambda p: pm[p][0]))
    params.insert(3, "measure", params["parameter"].map(lambda p: pm[p][1]))
    return {
        "samples": samples,
        "parameters": params,
        "cluster_counts": pd.DataFrame(count_rows, columns=["sample_id", "cluster", "label", "count"]),
        "cluster_markers": pd.DataFrame(marker_rows, columns=["sample_id", "cluster", "label", "marker", "median"]),
        "clinical": pd.DataFrame(clin_rows, columns=["patient_id", "visit", "score", "value"]),
        "adverse_events": pd.DataFrame(ae_rows, columns=["USUBJID", "AETERM", "AEDECOD", "AEBODSYS", "AESTDY",
                                                         "AESEV", "AETOXGR", "AESER", "AEREL"]),
        "patients": pd.DataFrame(pat_rows, columns=["patient_id", "disease"]),
        "effects": _effects_table(visits, size),
        "cluster_effects": _cluster_effects(clusters, visits, size),
    }


def _effects_table(visits, size: float) -> pd.DataFrame:
    """Noise-free fold changes of the typical patient (r = 1), as ``truth/effects.csv``."""
    class _Zero:
        def normal(self, loc, scale=None, size=None):
            return 0.0

    base = {"logit": {s: float(_logit(p0)) for s, (_, _, p0, _) in FRACTIONS.items()},
            "median": {s: m0 for s, (_, _, m0, _) in MEDIANS.items()}}
    r = {"treg": 1.0, "nk": 1.0}
    v0 = _sample_values(base, r, 0.0, 1800.0, _Zero())
    planted = {FRACTIONS[s][0] if s in FRACTIONS else MEDIANS[s][0] for s in EFFECTS} if size else set()
    rows = []
    for visit, day in visits[1:]:
        v = _sample_values(base, r, profile(day) * size, 1800.0, _Zero())
        for name in sorted(v):
            fold = v[name] / v0[name]
            log2 = float(np.log2(fold))
            kind = "none" if abs(log2) < 1e-9 else ("planted" if name in planted else "derived")
            rows.append((name, visit, round(float(fold), 6), round(log2, 6) if kind != "none" else 0.0, kind))
    return pd.DataFrame(rows, columns=["parameter", "visit", "fold_change", "log2_fold_change", "kind"])


def _cluster_effects(clusters, visits, size: float) -> pd.DataFrame:
    """True log2 change of each cluster's proportion for r = 1 (after renormalising:
    clusters that follow a planted state are ``planted``, the others shrink a little as the
    planted ones grow, ``compositional``)."""
    base = np.array([c[1] for c in clusters])
    base = base / base.sum()
    rows = []
    for visit, day in visits[1:]:
        lf = np.array([_log_fold(state, profile(day) * size, {"treg": 1.0, "nk": 1.0})[1]
                       if state else 0.0 for _, _, state in clusters])
        prop = base * np.exp(lf)
        log2 = np.log2(prop / prop.sum() / base)
        for c, (label, _, state) in enumerate(clusters):
            kind = "none" if abs(log2[c]) < 1e-9 else ("planted" if state else "compositional")
            rows.append((c + 1, label, visit, float(log2[c]), kind))
    return pd.DataFrame(rows, columns=["cluster", "label", "visit", "log2_fold_change", "kind"])


def _clinical(pid, disease, visits, size, r_treg, rng, rows) -> None:
    """CGI-S (1-7), CGI-E (1-4, 1 = marked efficacy) and EQ-5D VAS; a disease activity score
    for RA/AS/SLE/psoriasis. Improvement grows with the Treg responsiveness when planted."""
    gain = size * (r_treg - 0.5)
    cgi0 = int(rng.integers(3, 6))
    act0 = rng.uniform(3.5, 6.5)
    vas0 = rng.uniform(40, 70)
    for visit, day in visits:
        late = day >= 85
        if day == visits[0][1] or late:
            rows.append((pid, visit, "CGI-S", float(np.clip(round(cgi0 - (gain + rng.normal(0, 0.7)) * late), 1, 7))))
            rows.append((pid, visit, "EQ-5D VAS", float(np.clip(vas0 + late * (10 * gain + rng.normal(0, 8)), 0, 100))))
            if disease in SCORES:
                rows.append((pid, visit, SCORES[disease], float(max(act0 - late * (1.2 * gain + rng.normal(0, 0.6)), 0))))
        if late:
            rows.append((pid, visit, "CGI-E", float(np.clip(round(3 - gain + rng.normal(0, 0.7)), 1, 4))))


def _adverse_events(pid, rng, rows) -> None:
    """Mostly mild injection-site and flu-like events in the first week."""
    for soc, pt, prob, serious, related in AE_TERMS:
        if rng.random() >= prob:
            continue
        for _ in range(1 + int(rng.random() < 0.3)):
            grade = 3 if serious == "Y" else int(rng.choice([1, 1, 1, 2]))
            sev = {1: "MILD", 2: "MODERATE", 3: "SEVERE"}[grade]
            day = int(rng.integers(1, 8)) if related == "Y" else int(rng.integers(1, 241))
            rows.append((pid, pt, pt, soc, day, sev, grade, serious, related))


def simulate_endpoint(patients: int = 46, visits=VISITS, *, seed: int = 1,
                      effect: float = 0.0, response_sd: float = 0.0, response_visit: str | None = None,
                      visit_sd=VISIT_SD, patient_sd: float = PATIENT_SD, baseline_pct: float = 5.0,
                      mar_dropout: float = 0.0, dropout_after: str = "D29",
                      arms: tuple[str, ...] | None = None) -> dict[str, pd.DataFrame]:
    """One percentage end point of one trial, drawn on the logit scale: the calibration
    bench of the supervised statistics (thousands of trials; hundreds a second).

    ``logit(value / 100) = logit(baseline_pct / 100) + u_i + profile(day) (effect + s_i) +
    e_iv`` with the patient effect u_i ~ N(0, ``patient_sd``), the visit noise e_iv ~ N(0,
    ``visit_sd``) (a number, or one per visit: unequal visit variances), the mean effect
    ``effect`` (log odds ratio at the peak, in treated patients only) and a patient-specific
    response s_i ~ N(0, ``response_sd``) (heterogeneous response with mean zero; only at
    ``response_visit`` when given, else with the time profile).

    ``mar_dropout``: probability that a patient leaves after ``dropout_after``, missing at
    random: the chance grows with the value observed at that visit (logistic, slope 2 per
    unit of the visit's sd), so completers are a biased subset at later visits.
    ``arms``: randomised 1:1 (balanced blocks), the control first; effects act only in the
    other arms.

    Returns ``samples`` (sample_id, patient_id, disease (empty), arm, visit, day, panel,
    qc_pass, excluded_reason) and ``parameters`` (one parameter, ``Treg % of CD4 T``,
    measure ``percent``).
    """
    rng = np.random.default_rng(seed)
    visits = [(str(v), float(d)) for v, d in visits]
    sd = np.broadcast_to(np.asarray(visit_sd, float), (len(visits),))
    n_arms = len(arms) if arms else 1
    arm_idx = (np.concatenate([rng.permutation(n_arms) for _ in range(-(-patients // n_arms))])
               [:patients] if arms else np.zeros(patients, int))
    u = rng.normal(0.0, patient_sd, patients)
    s_i = rng.normal(0.0, response_sd, patients)
    e = rng.normal(0.0, 1.0, (patients, len(visits))) * sd
    leave = rng.random(patients)
    day = np.array([d for _, d in visits])
    prof = np.array([profile(d) for d in day])
    if response_visit is not None:
        shape = np.array([float(v == response_visit) for v, _ in visits])
    else:
        shape = prof
    treated = (arm_idx > 0) if arms else np.ones(patients, bool)
    y = (_logit(baseline_pct / 100) + u[:, None] + e + shape[None] * s_i[:, None]
         + prof[None] * effect * treated[:, None])
    names = [v for v, _ in visits]
    last = np.full(patients, len(visits))
    if mar_dropout > 0 and dropout_after in names:
        j = names.index(dropout_after)
        z = (y[:, j] - y[:, j].mean()) / y[:, j].std()
        p_leave = _expit(_logit(mar_dropout) + 2.0 * z)
        last = np.where(leave < p_leave, j + 1, last)
    rows, par = [], []
    for i in range(patients):
        pid = f"P{i + 1:03d}"
        arm = arms[arm_idx[i]] if arms else ""
        for j in range(last[i]):
            sid = f"{pid}_{names[j]}"
            rows.append((sid, pid, "", arm, names[j], day[j], "treg", True, ""))
            par.append((sid, "Treg % of CD4 T", "Treg", "percent", 100 * float(_expit(y[i, j]))))
    return {"samples": pd.DataFrame(rows, columns=["sample_id", "patient_id", "disease", "arm",
                                                   "visit", "day", "panel", "qc_pass",
                                                   "excluded_reason"]),
            "parameters": pd.DataFrame(par, columns=["sample_id", "parameter", "population",
                                                     "measure", "value"])}
