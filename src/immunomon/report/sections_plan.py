"""Report sections led by the statistical analysis plan: the primary analysis, the key
secondary end points, the selectivity verdicts, and the page headline. They draw the rows
the statistics marked (``role`` of ``stats_supervised``, ``stats_da``, ``stats_ds``); a run
without a plan has none of them (no section, no headline)."""

from __future__ import annotations

import pandas as pd

from . import interactive as ip
from .htmltable import esc, fmt_num, fmt_p, table_html
from .prep import POOLED, sample_values
from .section import Context, Section, para
from .style import category_colours

#: Columns of the confirmatory tables, in display order.
CONFIRMATORY_COLUMNS = ["end point", "visit", "disease", "arm", "comparison", "method", "n",
                        "n_missing", "effect", "effect_scale", "ci_low", "ci_high", "df",
                        "df_method", "covariance", "p", "p_adjusted", "status", "reason"]
TABLES = ("stats_supervised", "stats_da", "stats_ds")
COMPARISON_WORDS = {"change_from_baseline": "change from baseline",
                    "arm_difference": "difference between arms in the change from baseline",
                    "group_difference": "difference between groups"}


def _rows(run, role: str) -> pd.DataFrame:
    """The rows of ``role`` from every stats table, one frame with an ``end point`` label
    and ``effect``/``ci`` columns (DA's log2 FC as effect)."""
    parts = []
    for name in TABLES:
        t = run.get(name)
        if t is None or "role" not in t.columns:
            continue
        t = t[t["role"].astype(str) == role]
        if t.empty:
            continue
        if name == "stats_supervised":
            label = t["parameter"].astype(str)
        else:
            label = "cluster " + t["label"].astype(str)
            if name == "stats_ds":
                label = label + " " + t["marker"].astype(str) + " (median)"
            t = t.assign(effect=t.get("effect", t.get("log2fc")),
                         effect_scale="log2 fold change" if name == "stats_da" else "difference")
        parts.append(t.assign(**{"end point": label, "_table": name}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _in_plan_order(rows: pd.DataFrame, endpoints: list[dict], visits: list[str]
                   ) -> pd.DataFrame:
    """``rows`` in the order the plan lists its end points (the order a fixed sequence
    tests them in), then by visit."""
    def rank(r) -> int:
        for i, e in enumerate(endpoints):
            if e.get("parameter") is not None and r.get("parameter") == e["parameter"]:
                return i
            if e.get("cluster") is not None and str(r.get("cluster")) == str(e["cluster"]) \
                    and (e.get("marker") is None or r.get("marker") == e["marker"]):
                return i
        return len(endpoints)

    visit_rank = {v: i for i, v in enumerate(visits)}
    order = rows.assign(_e=[rank(r) for _, r in rows.iterrows()],
                        _v=rows["visit"].astype(str).map(visit_rank))
    return rows.loc[order.sort_values(["_e", "_v"], kind="stable").index]


def _columns(df: pd.DataFrame) -> list[str]:
    """The confirmatory columns worth showing: a stratum column that only says ``all`` is
    left out (the sentence above the table says it)."""
    return [c for c in CONFIRMATORY_COLUMNS if not (
        c in ("disease", "arm") and c in df.columns and (df[c].astype(str) == POOLED).all())]


def _plan(run) -> dict:
    """The analysis plan recorded in provenance (``{}`` when none)."""
    return (run.provenance.get("parameters") or {}).get("analysis") or {}


def result_sentence(r: pd.Series) -> str:
    """One row as a sentence: end point, visit, comparison, model, estimate, CI, p."""
    model = str(r["method"])
    if r.get("covariance"):
        model += f", {r['covariance']} covariance"
    if pd.notna(r.get("df")) and r.get("df_method"):
        model += f", {r['df_method']} df {fmt_num(r['df'])}"
    arm = "" if str(r.get("arm", POOLED)) == POOLED else f" ({r['arm']})"
    head = (f"{r['end point']} at {r['visit']}{arm}, "
            f"{COMPARISON_WORDS.get(str(r['comparison']), r['comparison'])} ({model})")
    if pd.isna(r.get("effect")):
        return f"{head}: not estimable ({r.get('reason', '')})."
    est = (f"{r['effect_scale']} {fmt_num(r['effect'])} "
           f"(95 % CI {fmt_num(r['ci_low'])} to {fmt_num(r['ci_high'])})")
    p = (f"p = {fmt_p(r['p'])}" if pd.notna(r.get("p")) else
         f"no p ({r.get('status', '')}: {r.get('reason', '')})")
    n = f"n = {fmt_num(r['n'])} analysed" + (
        f", {fmt_num(r['n_missing'])} missing" if pd.notna(r.get("n_missing")) else "")
    return f"{head}: {est}, {p}; {n}."


def _paired_figure(ctx: Context, parameter: str, visit: str) -> str:
    """Each patient's value at baseline and at ``visit``, grouped by arm (or disease)."""
    run, b = ctx.run, ctx.run.baseline
    vals, samples = sample_values(run, parameter), run.get("samples")
    if vals is None or vals.empty or b is None or visit == b:
        return ""
    by = "arm" if samples is not None and "arm" in samples.columns and \
        samples["arm"].fillna("").astype(str).str.len().gt(0).any() else "disease"
    if by == "arm":
        arm = samples.drop_duplicates("patient_id").set_index("patient_id")["arm"].astype(str)
        vals = vals.assign(disease=vals["patient_id"].map(arm))
    wide = vals.pivot_table(index=["patient_id", "disease"], columns="visit", values="value",
                            aggfunc="first")
    if b not in wide.columns or visit not in wide.columns:
        return ""
    paired = wide[[b, visit]].dropna().reset_index(level="disease")
    if paired.empty:
        return ""
    colours = (category_colours(sorted(paired["disease"].astype(str).unique())) if by == "arm"
               else ctx.disease_colours)
    fig = ip.fig_primary(paired, (b, visit), colours, parameter)
    return ip.plotly_div(fig, ctx.plot_id())


def primary(ctx: Context) -> Section | None:
    """The primary analysis of the plan: the result, the model, the data, the sensitivity
    analyses of the same end point and its responders (None without a plan)."""
    run = ctx.run
    prim = _rows(run, "primary")
    if prim.empty:
        return None
    plan = _plan(run)
    alpha = plan.get("alpha", 0.05)
    body = [f'<p class="headline">{esc(result_sentence(r))}</p>' for _, r in prim.iterrows()]
    if len(prim) > 1:
        body.append(para(f"{len(prim)} primary tests: Holm-adjusted p (p_adjusted) at "
                         f"alpha = {alpha:g}."))
    else:
        body.append(para(f"Pre-specified in the analysis plan (study.yaml analysis:), "
                         f"two-sided alpha = {alpha:g}."))
    body.append(table_html(prim, columns=_columns(prim)))
    sup = run.get("stats_supervised")
    for _, r in prim[prim["_table"] == "stats_supervised"].iterrows():
        body.append(_paired_figure(ctx, r["end point"], str(r["visit"])))
        if sup is not None:
            sens = sup[(sup["parameter"] == r["end point"]) & (sup["visit"] == r["visit"])
                       & (sup["disease"].astype(str) == POOLED) & (sup["arm"] == r["arm"])
                       & (sup["role"] == "sensitivity")]
            if len(sens):
                body.append("<h3>Sensitivity analyses of the same end point</h3>")
                body.append(table_html(sens.assign(**{"end point": r["end point"]}),
                                       columns=_columns(sens)))
        resp = run.get("responders")
        if resp is not None and "threshold" in resp.columns:
            x = resp[(resp["parameter"] == r["end point"]) & (resp["visit"] == r["visit"])]
            if len(x):
                ratio = fmt_num(x["threshold"].iloc[0])
                body.append(f"<h3>Responders (value at {esc(r['visit'])} at least {esc(ratio)}"
                            f" × baseline)</h3>")
                body.append(table_html(x, columns=["disease", "arm", "n", "n_responders",
                                                   "fraction", "ci_low", "ci_high"],
                                       labels={"n_responders": "responders",
                                               "ci_low": "95 % CI low (exact)",
                                               "ci_high": "95 % CI high (exact)"}))
    return Section("primary", "Primary analysis", "".join(body))


def key_secondary(ctx: Context) -> Section | None:
    """The key secondary end points with their multiplicity-adjusted p (None without)."""
    rows = _rows(ctx.run, "key_secondary")
    if rows.empty:
        return None
    plan = _plan(ctx.run)
    strategy = (plan.get("key_secondary") or {}).get("strategy", "fixed_sequence")
    rows = _in_plan_order(rows, (plan.get("key_secondary") or {}).get("endpoints") or [],
                          ctx.run.visits)
    how = ("in the listed order (fixed sequence: adjusted p = the running maximum, testing "
           "stops at the first p above alpha)" if strategy == "fixed_sequence"
           else "with Holm's procedure")
    alpha = plan.get("alpha", 0.05)
    body = para(f"Tested only when the primary analysis is significant (serial gatekeeping), "
                f"{how}; significant when p_adjusted < {alpha:g}.")
    sig = rows["p_adjusted"].astype(float) < alpha
    table = table_html(rows, columns=_columns(rows),
                       row_class=["good" if s else "" for s in sig])
    return Section("key_secondary", "Key secondary end points", body + table)


def selectivity(ctx: Context) -> Section | None:
    """The selectivity verdicts of the plan per visit and stratum (None without sets)."""
    run = ctx.run
    sel = run.get("selectivity")
    if sel is None or "verdict" not in sel.columns:
        return None
    plan = (_plan(run).get("selectivity") or {})
    order = {v: i for i, v in enumerate(run.visits)}
    sel = sel.assign(_v=sel["visit"].astype(str).map(order),
                     _d=sel["disease"].astype(str) != POOLED).sort_values(["_v", "_d", "disease"])
    lo, hi = sel["margin_low"].iloc[0], sel["margin_high"].iloc[0]
    intro = para(f"Targets: {', '.join(plan.get('targets', [])) or 'see the plan'}. "
                 f"Off-targets: {', '.join(plan.get('off_targets', [])) or 'see the plan'}. "
                 f"Equivalence margins [{lo:g}, {hi:g}] on the fold-change scale (odds ratio for "
                 f"percentages). Selective: a target changes (Holm over the targets) and every "
                 f"off-target 95 % CI lies within the margins; not selective: an off-target CI "
                 f"lies beyond a margin; no change: no target changes; else inconclusive.")
    pooled = sel[~sel["_d"]]
    items = "".join(f"<li><b>{esc(r.visit)}</b>: {esc(r.summary)}</li>"
                    for r in pooled.itertuples())
    cls = {"selective": "good", "not selective": "bad"}
    table = table_html(sel, columns=["visit", "disease", "arm", "verdict", "n",
                                     "n_targets_changed", "n_targets", "n_off_within",
                                     "n_off_beyond", "n_off_targets", "status", "summary"],
                       row_class=[cls.get(str(v), "") for v in sel["verdict"]])
    return Section("selectivity", "Selectivity", intro + (
        f'<ul class="sentences">{items}</ul>' if items else "") +
        "<h3>Per visit and stratum</h3>" + table)


def headline(ctx: Context) -> str:
    """The page headline: the primary analysis of the plan ('' without a plan)."""
    prim = _rows(ctx.run, "primary")
    if prim.empty:
        return ""
    first = prim.iloc[0]
    more = f" (+{len(prim) - 1} more primary tests)" if len(prim) > 1 else ""
    return "Primary analysis — " + result_sentence(first) + more
