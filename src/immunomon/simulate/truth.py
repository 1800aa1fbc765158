"""Truth tables of a simulated study: population counts, parameter values, planted effects.

Conventions (shared with ``docs/architecture.md``):

- populations are counted over artefact-free events (so ``Cells``, ``Singlets`` and ``Live``
  hold the same events); ``freq_parent`` and ``freq_total`` are fractions in [0, 1];
- parameters use the ARCHITECTURE strings; ``% of`` and ``+ %`` values are percentages,
  ``count/uL`` cells per µL of blood (``Lymphocytes`` scaled to the sample's lymphocyte count),
  ``median in`` the median of the compensated values in linear instrument units (what a
  perfect gate measures; the arcsinh median is ``arcsinh(value / cofactor)``), ratios plain;
- ``+ %`` uses the true cell states, not a threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .events import (_MEMORY_SHIFT, CELL_TYPES, MEAN, SimulatedEvents, _state_probabilities,
                     _type_probabilities)
from .model import SampleState, sample_state, typical_patient
from .panel import COFACTOR, MARKERS

#: Canonical population -> parent (None for the root), in hierarchy order.
HIERARCHY = {
    "Cells": None, "Singlets": "Cells", "Live": "Singlets", "Lymphocytes": "Live",
    "T cells": "Lymphocytes", "CD4 T": "T cells", "Treg": "CD4 T", "Treg naive": "Treg",
    "Treg memory": "Treg", "CD4 Tconv": "CD4 T", "CD8 T": "T cells", "NK": "Lymphocytes",
    "NK CD56bright": "NK", "NK CD56dim": "NK", "B cells": "Lymphocytes", "Monocytes": "Live",
}
_POSITIVES = (("Treg", "Ki67"), ("Treg", "HLA-DR"), ("Treg", "HELIOS"), ("CD4 Tconv", "Ki67"),
              ("CD4 Tconv", "HLA-DR"), ("CD8 T", "Ki67"), ("CD8 T", "HLA-DR"))
_MEDIANS = (("CD25", "Treg"), ("FOXP3", "Treg"), ("CD25", "CD4 Tconv"))
_COUNTS = ("T cells", "CD4 T", "CD8 T", "Treg", "NK", "NK CD56bright", "B cells")
_RATIOS = (("Treg", "CD4 Tconv"), ("CD4 T", "CD8 T"))
#: Parameter string of each planted state of :data:`.model.EFFECTS`.
PLANTED = {"treg": "Treg % of CD4 T", "treg_mem": "Treg memory % of Treg",
           "ki67_treg": "Treg Ki67+ %", "hladr_treg": "Treg HLA-DR+ %",
           "cd25_treg": "CD25 median in Treg", "nk_bright": "NK CD56bright % of NK"}


def _is_in(pop: str, leaf: str) -> bool:
    while leaf is not None:
        if leaf == pop:
            return True
        leaf = HIERARCHY.get(leaf)
    return False


#: (populations, cell types) membership matrix: MEMBER[i, j] = type j lies in population i.
MEMBER = np.array([[_is_in(p, t) for t in CELL_TYPES] for p in HIERARCHY], dtype=float)
_POP = {p: i for i, p in enumerate(HIERARCHY)}


def parameter_values(counts: np.ndarray, positive: dict, median: dict,
                     lymph_per_ul: float) -> dict[str, float]:
    """Parameter string -> value from population counts (ordered as ``HIERARCHY``),
    ``positive[(population, marker)]`` fractions and ``median[(marker, population)]``."""
    c = dict(zip(HIERARCHY, counts))

    def ratio(a, b):
        return float(a / b) if b > 0 else float("nan")

    out = {}
    for pop, parent in HIERARCHY.items():
        if parent not in (None, "Cells", "Singlets"):
            out[f"{pop} % of {parent}"] = 100 * ratio(c[pop], c[parent])
    for pop in _COUNTS:
        out[f"{pop} count/uL"] = lymph_per_ul * ratio(c[pop], c["Lymphocytes"])
    for pop, marker in _POSITIVES:
        out[f"{pop} {marker}+ %"] = 100 * positive[(pop, marker)]
    for marker, pop in _MEDIANS:
        out[f"{marker} median in {pop}"] = median[(marker, pop)]
    for a, b in _RATIOS:
        out[f"{a}/{b} ratio"] = ratio(c[a], c[b])
    return out


def sample_truth(sim: SimulatedEvents, compensation: np.ndarray, lymph_per_ul: float):
    """Population counts (n_populations,) and parameter values of one simulated file.

    ``compensation`` is the inverse of the spillover matrix.
    """
    good = sim.artefact == 0
    leaf = sim.population[good]
    counts = MEMBER @ np.bincount(leaf, minlength=len(CELL_TYPES))
    in_pop = {p: MEMBER[_POP[p]][leaf] > 0 for p in ("Treg", "CD4 Tconv", "CD8 T")}
    flags = {"Ki67": sim.ki67[good], "HLA-DR": sim.hladr[good], "HELIOS": sim.helios[good]}
    positive = {(p, m): float(flags[m][in_pop[p]].mean()) if in_pop[p].any() else float("nan")
                for p, m in _POSITIVES}
    fluor = sim.events[good, 4:].astype(np.float64)
    median = {}
    for marker, pop in _MEDIANS:
        sel = fluor[in_pop[pop]]
        comp = sel @ compensation[:, MARKERS.index(marker)]
        median[(marker, pop)] = float(np.median(comp)) if len(comp) else float("nan")
    return counts, parameter_values(counts, positive, median, lymph_per_ul)


def expected_parameters(state: SampleState) -> dict[str, float]:
    """Parameter values expected (no sampling noise) for a sample ``state``.

    Marker medians use ``150 * sinh(mean of the type means)``, weighted by type frequency.
    """
    probs = _type_probabilities(state.p)
    counts = MEMBER @ probs
    states = _state_probabilities(state.p)
    idx = {t: i for i, t in enumerate(CELL_TYPES)}
    positive = {}
    for pop, marker in _POSITIVES:
        w = MEMBER[_POP[pop]] * probs
        positive[(pop, marker)] = float(w @ states[marker] / w.sum())
    median = {}
    for marker, pop in _MEDIANS:
        w = MEMBER[_POP[pop]] * probs
        mu = MEAN[:, MARKERS.index(marker)].copy()
        if pop == "CD4 Tconv" and marker == "CD25":  # naive/memory mixture
            naive = states["CD45RA"][idx["CD4 Tconv"]]
            mu[idx["CD4 Tconv"]] += _MEMORY_SHIFT["CD4 Tconv"]["CD25"] * (1 - naive)
        value = COFACTOR * np.sinh(float(w @ mu / w.sum()))
        if pop == "Treg" and marker == "CD25":
            value *= state.cd25_treg
        median[(marker, pop)] = float(value)
    return parameter_values(counts, positive, median, state.lymph_per_ul)


def effects_table(visits: list[tuple[str, int]], baseline: str, *, effect: str,
                  effect_size: float) -> pd.DataFrame:
    """Planted effects for the typical patient: one row per parameter and non-baseline visit.

    Columns parameter, visit, fold_change, log2_fold_change and ``kind`` (``planted``:
    a state the simulator changes; ``derived``: moves because a planted one does, e.g.
    ``CD4 Tconv % of CD4 T``; ``none``: fold change 1).
    """
    patient = typical_patient()
    day = dict(visits)
    base = expected_parameters(sample_state(patient, day[baseline], effect=effect,
                                            effect_size=effect_size))
    planted = set(PLANTED.values()) if effect == "planted" and effect_size != 0 else set()
    rows = []
    for visit, d in visits:
        if visit == baseline:
            continue
        values = expected_parameters(sample_state(patient, d, effect=effect,
                                                  effect_size=effect_size))
        for name, v in values.items():
            fold = v / base[name]
            log2 = float(np.log2(fold))
            if abs(log2) < 1e-9:
                fold, log2, kind = 1.0, 0.0, "none"
            else:
                kind = "planted" if name in planted else "derived"
            rows.append((name, visit, round(float(fold), 6), round(log2, 6), kind))
    return pd.DataFrame(rows, columns=["parameter", "visit", "fold_change",
                                       "log2_fold_change", "kind"])

