"""The pre-specified statistical analysis plan (``analysis:`` of study.yaml) applied to the
stats tables: roles, multiplicity and selectivity verdicts.

Roles (the ``role`` column of ``stats_supervised``, ``stats_da``, ``stats_ds``):

* ``primary`` — the rows of the plan's primary end points (pooled stratum ``all``, the
  end point's comparison, visit(s) and method). With several primary rows the p values
  are Holm-adjusted (``p_adjusted``).
* ``key_secondary`` — the key secondary end points, tested only when every primary row
  is significant (serial gatekeeping), in the listed order (``fixed_sequence``: adjusted
  p = running maximum) or with Holm; ``p_adjusted`` carries the gate.
* ``exploratory`` — every other row of the main method of its comparison (``mmrm`` for
  change from baseline and arm differences, ``welch_t`` for group differences,
  ``edger_ql`` for DA, ``limma`` for DS); Benjamini–Hochberg q within each family
  (table × method × visit × disease × arm × comparison), ``p_adjusted = q``.
* ``sensitivity`` — rows of the other methods (BH families of their own); for a
  confirmatory end point they are supportive and get no adjustment.

Confirmatory rows take no part in the BH families. A study without a plan has only
exploratory and sensitivity rows.

Selectivity (``selectivity``, only when the plan names target and off-target parameters):
per visit × stratum, the targets *change* when at least one target has a Holm-adjusted
(over the targets) p < alpha; an off-target is *within* the margins when its 95 % CI of
the effect (fold change or odds ratio; exp of an arcsinh difference) lies inside
``margins`` and *beyond* when its CI lies entirely outside them. Verdict: ``no change``
(targets do not change), ``not selective`` (an off-target beyond its margin),
``selective`` (every off-target within), else ``inconclusive``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._common import ALL, DESCRIPTIVE, NOT_ESTIMABLE, OK
from .multiple import add_q

#: Methods of each comparison of a parameter; the first is the default (main) one.
SUPERVISED_METHODS = {"change_from_baseline": ("mmrm", "paired_t", "wilcoxon"),
                      "arm_difference": ("mmrm", "welch_t", "rank_sum"),
                      "group_difference": ("welch_t", "rank_sum")}
#: Methods of cluster (``stats_da``) and cluster × marker (``stats_ds``) end points.
CLUSTER_METHODS = {"stats_da": ("edger_ql", "edger_lrt", "gee_binomial"),
                   "stats_ds": ("limma",)}
FAMILY = ["method", "visit", "disease", "arm", "comparison"]


@dataclass(frozen=True)
class Endpoint:
    """One planned end point (see :class:`immunomon.io.study.Endpoint`)."""

    parameter: str | None = None
    cluster: str | None = None
    marker: str | None = None
    panel: str | None = None
    visits: tuple[str, ...] = ()
    comparison: str = "change_from_baseline"
    method: str | None = None

    @property
    def table(self) -> str:
        """The stats table that holds its rows."""
        if self.parameter:
            return "stats_supervised"
        return "stats_ds" if self.marker else "stats_da"

    @property
    def resolved_method(self) -> str:
        """The method, or the default of its table and comparison."""
        if self.method:
            return self.method
        if self.table == "stats_supervised":
            return SUPERVISED_METHODS[self.comparison][0]
        return CLUSTER_METHODS[self.table][0]


@dataclass(frozen=True)
class Plan:
    """The analysis plan as plain data (from an ``AnalysisPlan``, a mapping or None)."""

    alpha: float = 0.05
    min_patients: int = 6
    control_arm: str | None = None
    reference_group: str | None = None
    primary: tuple[Endpoint, ...] = ()
    strategy: str = "fixed_sequence"
    key_secondary: tuple[Endpoint, ...] = ()
    responder_ratio: float = 1.25
    targets: tuple[str, ...] = ()
    off_targets: tuple[str, ...] = ()
    margins: tuple[float, float] = (0.8, 1.25)
    source: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, plan) -> "Plan | None":
        """Normalise ``plan`` (pydantic ``AnalysisPlan``, dict as in study.yaml, a Plan or
        None)."""
        if plan is None or isinstance(plan, Plan):
            return plan
        d = plan.model_dump() if hasattr(plan, "model_dump") else dict(plan)

        def eps(items):
            return tuple(Endpoint(**{**e, "visits": tuple(e.get("visits") or ())})
                         for e in (items or []))

        ks = d.get("key_secondary") or {}
        sel = d.get("selectivity") or {}
        resp = d.get("responder") or {}
        return cls(alpha=float(d.get("alpha", 0.05)), min_patients=int(d.get("min_patients", 6)),
                   control_arm=d.get("control_arm"), reference_group=d.get("reference_group"),
                   primary=eps(d.get("primary")), strategy=ks.get("strategy", "fixed_sequence"),
                   key_secondary=eps(ks.get("endpoints")),
                   responder_ratio=float(resp.get("ratio", 1.25)),
                   targets=tuple(sel.get("targets") or ()),
                   off_targets=tuple(sel.get("off_targets") or ()),
                   margins=tuple(float(m) for m in sel.get("margins", (0.8, 1.25))),
                   source=d)

    @property
    def endpoints(self) -> list[tuple[str, Endpoint]]:
        return ([("primary", e) for e in self.primary]
                + [("key_secondary", e) for e in self.key_secondary])

    def parameters(self) -> list[str]:
        """Parameters the plan names (end points, then selectivity targets)."""
        names = [e.parameter for _, e in self.endpoints if e.parameter]
        return list(dict.fromkeys(names + list(self.targets)))


# ----------------------------------------------------------------------- multiplicity

def holm(p) -> np.ndarray:
    """Holm step-down adjusted p values; NaN stays NaN and is not counted."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adj, 1.0)
    return out


def fixed_sequence(p, gate: float = 0.0) -> np.ndarray:
    """Adjusted p of a fixed testing sequence behind a gate: running maximum of
    ``[gate, p_1, ..., p_k]``; testing stops at the first NaN (later ones stay NaN)."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    run = gate
    for i, x in enumerate(p):
        if not np.isfinite(x) or not np.isfinite(run):
            break
        run = max(run, x)
        out[i] = min(run, 1.0)
    return out


# ----------------------------------------------------------------------- roles

def main_method(table: str, comparison: str) -> str:
    """The method whose rows are the (exploratory) analysis of a table and comparison."""
    if table == "stats_supervised":
        return SUPERVISED_METHODS.get(comparison, ("mmrm",))[0]
    return CLUSTER_METHODS[table][0]


def _matches(df: pd.DataFrame, ep: Endpoint, control: str | None) -> pd.Series:
    m = (df["disease"].astype(str) == ALL) & (df["comparison"] == ep.comparison)
    m &= df["method"] == ep.resolved_method
    if ep.parameter:
        m &= df["parameter"] == ep.parameter
    else:
        cl = str(ep.cluster)
        m &= (df["label"].astype(str) == cl) | (df["cluster"].astype(str) == cl)
        if ep.marker:
            m &= df["marker"].astype(str) == ep.marker
    if ep.panel and "panel" in df:
        m &= df["panel"].astype(str) == ep.panel
    if ep.visits:
        m &= df["visit"].isin(ep.visits)
    arm = df["arm"].astype(str)
    if ep.comparison == "arm_difference" and control:
        m &= arm.str.endswith(f" vs {control}")
    elif ep.comparison == "change_from_baseline" and control:
        m &= arm != control
    return m


def apply_plan(tables: dict[str, pd.DataFrame], plan: Plan | None, visits: list[str],
               control: str | None) -> None:
    """Add ``role``, ``q`` and ``p_adjusted`` to ``stats_supervised``/``stats_da``/``stats_ds``
    of ``tables`` (in place), following ``plan`` (None: no confirmatory rows)."""
    present = [t for t in ("stats_supervised", "stats_da", "stats_ds") if t in tables]
    for t in present:
        df = tables[t].copy()
        main = df["comparison"].map(lambda c, t=t: main_method(t, c))
        df["role"] = np.where(df["method"] == main, "exploratory", "sensitivity")
        df["p_adjusted"] = np.nan
        df["_confirmatory"] = False
        tables[t] = df
    rank = {v: i for i, v in enumerate(visits)}
    conf = {"primary": [], "key_secondary": []}
    for role, ep in (plan.endpoints if plan else []):
        if ep.table not in tables:
            continue
        df = tables[ep.table]
        idx = list(df.index[_matches(df, ep, control)])
        if not idx:  # planned but not in the run's tables: say so in the table
            df = tables[ep.table] = _missing_endpoint(df, ep, visits)
            idx = list(df.index[df["role"] == "_missing"])
            df.loc[idx, "role"] = role
        order = sorted(idx, key=lambda i: (rank.get(df.at[i, "visit"], len(rank)), str(df.at[i, "arm"])))
        conf[role] += [(ep.table, i) for i in order]
    keys = {"stats_supervised": ["parameter"], "stats_da": ["cluster"], "stats_ds": ["cluster", "marker"]}
    for role, rows in conf.items():
        for t, i in rows:
            df = tables[t]
            df.at[i, "role"] = role
            k = keys[t] + ["visit", "disease", "arm", "comparison"] + (["panel"] if "panel" in df else [])
            same = (df[k] == df.loc[i, k]).all(axis=1)
            df.loc[same, "_confirmatory"] = True
    p_prim = np.array([tables[t].at[i, "p"] for t, i in conf["primary"]], float)
    adj_prim = holm(p_prim)
    for (t, i), a in zip(conf["primary"], adj_prim):
        tables[t].at[i, "p_adjusted"] = a
    if conf["key_secondary"]:
        gate = (0.0 if not plan.primary else
                float(np.max(adj_prim)) if len(adj_prim) and np.all(np.isfinite(adj_prim))
                else np.nan)
        p_ks = np.array([tables[t].at[i, "p"] for t, i in conf["key_secondary"]], float)
        adj = (fixed_sequence(p_ks, gate) if plan.strategy == "fixed_sequence"
               else np.where(np.isfinite(gate), np.maximum(holm(p_ks), gate), np.nan))
        for (t, i), a in zip(conf["key_secondary"], adj):
            tables[t].at[i, "p_adjusted"] = a
            if not np.isfinite(a) and np.isfinite(tables[t].at[i, "p"]):
                why = "not tested: an earlier test of the hierarchy has no p"
                tables[t].at[i, "reason"] = "; ".join(x for x in (tables[t].at[i, "reason"], why) if x)
    for t in present:
        df = tables[t]
        fam = FAMILY + (["panel"] if "panel" in df else [])
        explo = df[~df["_confirmatory"]]
        q = add_q(explo, fam)["q"] if len(explo) else pd.Series(dtype=float)
        df["q"] = np.nan
        df.loc[explo.index, "q"] = q
        df.loc[explo.index, "p_adjusted"] = q
        tables[t] = df.drop(columns="_confirmatory")


def _missing_endpoint(df: pd.DataFrame, ep: Endpoint, visits: list[str]) -> pd.DataFrame:
    """``df`` plus one ``not estimable`` row per visit of an end point it has no row for."""
    what = ("parameter" if ep.parameter else "cluster") + (" × marker" if ep.marker else "")
    rows = []
    for visit in ep.visits or visits[1:] or visits:
        row = {c: np.nan for c in df.columns}
        row.update(visit=visit, disease=ALL, arm=ALL, comparison=ep.comparison,
                   method=ep.resolved_method, role="_missing", status=NOT_ESTIMABLE,
                   reason=f"planned {what} not in this run's tables", _confirmatory=True)
        if ep.parameter:
            row["parameter"] = ep.parameter
        else:
            row.update(cluster=ep.cluster, label=ep.cluster, marker=ep.marker)
        if ep.panel and "panel" in df.columns:
            row["panel"] = ep.panel
        rows.append(row)
    return pd.concat([df, pd.DataFrame(rows)], ignore_index=True)


# ----------------------------------------------------------------------- selectivity

SELECTIVITY_COLUMNS = ["visit", "disease", "arm", "comparison", "method", "verdict",
                       "targets_changed", "n_targets", "n_targets_changed", "n_off_targets",
                       "n_off_within", "n_off_beyond", "margin_low", "margin_high", "n",
                       "status", "reason", "summary"]


def _ratio(df: pd.DataFrame, col: str) -> np.ndarray:
    """Effects (or CI bounds) on a ratio scale: exp of differences on a difference scale."""
    v = df[col].to_numpy(float)
    diff = df["effect_scale"].astype(str).str.startswith("difference").to_numpy()
    return np.where(diff, np.exp(v), v)


def _fold_text(x: np.ndarray) -> str:
    x = x[np.isfinite(x) & (x > 0)]
    return f"×{np.exp(np.median(np.log(x))):.2f}" if x.size else "n/a"


def selectivity(sup: pd.DataFrame, plan: Plan | None, visits: list[str]) -> pd.DataFrame | None:
    """The ``selectivity`` table (one row per visit × stratum × contrast) or None when the
    plan names no selectivity sets. Uses the rows of the primary end point's method (the
    main method when there is none)."""
    if plan is None or not plan.targets or sup.empty:
        return None
    prim = next((e for e in plan.primary if e.parameter), None)
    comparison = "arm_difference" if (sup["comparison"] == "arm_difference").any() else (
        "group_difference" if (sup["comparison"] == "group_difference").any()
        else "change_from_baseline")
    method = prim.resolved_method if prim and prim.comparison == comparison else \
        main_method("stats_supervised", comparison)
    lo, hi = plan.margins
    a = plan.alpha
    s = sup[(sup["comparison"] == comparison) & (sup["method"] == method)]
    keys = ["visit", "disease", "arm"] + (["panel"] if "panel" in s else [])
    rows = []
    for key, g in s.groupby(keys, sort=False):
        visit, disease, arm = key[:3]
        g = g.set_index("parameter")
        tg, og = g.reindex(list(plan.targets)), g.reindex(list(plan.off_targets))
        where = f"At {visit} ({'all patients' if disease == ALL else disease}" + \
            ("" if arm == ALL else f", {arm}")
        missing = [p for p, r in pd.concat([tg, og]).iterrows() if pd.isna(r["n"])]
        n = int(np.nanmax(g["n"].to_numpy(float))) if len(g) else 0
        base = dict(visit=visit, disease=disease, arm=arm, comparison=comparison, method=method,
                    n_targets=len(tg), n_off_targets=len(og), margin_low=lo, margin_high=hi, n=n,
                    **({"panel": key[3]} if len(key) > 3 else {}))
        if missing:
            reason = f"no {method} result for {', '.join(missing)}"
            rows.append(dict(base, verdict=None, targets_changed=None, n_targets_changed=0,
                             n_off_within=0, n_off_beyond=0, status=NOT_ESTIMABLE, reason=reason,
                             summary=f"{where}): selectivity not assessable ({reason})."))
            continue
        olo, ohi = _ratio(og, "ci_low"), _ratio(og, "ci_high")
        within = int(np.sum((olo >= lo) & (ohi <= hi)))
        beyond = int(np.sum((olo > hi) | (ohi < lo)))
        p_t = holm(tg["p"].to_numpy(float))
        k_t = int(np.sum(p_t < a))
        fold_t, fold_o = _fold_text(_ratio(tg, "effect")), _fold_text(_ratio(og, "effect"))
        tested = (tg["status"] == OK).all()
        if not tested:
            status = DESCRIPTIVE if (tg["status"] == DESCRIPTIVE).any() else NOT_ESTIMABLE
            why = ("fewer than min_patients patients" if status == DESCRIPTIVE
                   else "no p for every target")
            rows.append(dict(base, verdict="inconclusive", targets_changed=None,
                             n_targets_changed=0, n_off_within=within, n_off_beyond=beyond,
                             status=status, reason=why, summary=(
                                 f"{where}, n = {n}): targets not tested ({why}); median effect "
                                 f"{fold_t} over {len(tg)} targets, {fold_o} over {len(og)} "
                                 f"off-targets ({within} CIs within [{lo:g}, {hi:g}]).")))
            continue
        changed = k_t > 0
        verdict = ("no change" if not changed else "not selective" if beyond else
                   "selective" if within == len(og) else "inconclusive")
        summary = (f"{where}, n = {n}): {k_t} of {len(tg)} targets changed (Holm-adjusted p < "
                   f"{a:g}; median effect {fold_t}); of {len(og)} off-targets, {within} have "
                   f"95 % CIs within [{lo:g}, {hi:g}] and {beyond} lie beyond (median "
                   f"{fold_o}) — {verdict}.")
        rows.append(dict(base, verdict=verdict, targets_changed=changed, n_targets_changed=k_t,
                         n_off_within=within, n_off_beyond=beyond, status=OK, reason="",
                         summary=summary))
    return pd.DataFrame(rows, columns=SELECTIVITY_COLUMNS + (["panel"] if "panel" in s else []))
