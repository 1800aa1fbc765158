"""Trial statistics over tidy tables: the analysis plan (primary and key secondary end
points, multiplicity), change from baseline or arm/group differences by MMRM and classical
tests, DA/DS of clusters, responders, selectivity, clinical and safety tables.

>>> from immunomon.simulate.tables import simulate_tables
>>> from immunomon.stats import analyze, StatsOptions
>>> plan = {"primary": [{"parameter": "Treg % of CD4 T", "visits": ["D8"]}]}
>>> tables = analyze(simulate_tables(patients=12, seed=3), baseline="D1",
...                  options=StatsOptions(per_disease=False), plan=plan)
>>> tables["stats_supervised"].query("role == 'primary'")[["method", "covariance"]].iloc[0].tolist()
['mmrm', 'unstructured']

Works only on tables (docs/architecture.md), never on events. Every row that could not be
computed says so in ``status``/``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from threadpoolctl import threadpool_limits

from ..errors import UserError
from ._common import (DESCRIPTIVE, NOT_ESTIMABLE, OK, StatsOptions, kept_samples, patients_table,
                      sort_rows, visit_order)
from .clinical import clinical_change, clinical_immune, clinical_summary
from .da import differential_abundance
from .design import Design, study_design
from .ds import differential_state
from .multiple import bh
from .parameter_level import fold_changes, pca
from .plan import Plan, apply_plan, selectivity
from .safety import adverse_events_summary
from .supervised import SUPERVISED_COLUMNS, observations, responders, supervised_tests

__all__ = ["analyze", "StatsOptions", "Plan", "bh", "OK", "NOT_ESTIMABLE", "DESCRIPTIVE"]

SORT_KEYS = {"stats_supervised": ["parameter", "visit", "disease", "arm", "comparison", "method"],
             "stats_da": ["cluster", "visit", "disease", "arm", "comparison", "method"],
             "stats_ds": ["cluster", "marker", "visit", "disease", "arm", "comparison", "method"]}


def _per_panel(samples: pd.DataFrame):
    if "panel" not in samples:
        yield None, samples
        return
    for panel, s in samples.groupby(samples["panel"].fillna("").astype(str), sort=True):
        yield panel, s


def _tag(df: pd.DataFrame, panel) -> pd.DataFrame:
    return df if panel is None else df.assign(panel=panel)


def analyze(inputs: Mapping[str, pd.DataFrame], *, baseline: str | None = "D1",
            visits: Sequence[str] | None = None, options: StatsOptions | None = None,
            plan=None) -> dict[str, pd.DataFrame]:
    """Every stats table of docs/architecture.md that the inputs allow.

    Parameters
    ----------
    inputs
        ``samples`` (sample_id, patient_id, visit[, disease, arm, day, panel, qc_pass,
        excluded_reason]; samples failing QC or excluded are left out), and any of
        ``parameters`` (sample_id, parameter, population, measure, value[,
        value_transformed, transform]), ``cluster_counts`` (sample_id, cluster, label,
        count), ``cluster_markers`` (sample_id, cluster, marker, median), ``clinical``
        (patient_id, visit, score, value), ``adverse_events`` (CDISC AE columns) and
        ``patients`` (patient_id, disease). Other keys are ignored.
    baseline
        Baseline visit name; ``None`` for a cross-sectional study (groups are compared at
        each visit instead of change from baseline), as is a study with a single visit.
    visits
        Visit names in study order (default: order of ``day`` in samples).
    options
        :class:`StatsOptions`.
    plan
        The analysis plan: an ``immunomon.io.study.AnalysisPlan``, the ``analysis:``
        mapping of study.yaml, a :class:`Plan` or None (everything exploratory).

    Returns
    -------
    dict name -> DataFrame: ``stats_supervised``, ``responders``, ``fold_changes``, ``pca``,
    ``pca_variance`` (from ``parameters``); ``selectivity`` (when the plan names selectivity
    sets); ``stats_da`` (from ``cluster_counts``); ``stats_ds`` (from ``cluster_markers``);
    ``clinical_change``, ``clinical_summary``, ``clinical_categories``, ``clinical_immune``
    (from ``clinical``, the last also needing ``parameters``); ``adverse_events_summary``.
    A ``panel`` column is added when samples carry one.
    """
    # the models invert thousands of small matrices: BLAS threads only cost time there
    with threadpool_limits(1, user_api="blas"):
        return _analyze(inputs, baseline, visits, options, Plan.of(plan))


def _analyze(inputs, baseline, visits, options, plan: Plan | None) -> dict[str, pd.DataFrame]:
    options = (options or StatsOptions()).resolved(plan.alpha if plan else None,
                                                   plan.min_patients if plan else None)
    if "samples" not in inputs:
        raise UserError("stats inputs: a samples table is required")
    samples = kept_samples(inputs["samples"])
    visits = visit_order(samples, baseline, visits)
    if len(visits) == 1:  # a single visit: nothing changes from baseline, groups are compared
        baseline = None
    design = study_design(samples, baseline, visits, options,
                          plan.control_arm if plan else None, plan.reference_group if plan else None)
    patients = patients_table(samples, inputs.get("patients"))
    out: dict[str, list[pd.DataFrame]] = {}

    def put(name, df, panel):
        out.setdefault(name, []).append(_tag(df, panel))

    want = options.wants
    for panel, smp in _per_panel(samples):
        if inputs.get("parameters") is not None and len(inputs["parameters"]):
            obs = observations(smp, inputs["parameters"])
            if want("stats_supervised", "selectivity"):
                put("stats_supervised", supervised_tests(obs, design, options), panel)
            if design.repeated and want("responders"):
                put("responders", responders(obs, design, plan.responder_ratio if plan else 1.25),
                    panel)
            if design.repeated and want("fold_changes", "clinical_immune"):
                put("fold_changes", fold_changes(obs, visits), panel)
            if want("pca", "pca_variance"):
                scores, var = pca(observations(smp, inputs["parameters"], per_sample=True))
                put("pca", scores, panel)
                put("pca_variance", var, panel)
        if inputs.get("cluster_counts") is not None and len(inputs["cluster_counts"]) \
                and want("stats_da"):
            put("stats_da", differential_abundance(smp, inputs["cluster_counts"], design,
                                                   options), panel)
        if inputs.get("cluster_markers") is not None and len(inputs["cluster_markers"]) \
                and want("stats_ds"):
            put("stats_ds", differential_state(smp, inputs["cluster_markers"], design,
                                               options), panel)
    tables = {k: pd.concat(v, ignore_index=True) for k, v in out.items()}
    _finish(tables, plan, design, visits)
    if inputs.get("pseudobulk") is not None and len(inputs["pseudobulk"]) and want("stats_de"):
        from .de import differential_expression  # CITE-seq RNA

        tables["stats_de"] = differential_expression(samples, inputs["pseudobulk"], visits,
                                                     options, inputs.get("cluster_counts"))
    _clinical(tables, inputs, patients, plan, design, options)
    ae = inputs.get("adverse_events")
    if ae is not None and want("adverse_events_summary"):
        tables["adverse_events_summary"] = adverse_events_summary(ae, patients)
    return {k: v for k, v in tables.items() if want(k)}


def _finish(tables: dict, plan: Plan | None, design: Design, visits: list[str]) -> None:
    """Roles, multiplicity, column order, row order, selectivity (in place); the design's
    own choices (a control arm or reference group the plan does not name) in the
    ``reason`` of the rows they shape."""
    apply_plan(tables, plan, visits, design.control)
    for name in SORT_KEYS:
        if name in tables and design.notes:
            df = tables[name]
            shaped = df["comparison"].isin(["arm_difference", "group_difference"])
            note = "; ".join(design.notes)
            df.loc[shaped, "reason"] = [f"{r}; {note}" if r else note
                                        for r in df.loc[shaped, "reason"].astype(str)]
    for name, keys in SORT_KEYS.items():
        if name not in tables:
            continue
        df = tables[name]
        if name == "stats_supervised":
            cols = SUPERVISED_COLUMNS + (["panel"] if "panel" in df else [])
        else:
            cols = [c for c in df.columns if c not in ("role", "p_adjusted", "q", "status", "reason")]
            cols.insert(cols.index("method") + 1, "role")
            cols += ["p_adjusted", "q", "status", "reason"]
        tables[name] = sort_rows(df[cols], keys, visits)
    if "responders" in tables:
        tables["responders"] = sort_rows(tables["responders"], ["parameter", "visit", "disease", "arm"],
                                         visits)
    if "stats_supervised" in tables:
        sel = selectivity(tables["stats_supervised"], plan, visits)
        if sel is not None:
            tables["selectivity"] = sort_rows(sel, ["visit", "disease", "arm"], visits)


def _clinical(tables: dict, inputs: Mapping, patients: pd.DataFrame, plan: Plan | None,
              design: Design, options: StatsOptions) -> None:
    """Clinical change, summaries and their link with the immune response (in place)."""
    clinical = inputs.get("clinical")
    if clinical is None or not len(clinical) or not design.repeated or not options.wants(
            "clinical_change", "clinical_summary", "clinical_categories", "clinical_immune"):
        return
    visits = list(design.visits)
    ch = sort_rows(clinical_change(clinical, patients, design.baseline),
                   ["patient_id", "score", "visit"], visits)
    tables["clinical_change"] = ch
    tables["clinical_summary"], tables["clinical_categories"] = clinical_summary(ch, visits)
    if "fold_changes" not in tables:
        return
    names = list(options.immune_parameters or (plan.parameters() if plan else [])
                 or sorted(tables["fold_changes"]["parameter"].unique()))
    first = next((v for e in (plan.primary if plan else ()) for v in e.visits), None)
    visit = options.immune_visit or first or (visits[1] if len(visits) > 1 else None)
    if visit is not None:
        tables["clinical_immune"] = clinical_immune(ch, tables["fold_changes"], names, visits,
                                                    visit, options)
