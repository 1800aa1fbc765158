"""The biology of the simulated low-dose IL-2 trial: cohort, visits and planted effects.

Every sample is described by a :class:`SampleState`: the probabilities of the nested
population fractions and cell states, a CD25 intensity factor for Tregs and a lymphocyte
count. A state is built in three layers:

1. **Population baseline** (``BASELINE``): PBMC-like composition — lymphocytes 70 %, monocytes
   18 %, other live cells (granulocytes) 12 % of live cells; T 70 %, NK 12 %, B 12 %, other 6 %
   of lymphocytes; CD4 63 %, CD8 32 %, double-negative 5 % of T cells; Treg 5 % of CD4 T,
   memory (CD45RA-) 55 % of Treg, CD56bright 7 % of NK; Ki67+ 8 % and HLA-DR+ 15 % of Treg,
   3 % / 5 % of CD4 Tconv, 3 % / 8 % of CD8 T; debris 6 % of events, doublets 4 % of cells,
   dead 5 % of singlets.
2. **Patient** (:func:`make_patient`): every logit (or log weight of a composition) moves by a
   normal deviate (sd 0.3, Treg % of CD4 T sd 0.3 on the log scale, i.e. a log-normal with
   median 5 % and 95 % range ~2.8-9 %); diseases shift the Treg baseline (``DISEASES``,
   SLE -0.35, AIH -0.25, GPA -0.15, Crohn -0.1 on the log scale). Each patient has a treatment
   responsiveness ``r_treg = exp(N(0, 0.35))`` clipped to [0.5, 2.0] (D8 Treg fold ×1.4-×4
   at effect size 1) and ``r_nk`` (correlated, clipped to [0.55, 1.5]; CD56bright ×1.3-×2).
3. **Visit** (:func:`sample_state`): a fresh normal deviate (sd 0.12, ≈ 12 % CV of small
   fractions; 0.07 for Treg % of CD4 T) on every logit, then the planted effects ``EFFECTS``
   scaled by ``effect_size × r × profile(day)``. ``profile`` is 0 at D1, 1 at D8, 0.55 at
   D15, 0.45 from D29 to D183 (fortnightly injections), 0.08 at D240 and 0 from D300 (linear
   in between).

Planted effects at the peak for a typical patient (``r = 1``): Treg % of CD4 T ×2 (fraction),
Treg memory odds ×2, Treg Ki67+ odds ×3.5, Treg HLA-DR+ odds ×2.2, CD25 median in Treg ×1.5
(linear MFI), NK CD56bright % of NK ×1.6. Nothing else changes: no CD4 Tconv or CD8 T
activation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

#: (disease, shift of log baseline Treg % of CD4 T); patients are dealt round-robin.
DISEASES = (
    ("RA", 0.0), ("AS", 0.0), ("SLE", -0.35), ("psoriasis", 0.0), ("Behcet", 0.0),
    ("GPA", -0.15), ("Takayasu", 0.0), ("Crohn", -0.1), ("UC", 0.0), ("AIH", -0.25),
    ("SC", 0.0),
)

#: Softmax groups: name -> (component names, baseline proportions).
COMPOSITIONS = {
    "live": (("lymph", "mono", "other_live"), (0.70, 0.18, 0.12)),
    "lymph": (("t", "nk", "b", "other_lymph"), (0.70, 0.12, 0.12, 0.06)),
    "t": (("cd4", "cd8", "dn"), (0.63, 0.32, 0.05)),
}

#: Binary fractions: name -> (baseline probability, patient sd of the logit).
BASELINE = {
    "treg": (0.05, 0.3),
    "treg_mem": (0.55, 0.4),
    "nk_bright": (0.07, 0.3),
    "ki67_treg": (0.08, 0.3),
    "hladr_treg": (0.15, 0.3),
    "helios_treg": (0.75, 0.3),
    "ki67_tconv": (0.03, 0.3),
    "hladr_tconv": (0.05, 0.3),
    "naive_tconv": (0.45, 0.4),
    "ki67_cd8": (0.03, 0.3),
    "hladr_cd8": (0.08, 0.4),
    "naive_cd8": (0.55, 0.4),
    "debris": (0.06, 0.3),
    "doublet": (0.04, 0.3),
    "dead": (0.05, 0.4),
}

#: Planted effects: state name -> (scale, fold change at the peak, responder).
#: ``fraction`` multiplies the probability, ``odds`` its odds, ``intensity`` the linear MFI.
EFFECTS = {
    "treg": ("fraction", 2.0, "treg"),
    "treg_mem": ("odds", 2.0, "treg"),
    "ki67_treg": ("odds", 3.5, "treg"),
    "hladr_treg": ("odds", 2.2, "treg"),
    "cd25_treg": ("intensity", 1.5, "treg"),
    "nk_bright": ("fraction", 1.6, "nk"),
}

#: Time profile of the effects: (study day, fraction of the peak effect).
PROFILE = ((1, 0.0), (8, 1.0), (15, 0.55), (29, 0.45), (85, 0.45), (183, 0.45),
           (240, 0.08), (300, 0.0))

VISIT_SD = 0.12        # visit-to-visit sd of every logit / log weight ...
VISIT_SD_TREG = 0.07   # ... except Treg % of CD4 T (the primary end point is a stable one)
PATIENT_SD_COMPOSITION = 0.25
MARKER_SD = 0.06       # patient sd of each marker's mean (arcsinh units)
LYMPH_PER_UL = (1800.0, 0.3, 0.12)  # median, patient log-sd, visit log-sd
MAX_TREG = 0.5


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """The random generator of one simulator stream, derived from ``(seed, *keys)`` only.

    E.g. ``rng_for(seed, "events", sample_id)``: a file's events do not depend on which
    other samples, patients or visits the study holds.
    """
    digest = hashlib.sha256("\x00".join(keys).encode()).digest()
    words = np.frombuffer(digest[:16], dtype="<u4").tolist()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *words])))


def profile(day: float) -> float:
    """Fraction of the peak effect at a study ``day`` (0 at or before day 1)."""
    days, values = zip(*PROFILE)
    return float(np.interp(day, days, values, left=0.0, right=0.0))


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Patient:
    """Patient-level draws: baseline logits, responsiveness and marker offsets."""

    patient_id: str
    disease: str
    logits: dict[str, float]
    log_weights: dict[str, np.ndarray]
    r_treg: float
    r_nk: float
    marker_shift: np.ndarray  # (15,) arcsinh units, added to every population's mean
    log_lymph_per_ul: float


@dataclass
class SampleState:
    """Probabilities that define one sample (see module docstring).

    ``p`` holds the binary fractions of ``BASELINE`` and the components of ``COMPOSITIONS``
    (``lymph``, ``mono``, ... as fractions of their group); ``cd25_treg`` is the linear
    multiplier of the Treg CD25 intensity; ``lymph_per_ul`` lymphocytes per µL of blood.
    """

    p: dict[str, float]
    cd25_treg: float = 1.0
    lymph_per_ul: float = float("nan")
    marker_shift: np.ndarray = field(default_factory=lambda: np.zeros(15))


def make_patient(patient_id: str, disease: str, rng: np.random.Generator) -> Patient:
    """Draw one patient's baseline, responsiveness and marker offsets."""
    shift = dict(DISEASES)[disease]
    logits = {}
    for name, (p0, sd) in BASELINE.items():
        dev = rng.normal(0.0, sd)
        if name == "treg":  # log-normal on the fraction itself
            logits[name] = float(_logit(min(p0 * np.exp(dev + shift), MAX_TREG)))
        else:
            logits[name] = float(_logit(p0) + dev)
    log_weights = {
        g: np.log(np.array(props)) + rng.normal(0.0, PATIENT_SD_COMPOSITION, len(props))
        for g, (_, props) in COMPOSITIONS.items()
    }
    z = rng.normal(0.0, 0.35)
    r_treg = float(np.clip(np.exp(z), 0.5, 2.0))
    r_nk = float(np.clip(np.exp(0.5 * z + rng.normal(0.0, 0.15)), 0.55, 1.5))
    return Patient(
        patient_id=patient_id,
        disease=disease,
        logits=logits,
        log_weights=log_weights,
        r_treg=r_treg,
        r_nk=r_nk,
        marker_shift=rng.normal(0.0, MARKER_SD, 15),
        log_lymph_per_ul=float(np.log(LYMPH_PER_UL[0]) + rng.normal(0.0, LYMPH_PER_UL[1])),
    )


def typical_patient() -> Patient:
    """The population-median patient (no deviations, ``r = 1``), for the planted effects."""
    return Patient(
        patient_id="typical",
        disease="RA",
        logits={k: float(_logit(p0)) for k, (p0, _) in BASELINE.items()},
        log_weights={g: np.log(np.array(props)) for g, (_, props) in COMPOSITIONS.items()},
        r_treg=1.0,
        r_nk=1.0,
        marker_shift=np.zeros(15),
        log_lymph_per_ul=float(np.log(LYMPH_PER_UL[0])),
    )


def sample_state(patient: Patient, day: float, *, effect: str = "planted",
                 effect_size: float = 1.0, rng: np.random.Generator | None = None
                 ) -> SampleState:
    """The state of ``patient`` at study ``day``.

    ``rng=None`` gives the expected state (no visit noise). ``effect="none"`` (or
    ``effect_size=0``) leaves out the treatment effects.
    """
    def noise(size=None):
        return 0.0 if rng is None else rng.normal(0.0, VISIT_SD, size)

    p: dict[str, float] = {}
    for g, (names, _) in COMPOSITIONS.items():
        w = patient.log_weights[g] + noise(len(names))
        w = np.exp(w - w.max())
        p.update(zip(names, (w / w.sum()).tolist()))
    logits = {k: v + (noise() if k != "treg" or rng is None
                      else rng.normal(0.0, VISIT_SD_TREG)) for k, v in patient.logits.items()}
    cd25 = 1.0
    k = profile(day) * effect_size if effect == "planted" else 0.0
    for name, (scale, fold, responder) in EFFECTS.items():
        r = patient.r_treg if responder == "treg" else patient.r_nk
        log_fold = k * r * np.log(fold)
        if scale == "odds":
            logits[name] += log_fold
        elif scale == "intensity":
            cd25 = float(np.exp(log_fold))
        else:  # fraction, capped
            q = min(float(_expit(logits[name])) * np.exp(log_fold), MAX_TREG)
            logits[name] = float(_logit(q))
    p.update({k: float(_expit(v)) for k, v in logits.items()})
    lymph = patient.log_lymph_per_ul + (0.0 if rng is None else rng.normal(0.0, LYMPH_PER_UL[2]))
    return SampleState(p=p, cd25_treg=cd25, lymph_per_ul=float(np.exp(lymph)),
                       marker_shift=patient.marker_shift)
