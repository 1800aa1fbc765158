"""``run_study``: one study folder in, one run directory out.

Stages (each cached by content hash, see :mod:`immunomon.pipeline.cache`)::

    validate      load_checked: manifest + every stage's settings (every problem at once)
    hash          SHA-256 of every input file                       (parallel)
    normalise     per panel asking for it: CytoNorm fitted on the bridge controls of
                  each batch (read, compensate, transform; parallel over batches)
    prepare       per sample: read, compensate, transform, QC, gate,
                  population statistics, clustering training subsample (parallel)
    train         per panel: SOM + metaclusters on the pooled subsamples
    map           per sample: map its QC-passed events to the clusters (parallel)
    embed         per panel: cluster sizes and the UMAP of a pooled cell subsample
    stats         immunomon.stats.analyze over the tidy tables
    report        immunomon.report.html.render_report(run_dir)

Per-sample work runs through :func:`~immunomon.pipeline.executor.map_samples`
(in-process, local processes or a Dask scheduler): only small summaries and a
subsample cross the sample boundary, so memory is bounded by a few files. Samples
excluded in ``study.yaml`` are not processed; samples failing QC (or unreadable) are
listed in ``samples`` with their reason. Neither enters clustering or statistics
unless ``include_excluded=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from immunomon.errors import UserError

from .cache import Cache, code_fingerprint, make_key, sha256_file, sha256_files
from .executor import map_samples, worker_pool
from .lock import run_lock
from .normalise import NORMALISE_CODE, batch_tables, fit_study
from .provenance import safe_keywords, utc_now, versions, write_provenance
from .rundir import FIGURES, TABLES, remove_stale_temporaries, write_error, write_table
from .stages import Stages, advance, measured, open_log

__all__ = ["run_study", "RunOptions", "not_analysed", "render_report", "SAMPLE_COLUMNS",
           "STAGES"]

log = logging.getLogger("immunomon.run")

#: Stage names, in order (progress bars, ``provenance.json`` steps, cache folders).
STAGES = ("hash", "normalise", "prepare", "train", "map", "embed", "stats", "report")

#: Columns of ``tables/samples`` (architecture contract), in order.
SAMPLE_COLUMNS = ["sample_id", "patient_id", "disease", "arm", "visit", "day", "panel", "batch",
                  "control", "file", "sha256", "events_total", "events_after_qc", "qc_pass",
                  "excluded_reason"]

#: Modules whose source enters the cache key of each stage.
_CODE = {
    "prepare": ("immunomon.io", "immunomon.preprocess", "immunomon.gating", "immunomon.clustering",
                "immunomon.pipeline.prepare", "immunomon.pipeline.supervised",
                "immunomon.pipeline.unsupervised", "immunomon.pipeline.run"),
    "train": ("immunomon.clustering", "immunomon.pipeline.unsupervised"),
    "stats": ("immunomon.stats",),
    "normalise": NORMALISE_CODE,
}
_CODE["map"] = _CODE["prepare"]

#: Per-sample tables collected from the prepare stage, in write order.
_SAMPLE_TABLES = ("qc_steps", "populations", "population_markers", "parameters", "gate_thresholds")
#: Tables of the unsupervised branch, per panel.
_CLUSTER_TABLES = ("clusters", "cluster_counts", "cluster_markers", "embedding")
#: Default study-wide event draws for SOM training and the UMAP: the values of
#: ``immunomon.pipeline.unsupervised`` (imported only when a clustering stage runs, so that
#: a fully cached re-run never loads scikit-learn or numba).
TRAIN_CELLS, EMBED_CELLS = 500_000, 20_000


@dataclass(frozen=True)
class RunOptions:
    """Analysis options of a run (everything that can change a result, except the study).

    Attributes
    ----------
    seed
        Seed of every random step; ``None`` uses ``study.yaml``'s ``seed``.
    train_cells
        Events drawn (at random, seeded, split evenly over a panel's samples) to train
        the panel's clustering.
    embed_cells
        Events (split evenly over the samples) embedded with UMAP.
    include_excluded
        Also analyse samples excluded in ``study.yaml`` or failing QC.
    stats
        Fields of :class:`immunomon.stats.StatsOptions` (e.g. ``{"alpha": 0.1}``);
        changing them re-runs only statistics and report.
    """

    seed: int | None = None
    train_cells: int = TRAIN_CELLS
    embed_cells: int = EMBED_CELLS
    include_excluded: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- per-sample tasks
@dataclass(frozen=True)
class _SampleJob:
    """One per-sample task (picklable): the study, the sample, its cache key and seed."""

    study: Any
    sample_id: str
    panel: str
    key: str
    cache_root: str | None
    seed: int
    n: int
    model: Any = None
    normaliser: Any = None


@measured
def _prepare_task(job: _SampleJob) -> dict:
    """prepare + phenotype + training subsample of one sample, cached under ``prepare``."""
    from immunomon.pipeline.normalise import batch_summary
    from immunomon.pipeline.supervised import phenotype_sample, prepare_for_gating
    from immunomon.pipeline.unsupervised import training_subsample

    cache = Cache(job.cache_root)
    hit = cache.get("prepare", job.key)
    if hit is not None:
        return {**hit, "cached": True}
    try:
        prepared = prepare_for_gating(job.study, job.sample_id, normaliser=job.normaliser)
        tables = phenotype_sample(prepared, job.study, job.sample_id)
    except UserError as err:  # an unreadable or ungateable file: listed, not fatal
        return {"sample_id": job.sample_id, "error": "; ".join(err.problems),
                "problems": list(err.problems), "cached": False}
    except MemoryError:
        problem = f"{job.study.path_of(job.sample_id)}: not enough memory to process this file"
        return {"sample_id": job.sample_id, "error": problem, "problems": [problem],
                "cached": False}
    qc_steps = prepared.qc_steps.copy()
    qc_steps["panel"] = prepared.panel
    result = {
        "sample_id": job.sample_id,
        "panel": prepared.panel,
        "events_total": int(prepared.events_total),
        "events_after_qc": int(prepared.events_after_qc),
        "qc_pass": bool(prepared.qc_pass),
        "compensated": bool(prepared.compensated),
        "error": "",
        "keywords": _acquisition(job.study, job.sample_id),
        "tables": {"qc_steps": qc_steps, **tables},
        "training": training_subsample(prepared, job.n, job.seed),
        "batch": batch_summary(prepared, bool(job.study.sample(job.sample_id).get("control"))),
    }
    cache.put("prepare", job.key, result)
    return {**result, "cached": False}


#: FCS keywords copied to provenance: instrument and acquisition time (never $SRC, $OP ...).
_ACQUISITION_KEYWORDS = ("$CYT", "$CYTSN", "$DATE", "$BTIM", "$ETIM", "$TOT")


def _acquisition(study, sample_id: str) -> dict[str, str]:
    """Instrument and acquisition keywords of a sample's FCS file (TEXT segment only)."""
    from immunomon.io.fcs import read_fcs_metadata

    dataset = study.sample(sample_id).get("dataset", 1)
    dataset = int(dataset) if pd.notna(dataset) else 1
    keywords = safe_keywords(read_fcs_metadata(study.path_of(sample_id), dataset=dataset).keywords)
    return {k: v for k, v in keywords.items() if k in _ACQUISITION_KEYWORDS}


@measured
def _map_task(job: _SampleJob) -> dict:
    """Map one sample's QC-passed events onto its panel's clusters, cached under ``map``."""
    from immunomon.pipeline.prepare import prepare_sample
    from immunomon.pipeline.unsupervised import map_sample

    cache = Cache(job.cache_root)
    hit = cache.get("map", job.key)
    if hit is not None:
        return {**hit, "cached": True}
    prepared = prepare_sample(job.study, job.sample_id, normaliser=job.normaliser)
    result = {"sample_id": job.sample_id,
              "tables": map_sample(job.model, prepared, embed_n=job.n, seed=job.seed)}
    cache.put("map", job.key, result)
    return {**result, "cached": False}


# --------------------------------------------------------------------------- the run
def run_study(
    study_dir: str | Path,
    out_dir: str | Path,
    *,
    workers: int = 1,
    scheduler: str | Any | None = None,
    seed: int | None = None,
    quiet: bool = False,
    cache_dir: str | Path | None = None,
    options: RunOptions | None = None,
    report: bool = True,
    overrides: dict[str, str] | None = None,
) -> Path:
    """Analyse a study folder end to end into a run directory.

    Parameters
    ----------
    study_dir
        Study folder (``study.yaml``, ``samples.csv``, FCS files, optional clinical and
        adverse-event tables). Opened read-only.
    out_dir
        Run directory (created): ``tables/``, ``figures/``, ``report.html``,
        ``provenance.json``, ``run.log`` and the cache ``.cache/``.
    workers
        Local worker processes for per-sample stages (1 = in this process).
    scheduler
        ``tcp://host:8786`` of a Dask scheduler (or a ``distributed.Client``) instead of
        local processes; its workers must see ``study_dir`` and the cache folder.
    seed
        Overrides ``study.yaml``'s seed (and ``options.seed``).
    quiet
        No progress bars (the log is still written).
    cache_dir
        Cache folder; default ``out_dir/.cache``. Results are reused when their inputs,
        parameters, seed and code are unchanged.
    options
        Analysis options (:class:`RunOptions`).
    report
        Render ``report.html`` and ``figures/`` at the end.
    overrides
        ``KEY=VALUE`` settings applied over study.yaml (the CLI's ``--set``, e.g.
        ``{"analysis.min_patients": "3"}``); recorded in ``provenance.json``.

    Returns
    -------
    Path
        The run directory.
    """
    started = utc_now()
    out = Path(out_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(out, err) from None
    options = options or RunOptions()
    with run_lock(out):
        _remove_temporaries(out, cache_dir)
        return _run_locked(study_dir, out, started, workers, scheduler, seed, quiet, cache_dir,
                           options, report, overrides)


def _remove_temporaries(out: Path, cache_dir) -> None:
    """Temporary files a killed run left: all of them in the run directory (its lock is
    held), only those older than an hour in a ``--cache`` folder other runs may share."""
    remove_stale_temporaries(out)
    if cache_dir is not None and Path(cache_dir).is_dir():
        remove_stale_temporaries(cache_dir, older_than=3600)


def _run_locked(study_dir, out: Path, started: str, workers: int, scheduler, seed, quiet: bool,
                cache_dir, options: RunOptions, report: bool, overrides) -> Path:
    """:func:`run_study` once the run directory exists and its lock is held."""
    from immunomon.pipeline.checks import load_checked

    handler, level = open_log(out / "run.log")
    try:
        log.info("run %s -> %s (workers=%s, scheduler=%s)", study_dir, out, workers, scheduler)
        study = load_checked(Path(study_dir).resolve(), overrides=overrides)
        seed = int(seed if seed is not None else
                   options.seed if options.seed is not None else study.config.seed)
        if not 0 <= seed < 2**63:
            raise UserError(f"--seed {seed}: a seed is a whole number from 0 to 2^63 - 1")
        cache = Cache(Path(cache_dir).resolve() if cache_dir is not None else out / ".cache")
        parallel = {"workers": workers, "scheduler": scheduler}
        remote = scheduler is not None or workers > 1
        with Stages(quiet, remote) as stages, worker_pool(workers if scheduler is None else 1):
            record = _run(study, out, seed, options, cache, parallel, stages, report)
        record.update(started=started, finished=utc_now())
        write_provenance(out / "provenance.json", record)
        log.info("finished: %s", out)
        return out
    except Exception:
        log.exception("run failed")
        raise
    finally:
        logging.getLogger("immunomon").removeHandler(handler)
        logging.getLogger("immunomon").setLevel(level)
        try:
            handler.close()
        except OSError:  # the disk filled up: the run's own error says so
            pass


def _run(study, out: Path, seed: int, options: RunOptions, cache: Cache, parallel: dict,
         stages: Stages, report: bool) -> dict:
    """The stages of :func:`run_study`; returns the provenance record (without times)."""
    samples = study.samples.reset_index(drop=True)
    code = {stage: code_fingerprint(*mods) for stage, mods in _CODE.items()}
    inputs = _input_files(study)
    bar, task = stages.start("hash", len(inputs))
    hashes = sha256_files([p for _, p in inputs], progress=lambda: bar.advance(task))
    sha = {rel: h for (rel, _), h in zip(inputs, hashes)}
    root = Path(study.root).resolve()
    file_sha = {s: make_key(*(sha[_relative(p, root)] for p in _sample_files(study, s)))
                if study.panel_of(s).assay == "citeseq" else
                sha[_relative(Path(study.path_of(s)).resolve(), root)]
                for s in samples["sample_id"]}
    stages.done("hash", files=len(inputs), bytes=int(sum(p.stat().st_size for _, p in inputs)))
    run_key = make_key("run", code_fingerprint("immunomon"), versions(), sorted(sha.items()),
                       getattr(study, "overrides", {}), dataclasses.asdict(options), seed, report)
    previous = _previous_record(out)
    if _up_to_date(out, previous, run_key):  # inputs, options and code unchanged: reuse all
        log.info("up to date: every input, option and the code are those of the run finished "
                 "%s; its outputs are unchanged", previous.get("finished"))
        return {**previous, "steps": stages.steps, "up_to_date": True}

    # normalise: per panel asking for it, CytoNorm on the bridge controls of every batch
    normalisers = fit_study(study, file_sha, seed, cache, code["normalise"], parallel, stages)

    # prepare: every sample not excluded in study.yaml (all with include_excluded)
    listed = samples["excluded_reason"].fillna("").astype(str) == ""
    todo = samples.loc[listed | options.include_excluded, ["sample_id", "panel"]].astype(str)
    per_panel = todo["panel"].value_counts()
    jobs = []
    cite_panels = _citeseq_panels(study)  # CITE-seq: own branch (pipeline.citeseq)
    for sid, panel in zip(todo["sample_id"], todo["panel"]):
        if panel in cite_panels:
            continue
        n_train = math.ceil(options.train_cells / per_panel[panel])
        key = _prepare_key(study, sid, file_sha[sid], sha, seed, n_train, code["prepare"])
        norm_key, normaliser = normalisers.get(panel, (None, None))
        key = make_key(key, norm_key) if normaliser is not None else key
        jobs.append(_SampleJob(study, sid, panel, key, _root(cache), seed, n_train,
                               normaliser=normaliser))
    prepared = _map_cached(_prepare_task, "prepare", jobs, cache,
                           stages.start("prepare", len(jobs)), parallel)
    by_id = {r["sample_id"]: r for r in prepared}
    keys = {j.sample_id: j.key for j in jobs}
    stages.done("prepare", prepared, samples=len(jobs), cached=sum(r["cached"] for r in prepared),
                events_total=sum(r.get("events_total", 0) for r in prepared),
                events_after_qc=sum(r.get("events_after_qc", 0) for r in prepared),
                qc_failed=sum(not r.get("qc_pass", True) for r in prepared),
                errors=sum(bool(r["error"]) for r in prepared))

    # ---- CITE-seq panels (pipeline.citeseq): QC, normalisation, clustering, pseudobulk
    cite = None
    if cite_panels:
        from immunomon.pipeline.citeseq import run_citeseq

        cite_ids = [s for s, p in zip(todo["sample_id"], todo["panel"]) if p in cite_panels]
        cite = run_citeseq(study, cite_ids, file_sha, seed, cache, parallel, stages,
                           embed_cells=options.embed_cells)
        by_id.update(cite.by_id)
        prepared = prepared + list(cite.by_id.values())
    # ----
    failed = [f"{r['sample_id']}: {r['error']}" for r in prepared if r["error"]]
    unanalysed = [{"sample_id": r["sample_id"], "problems": r.get("problems", [r["error"]])}
                  for r in prepared if r["error"]]
    for line in failed:
        log.warning("sample left out: %s", line)
    table = _samples_table(samples, file_sha, by_id)
    usable = table["sample_id"].map(lambda s: s in by_id and not by_id[s]["error"])
    analysed = table.loc[usable & ((table["excluded_reason"] == "") | options.include_excluded)]
    if analysed.empty:
        raise UserError(["no sample of the study could be analysed", *failed[:20]])
    panels = sorted(set(analysed["panel"].astype(str)) - set(cite_panels))

    # train: one clustering per panel, on the pooled subsamples of its analysed samples
    train_keys, models = {}, {}
    progress = stages.start("train", len(panels))

    def model_of(panel: str):
        """The panel's clustering: loaded (or trained) only when a stage needs it."""
        if models.get(panel) is None:
            models[panel] = cache.get("train", train_keys[panel])
        if models[panel] is None:
            ids = analysed.loc[analysed["panel"] == panel, "sample_id"].tolist()
            models[panel] = cache.put("train", train_keys[panel],
                                      _train_panel(study, panel, ids, by_id, seed))
        return models[panel]

    for panel in panels:
        ids = analysed.loc[analysed["panel"] == panel, "sample_id"].tolist()
        train_keys[panel] = make_key("train", code["train"], _panel_config(study, panel), seed,
                                     [keys[s] for s in ids])
        if not cache.has("train", train_keys[panel]):
            model_of(panel)
        advance(progress)
    stages.done("train", panels=len(panels),
                training_events=int(sum(len(by_id[s].get("training", ())) for s in analysed["sample_id"])))

    # map: every analysed sample onto its panel's clusters (+ its cells for the UMAP)
    n_panel = analysed["panel"].astype(str).value_counts()
    map_jobs = [_SampleJob(study, sid, p, make_key("map", code["map"], keys[sid], train_keys[p],
                                                options.embed_cells),
                           _root(cache), seed, math.ceil(options.embed_cells / n_panel[p]),
                           normaliser=normalisers.get(p, (None, None))[1])
                for sid, p in zip(analysed["sample_id"], analysed["panel"].astype(str))
                if p not in cite_panels]
    mapped = _map_cached(_map_task, "map", map_jobs, cache, stages.start("map", len(map_jobs)),
                         parallel, lambda job: dataclasses.replace(job, model=model_of(job.panel)))
    stages.done("map", mapped, samples=len(map_jobs), cached=sum(r["cached"] for r in mapped),
                events_mapped=int(sum(by_id[r["sample_id"]]["events_after_qc"] for r in mapped)))

    # embed: clusters table (with cell counts) and the UMAP of the pooled embedding cells
    progress = stages.start("embed", len(panels))
    unsupervised: dict[str, list[pd.DataFrame]] = {n: [] for n in _CLUSTER_TABLES}
    for panel in panels:
        part = [(j.key, r) for j, r in zip(map_jobs, mapped) if j.panel == panel]
        key = make_key("embed", code["train"], [k for k, _ in part])
        result = cache.get("embed", key)
        if result is None:
            result = cache.put("embed", key, _embed_panel(model_of(panel), [r for _, r in part],
                                                          analysed, seed))
        for name in _CLUSTER_TABLES:
            frame = result[name]
            frame["panel"] = panel
            unsupervised[name].append(frame)
        advance(progress)
    stages.done("embed", panels=len(panels),
                cells=int(sum(len(f) for f in unsupervised["embedding"])))

    tables = {"samples": table}
    for name in _SAMPLE_TABLES:
        tables[name] = _concat([by_id[s]["tables"].get(name) for s in todo["sample_id"]
                                if not by_id[s]["error"]])
    for name in _CLUSTER_TABLES:
        tables[name] = _concat(unsupervised[name])
    if cite is not None:  # CITE-seq tables join the cytometry ones (same contracts)
        for name, frame in cite.tables.items():
            tables[name] = _concat([tables.get(name), frame])

    # batch diagnostics (every study with batches) and the fitted normalisation splines
    tables.update(batch_tables(study, analysed, by_id, normalisers))

    # stats: over analysed samples only
    tables.update(_stats(study, tables, analysed, seed, options, cache, code["stats"], stages))
    for name, frame in tables.items():
        write_table(out, name, frame)

    record = {
        "study_id": study.config.study_id,
        "seed": seed,
        "baseline": study.config.baseline,
        "parameters": _parameters(study, options, parallel, seed),
        "inputs": [{"path": rel, "sha256": sha[rel], "bytes": p.stat().st_size}
                   for rel, p in inputs],
        "acquisition": {r["sample_id"]: r["keywords"] for r in prepared if r.get("keywords")},
        "preprocessing": _preprocessing(study, prepared),
        "tables": sorted(tables),
        "not_analysed": unanalysed,
        "steps": stages.steps,
        "run_key": run_key,
        "up_to_date": False,
    }
    if cite is not None:
        record["citeseq"] = cite.facts
    if report:
        shown = {k: v for k, v in record.items() if k not in ("steps", "run_key")}
        shown["parameters"] = {k: v for k, v in record["parameters"].items()
                               if k not in ("workers", "scheduler")}  # results do not depend on them
        report_key = make_key("report", code_fingerprint("immunomon.report"),
                              {n: _frame_digest(t) for n, t in tables.items()}, shown)
        record["report_key"] = report_key
        progress = stages.start("report", 1)
        rendered = previous.get("report_key") != report_key or not (out / "report.html").is_file()
        if rendered:
            write_provenance(out / "provenance.json", {**record, "finished": None})
            render_report(out)
        advance(progress)
        stages.done("report", figures=len(list((out / FIGURES).glob("*"))),
                    rendered=int(rendered))
    record["outputs"] = _output_digests(out, report)
    return record


def _map_cached(task, stage: str, jobs: list, cache: Cache, progress: tuple, parallel: dict,
                complete=None) -> list[dict]:
    """``task`` over ``jobs`` (results in order): entries already in the cache are loaded
    here, only the others go to :func:`map_samples` (so a cached stage starts no worker),
    each first passed through ``complete`` (e.g. to attach a model)."""
    results: list[dict | None] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        hit = cache.get(stage, job.key)
        if hit is None:
            todo.append(i)
        else:
            results[i] = {**hit, "cached": True}
            advance(progress)
    work = [complete(jobs[i]) if complete else jobs[i] for i in todo]
    for i, result in zip(todo, map_samples(task, work, progress=progress, **parallel)):
        results[i] = result
    return results


def render_report(out: Path) -> Path:
    """:func:`immunomon.report.html.render_report` (``report.html`` and ``figures/``); a
    failed write (disk full) leaves no temporary file and is one :class:`UserError` naming
    the file."""
    from immunomon.report.html import render_report as render

    try:
        return render(out)
    except OSError as err:
        remove_stale_temporaries(out)
        raise write_error(err.filename or out, err) from None


def _previous_record(out: Path) -> dict:
    """The ``provenance.json`` of the last run finished in ``out`` (empty if none)."""
    try:
        record = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("finished") else {}


def _output_digests(out: Path, report: bool) -> dict[str, str]:
    """SHA-256 of every table, figure and the report of the run directory."""
    files = sorted((out / TABLES).glob("*.*")) + sorted((out / FIGURES).rglob("*.*"))
    if report and (out / "report.html").is_file():
        files.append(out / "report.html")
    files = [f for f in files if f.is_file() and not f.name.startswith(".")]
    return {f.relative_to(out).as_posix(): sha256_file(f) for f in files}


def _up_to_date(out: Path, previous: dict, run_key: str) -> bool:
    """Whether the last run of ``out`` had the same run key (inputs, options, seed, code and
    dependency versions), analysed every sample, and its outputs are all still there,
    byte for byte."""
    recorded = previous.get("outputs")
    if previous.get("run_key") != run_key or previous.get("not_analysed") or not recorded:
        return False
    try:
        return _output_digests(out, "report.html" in recorded) == recorded
    except UserError:
        return False


def not_analysed(run_dir: str | Path) -> list[str]:
    """One line per problem of the samples the last run of ``run_dir`` could not read or
    process (``sample P001_D8 not analysed: FILE: PROBLEM (byte offset N)``); empty when
    every sample was analysed or left out by design (QC failure, exclusion)."""
    record = _previous_record(Path(run_dir))
    return [f"sample {entry['sample_id']} not analysed: {problem}"
            for entry in record.get("not_analysed", []) for problem in entry["problems"]]


def _stats(study, tables: dict, analysed: pd.DataFrame, seed: int, options: RunOptions,
           cache: Cache, code: str, stages: Stages) -> dict[str, pd.DataFrame]:
    """``immunomon.stats.analyze`` over the analysed samples' tables with the study's
    analysis plan, cached under ``stats`` (the key needs no import of immunomon.stats)."""
    if "control" in analysed.columns:  # bridge/reference controls serve normalisation only
        analysed = analysed.loc[~analysed["control"].astype(bool)]
    ids = set(analysed["sample_id"])
    inputs = {
        # the pipeline decides who is analysed (include_excluded): stats must not re-filter
        "samples": analysed.drop(columns=["qc_pass", "excluded_reason"]).reset_index(drop=True),
        "parameters": _only(tables["parameters"], ids),
        "cluster_counts": _only(tables["cluster_counts"], ids),
        "cluster_markers": _state_only(study, _only(tables["cluster_markers"], ids)),
        "pseudobulk": _only(tables.get("pseudobulk", pd.DataFrame()), ids),
        "clinical": study.clinical,
        "adverse_events": study.adverse_events,
        "patients": _patients(study.samples[~study.samples["control"].astype(bool)]),
    }
    visits = [v.name if hasattr(v, "name") else v["name"] for v in study.config.visits]
    baseline = study.config.baseline  # None: a single-visit study compares groups
    plan = study.config.analysis
    plan = plan.model_dump(mode="json") if plan is not None else None
    key = make_key("stats", code, {k: _frame_digest(v) for k, v in inputs.items()},
                   baseline, visits, options.stats, plan, seed)
    progress = stages.start("stats", 1)
    result = cache.get("stats", key)
    cached = result is not None
    if not cached:
        from immunomon.stats import StatsOptions, analyze

        try:
            stats_options = StatsOptions(**options.stats)
        except TypeError as err:
            raise UserError(f"statistics options {sorted(options.stats)}: {err}") from None
        result = cache.put("stats", key, dict(analyze(inputs, baseline=baseline, visits=visits,
                                                      options=stats_options, plan=plan)))
    advance(progress)
    stages.done("stats", samples=len(ids), tables=len(result), cached=int(cached),
                rows=int(sum(len(t) for t in result.values())))
    return result


# --------------------------------------------------------------------------- helpers
def _citeseq_panels(study) -> set[str]:
    return {n for n, p in study.config.panels.items() if getattr(p, "assay", "") == "citeseq"}


def _root(cache: Cache) -> str | None:
    return str(cache.root) if cache.root is not None else None


def _input_files(study) -> list[tuple[str, Path]]:
    """Every input file of the study as ``(path relative to the study folder, absolute path)``."""
    root = Path(study.root).resolve()
    files = [root / name for name in ("study.yaml", "samples.csv", "clinical.csv",
                                      "adverse_events.csv") if (root / name).is_file()]
    for panel in study.config.panels:
        files += _gating_files(study, panel)
    files += [p for s in study.samples["sample_id"] for p in _sample_files(study, s)]
    unique = list(dict.fromkeys(files))
    return [(_relative(p, root), p) for p in unique]


def _sample_files(study, sample_id: str) -> list[Path]:
    """A sample's input files: its FCS file, or the matrix files of a Cell Ranger output."""
    path = Path(study.path_of(sample_id)).resolve()
    if study.panel_of(sample_id).assay == "citeseq":
        from immunomon.pipeline.citeseq import source_files

        return source_files(path)
    return [path]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _gating_files(study, panel: str) -> list[Path]:
    """Files named by a panel's ``gating`` section (template YAML, Gating-ML, workspace)."""
    root = Path(study.root).resolve()
    gating = _panel_config(study, panel).get("gating") or {}
    return [root / v for v in gating.values() if isinstance(v, str) and (root / v).is_file()]


def _panel_config(study, panel: str) -> Any:
    """The panel's study.yaml section (channels, transform, gating, clustering) as plain data."""
    config = study.config.panels[panel]
    return config.model_dump(mode="json") if hasattr(config, "model_dump") else config


def _prepare_key(study, sample_id: str, file_sha: str, sha: dict, seed: int, n_train: int,
                 code: str) -> str:
    """Cache key of a sample's prepare stage: file content, manifest row, panel (and its
    gating files), seed, training subsample size, code."""
    row = study.sample(sample_id)
    root = Path(study.root).resolve()
    gating_files = [sha[_relative(p, root)] for p in _gating_files(study, row["panel"])]
    manifest = {k: v for k, v in row.items() if k != "excluded_reason"}
    return make_key("prepare", code, file_sha, manifest, _panel_config(study, row["panel"]),
                    gating_files, seed, n_train)


def _samples_table(samples: pd.DataFrame, file_sha: dict, by_id: dict) -> pd.DataFrame:
    """``tables/samples``: manifest columns + checksum, event counts, QC and exclusion reason."""
    table = samples.copy()
    table["sha256"] = table["sample_id"].map(file_sha)
    results = [by_id.get(s, {}) for s in table["sample_id"]]
    table["events_total"] = pd.array([r.get("events_total") for r in results], dtype="Int64")
    table["events_after_qc"] = pd.array([r.get("events_after_qc") for r in results], dtype="Int64")
    table["qc_pass"] = pd.array([r.get("qc_pass") for r in results], dtype="boolean")
    reasons = []
    for reason, r in zip(table["excluded_reason"].fillna("").astype(str), results):
        if not reason and r.get("error"):
            reason = f"error: {r['error']}"
        elif not reason and r.get("qc_pass") is False:
            reason = (f"failed QC ({r['events_after_qc']} of {r['events_total']} events kept; "
                      "see qc_steps)")
        reasons.append(reason)
    table["excluded_reason"] = reasons
    extra = [c for c in table.columns if c not in SAMPLE_COLUMNS]
    return table[[c for c in SAMPLE_COLUMNS if c in table.columns] + extra]


def _patients(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: patient_id, disease."""
    return (samples[["patient_id", "disease"]].drop_duplicates("patient_id")
            .sort_values("patient_id", kind="stable").reset_index(drop=True))


def _only(frame: pd.DataFrame, ids: set) -> pd.DataFrame:
    if frame.empty or "sample_id" not in frame.columns:
        return frame
    return frame[frame["sample_id"].isin(ids)].reset_index(drop=True)


def _state_only(study, markers: pd.DataFrame) -> pd.DataFrame:
    """Differential state tests state markers: the ``cluster_markers`` rows of each panel's
    state markers (every marker of a panel that declares no marker class)."""
    from immunomon.pipeline.unsupervised import state_markers

    if markers.empty or "panel" not in markers.columns:
        return markers
    keep = pd.Series(True, index=markers.index)
    for panel, rows in markers.groupby("panel", sort=False):
        state = state_markers(study, str(panel), list(pd.unique(rows["marker"])))
        if state is not None:
            keep[rows.index] = rows["marker"].isin(state)
    return markers[keep].reset_index(drop=True)


def _concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if f is not None and len(f.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _frame_digest(frame: Any) -> Any:
    """A content digest of a DataFrame (values, index, columns, dtypes) for cache keys."""
    if frame is None:
        return None
    if not isinstance(frame, pd.DataFrame):
        return frame
    digest = hashlib.sha256(repr((list(frame.columns), list(map(str, frame.dtypes)))).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()


def _train_panel(study, panel: str, ids: list[str], by_id: dict, seed: int):
    """Train the panel's clustering on the pooled training subsamples of ``ids`` (manifest order)."""
    from immunomon.pipeline.unsupervised import panel_marker_table, panel_markers, train

    subsamples = [by_id[s]["training"] for s in ids]
    columns = [c for c in subsamples[0].columns if c != "sample_id"]
    markers, grid, k = panel_markers(study, panel, columns)
    events = sum(len(sub) for sub in subsamples)
    if events < grid[0] * grid[1]:
        raise UserError(f"panel '{panel}': its {grid[0]}x{grid[1]} SOM needs at least "
                        f"{grid[0] * grid[1]} training events but its analysed samples give "
                        f"{events}; set a smaller clustering.grid in study.yaml")
    return train(subsamples, markers, grid=grid, k=k, seed=seed,
                 marker_table=panel_marker_table(study, panel))


def _embed_panel(model, mapped: list[dict], analysed: pd.DataFrame, seed: int) -> dict:
    """A panel's ``clusters`` (with ``n_cells``), ``cluster_counts``, ``cluster_markers`` and
    ``embedding`` (UMAP of the pooled embedding cells, with patient, visit and disease)."""
    from immunomon.clustering.embedding import umap_embedding

    counts = _concat([m["tables"]["cluster_counts"] for m in mapped])
    clusters = model.clusters.copy()
    n_cells = counts.groupby("cluster")["count"].sum().reindex(clusters["cluster"], fill_value=0)
    clusters.insert(3, "n_cells", n_cells.to_numpy())
    embedding = _concat([m["tables"]["embedding"] for m in mapped])
    xy = umap_embedding(embedding[model.markers].to_numpy(), random_state=seed)
    embedding.insert(3, "umap_1", xy[:, 0])
    embedding.insert(4, "umap_2", xy[:, 1])
    meta = analysed.set_index("sample_id")[["patient_id", "visit", "disease"]]
    return {"clusters": clusters, "cluster_counts": counts,
            "cluster_markers": _concat([m["tables"]["cluster_markers"] for m in mapped]),
            "embedding": embedding.join(meta, on="sample_id")}


def _preprocessing(study, prepared: list[dict]) -> dict:
    """Per panel, what preprocessing was actually done: samples prepared, samples compensated
    with a spillover matrix, the gating route (for the methods text)."""
    from immunomon.pipeline.supervised import gating_route

    out: dict[str, dict] = {}
    for r in prepared:
        if r.get("error") or "panel" not in r:
            continue
        p = out.setdefault(r["panel"], {"samples": 0, "compensated": 0,
                                        "gating": gating_route(study, r["panel"])})
        p["samples"] += 1
        p["compensated"] += int(bool(r.get("compensated")))
    return out


def _parameters(study, options: RunOptions, parallel: dict, seed: int) -> dict:
    """Parameters recorded in provenance (the study's analysis settings and run options)."""
    return {
        "seed": seed,
        "baseline": study.config.baseline,
        "visits": [v.model_dump() if hasattr(v, "model_dump") else v for v in study.config.visits],
        "panels": {p: _panel_config(study, p) for p in study.config.panels},
        "exclusions": [e.model_dump() if hasattr(e, "model_dump") else e
                       for e in study.config.exclusions],
        "analysis": (study.config.analysis.model_dump(mode="json")
                     if getattr(study.config, "analysis", None) is not None else None),
        "overrides": dict(getattr(study, "overrides", {}) or {}),
        "train_cells": options.train_cells,
        "embed_cells": options.embed_cells,
        "include_excluded": options.include_excluded,
        "stats": options.stats,
        "workers": parallel["workers"],
        "scheduler": str(parallel["scheduler"]) if parallel["scheduler"] is not None else None,
    }
