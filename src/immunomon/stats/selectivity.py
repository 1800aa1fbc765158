"""Treg selectivity: did Treg parameters change while effector activation parameters did not?

The two parameter sets are defined here, explicitly:

* Treg parameters — every parameter whose ``population`` is one of :data:`TREG_POPULATIONS`.
* Effector activation parameters — parameters of :data:`EFFECTOR_POPULATIONS` (CD4 Tconv,
  CD8 T) that measure an :data:`ACTIVATION_MARKERS` marker: ``<pop> <marker>+ %``,
  ``<marker> median in <pop>`` or ``<marker> gMFI in <pop>`` (e.g. ``CD4 Tconv Ki67+ %``,
  ``CD8 T HLA-DR+ %``, ``CD25 median in CD4 Tconv``).

A set "changed" at a visit and stratum when the number of its parameters with q < alpha
(method ``options.selectivity_method`` of ``stats_supervised``) exceeds the 99th percentile
of Binomial(m, alpha) — more than chance alone would give among m unchanged parameters.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from scipy import stats

from ._common import ALL, NOT_ESTIMABLE, OK, StatsOptions

TREG_POPULATIONS = ("Treg", "Treg memory", "Treg naive")
EFFECTOR_POPULATIONS = ("CD4 Tconv", "CD8 T")
ACTIVATION_MARKERS = ("Ki67", "HLA-DR", "CD25", "CD69", "ICOS", "CD38")
SELECTIVITY_COLUMNS = ["visit", "disease", "treg_changed", "effector_changed", "n_treg",
                       "n_treg_changed", "n_effector", "n_effector_changed", "threshold_treg",
                       "threshold_effector", "status", "reason", "summary"]


def treg_parameters(param_pop: pd.DataFrame) -> list[str]:
    """Parameters (``parameter``, ``population`` columns) of the Treg populations."""
    m = param_pop["population"].isin(TREG_POPULATIONS)
    return sorted(param_pop.loc[m, "parameter"].unique())


def effector_parameters(parameters) -> list[str]:
    """Activation parameters of CD4 Tconv / CD8 T among the parameter strings given."""
    pops = "|".join(map(re.escape, EFFECTOR_POPULATIONS))
    marks = "|".join(map(re.escape, ACTIVATION_MARKERS))
    pat = re.compile(rf"^(({pops}) ({marks})\+ %|({marks}) (median|gMFI) in ({pops}))$")
    return sorted(p for p in set(parameters) if pat.match(p))


def _median_fold(effects: pd.Series) -> str:
    """Median of fold changes (on the log scale) as text, e.g. ``×1.92``."""
    e = effects.to_numpy(float)
    e = e[np.isfinite(e) & (e > 0)]
    return f"×{np.exp(np.median(np.log(e))):.2f}" if e.size else "n/a"


def selectivity(sup: pd.DataFrame, param_pop: pd.DataFrame, visits: list[str],
                options: StatsOptions) -> pd.DataFrame:
    """``selectivity``: one row per visit × stratum with the counts and one sentence."""
    treg, eff = treg_parameters(param_pop), effector_parameters(param_pop["parameter"])
    a = options.alpha
    s = sup[sup["method"] == options.selectivity_method]
    rows = []
    for visit in visits[1:]:
        for d in s["disease"].drop_duplicates():
            g = s[(s["visit"] == visit) & (s["disease"] == d)].set_index("parameter")
            gt, ge = g.reindex(treg).dropna(subset=["n"]), g.reindex(eff).dropna(subset=["n"])
            mt, me = len(gt), len(ge)
            thr_t = int(stats.binom.ppf(0.99, mt, a)) if mt else 0
            thr_e = int(stats.binom.ppf(0.99, me, a)) if me else 0
            testable = (gt["status"] == OK).any() or (ge["status"] == OK).any()
            kt = int(((gt["q"] < a) & (gt["status"] == OK)).sum())
            ke = int(((ge["q"] < a) & (ge["status"] == OK)).sum())
            n = int(max(gt["n"].max() if mt else 0, ge["n"].max() if me else 0))
            fc_t, fc_e = _median_fold(gt["effect"]), _median_fold(ge["effect"])
            where = f"At {visit} ({'pooled' if d == ALL else d}, n = {n} patients)"
            if not (mt and me):
                status, reason = NOT_ESTIMABLE, ("no Treg parameter" if not mt else "no effector activation parameter")
                tc = ec = None
                summary = f"{where}: selectivity not assessable ({reason})."
            elif not testable:
                status = NOT_ESTIMABLE
                reason = f"fewer than {options.min_patients} patients: too few to test"
                tc = ec = None
                summary = (f"{where}: too few patients to test; median fold change {fc_t} over "
                           f"{mt} Treg parameters and {fc_e} over {me} effector activation parameters.")
            else:
                status, reason = OK, ""
                tc, ec = kt > thr_t, ke > thr_e
                summary = (f"{where}: {kt} of {mt} Treg parameters changed (q < {a:g}; median fold "
                           f"change {fc_t}) and {ke} of {me} effector activation parameters "
                           f"did (median {fc_e}; up to {thr_e} expected by chance) — "
                           + ("Treg-selective." if tc and not ec else
                              "not selective: effector activation changed too." if tc and ec else
                              "no Treg change." if not ec else "effector change without Treg change."))
            rows.append(dict(visit=visit, disease=d, treg_changed=tc, effector_changed=ec,
                             n_treg=mt, n_treg_changed=kt, n_effector=me, n_effector_changed=ke,
                             threshold_treg=thr_t, threshold_effector=thr_e, status=status,
                             reason=reason, summary=summary))
    return pd.DataFrame(rows, columns=SELECTIVITY_COLUMNS)
