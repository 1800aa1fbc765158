"""Write a complete simulated study folder (see :func:`simulate_study`)."""

from __future__ import annotations

import datetime as dt
import math
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from immunomon.atomic import atomic_path, atomic_write, write_csv
from immunomon.errors import UserError
from immunomon.io.fcs import write_fcs

from .clinical import clinical_tables
from .events import ARTEFACTS, LABELS, apply_batch_effect, simulate_events
from .model import DISEASES, Patient, make_patient, rng_for, sample_state
from .panel import (CHANNELS, COFACTOR, FLUORESCENCE, FLUOR_CHANNELS, MARKER_ROLES, LABELS as CHANNEL_LABELS,
                    MARKERS, RANGE, SCATTER_CHANNELS, TIMESTEP, spillover_matrix)
from .truth import HIERARCHY, effects_table, sample_truth

DEFAULT_VISITS = ("D1", "D8", "D15", "D29", "D85", "D183", "D240")
STUDY_ID = "SIM-LDIL2"
PANEL = "treg"
#: Samples per acquisition batch (batches are drawn at random, not by visit).
BATCH_SIZE = 24
_FIRST_BATCH_DATE = dt.date(2024, 1, 8)
#: The bridge-control donor of studies simulated with ``batches`` (one aliquot per batch).
CONTROL_DONOR = "CTRL"


def _visit_days(visits) -> tuple[list[tuple[str, int]], list[str]]:
    """(visit, day) pairs of visit names ``D<day>``, and the problems of the list."""
    out, problems = [], []
    for v in visits:
        m = re.fullmatch(r"D(-?\d+)", str(v).strip())
        if m is None:
            problems.append(f"--visits: '{v}' is not a visit name of the form D<day> (e.g. D8)")
        else:
            out.append((str(v).strip(), int(m.group(1))))
    names = [v for v, _ in out]
    if len(set(names)) != len(names):
        problems.append(f"--visits: repeated visit in {','.join(names)}")
    if not visits:
        problems.append("--visits: at least one visit is needed")
    return out, problems


def _batch_gains(seed: int, n_batches: int) -> np.ndarray:
    """(n_batches, 18) multiplicative gains of FSC-A, FSC-H, SSC-A and the 15 detectors."""
    gains = np.empty((n_batches, 3 + len(MARKERS)))
    for b in range(n_batches):
        rng = rng_for(seed, "batch", str(b))
        scatter = np.exp(rng.normal(0.0, 0.02))
        gains[b, :3] = scatter
        gains[b, 3:] = np.exp(rng.normal(0.0, 0.04, len(MARKERS)))
    return gains


def _batch_effects(seed: int, n_batches: int, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Per batch and marker (n_batches, 15): shift ~ N(0, size) arcsinh units and scale
    ``exp(N(0, size / 3))`` on the transformed scale."""
    shift, scale = np.zeros((n_batches, len(MARKERS))), np.ones((n_batches, len(MARKERS)))
    for b in range(n_batches):
        rng = rng_for(seed, "batch-effect", str(b))
        shift[b] = rng.normal(0.0, size, len(MARKERS))
        scale[b] = np.exp(rng.normal(0.0, size / 3, len(MARKERS)))
    return shift, scale


def _assign_batches(seed: int, cohort, visit_days, n_batches: int, confound: float) -> list[int]:
    """Batch (0-based) of every patient × visit sample, patient-major: a seeded share
    ``confound`` of the patients has its k-th visit in batch ``k mod n_batches`` (visits
    confounded with batches); the other samples are dealt evenly over the batches at random."""
    n_conf = int(round(confound * len(cohort)))
    conf = set(rng_for(seed, "confounded").permutation(len(cohort))[:n_conf].tolist())
    batch, free = [], []
    for i in range(len(cohort)):
        for k in range(len(visit_days)):
            batch.append(k % n_batches if i in conf else -1)
            if i not in conf:
                free.append(len(batch) - 1)
    order = rng_for(seed, "batches").permutation(len(free))
    for j, pos in enumerate(order):
        batch[free[pos]] = j % n_batches
    return batch


#: The model trial's analysis plan: key secondary end points (tested in this order at the
#: primary visit) and the selectivity sets (targets: the Treg response; off-targets:
#: effector T-cell activation, which ld-IL2 should leave unchanged).
KEY_SECONDARY = ("Treg Ki67+ %", "CD25 median in Treg", "NK CD56bright % of NK")
SELECTIVITY_TARGETS = ("Treg % of CD4 T", "Treg Ki67+ %", "Treg HLA-DR+ %", "CD25 median in Treg")
SELECTIVITY_OFF_TARGETS = ("CD4 Tconv Ki67+ %", "CD4 Tconv HLA-DR+ %", "CD8 T Ki67+ %",
                           "CD8 T HLA-DR+ %", "CD25 median in CD4 Tconv")


def analysis_plan(visits: list[str], arms: tuple[str, ...] | None = None) -> dict:
    """The ``analysis:`` block of the model trial: primary Treg % of CD4 T at D8 (the first
    visit after baseline when D8 is not a visit) as change from baseline (single arm) or
    the difference between arms in that change (``arms``: control first); with a single
    visit, the arms compared at that visit (no plan end point without arms)."""
    plan = {"alpha": 0.05, "min_patients": 6}
    if arms:
        plan["control_arm"] = arms[0]
    if len(visits) == 1:
        if arms:
            plan["reference_group"] = arms[0]
            plan["primary"] = [{"parameter": "Treg % of CD4 T", "visits": list(visits),
                                "comparison": "group_difference", "method": "welch_t"}]
        return plan
    peak = "D8" if "D8" in visits[1:] else visits[1]
    comparison = "arm_difference" if arms else "change_from_baseline"
    plan["primary"] = [{"parameter": "Treg % of CD4 T", "visits": [peak],
                        "comparison": comparison, "method": "mmrm"}]
    plan["key_secondary"] = {"strategy": "fixed_sequence", "endpoints": [
        {"parameter": name, "visits": [peak], "comparison": comparison}
        for name in KEY_SECONDARY]}
    plan["responder"] = {"ratio": 1.25}
    plan["selectivity"] = {"targets": list(SELECTIVITY_TARGETS),
                           "off_targets": list(SELECTIVITY_OFF_TARGETS), "margins": [0.8, 1.25]}
    return plan


def _study_yaml(visits, seed: int, arms: tuple[str, ...] | None = None) -> dict:
    channels = {c: {"marker": c, "class": "none", "role": "time" if c == "Time" else "scatter"}
                for c in SCATTER_CHANNELS}
    channels.update({c: {"marker": m, "fluorochrome": f, **MARKER_ROLES.get(m, {"class": "type", "role": "marker"})}
                     for c, m, f in FLUORESCENCE})
    return {
        "study_id": STUDY_ID,
        "description": ("Simulated randomised low-dose IL-2 trial (immunomon simulate --arms)"
                        if arms else "Simulated low-dose IL-2 basket trial (immunomon simulate)"),
        "seed": seed,
        "visits": [{"name": v, "day": d} for v, d in visits],
        "baseline": visits[0][0],
        "panels": {PANEL: {
            "instrument": "flow",
            "channels": channels,
            "transform": {"type": "arcsinh", "cofactor": COFACTOR},
            "gating": {"template": "treg"},
            "clustering": {"markers": [m for m in MARKERS if m != "Viability"],
                           "grid": [10, 10], "metaclusters": 20},
            "qc": {"dead_bounds": [1.0, 4.0]},  # the simulated dye's live/dead valley (arcsinh 150)
        }},
        "exclusions": [],
        "analysis": analysis_plan([v for v, _ in visits], arms),
    }


def _simulate_file(job: dict) -> tuple[np.ndarray, dict]:
    """Simulate, write and summarise one FCS file (runs in a worker process)."""
    spill = spillover_matrix()
    rng = rng_for(job["seed"], "events", job["sample_id"])
    # a bridge control's aliquots share one blood sample: no visit-to-visit variation
    state = sample_state(job["patient"], job["day"], effect=job["effect"],
                         effect_size=job["effect_size"], rng=None if job["control"] else rng)
    sim = simulate_events(state, job["events"], rng, spill, job["gain"])
    counts, params = sample_truth(sim, np.linalg.inv(spill), state.lymph_per_ul)
    events = sim.events
    if job.get("shift") is not None:  # after the truth: the biology is not the batch's
        events = apply_batch_effect(events, spill, job["shift"], job["scale"])
    root = Path(job["root"])
    keywords = {
        "$CYT": "immunomon simulator", "$DATE": job["date"], "$SMNO": job["sample_id"],
        "$SRC": job["patient"].patient_id, "$FIL": f"{job['sample_id']}.fcs",
        "$TIMESTEP": repr(TIMESTEP), "$PROJ": STUDY_ID,
    }
    write_fcs(root / "fcs" / f"{job['sample_id']}.fcs", events, CHANNELS, CHANNEL_LABELS,
              ranges=[RANGE] * len(CHANNELS),
              spillover=pd.DataFrame(spill, index=FLUOR_CHANNELS, columns=FLUOR_CHANNELS),
              keywords=keywords)
    table = pa.table({
        "population": pa.DictionaryArray.from_arrays(pa.array(sim.population), pa.array(LABELS)),
        "artefact": pa.DictionaryArray.from_arrays(pa.array(sim.artefact), pa.array(ARTEFACTS)),
    })
    with atomic_path(root / "truth" / "events" / f"{job['sample_id']}.parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return counts, {"params": params, "lymph_per_ul": state.lymph_per_ul}


def randomise(patient_ids: list[str], arms: tuple[str, ...], seed: int) -> dict[str, str]:
    """Patient -> arm, randomised in balanced blocks of ``len(arms)`` (1:1 for two arms)."""
    rng = rng_for(seed, "randomisation")
    order = np.concatenate([rng.permutation(len(arms))
                            for _ in range(-(-len(patient_ids) // len(arms)))])
    return {pid: arms[int(k)] for pid, k in zip(patient_ids, order)}


def simulate_study(out_dir, patients: int = 46, visits=DEFAULT_VISITS, events: int = 50_000,
                   seed: int = 1, effect: str = "planted", effect_size: float = 1.0, *,
                   arms: tuple[str, ...] | None = None, workers: int = 1,
                   overwrite: bool = False, batches: int | None = None,
                   batch_effect: float = 0.0, confound: float = 0.0) -> Path:
    """Simulate a low-dose IL-2 basket trial and write it as a study folder.

    Parameters
    ----------
    out_dir
        Folder to create (must be absent or empty unless ``overwrite``).
    patients
        Number of patients, dealt round-robin over the 11 diseases.
    visits
        Visit names ``D<day>``; the first is the baseline.
    events
        Events per FCS file (including debris, doublets, dead cells).
    seed
        Master seed; every file has its own stream derived from (seed, sample id).
    effect
        ``"planted"`` (treatment effects of :mod:`.model`) or ``"none"`` (null trial: same
        patients and noise, no effect).
    effect_size
        Multiplies every planted log fold change.
    arms
        Treatment arms, the control first (e.g. ``("placebo", "ld-IL2")``): patients are
        randomised 1:1 (balanced blocks), the treatment effects act only in the other arms,
        ``samples.csv`` gets the ``arm`` column and the plan compares the arms.
    workers
        Processes that write FCS files in parallel (the output does not depend on it).
    overwrite
        Allow writing into a non-empty folder.
    batches
        Number of acquisition batches, each with one bridge control (an aliquot of the same
        healthy donor, ``control`` true in samples.csv, sample id ``CTRL_B01`` …, at the
        baseline visit). ``None``: batches of about 24 samples drawn at random, no controls.
    batch_effect
        With ``batches``: size of the per-batch, per-marker effect on the transformed scale
        (shift sd in arcsinh units; scale log-sd ``batch_effect / 3``), applied to every
        file of the batch after its truth is taken (:func:`.events.apply_batch_effect`).
    confound
        With ``batches``: share of the patients whose k-th visit is acquired in batch
        ``k mod batches`` (e.g. D1 in batch 1 and D8 in batch 2); the other samples are
        spread at random.

    Returns
    -------
    The study folder: ``study.yaml``, ``samples.csv``, ``clinical.csv``,
    ``adverse_events.csv``, ``fcs/<sample_id>.fcs`` and ``truth/`` (``events/<sample_id>.parquet``,
    ``populations.csv``, ``parameters.csv``, ``effects.csv``, ``patients.csv``).
    """
    problems = []
    if effect not in ("planted", "none"):
        problems.append(f"--effect: '{effect}' is not one of planted, none")
    if int(patients) < 1:
        problems.append(f"--patients: {patients} (need at least 1)")
    if int(events) < 100:
        problems.append(f"--events: {events} (need at least 100)")
    if not math.isfinite(float(effect_size)):
        problems.append(f"--effect-size: {effect_size} is not a finite number")
    if arms is not None and (len(arms) < 2 or len(set(arms)) != len(arms) or not all(arms)):
        problems.append(f"--arms: {','.join(arms)} (need two or more distinct names, the "
                        f"control first)")
    visit_days, vp = _visit_days(list(visits))
    problems += vp
    if batches is None and (batch_effect or confound):
        problems.append("--batch-effect and --confound need --batches")
    if batches is not None and int(batches) < 1:
        problems.append(f"--batches: {batches} (need at least 1)")
    if not (math.isfinite(float(batch_effect)) and float(batch_effect) >= 0):
        problems.append(f"--batch-effect: {batch_effect} is not a size >= 0")
    if not 0 <= float(confound) <= 1:
        problems.append(f"--confound: {confound} is not a share between 0 and 1")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()) and not overwrite:
        problems.append(f"{root}: folder exists and is not empty")
    if problems:
        raise UserError(problems)
    (root / "fcs").mkdir(parents=True, exist_ok=True)
    (root / "truth" / "events").mkdir(parents=True, exist_ok=True)

    cohort: list[Patient] = []
    for i in range(int(patients)):
        pid = f"P{i + 1:03d}"
        disease = DISEASES[i % len(DISEASES)][0]
        cohort.append(make_patient(pid, disease, rng_for(seed, "patient", pid)))

    arm_of = randomise([p.patient_id for p in cohort], tuple(arms), seed) if arms else {}
    treated = {p.patient_id: not arms or arm_of[p.patient_id] != arms[0] for p in cohort}
    samples = [(p, v, d) for p in cohort for v, d in visit_days]
    if batches is None:
        n_batches = max(1, round(len(samples) / BATCH_SIZE))
        order = rng_for(seed, "batches").permutation(len(samples))
        batch_of = np.empty(len(samples), dtype=int)
        batch_of[order] = np.arange(len(samples)) % n_batches
    else:  # bridge controls: one aliquot of the same donor's baseline sample per batch
        n_batches = int(batches)
        batch_of = np.array(_assign_batches(seed, cohort, visit_days, n_batches, confound))
        donor = make_patient(CONTROL_DONOR, DISEASES[0][0], rng_for(seed, "patient", "CTRL"))
        samples += [(donor, visit_days[0][0], visit_days[0][1])] * n_batches
        batch_of = np.concatenate([batch_of, np.arange(n_batches)])
        shift, scale = _batch_effects(seed, n_batches, float(batch_effect))
    gains = _batch_gains(seed, n_batches)

    jobs = []
    for (p, v, d), b in zip(samples, batch_of):
        date = _FIRST_BATCH_DATE + dt.timedelta(days=7 * int(b))
        control = p.patient_id == CONTROL_DONOR
        jobs.append({
            "sample_id": f"CTRL_B{b + 1:02d}" if control else f"{p.patient_id}_{v}",
            "patient": p, "day": d, "seed": seed,
            "effect": "none" if control or not treated[p.patient_id] else effect,
            "effect_size": float(effect_size),
            "events": int(events), "gain": gains[b], "root": str(root),
            "date": date.strftime("%d-%b-%Y").upper(), "control": control,
        })
        if batches is not None and batch_effect:
            jobs[-1].update(shift=shift[b], scale=scale[b])
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_simulate_file, jobs, chunksize=4))
    else:
        results = [_simulate_file(j) for j in jobs]

    rows, pops, params = [], [], []
    for (p, v, d), b, job, (counts, info) in zip(samples, batch_of, jobs, results):
        sid = job["sample_id"]
        rows.append({"sample_id": sid, "file": f"fcs/{sid}.fcs", "patient_id": p.patient_id,
                     "disease": "healthy" if job["control"] else p.disease,
                     **({"arm": arm_of[p.patient_id]} if arms and not job["control"] else {}),
                     "visit": v, "panel": PANEL, "batch": f"B{b + 1:02d}", "dataset": 1,
                     "lymphocytes_per_ul": round(info["lymph_per_ul"], 1)})
        if batches is not None:
            rows[-1]["control"] = str(job["control"]).lower()
        total = counts[0]
        for (pop, parent), count in zip(HIERARCHY.items(), counts):
            denom = counts[list(HIERARCHY).index(parent)] if parent else total
            pops.append((sid, pop, parent or "", int(count), count / denom if denom else np.nan,
                         count / total if total else np.nan))
        params += [(sid, k, val) for k, val in info["params"].items()]

    if batches is not None:
        write_csv(pd.DataFrame([{"batch": f"B{b + 1:02d}", "marker": m,
                                 "shift": round(shift[b, j], 6), "scale": round(scale[b, j], 6)}
                                for b in range(n_batches) for j, m in enumerate(MARKERS)]),
                  root / "truth" / "batch_effects.csv")
    write_csv(pd.DataFrame(rows), root / "samples.csv")
    write_csv(pd.DataFrame(pops, columns=["sample_id", "population", "parent", "count",
                                          "freq_parent", "freq_total"]),
              root / "truth" / "populations.csv", float_format="%.6g")
    write_csv(pd.DataFrame(params, columns=["sample_id", "parameter", "value"]),
              root / "truth" / "parameters.csv", float_format="%.6g")
    write_csv(effects_table(visit_days, visit_days[0][0], effect=effect,
                            effect_size=float(effect_size)), root / "truth" / "effects.csv")
    write_csv(pd.DataFrame([{"patient_id": p.patient_id, "disease": p.disease,
                             **({"arm": arm_of[p.patient_id]} if arms else {}),
                             "treg_responsiveness": round(p.r_treg, 4),
                             "nk_responsiveness": round(p.r_nk, 4)} for p in cohort]),
              root / "truth" / "patients.csv")
    clinical, aes = clinical_tables(cohort, visit_days, STUDY_ID, effect, float(effect_size),
                                    seed)
    if arms:  # the placebo arm: the same draws without the treatment effect
        control = [p for p in cohort if not treated[p.patient_id]]
        c0, _ = clinical_tables(control, visit_days, STUDY_ID, "none", float(effect_size), seed)
        placebo = clinical["patient_id"].isin([p.patient_id for p in control])
        clinical = pd.concat([clinical[~placebo], c0]).sort_values(
            "patient_id", key=lambda c: c.map({p.patient_id: i for i, p in enumerate(cohort)}),
            kind="stable").reset_index(drop=True)
    write_csv(clinical, root / "clinical.csv")
    write_csv(aes, root / "adverse_events.csv")
    atomic_write(root / "study.yaml", yaml.safe_dump(
        _study_yaml(visit_days, seed, tuple(arms) if arms else None), sort_keys=False))
    return root
