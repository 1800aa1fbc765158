"""A study's batch normalisation on its bridge controls: which samples, which markers, the
checks of ``validate``, and the fit (the ``normalise`` stage of a run, ``immunomon normalise``).

A panel asks for it in study.yaml (``normalisation: {method: cytonorm, quantiles: 99,
clustering: false | {grid, metaclusters}, markers, holdout}``); the controls are the
``samples.csv`` rows with ``control`` true. Per batch, the fit reads its controls (read →
compensate → transform, every event: the splines are applied to every event of the batch's
files before QC), pools them and keeps their quantiles (:func:`~immunomon.preprocess.normalise.
control_summary`); with clustering, a FlowSOM is first trained on an even draw of the
controls of every batch. Controls named in ``holdout`` are normalised but not fitted on: the
batch diagnostics measure on them how far normalisation brings batches together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunomon.atomic import write_csv
from immunomon.io.clinical import where
from immunomon.preprocess.normalise import MIN_CELLS, CytoNorm, control_summary

from .prepare import INTENSITY_ROLES

__all__ = ["normalised_panels", "normalisation_markers", "fit_controls", "check_normalisation",
           "fit_panel", "NORMALISE_CODE"]

#: Modules whose source enters the cache key of a fitted normalisation.
NORMALISE_CODE = ("immunomon.io", "immunomon.preprocess", "immunomon.clustering",
                  "immunomon.pipeline.prepare", "immunomon.pipeline.normalise")
#: Events drawn (evenly over batches) to train the clustering of a clustered normalisation.
TRAIN_EVENTS = 100_000


def normalised_panels(study) -> list[str]:
    """Panels of the study with a ``normalisation`` block, in study.yaml order."""
    return [p for p, panel in study.config.panels.items()
            if getattr(panel, "normalisation", None) is not None]


def _role(panel, channel: str) -> str:
    """A panel channel's role: stated, else inferred from its name and marker."""
    from immunomon.io.discover import channel_role

    c = panel.channels[channel]
    return c.role or channel_role(channel, c.marker, panel.instrument or "flow")


def normalisation_markers(panel) -> list[str]:
    """The markers a panel normalises: ``normalisation.markers``, else every channel whose
    role (stated or inferred from the names) is ``marker`` and whose class is not ``none``."""
    if panel.normalisation.markers:
        return list(panel.normalisation.markers)
    return [c.marker for name, c in panel.channels.items()
            if _role(panel, name) == "marker" and c.marker_class != "none"]


def _clustering_markers(panel, markers: list[str]) -> list[str]:
    """Lineage (``type``) markers among the normalised ones, else all of them."""
    kinds = {c.marker: c.marker_class for c in panel.channels.values()}
    typed = [m for m in markers if kinds.get(m) == "type"]
    return typed or list(markers)


def _kept(samples: pd.DataFrame, panel: str) -> pd.DataFrame:
    """Rows of ``panel`` not excluded in study.yaml."""
    rows = samples[samples["panel"].astype(str) == panel]
    return rows[rows["excluded_reason"].fillna("").astype(str) == ""]


def fit_controls(study, panel: str) -> dict[str, list[str]]:
    """Batch → the control sample ids the panel's normalisation is fitted on (controls not
    excluded nor held out), batches in order of first appearance."""
    spec = study.config.panels[panel].normalisation
    holdout = set(spec.holdout or ())
    rows = _kept(study.samples, panel)
    rows = rows[rows["control"].astype(bool) & ~rows["sample_id"].isin(holdout)]
    out: dict[str, list[str]] = {}
    for sid, batch in zip(rows["sample_id"], rows["batch"].astype(str)):
        out.setdefault(batch, []).append(sid)
    return out


def min_control_events(spec) -> int:
    """Fewest events a control file needs: one more than the quantiles, and R's minCells."""
    return max(MIN_CELLS, int(spec.quantiles) + 1)


def check_normalisation(study) -> list[str]:
    """Problems of the normalisation settings and controls (a checker of
    :data:`immunomon.pipeline.checks.CHECKS`): unknown or untransformed markers, held-out
    samples that are not controls, samples without a batch, a batch without a control, a
    control with too few events for the quantiles."""
    from immunomon.io.fcs import FCSError, read_fcs_metadata

    problems: list[str] = []
    yaml_path = Path(study.root) / "study.yaml"
    csv_path = Path(study.root) / "samples.csv"
    samples = study.samples.reset_index(drop=True)
    for name in normalised_panels(study):
        panel = study.config.panels[name]
        spec = panel.normalisation
        at = f"{yaml_path}: panels.{name}.normalisation"
        channel_of = {c.marker: ch for ch, c in panel.channels.items()}
        for m in normalisation_markers(panel):
            if m not in channel_of:
                problems.append(f"{at}.markers: '{m}' is not a marker of the panel")
            elif _role(panel, channel_of[m]) not in INTENSITY_ROLES:
                problems.append(f"{at}.markers: '{m}' (channel {channel_of[m]}, role "
                                f"{_role(panel, channel_of[m])}) is not transformed, so it "
                                f"cannot be normalised on the transformed scale")
        rows = _kept(samples, name)
        is_control = rows["control"].astype(bool)
        for sid in spec.holdout or ():
            if sid not in set(rows.loc[is_control, "sample_id"]):
                problems.append(f"{at}.holdout: '{sid}' is not a control sample (control = "
                                f"true) of panel '{name}'")
        batch = rows["batch"].fillna("").astype(str).str.strip()
        for i in rows.index[batch == ""]:
            problems.append(f"{where(csv_path, i, 'batch')}: empty, but panel '{name}' is "
                            f"normalised per batch (study.yaml panels.{name}.normalisation)")
        fitted = fit_controls(study, name)
        for b in dict.fromkeys(batch[batch != ""]):
            if b not in fitted:
                first = rows.index[batch == b][0]
                problems.append(f"{where(csv_path, first, 'batch')}: batch '{b}' of panel "
                                f"'{name}' has no bridge control (a row with control = true) "
                                f"to normalise it on")
        need = min_control_events(spec)
        for i, sid in zip(rows.index[is_control], rows.loc[is_control, "sample_id"]):
            path = Path(study.path_of(sid))
            if not path.is_file():
                continue  # the manifest check names the missing file
            try:
                events = int(read_fcs_metadata(path, dataset=int(samples.at[i, "dataset"]))
                             .keywords.get("$TOT", 0))
            except (FCSError, ValueError):
                continue  # the manifest check names the unreadable file
            if events < need:
                problems.append(f"{where(csv_path, i, 'file')}: control {sid} has {events} "
                                f"events; {spec.quantiles} quantiles need at least {need}")
    return problems


# --------------------------------------------------------------------------- the fit
@dataclass(frozen=True)
class _BatchJob:
    """Read one batch's controls (picklable task of :func:`fit_panel`)."""

    study: Any
    index: int
    sample_ids: tuple[str, ...]
    markers: tuple[str, ...]
    model: CytoNorm
    n_train: int = 0


def control_events(study, sample_id: str, markers) -> np.ndarray:
    """``(n_events, n_markers)`` float32 events of one control: read, compensated and
    transformed as in :func:`~immunomon.pipeline.prepare.prepare_sample`, every event (no
    QC), columns ``markers``."""
    from immunomon.pipeline.prepare import prepare_sample
    from immunomon.preprocess.qc import QualityControl

    events = prepare_sample(study, sample_id, qc=QualityControl(steps=())).events
    return events[list(markers)].to_numpy(dtype=np.float32)


def _pooled(job: _BatchJob) -> np.ndarray:
    return np.concatenate([control_events(job.study, s, job.markers) for s in job.sample_ids])


def _training_task(job: _BatchJob) -> np.ndarray:
    return job.model.training_events(_pooled(job), job.markers, job.n_train, job.index)


def _summary_task(job: _BatchJob):
    X = _pooled(job)
    m = job.model
    return control_summary(X, m.n_quantiles, m.clusters_of(X, job.markers), m.n_clusters,
                           m.min_cells)


def fit_panel(study, panel: str, seed: int, map_fn=None) -> CytoNorm:
    """Fit a panel's CytoNorm on its bridge controls, one batch at a time.

    Parameters
    ----------
    study
        A loaded, checked study whose ``panel`` has a ``normalisation`` block.
    seed
        Seed of the clustering (SOM initialisation, training draw, consensus).
    map_fn
        ``map_fn(task, jobs) -> results in order`` (e.g. the pipeline's parallel
        :func:`~immunomon.pipeline.executor.map_samples`); default: in this process.
    """
    map_fn = map_fn or (lambda task, jobs: [task(j) for j in jobs])
    config = study.config.panels[panel]
    spec = config.normalisation
    markers = normalisation_markers(config)
    som = None
    if spec.clustering:
        from immunomon.clustering import FlowSOM

        som = FlowSOM(grid=tuple(spec.clustering.grid), n_metaclusters=spec.clustering.metaclusters,
                      random_state=seed)
    model = CytoNorm(spec.quantiles, clustering=som,
                     clustering_markers=_clustering_markers(config, markers) if som else None,
                     max_train=TRAIN_EVENTS)
    batches = fit_controls(study, panel)
    jobs = [_BatchJob(study, i, tuple(ids), tuple(markers), model,
                      TRAIN_EVENTS // max(1, len(batches)))
            for i, ids in enumerate(batches.values())]
    if som is not None:  # jobs are pickled per round: the second carries the trained SOM
        som.fit(np.concatenate(map_fn(_training_task, jobs)))
    summaries = map_fn(_summary_task, jobs)
    return model.from_summaries(dict(zip(batches, summaries)), markers)


# --------------------------------------------------------------------------- in a run
def fit_study(study, file_sha: dict, seed: int, cache, code: str, parallel: dict,
              stages) -> dict[str, tuple[str, CytoNorm]]:
    """The ``normalise`` stage of :func:`~immunomon.pipeline.run.run_study`: panel → (cache
    key, fitted model) for every panel asking for normalisation, cached under ``normalise``
    by the panel's settings, the fit controls' manifest rows and file contents, the seed and
    the code."""
    from .cache import make_key
    from .executor import map_samples

    panels = normalised_panels(study)
    bar, task = stages.start("normalise", len(panels))
    out, cached = {}, 0
    for panel in panels:
        controls = [s for ids in fit_controls(study, panel).values() for s in ids]
        rows = [{k: v for k, v in study.sample(s).items() if k != "excluded_reason"}
                for s in controls]
        settings = study.config.panels[panel].model_dump(
            mode="json", include={"channels", "compensation", "transform", "normalisation"})
        key = make_key("normalise", code, settings, rows, [file_sha[s] for s in controls], seed)
        model = cache.get("normalise", key)
        cached += model is not None
        if model is None:
            model = cache.put("normalise", key, fit_panel(
                study, panel, seed, lambda t, jobs: map_samples(t, jobs, **parallel)))
        out[panel] = (key, model)
        bar.advance(task)
    stages.done("normalise", panels=len(panels), cached=cached,
                batches=sum(len(m.batches_) for _, m in out.values()))
    return out


def batch_summary(prepared, control: bool = False) -> dict[str, pd.DataFrame]:
    """One prepared sample's rows of the batch diagnostics (see
    :func:`immunomon.preprocess.batch.sample_summary`): quantiles of every transformed
    marker (before and after normalisation where normalised) and extrapolated shares; for a
    bridge ``control`` of a clustered normalisation also per metacluster."""
    from immunomon.preprocess.batch import sample_summary

    norm = prepared.normalised or {}
    return sample_summary(prepared.events, prepared.fluorescence_markers, norm.get("before"),
                          norm.get("outside"), norm.get("clusters") if control else None)


def batch_tables(study, analysed: pd.DataFrame, by_id: dict,
                 normalisers: dict[str, tuple[str, CytoNorm]]) -> dict[str, pd.DataFrame]:
    """The run's ``normalisation`` and ``batch_*`` tables (:mod:`immunomon.stats.batch`) from
    the analysed samples' summaries and the fitted models; none when no panel has two
    batches or more."""
    from immunomon.stats.batch import batch_diagnostics

    holdout = {s for p in normalised_panels(study)
               for s in study.config.panels[p].normalisation.holdout or ()}
    control = analysed["control"].fillna(False).astype(bool)
    analysed = analysed.assign(batch_role=np.where(
        analysed["sample_id"].isin(holdout), "holdout", np.where(control, "controls", "samples")))

    frames = {"quantiles": [], "extrapolated": [], "cluster_quantiles": []}
    for sid in analysed["sample_id"]:
        summary = by_id[sid].get("batch") or {}
        for name in frames:
            if name in summary and len(summary[name]):
                frames[name].append(summary[name].assign(sample_id=sid))
    quantiles = (pd.concat(frames["quantiles"], ignore_index=True) if frames["quantiles"]
                 else pd.DataFrame(columns=["marker", "stage", "p", "value", "sample_id"]))
    extrapolated, by_cluster = (pd.concat(frames[k], ignore_index=True) if frames[k] else None
                                for k in ("extrapolated", "cluster_quantiles"))
    fits = [m.to_table().assign(panel=p) for p, (_, m) in normalisers.items()]
    return batch_diagnostics(analysed, quantiles, extrapolated,
                             pd.concat(fits, ignore_index=True) if fits else None, by_cluster)


# --------------------------------------------------------------------------- FCS output
#: TEXT keyword naming the normalisation in written files.
KEYWORD = "IMMUNOMON_NORMALISATION"


@dataclass(frozen=True)
class _WriteJob:
    study: Any
    sample_id: str
    model: CytoNorm
    out: str
    description: str


def _write_task(job: _WriteJob) -> str:
    """Normalise every event of one file and write it as FCS 3.1 (see :func:`write_normalised`)."""
    from immunomon.io.fcs import read_fcs, write_fcs
    from immunomon.pipeline.prepare import prepare_sample
    from immunomon.preprocess.qc import QualityControl

    row = job.study.sample(job.sample_id)
    f = read_fcs(job.study.path_of(job.sample_id), dataset=int(row.get("dataset", 1) or 1),
                 scale=True)  # the linear values prepare_sample works on
    prepared = prepare_sample(job.study, job.sample_id, qc=QualityControl(steps=()),
                              normaliser=job.model)
    before = prepared.normalised["before"]
    columns = list(prepared.events.columns)
    delta = np.zeros((f.events.shape[0], len(columns)))  # change of the compensated linear values
    for m in before.columns:
        inverse = prepared.transforms[m].inverse_transform
        delta[:, columns.index(m)] = (inverse(prepared.events[m].to_numpy(np.float64))
                                      - inverse(before[m].to_numpy(np.float64)))
    if f.spillover is not None:  # back to detector values: FlowJo compensates with $SPILLOVER
        idx = [f.names.index(c) for c in f.spillover.columns]
        delta[:, idx] = delta[:, idx] @ f.spillover.to_numpy(np.float64)
    events = (f.events.astype(np.float64) + delta).astype(np.float32)
    keywords = {k: v for k, v in f.keywords.items()  # values are written linear: gain 1
                if not (k.startswith("$P") and k.endswith("G") and k[2:-1].isdigit())}
    keywords[KEYWORD] = f"{job.description}; batch {row.get('batch')}"
    path = Path(job.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_fcs(path, events, f.names, f.labels, datatype="F",
              ranges=list(f.channels["range"].astype(float)), spillover=f.spillover,
              keywords=keywords)
    return str(path)


def describe(model: CytoNorm, controls: dict[str, list[str]]) -> str:
    """One line naming a fitted normalisation (the :data:`KEYWORD` of written files)."""
    from immunomon import __version__

    n = sum(len(v) for v in controls.values())
    clusters = f", per {model.n_clusters} FlowSOM clusters of the controls" if model.n_clusters \
        else ""
    return (f"CytoNorm (immunomon {__version__}): {model.n_quantiles} quantiles of {n} bridge "
            f"control(s) in {len(model.batches_)} batches mapped to their mean by monotone "
            f"splines on the transformed scale{clusters}; markers {','.join(model.markers_)}")


def write_normalised(study, out_dir, seed: int, workers: int = 1) -> list[Path]:
    """``immunomon normalise``: every sample of every panel asking for normalisation,
    normalised (all events, no QC) and written as FCS 3.1 under ``out_dir`` with the
    source's relative path, channels and keywords plus :data:`KEYWORD`; the fitted splines
    go to ``out_dir/normalisation.csv``.

    The values are the source's, changed by the normalisation only: the change of each
    normalised marker on the linear, compensated scale is put back through the file's
    spillover matrix (kept as ``$SPILLOVER``), so software that compensates the written file
    sees the normalised values and every other channel keeps its values. Values are the
    linear ones immunomon reads (``$PnE`` log decades undone, ``$PnG`` gain divided out: the
    same numbers for the usual float files), written as float32 (``$DATATYPE F``, no
    ``$PnG``), ``$PnR`` as in the source.
    """
    from immunomon.errors import UserError

    from .executor import map_samples, worker_pool

    panels = normalised_panels(study)
    if not panels:
        raise UserError(f"{Path(study.root) / 'study.yaml'}: no panel asks for normalisation "
                        f"(add panels.<panel>.normalisation, e.g. --set "
                        f"panels.{next(iter(study.config.panels))}.normalisation.method=cytonorm)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(study.root).resolve()
    written, tables, seen = [], [], set()
    with worker_pool(workers):
        for panel in panels:
            model = fit_panel(study, panel, seed,
                              lambda t, jobs: map_samples(t, jobs, workers=workers))
            tables.append(model.to_table().assign(panel=panel))
            text = describe(model, fit_controls(study, panel))
            jobs = []
            rows = study.samples[study.samples["panel"].astype(str) == panel]
            for sid, ds in zip(rows["sample_id"], rows["dataset"]):
                rel = Path(study.path_of(sid)).resolve()
                rel = rel.relative_to(root) if rel.is_relative_to(root) else Path(rel.name)
                target = out / rel
                if target in seen:  # several data sets of one file: one file each
                    target = target.with_name(f"{target.stem}_ds{int(ds)}{target.suffix}")
                seen.add(target)
                jobs.append(_WriteJob(study, sid, model, str(target), text))
            written += map_samples(_write_task, jobs, workers=workers)
    table = pd.concat(tables, ignore_index=True)
    write_csv(table[["panel"] + [c for c in table.columns if c != "panel"]],
              out / "normalisation.csv")
    return [Path(p) for p in written]
