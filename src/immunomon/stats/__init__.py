"""Trial statistics over tidy tables: change from baseline, DA/DS, clinical and safety.

>>> from immunomon.simulate.tables import simulate_tables
>>> from immunomon.stats import analyze, StatsOptions
>>> tables = analyze(simulate_tables(patients=12, seed=3), baseline="D1",
...                  options=StatsOptions(per_disease=False))
>>> sorted(tables)[:3]
['adverse_events_summary', 'clinical_categories', 'clinical_change']

Works only on tables (docs/architecture.md), never on events. Every row that could not be
computed says so in ``status``/``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ..errors import UserError
from ._common import (NOT_ESTIMABLE, OK, StatsOptions, kept_samples, patients_table, sort_rows,
                      strata, visit_order)
from .clinical import clinical_change, clinical_immune, clinical_summary
from .da import differential_abundance
from .ds import differential_state
from .multiple import add_q, bh
from .parameter_level import fold_changes, pca
from .safety import adverse_events_summary
from .selectivity import effector_parameters, selectivity, treg_parameters
from .supervised import (SUPERVISED_COLUMNS, lmm_tests, observations, paired_tests,
                         responders)

__all__ = ["analyze", "StatsOptions", "bh", "OK", "NOT_ESTIMABLE", "treg_parameters",
           "effector_parameters"]

FAMILY = ["method", "visit", "disease"]


def _per_panel(samples: pd.DataFrame):
    if "panel" not in samples:
        yield None, samples
        return
    for panel, s in samples.groupby(samples["panel"].fillna("").astype(str), sort=True):
        yield panel, s


def _tag(df: pd.DataFrame, panel) -> pd.DataFrame:
    return df if panel is None else df.assign(panel=panel)


def analyze(inputs: Mapping[str, pd.DataFrame], *, baseline: str = "D1",
            visits: Sequence[str] | None = None,
            options: StatsOptions | None = None) -> dict[str, pd.DataFrame]:
    """Every stats table of docs/architecture.md that the inputs allow.

    Parameters
    ----------
    inputs
        ``samples`` (sample_id, patient_id, disease, visit[, day, panel, qc_pass,
        excluded_reason]; samples failing QC or excluded are left out), and any of
        ``parameters`` (sample_id, parameter, population, measure, value),
        ``cluster_counts`` (sample_id, cluster, label, count), ``cluster_markers``
        (sample_id, cluster, marker, median), ``clinical`` (patient_id, visit, score, value),
        ``adverse_events`` (CDISC AE columns) and ``patients`` (patient_id, disease).
        Other keys are ignored.
    baseline
        Baseline visit name.
    visits
        Visit names in study order (default: order of ``day`` in samples).
    options
        :class:`StatsOptions`.

    Returns
    -------
    dict name -> DataFrame: ``stats_supervised``, ``responders``, ``fold_changes``, ``pca``,
    ``pca_variance``, ``selectivity`` (from ``parameters``); ``stats_da`` (from
    ``cluster_counts``); ``stats_ds`` (from ``cluster_markers``); ``clinical_change``,
    ``clinical_summary``, ``clinical_categories``, ``clinical_immune`` (from ``clinical``,
    the last also needing ``parameters``); ``adverse_events_summary``. A ``panel`` column is
    added when samples carry one.
    """
    options = options or StatsOptions()
    if "samples" not in inputs:
        raise UserError("stats inputs: a samples table is required")
    samples = kept_samples(inputs["samples"])
    visits = visit_order(samples, baseline, visits)
    st = strata(samples["disease"], options.per_disease)
    patients = patients_table(samples, inputs.get("patients"))
    out: dict[str, list[pd.DataFrame]] = {}

    def put(name, df, panel):
        out.setdefault(name, []).append(_tag(df, panel))

    param_pop = []
    for panel, smp in _per_panel(samples):
        if inputs.get("parameters") is not None and len(inputs["parameters"]):
            obs = observations(smp, inputs["parameters"])
            methods = options.supervised_methods
            parts = [paired_tests(obs, visits, st, options,
                                  methods=[m for m in methods if m in ("paired_t", "wilcoxon")])]
            if "lmm" in methods:
                parts.append(lmm_tests(obs, visits, st, options))
            put("stats_supervised", pd.concat(parts, ignore_index=True), panel)
            put("responders", responders(obs, visits, st), panel)
            put("fold_changes", fold_changes(obs, visits), panel)
            scores, var = pca(observations(smp, inputs["parameters"], per_sample=True))
            put("pca", scores, panel)
            put("pca_variance", var, panel)
            param_pop.append(obs[["parameter", "population"]].drop_duplicates("parameter"))
        if inputs.get("cluster_counts") is not None and len(inputs["cluster_counts"]):
            put("stats_da", differential_abundance(smp, inputs["cluster_counts"], visits, st,
                                                   options), panel)
        if inputs.get("cluster_markers") is not None and len(inputs["cluster_markers"]):
            put("stats_ds", differential_state(smp, inputs["cluster_markers"], visits, st,
                                               options), panel)
    tables = {k: pd.concat(v, ignore_index=True) for k, v in out.items()}

    if "stats_supervised" in tables:
        sup = add_q(tables["stats_supervised"], FAMILY)
        cols = SUPERVISED_COLUMNS + (["panel"] if "panel" in sup else [])
        tables["stats_supervised"] = sort_rows(sup[cols], ["parameter", "visit", "disease", "method"], visits)
        tables["responders"] = sort_rows(tables["responders"], ["parameter", "visit", "disease"], visits)
        pp = pd.concat(param_pop).drop_duplicates("parameter")
        sel_input = tables["stats_supervised"].drop_duplicates(["parameter", "visit", "disease", "method"])
        tables["selectivity"] = selectivity(sel_input, pp, visits, options)
    for name, keys in (("stats_da", ["cluster", "visit", "disease", "method"]),
                       ("stats_ds", ["cluster", "marker", "visit", "disease", "method"])):
        if name in tables:
            df = add_q(tables[name], FAMILY)
            order = [c for c in df.columns if c != "q"]
            order.insert(order.index("status"), "q")
            tables[name] = sort_rows(df[order], keys, visits)

    if inputs.get("pseudobulk") is not None and len(inputs["pseudobulk"]):  # CITE-seq RNA
        from .de import differential_expression

        tables["stats_de"] = differential_expression(samples, inputs["pseudobulk"], visits,
                                                     options, inputs.get("cluster_counts"))

    clinical = inputs.get("clinical")
    if clinical is not None and len(clinical):
        ch = clinical_change(clinical, patients, baseline)
        ch = sort_rows(ch, ["patient_id", "score", "visit"], visits)
        tables["clinical_change"] = ch
        tables["clinical_summary"], tables["clinical_categories"] = clinical_summary(ch, visits)
        if "fold_changes" in tables:
            imm = list(options.immune_parameters or treg_parameters(pd.concat(param_pop)))
            tables["clinical_immune"] = clinical_immune(ch, tables["fold_changes"], imm, visits, options)
    ae = inputs.get("adverse_events")
    if ae is not None:
        tables["adverse_events_summary"] = adverse_events_summary(ae, patients)
    return tables
