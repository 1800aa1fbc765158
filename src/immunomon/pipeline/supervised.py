"""Supervised phenotyping of a study: prepare → gate → statistics, per sample.

A panel is gated by one route (``gating:`` of study.yaml):

``template``
    a built-in template (``treg``, ``lineage``, ``mass``) or a template YAML: data-driven
    positions on the QC-passed, transformed events;
``wsp`` (+ ``wsp_group``)
    a FlowJo workspace: each FCS file is matched to its workspace sample by ``$FIL`` or file
    name, and that sample's own gates (with FlowJo's compensation and transforms) are applied
    to every event of the file, as FlowJo does (so counts are FlowJo's);
``gatingml``
    a Gating-ML 2.0 file, applied to every event of the file like FlowJo's;
no ``gating`` block
    no gating: QC, clustering and differential abundance / state only (empty population
    tables).

:func:`phenotype_sample` gates one prepared sample and returns its tables; :func:`gate_study`
runs prepare + phenotype over every kept sample of a study (in parallel with
:func:`immunomon.pipeline.executor.map_samples`) and writes
``tables/{populations,population_markers,parameters,qc_steps,gate_thresholds}`` (parquet
and CSV) into the output folder. :func:`check_gating` is the route's validation (registered
in :data:`immunomon.pipeline.checks.CHECKS`): ``validate`` rejects what ``run`` would.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from immunomon.errors import UserError
from immunomon.gating.statistics import (ParameterSpec, marker_table, parameter_table,
                                         population_table)
from immunomon.gating.template import THRESHOLD_COLUMNS, GatingTemplate, TemplateGating
from immunomon.pipeline.prepare import PreparedSample, prepare_sample

#: Tables written by :func:`gate_study`, in this order.
SUPERVISED_TABLES = ("populations", "population_markers", "parameters", "qc_steps", "gate_thresholds")


def gating_route(study, panel: str) -> str:
    """How a panel is gated: ``template``, ``wsp``, ``gatingml`` or ``none``."""
    gating = study.config.panels[panel].gating
    for key in ("template", "wsp", "gatingml"):
        if gating is not None and getattr(gating, key, None):
            return key
    return "none"


def panel_template(study, panel: str) -> GatingTemplate:
    """The gating template of a study panel: ``gating.template`` of study.yaml, a built-in
    name (``treg``, ``lineage``, ``mass``) or a YAML path relative to the study folder."""
    gating = study.config.panels[panel].gating
    name = getattr(gating, "template", None) if gating is not None else None
    if not name:
        raise UserError(f"{study.root}/study.yaml: panel {panel!r} has no gating template "
                        "(set panels.<panel>.gating.template to a built-in name or a YAML path)")
    path = Path(study.root) / str(name)
    return GatingTemplate.load(path if path.suffix in (".yaml", ".yml") else str(name))


@functools.lru_cache(maxsize=8)
def _workspace(path: str, mtime: float):
    from immunomon.gating.flowjo import read_wsp

    return read_wsp(path)


@functools.lru_cache(maxsize=8)
def _gatingml(path: str, mtime: float):
    from immunomon.gating.gatingml import read_gatingml

    return read_gatingml(path)


def _gating_file(study, panel: str, key: str) -> str:
    path = Path(study.root) / str(getattr(study.config.panels[panel].gating, key))
    return str(path.resolve())


def workspace_sample(study, sample_id: str, fil: str | None = None):
    """The FlowJo workspace sample of a study sample (panel gated with ``wsp``), matched by the
    file's ``$FIL`` keyword or its file name within ``wsp_group``."""
    from immunomon.io.fcs import read_fcs_metadata

    row = study.sample(sample_id)
    gating = study.config.panels[row["panel"]].gating
    path = _gating_file(study, row["panel"], "wsp")
    ws = _workspace(path, Path(path).stat().st_mtime)
    if fil is None:
        dataset = int(row.get("dataset", 1) or 1)
        fil = read_fcs_metadata(study.path_of(sample_id), dataset=dataset).keywords.get("$FIL")
    return ws.match(Path(str(row["file"])).name, fil, group=gating.wsp_group)


def prepare_for_gating(study, sample_id: str, normaliser=None) -> PreparedSample:
    """:func:`~immunomon.pipeline.prepare.prepare_sample` with what the panel's gating route
    needs: every event and its raw values for imported (FlowJo, Gating-ML) gates
    (``normaliser``: the panel's batch normalisation, see ``prepare_sample``)."""
    route = gating_route(study, str(study.sample(sample_id)["panel"]))
    imported = route in ("wsp", "gatingml")
    return prepare_sample(study, sample_id, keep_all_events=imported, keep_raw=imported,
                          normaliser=normaliser)


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
    panel = prepared.panel or str(row["panel"])
    route = "template" if template is not None else gating_route(study, panel)
    lymph = row.get("lymphocytes_per_ul", float("nan"))
    lymph = float(lymph) if pd.notna(lymph) else None
    if route == "none":
        return {name: pd.DataFrame() for name in ("populations", "population_markers", "parameters",
                                                   "gate_thresholds")}
    if route == "template":
        template = template or panel_template(study, panel)
        gating = gate_prepared(prepared, template)
        memberships, parents, events = gating.memberships, gating.parents, prepared.events
        positivity, spec, thresholds = gating.positivity, gating.parameters, gating.thresholds
    else:
        memberships, parents = _imported_gating(prepared, study, sample_id, route)
        if prepared.all_events is None:
            raise UserError(f"{sample_id}: imported gates need every event (prepare_for_gating)")
        events, positivity, spec = prepared.all_events, {}, ParameterSpec()
        thresholds = pd.DataFrame(columns=THRESHOLD_COLUMNS)
    pops = population_table(memberships, parents, sample_id=sample_id, lymphocytes_per_ul=lymph)
    markers = marker_table(events, memberships, _reported_markers(prepared), transforms=prepared.transforms,
                           thresholds=positivity, sample_id=sample_id)
    params = parameter_table(pops, markers, spec)
    tables = {"populations": pops, "population_markers": markers, "parameters": params,
              "gate_thresholds": thresholds}
    for t in tables.values():
        t["panel"] = prepared.panel
    return tables


def _reported_markers(prepared: PreparedSample) -> list[str]:
    """Markers summarised per population: the transformed channels that are markers or the
    viability dye (not DNA, beads or barcodes)."""
    return [m for m in prepared.fluorescence_markers
            if prepared.roles.get(m, "marker") in ("marker", "viability")]


def _imported_gating(prepared: PreparedSample, study, sample_id: str, route: str
                     ) -> tuple[dict[str, np.ndarray], dict[str, str | None]]:
    """Memberships (every file event) and parents of a FlowJo or Gating-ML gating, population
    names shortened to the gate's own name where that is unique."""
    if prepared.raw is None:
        raise UserError(f"{sample_id}: imported gates need the raw events (prepare_for_gating)")
    if route == "wsp":
        ws_sample = workspace_sample(study, sample_id, fil=None)
        strategy, spill = ws_sample.strategy, ws_sample.spillover
    else:
        path = _gating_file(study, prepared.panel, "gatingml")
        strategy, spill = _gatingml(path, Path(path).stat().st_mtime), prepared.spillover
    try:
        result = strategy.apply(prepared.raw, spillover=spill)
    except UserError as err:
        raise UserError([f"{sample_id}: {p}" for p in err.problems]) from None
    ids = [i for i in strategy.population_ids if not i.endswith(" (inside)")]
    short = {i: i.rsplit("/", 1)[-1] for i in ids}
    counts: dict[str, int] = {}
    for name in short.values():
        counts[name] = counts.get(name, 0) + 1
    name_of = {i: (short[i] if counts[short[i]] == 1 else i) for i in ids}

    def parent(i: str) -> str | None:
        p = strategy.parent_of(i)
        while p is not None and p not in name_of:  # skip helper gates ("... (inside)")
            p = strategy.parent_of(p)
        return name_of.get(p) if p is not None else None

    memberships = {name_of[i]: result.membership(i) for i in ids}
    parents = {name_of[i]: parent(i) for i in ids}
    return memberships, parents


# ------------------------------------------------------------------------ validation
def check_gating(study) -> list[str]:
    """Problems of every panel's gating route that ``run`` would meet: a template that cannot
    be read or that needs markers the panel lacks; a workspace or Gating-ML file that cannot
    be read, a missing workspace group, a sample the workspace lacks or matches twice, a gate
    on a channel the files lack. Registered in :data:`immunomon.pipeline.checks.CHECKS`."""
    from immunomon.io.fcs import FCSError, read_fcs_metadata

    problems: list[str] = []
    where = f"{study.root}/study.yaml"
    samples = study.samples
    for panel, config in study.config.panels.items():
        if getattr(config, "assay", "cytometry") != "cytometry":
            continue
        route = gating_route(study, panel)
        rows = samples.loc[(samples["panel"] == panel) & (samples["excluded_reason"] == "")]
        if route == "none" or rows.empty:
            continue
        try:
            if route == "template":
                template = panel_template(study, panel)
            elif route == "wsp":
                path = _gating_file(study, panel, "wsp")
                ws = _workspace(path, Path(path).stat().st_mtime)
                if config.gating.wsp_group and config.gating.wsp_group not in ws.groups:
                    raise UserError(f"{path}: no sample group {config.gating.wsp_group!r} "
                                    f"(groups: {', '.join(sorted(ws.groups))})")
            else:
                path = _gating_file(study, panel, "gatingml")
                strategy = _gatingml(path, Path(path).stat().st_mtime)
        except (UserError, OSError) as err:
            lines = err.problems if isinstance(err, UserError) else [str(err)]
            problems += [f"{where}: panels.{panel}.gating: {p}" for p in lines]
            continue
        for row in rows.to_dict("records"):
            fpath = study.root / row["file"]
            if not fpath.is_file():
                continue  # the manifest check reports it
            try:
                meta = read_fcs_metadata(fpath, dataset=int(row.get("dataset", 1) or 1))
            except FCSError:
                continue  # the manifest check reports it
            at = f"{study.root}/samples.csv, sample {row['sample_id']}"
            try:
                if route == "template":
                    columns = _panel_columns(config, meta)
                    template.resolve(columns, row["sample_id"])
                    continue
                if route == "wsp":
                    strategy = workspace_sample(study, row["sample_id"],
                                                fil=meta.keywords.get("$FIL")).strategy
                missing = _missing_channels(strategy, set(meta.names))
                if missing:
                    problems.append(f"{at}: the gates use channel(s) {', '.join(missing)} that "
                                    f"{row['file']} does not have")
            except UserError as err:
                problems += [f"{at}: {p}" for p in err.problems]
            if route == "template":
                break  # one file per panel: the channels of a panel are the same in every file
    return problems


def _panel_columns(config, meta) -> list[str]:
    from immunomon.pipeline.prepare import _as_dict, marker_names

    return marker_names(list(meta.names), list(meta.labels), _as_dict(config.channels or {}))


def _missing_channels(strategy, names: set[str]) -> list[str]:
    """Raw channels the strategy's gates read that are neither file channels nor
    fluorochromes of one of its compensation matrices."""
    fluor = {str(c) for m in strategy.compensations.values() if m is not None for c in m.index}
    missing = []
    for gate in strategy.gates.values():
        for dim in gate.dimensions:
            for raw in dim.raw_names():
                if raw not in names and raw not in fluor and raw not in missing:
                    missing.append(raw)
    return missing


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
    prepared = prepare_for_gating(study, sample_id)
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
    scatter = {"FSC-A", "SSC-A"} <= set(prepared.events.columns)  # the QC panel's axes
    return write_gate_plots(path, prepared.events, gating, title=title,
                            qc_events=prepared.all_events if scatter else None,
                            removed_by=prepared.removed_by, qc_steps=list(prepared.qc_steps["step"]))
