"""Supervised phenotyping of a study: prepare → gate (template) → statistics, per sample.

:func:`phenotype_sample` gates one prepared sample with its panel's template and returns
its tables; :func:`gate_study` runs prepare + phenotype over every kept sample of a study
(in parallel with :func:`immunomon.pipeline.executor.map_samples`) and writes
``tables/{populations,population_markers,parameters,qc_steps,gate_thresholds}`` (parquet
and CSV) into the output folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from immunomon.errors import UserError
from immunomon.gating.statistics import marker_table, parameter_table, population_table
from immunomon.gating.template import GatingTemplate, TemplateGating
from immunomon.pipeline.prepare import PreparedSample, prepare_sample

#: Tables written by :func:`gate_study`, in this order.
SUPERVISED_TABLES = ("populations", "population_markers", "parameters", "qc_steps", "gate_thresholds")


def panel_template(study, panel: str) -> GatingTemplate:
    """The gating template of a study panel: ``gating.template`` of study.yaml, a built-in
    name (``treg``) or a YAML path relative to the study folder."""
    gating = study.config.panels[panel].gating
    name = getattr(gating, "template", None) if gating is not None else None
    if not name:
        raise UserError(f"{study.root}/study.yaml: panel {panel!r} has no gating template "
                        "(set panels.<panel>.gating.template to 'treg' or a YAML path)")
    path = Path(study.root) / str(name)
    return GatingTemplate.load(path if path.suffix in (".yaml", ".yml") else str(name))


def gate_prepared(prepared: PreparedSample, template: GatingTemplate) -> TemplateGating:
    """Apply a template to a prepared sample's QC-passed events."""
    return template.apply(prepared.events, prepared.sample_id)


def phenotype_sample(prepared: PreparedSample, study, sample_id: str,
                     template: GatingTemplate | None = None) -> dict[str, pd.DataFrame]:
    """Gate one prepared sample and compute its statistics.

    Parameters
    ----------
    prepared
        Output of :func:`~immunomon.pipeline.prepare.prepare_sample`.
    study
        The loaded study (for the panel's template and the lymphocyte count).
    sample_id
        The sample's id.
    template
        Overrides the panel's template.

    Returns
    -------
    dict
        ``populations``, ``population_markers``, ``parameters``, ``gate_thresholds`` —
        this sample's rows, each with a ``panel`` column.
    """
    row = study.sample(sample_id)
    template = template or panel_template(study, prepared.panel or str(row["panel"]))
    gating = gate_prepared(prepared, template)
    lymph = row.get("lymphocytes_per_ul", float("nan"))
    pops = population_table(gating.memberships, gating.parents, sample_id=sample_id,
                            lymphocytes_per_ul=float(lymph) if pd.notna(lymph) else None)
    markers = marker_table(prepared.events, gating.memberships, prepared.fluorescence_markers,
                           transforms=prepared.transforms, thresholds=gating.positivity, sample_id=sample_id)
    params = parameter_table(pops, markers, template.parameters)
    tables = {"populations": pops, "population_markers": markers, "parameters": params,
              "gate_thresholds": gating.thresholds}
    for t in tables.values():
        t["panel"] = prepared.panel
    return tables


@functools.lru_cache(maxsize=4)
def _load(study_dir: str):
    """The study, loaded once per process (worker processes gate many samples)."""
    from immunomon.pipeline.checks import load_checked

    return load_checked(study_dir)


def gate_sample(study_dir: str, sample_id: str) -> dict[str, pd.DataFrame]:
    """Prepare and phenotype one sample of the study in ``study_dir`` (picklable work unit).

    Returns the tables of :func:`phenotype_sample` plus ``qc_steps``.
    """
    study = _load(str(study_dir))
    prepared = prepare_sample(study, sample_id)
    tables = phenotype_sample(prepared, study, sample_id)
    qc = prepared.qc_steps.copy()
    qc["panel"] = prepared.panel
    tables["qc_steps"] = qc
    return tables


def gate_study(study_dir: str | Path, out_dir: str | Path, workers: int = 1,
               scheduler=None) -> dict[str, pd.DataFrame]:
    """Gate every kept sample (``excluded_reason == ""``) of a study and write the tables.

    Parameters
    ----------
    study_dir
        Study folder (``study.yaml``, ``samples.csv``, FCS files).
    out_dir
        Output folder; tables go to ``out_dir/tables/NAME.{parquet,csv}``.
    workers, scheduler
        Parallelism (see :func:`immunomon.pipeline.executor.map_samples`); results do not
        depend on it.

    Returns
    -------
    dict
        :data:`SUPERVISED_TABLES` name → DataFrame (all samples, manifest order).
    """
    from immunomon.pipeline.executor import map_samples
    from immunomon.pipeline.rundir import write_table

    study_dir = str(Path(study_dir).resolve())
    _load.cache_clear()  # read study.yaml afresh: it may have been edited since the last call
    study = _load(study_dir)
    kept = study.samples.loc[study.samples["excluded_reason"].fillna("") == "", "sample_id"].tolist()
    results = map_samples(functools.partial(gate_sample, study_dir), kept, workers=workers, scheduler=scheduler)
    tables = {}
    for name in SUPERVISED_TABLES:
        parts = [r[name] for r in results]
        tables[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        write_table(out_dir, name, tables[name])
    return tables


def plot_sample_gates(study_dir: str | Path, sample_id: str, path: str | Path) -> Path:
    """Prepare and gate one sample and write its gate plots (one PNG, a panel per gated
    plot, see :func:`immunomon.report.gate_plots.plot_gates`); returns the PNG path."""
    from immunomon.report.gate_plots import write_gate_plots

    from immunomon.pipeline.checks import load_checked

    study = load_checked(study_dir)
    prepared = prepare_sample(study, sample_id, keep_all_events=True)
    gating = gate_prepared(prepared, panel_template(study, prepared.panel))
    qc = "passed" if prepared.qc_pass else "FAILED"
    title = (f"{sample_id} — {prepared.events_after_qc:,} of {prepared.events_total:,} events after QC ({qc})")
    return write_gate_plots(path, prepared.events, gating, title=title, qc_events=prepared.all_events,
                            removed_by=prepared.removed_by, qc_steps=list(prepared.qc_steps["step"]))
