"""Sample-level designs of the cluster models (DA, DS): which coefficient answers which
row of ``stats_da``/``stats_ds`` in a stratum.

* Single arm: ``~ patient + visit``; one coefficient per post-baseline visit (change from
  baseline, arm ``all``).
* Randomised: two parametrisations of ``~ patient + visit × arm`` — arm-specific visit
  effects (within-arm change, arm = the arm) and control visit effects plus active-arm
  interactions (arm differences of the change, arm = ``<arm> vs <control>``).
* Cross-sectional: ``~ group``; one coefficient per group against the reference group.

The block is the patient (edgeR, limma: within-patient contrasts) or, for
population-averaged models (GEE), an intercept and the arm main effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._common import ALL
from .design import Design


@dataclass(frozen=True)
class Coefficient:
    """One tested coefficient: its row labels, patient counts and indicator."""

    visit: str
    arm: str
    comparison: str
    n: int
    n_missing: int
    smallest: int                       # patients of the smallest group compared
    on_visit: str | None = None         # indicator: visit ==
    on_arm: str | None = None           # ... and arm ==
    on_group: str | None = None         # cross-sectional: group ==

    def indicator(self, tab: pd.DataFrame, group_col: str | None) -> np.ndarray:
        m = np.ones(len(tab), bool)
        if self.on_visit is not None:
            m &= (tab["visit"] == self.on_visit).to_numpy()
        if self.on_arm is not None:
            m &= (tab["arm"] == self.on_arm).to_numpy()
        if self.on_group is not None:
            m &= (tab[group_col] == self.on_group).to_numpy()
        return m.astype(float)


def _pairs(tab: pd.DataFrame, baseline: str, visit: str, arm: str | None) -> tuple[int, int]:
    """(patients with baseline and visit, patients with baseline but not the visit)."""
    t = tab if arm is None else tab[tab["arm"] == arm]
    base = set(t.loc[t["visit"] == baseline, "patient_id"])
    at = set(t.loc[t["visit"] == visit, "patient_id"])
    return len(base & at), len(base - at)


def coefficient_sets(tab: pd.DataFrame, design: Design) -> list[list[Coefficient]]:
    """The parametrisations (lists of coefficients) to fit on one stratum's samples
    ``tab`` (patient_id, visit, arm, disease)."""
    if not design.repeated:
        if design.group_col is None:
            return []
        g = design.group_col
        ref_n = tab.loc[tab[g] == design.reference, "patient_id"].nunique()
        out = []
        for grp in sorted(set(tab[g]) - {design.reference, ""}):
            n = tab.loc[tab[g] == grp, "patient_id"].nunique()
            label = f"{grp} vs {design.reference}"
            out.append(Coefficient(visit=design.visits[0], arm=label if g == "arm" else ALL,
                                   comparison="group_difference", n=n + ref_n, n_missing=0,
                                   smallest=min(n, ref_n), on_group=grp))
        return [out] if out and ref_n else []
    post = [v for v in design.visits[1:] if (tab["visit"] == v).any()]
    if not design.arms:
        within = []
        for v in post:
            n, miss = _pairs(tab, design.baseline, v, None)
            within.append(Coefficient(v, ALL, "change_from_baseline", n, miss, n, on_visit=v))
        return [within] if within else []
    arms = [a for a in design.arms if (tab["arm"] == a).any()]
    within, diff = [], []
    for v in post:
        counts = {a: _pairs(tab, design.baseline, v, a) for a in arms}
        for a in arms:
            n, miss = counts[a]
            within.append(Coefficient(v, a, "change_from_baseline", n, miss, n, on_visit=v,
                                      on_arm=a))
        if design.control in arms:
            (nc, mc) = counts[design.control]
            for a in design.active:
                if a in arms:
                    n, miss = counts[a]
                    diff.append(Coefficient(v, design.difference_label(a), "arm_difference",
                                            n + nc, miss + mc, min(n, nc), on_visit=v, on_arm=a))
    sets = [within]
    if diff:
        visit_cols = [Coefficient(v, "", "", 0, 0, 0, on_visit=v) for v in post]
        sets.append(visit_cols + diff)  # control visit effects (not reported) + differences
    return sets


def block(tab: pd.DataFrame, design: Design, kind: str = "patient") -> np.ndarray:
    """Block columns: patient dummies (``patient``) or intercept + arm main effects
    (``arms``); an intercept alone for a cross-sectional study."""
    if not design.repeated:
        return np.ones((len(tab), 1))
    cols = [np.ones(len(tab))]
    if kind == "patient":
        pats = sorted(tab["patient_id"].unique())
        cols += [(tab["patient_id"] == p).to_numpy(float) for p in pats[1:]]
    else:
        arms = [a for a in design.arms if (tab["arm"] == a).any()]
        cols += [(tab["arm"] == a).to_numpy(float) for a in arms if a != design.control]
    return np.column_stack(cols)


def reported(coefs: list[Coefficient]) -> list[int]:
    """Indices of the coefficients that make rows (not the helper visit effects)."""
    return [i for i, c in enumerate(coefs) if c.comparison]
