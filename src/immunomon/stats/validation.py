"""Checks of a finished analysis against a simulated study's truth (planted effects).

Used by the tests on table-level simulations and usable on a real run directory::

    from immunomon.stats.validation import check_run
    report = check_run("runs/demo", "studies/demo")   # tables/ of the run, truth/ of the study
    assert report["passed"]

A row counts as significant when its multiplicity-adjusted p (``p_adjusted``: the plan's
procedure for confirmatory rows, BH q otherwise) is below alpha, or — for supportive rows
of a confirmatory end point, which carry no adjustment — when its p is.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy import stats

from ._common import ALL, OK

METHODS = ("mmrm", "paired_t")


def _significant(s: pd.DataFrame, alpha: float) -> pd.Series:
    adj = s["p_adjusted"].where(s["p_adjusted"].notna(), s["p"])
    return (adj < alpha) & (s["status"] == OK)


def _pooled(sup: pd.DataFrame, visit: str, methods) -> pd.DataFrame:
    return sup[(sup["visit"] == visit) & (sup["disease"] == ALL) & (sup["arm"] == ALL)
               & sup["method"].isin(methods)]


def planted_effects_check(sup: pd.DataFrame, effects: pd.DataFrame, *, visit: str = "D8",
                          methods=METHODS, alpha: float = 0.05,
                          kinds=("planted",)) -> pd.DataFrame:
    """One row per planted effect (``effects.kind`` in ``kinds``) at ``visit`` × method: the
    pooled adjusted p, the effect estimate, the true fold change, and ``passed``."""
    eff = effects[(effects["visit"] == visit) & effects["kind"].isin(kinds)]
    s = _pooled(sup, visit, methods).assign(significant=lambda d: _significant(d, alpha))
    out = eff[["parameter", "fold_change", "kind"]].merge(
        s[["parameter", "method", "role", "effect", "effect_scale", "p", "p_adjusted",
           "significant", "status"]], on="parameter", how="left")
    out["passed"] = out["significant"].fillna(False).astype(bool)
    return out.sort_values(["parameter", "method"], kind="mergesort").reset_index(drop=True)


def null_check(sup: pd.DataFrame, effects: pd.DataFrame, *, visit: str = "D8",
               methods=METHODS, alpha: float = 0.05) -> pd.DataFrame:
    """Per method: the m parameters the simulator leaves unchanged at ``visit`` (truth kind
    ``none``), how many are significant, the 99th percentile of Binomial(m, alpha) and
    ``passed`` (count <= percentile)."""
    unchanged = set(effects.loc[(effects["visit"] == visit) & (effects["kind"] == "none"),
                                "parameter"])
    rows = []
    for method in methods:
        s = _pooled(sup, visit, [method])
        s = s[s["parameter"].isin(unchanged)]
        k = int(_significant(s, alpha).sum())
        thr = int(stats.binom.ppf(0.99, len(s), alpha))
        rows.append(dict(method=method, m=len(s), n_significant=k, threshold=thr,
                         parameters=", ".join(sorted(s["parameter"])), passed=k <= thr))
    return pd.DataFrame(rows)


def check_tables(sup: pd.DataFrame, effects: pd.DataFrame, visit: str = "D8") -> dict:
    """Both checks on a ``stats_supervised`` table and a truth ``effects`` table."""
    planted = planted_effects_check(sup, effects, visit=visit)
    null = null_check(sup, effects, visit=visit)
    return {"planted": planted, "null": null,
            "passed": bool(len(planted) and planted["passed"].all() and null["passed"].all())}


def check_run(run_dir, study_dir, visit: str = "D8") -> dict:
    """:func:`check_tables` on ``run_dir/tables/stats_supervised.parquet`` (or ``.csv``) and
    ``study_dir/truth/effects.csv`` of a simulated study."""
    tables = Path(run_dir) / "tables"
    pq = tables / "stats_supervised.parquet"
    sup = pd.read_parquet(pq) if pq.exists() else pd.read_csv(tables / "stats_supervised.csv")
    effects = pd.read_csv(Path(study_dir) / "truth" / "effects.csv")
    return check_tables(sup, effects, visit=visit)
