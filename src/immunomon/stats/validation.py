"""Checks of a finished analysis against a simulated study's truth (planted effects).

Used by the tests on table-level simulations and usable on a real run directory::

    from immunomon.stats.validation import check_run
    report = check_run("runs/demo", "studies/demo")   # tables/ of the run, truth/ of the study
    assert report["passed"]
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy import stats

from ._common import ALL, OK
from .selectivity import effector_parameters


def planted_effects_check(sup: pd.DataFrame, effects: pd.DataFrame, *, visit: str = "D8",
                          methods=("paired_t", "lmm"), alpha: float = 0.05,
                          kinds=("planted",)) -> pd.DataFrame:
    """One row per planted effect (``effects.kind`` in ``kinds``) at ``visit`` × method: the
    pooled q, the effect estimate, the true fold change, and ``passed`` (q < alpha)."""
    eff = effects[(effects["visit"] == visit) & effects["kind"].isin(kinds)]
    s = sup[(sup["visit"] == visit) & (sup["disease"] == ALL) & sup["method"].isin(methods)]
    out = eff[["parameter", "fold_change", "kind"]].merge(
        s[["parameter", "method", "effect", "effect_scale", "q", "status"]], on="parameter",
        how="left")
    out["passed"] = (out["q"] < alpha) & (out["status"] == OK)
    return out.sort_values(["parameter", "method"], kind="mergesort").reset_index(drop=True)


def effector_null_check(sup: pd.DataFrame, *, visit: str = "D8", methods=("paired_t", "lmm"),
                        alpha: float = 0.05) -> pd.DataFrame:
    """Per method: m effector activation parameters (CD4 Tconv / CD8 T), how many have
    pooled q < alpha at ``visit``, the 99th percentile of Binomial(m, alpha) and ``passed``
    (count <= percentile)."""
    eff = effector_parameters(sup["parameter"].unique())
    rows = []
    for method in methods:
        s = sup[(sup["visit"] == visit) & (sup["disease"] == ALL) & (sup["method"] == method)
                & sup["parameter"].isin(eff)]
        k = int(((s["q"] < alpha) & (s["status"] == OK)).sum())
        thr = int(stats.binom.ppf(0.99, len(s), alpha))
        rows.append(dict(method=method, m=len(s), n_significant=k, threshold=thr,
                         parameters=", ".join(sorted(s["parameter"])), passed=k <= thr))
    return pd.DataFrame(rows)


def check_tables(sup: pd.DataFrame, effects: pd.DataFrame, visit: str = "D8") -> dict:
    """Both checks on a ``stats_supervised`` table and a truth ``effects`` table."""
    planted = planted_effects_check(sup, effects, visit=visit)
    null = effector_null_check(sup, visit=visit)
    return {"planted": planted, "effector": null,
            "passed": bool(len(planted) and planted["passed"].all() and null["passed"].all())}


def check_run(run_dir, study_dir, visit: str = "D8") -> dict:
    """:func:`check_tables` on ``run_dir/tables/stats_supervised.parquet`` (or ``.csv``) and
    ``study_dir/truth/effects.csv`` of a simulated study."""
    tables = Path(run_dir) / "tables"
    pq = tables / "stats_supervised.parquet"
    sup = pd.read_parquet(pq) if pq.exists() else pd.read_csv(tables / "stats_supervised.csv")
    effects = pd.read_csv(Path(study_dir) / "truth" / "effects.csv")
    return check_tables(sup, effects, visit=visit)
