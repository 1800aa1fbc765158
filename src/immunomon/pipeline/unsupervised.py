"""Unsupervised branch of the pipeline: one SOM for all cells of a study, streamed per sample.

Two passes over the samples, each holding one prepared file at a time:

1. :func:`training_subsample` draws the same number of QC-passed events from every
   sample (balanced); :func:`train` fits the SOM + metaclusters on their union and
   names the metaclusters from the marker table;
2. :func:`map_sample` maps every event of a sample to its metacluster and returns the
   sample's ``cluster_counts`` and ``cluster_markers`` rows and its embedding cells.

:func:`cluster_study` runs both passes (in parallel with
:func:`immunomon.pipeline.executor.map_samples`; the result does not depend on the
number of workers), embeds the pooled embedding cells with UMAP and writes the
``clusters``, ``cluster_counts``, ``cluster_markers`` and ``embedding`` tables.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunomon.clustering import FlowSOM
from immunomon.clustering.annotate import MarkerTable, annotate_clusters, load_marker_table
from immunomon.clustering.embedding import (
    cluster_medians,
    pooled_spread,
    subsample_indices,
    umap_embedding,
)
from immunomon.errors import UserError
from immunomon.pipeline.prepare import PreparedSample, is_fluorescence, prepare_sample

__all__ = [
    "ClusterModel",
    "UNSUPERVISED_TABLES",
    "training_subsample",
    "train",
    "map_sample",
    "cluster_study",
]

UNSUPERVISED_TABLES = ("clusters", "cluster_counts", "cluster_markers", "embedding")
#: Events drawn for SOM training and for the UMAP, over the whole study (split evenly).
TRAIN_CELLS = 500_000
EMBED_CELLS = 20_000


@dataclass
class ClusterModel:
    """A trained study clustering.

    Attributes
    ----------
    som
        The fitted :class:`immunomon.clustering.FlowSOM`.
    markers
        Clustering markers (column names of the prepared events), in SOM order.
    clusters
        One row per metacluster ``1 … k``: ``cluster``, ``label``, ``confidence``,
        ``label_rank`` and the median of every clustering marker over the training
        events (each sample weighted equally).
    """

    som: FlowSOM
    markers: list[str]
    clusters: pd.DataFrame

    @property
    def labels(self) -> dict[int, str]:
        """Metacluster id → population label."""
        return dict(zip(self.clusters["cluster"], self.clusters["label"]))


def training_subsample(prepared: PreparedSample, n: int, seed: int) -> pd.DataFrame:
    """Up to ``n`` QC-passed events of one sample, drawn without replacement.

    The draw depends only on ``seed`` and the sample id. Returns the events (all
    columns of ``prepared.events``, file order) with a leading ``sample_id`` column.
    """
    idx = subsample_indices(len(prepared.events), n, seed, key=prepared.sample_id)
    out = prepared.events.iloc[idx].reset_index(drop=True)
    out.insert(0, "sample_id", prepared.sample_id)
    return out


def train(
    subsamples: list[pd.DataFrame],
    markers: list[str],
    grid: tuple[int, int] = (10, 10),
    k: int = 20,
    seed: int = 0,
    marker_table: MarkerTable | None = None,
    rlen: int = 10,
) -> ClusterModel:
    """Fit the SOM and metaclusters on the pooled subsamples and name the metaclusters.

    Parameters
    ----------
    subsamples
        Per-sample training events (:func:`training_subsample`); pooled in the order
        given (callers pass them in manifest order).
    markers
        Clustering markers.
    grid, k, seed, rlen
        SOM grid, number of metaclusters, random seed, passes over the data.
    marker_table
        Marker table naming the metaclusters (default: the built-in table).
    """
    data = pd.concat(subsamples, ignore_index=True)
    X = data[markers].astype(np.float64)
    som = FlowSOM(grid=tuple(grid), n_metaclusters=int(k), rlen=rlen, random_state=seed).fit(X)
    clusters = som.predict(X)
    medians = cluster_medians(X, clusters).reindex(np.arange(1, k + 1))
    annotation = annotate_clusters(medians.dropna(), pooled_spread(X, clusters), marker_table)
    table = annotation.reindex(medians.index)
    table["label"] = table["label"].fillna("unassigned")
    table["confidence"] = table["confidence"].fillna(0.0)
    table["label_rank"] = table["label_rank"].fillna(0).astype(np.int64)
    table = pd.concat([table, medians.astype(np.float64)], axis=1).rename_axis("cluster").reset_index()
    return ClusterModel(som=som, markers=list(markers), clusters=table)


def _summary_markers(prepared: PreparedSample) -> list[str]:
    """Markers summarised per cluster: the transformed marker channels (not the viability
    dye, DNA, beads or barcodes)."""
    markers = [m for m in prepared.fluorescence_markers if prepared.roles.get(m, "marker") == "marker"]
    return markers or [c for c in prepared.events.columns if is_fluorescence(c)]


def map_sample(model: ClusterModel, prepared: PreparedSample, embed_n: int = 500, seed: int = 0) -> dict:
    """Map every QC-passed event of one sample to its metacluster.

    Returns a dict of DataFrames: ``cluster_counts`` (sample_id, cluster, label,
    count — every metacluster, zeros included), ``cluster_markers`` (sample_id,
    cluster, label, marker, median — non-empty clusters, marker channels) and
    ``embedding`` (``embed_n`` events drawn with ``seed``: sample_id, cluster, label
    and the clustering markers; UMAP coordinates are added study-wide).
    """
    events = prepared.events
    clusters = model.som.predict(events[model.markers])
    k = model.som.n_metaclusters
    labels = model.labels
    sid = prepared.sample_id
    counts = np.bincount(clusters, minlength=k + 1)[1:]
    cluster_counts = pd.DataFrame({"sample_id": sid, "cluster": np.arange(1, k + 1),
                                   "label": [labels[c] for c in range(1, k + 1)],
                                   "count": counts.astype(np.int64)})
    summary = _summary_markers(prepared)
    medians = cluster_medians(events[summary], clusters)
    cluster_markers = (medians.astype(np.float64).rename_axis(columns="marker").stack().rename("median")
                       .reset_index())
    cluster_markers.insert(0, "sample_id", sid)
    cluster_markers.insert(2, "label", cluster_markers["cluster"].map(labels))
    idx = subsample_indices(len(events), embed_n, seed, key=f"{sid}:embedding")
    embedding = events.iloc[idx][model.markers].reset_index(drop=True)
    embedding.insert(0, "label", [labels[c] for c in clusters[idx]])
    embedding.insert(0, "cluster", clusters[idx].astype(np.int64))
    embedding.insert(0, "sample_id", sid)
    return {"cluster_counts": cluster_counts, "cluster_markers": cluster_markers, "embedding": embedding}


# --- study level -------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load(study_dir: str):
    from immunomon.pipeline.checks import load_checked

    return load_checked(study_dir)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` or ``obj.key`` (pydantic model or dict), else ``default``."""
    if obj is None:
        return default
    value = obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)
    return default if value is None else value


def _subsample_task(study_dir: str, n: int, seed: int, sample_id: str) -> pd.DataFrame:
    return training_subsample(prepare_sample(_load(study_dir), sample_id), n, seed)


def _map_task(study_dir: str, model: ClusterModel, embed_n: int, seed: int, sample_id: str) -> dict:
    return map_sample(model, prepare_sample(_load(study_dir), sample_id), embed_n=embed_n, seed=seed)


def marker_classes(study, panel: str, columns: list[str]) -> dict[str, tuple[str, str]]:
    """Column → (role, class) of a panel's prepared events: the channel's ``role`` and
    ``class`` in study.yaml where stated, else inferred (:func:`immunomon.io.discover.
    channel_role` from the column name, :func:`immunomon.markernames.marker_class` for
    marker channels)."""
    from immunomon.io.discover import channel_role
    from immunomon.markernames import marker_class

    config = study.config.panels[panel]
    declared = {c.marker: c for c in (_get(config, "channels", {}) or {}).values()}
    instrument = _get(config, "instrument", "flow")
    out = {}
    for column in columns:
        spec = declared.get(column)
        role = _get(spec, "role") or channel_role(column, column, instrument)
        cls = _get(spec, "marker_class") or (marker_class(column) if role == "marker" else "none")
        out[column] = (role, cls)
    return out


def state_markers(study, panel: str, columns: list[str]) -> list[str] | None:
    """The panel's state markers among ``columns`` (those differential state tests), or None
    when the panel declares no marker class (then every marker is tested)."""
    config = study.config.panels[panel]
    channels = (_get(config, "channels", {}) or {}).values()
    if not any(_get(c, "marker_class") for c in channels):
        return None
    return [c for c, (role, cls) in marker_classes(study, panel, columns).items()
            if role == "marker" and cls == "state"]


def panel_marker_table(study, panel: str) -> MarkerTable:
    """The marker table naming a panel's metaclusters: ``clustering.marker_table`` (a path
    relative to the study folder) or the built-in table."""
    path = _get(_get(study.config.panels[panel], "clustering"), "marker_table")
    return load_marker_table(Path(study.root) / path if path else None)


def panel_markers(study, panel: str, columns: list[str]) -> tuple[list[str], tuple[int, int], int]:
    """Clustering markers, grid and k of a panel (defaults: the type markers — lineage
    markers define clusters, state markers are compared within them, as CATALYST —, else
    every marker channel; 10×10; 20)."""
    config = _get(study.config.panels[panel], "clustering")
    markers = list(_get(config, "markers", []))
    if not markers:
        classes = marker_classes(study, panel, columns)
        markers = [c for c, (role, cls) in classes.items() if role == "marker" and cls == "type"]
        markers = markers or [c for c, (role, _) in classes.items() if role == "marker"]
    missing = [m for m in markers if m not in columns]
    if missing:
        raise UserError(f"{study.root}/study.yaml: panel {panel!r}: clustering markers {missing} are not "
                        f"markers of its files ({', '.join(columns)})")
    return markers, tuple(_get(config, "grid", (10, 10))), int(_get(config, "metaclusters", 20))


def cluster_study(
    study_dir: str | Path,
    out_dir: str | Path,
    workers: int = 1,
    scheduler=None,
    *,
    train_cells: int = TRAIN_CELLS,
    embed_cells: int = EMBED_CELLS,
    marker_table: str | Path | MarkerTable | None = None,
    seed: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Cluster every kept sample of a study (one SOM per panel) and write the tables.

    Parameters
    ----------
    study_dir
        Study folder (``study.yaml``, ``samples.csv``, FCS files).
    out_dir
        Output folder; tables go to ``out_dir/tables/NAME.{parquet,csv}``.
    workers, scheduler
        Parallelism (:func:`immunomon.pipeline.executor.map_samples`); results do not
        depend on it.
    train_cells, embed_cells
        Events (study total, split evenly over the samples) for SOM training and UMAP
        (``embed_cells=0``: no UMAP, an empty ``embedding`` table).
    marker_table
        Marker table naming the metaclusters (path or parsed) for every panel; default each
        panel's ``clustering.marker_table``, else the built-in table.
    seed
        Random seed; default the study's ``seed``.

    Returns
    -------
    dict
        ``clusters``, ``cluster_counts``, ``cluster_markers``, ``embedding`` → DataFrame,
        every row carrying ``panel``.
    """
    from immunomon.pipeline.executor import worker_pool

    with worker_pool(workers if scheduler is None else 1):  # one pool for both passes of every panel
        return _cluster_study(str(Path(study_dir).resolve()), out_dir, workers, scheduler, train_cells,
                              embed_cells, marker_table, seed)


def _cluster_study(study_dir, out_dir, workers, scheduler, train_cells, embed_cells, marker_table, seed):
    from immunomon.pipeline.executor import map_samples
    from immunomon.pipeline.rundir import write_table

    study = _load(study_dir)
    seed = int(_get(study.config, "seed", 0) if seed is None else seed)
    if marker_table is not None and not isinstance(marker_table, MarkerTable):
        marker_table = load_marker_table(marker_table)
    samples = study.samples.loc[study.samples["excluded_reason"].fillna("") == ""]
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in UNSUPERVISED_TABLES}
    for panel, rows in samples.groupby("panel", sort=True):
        ids = rows["sample_id"].tolist()
        n_train = math.ceil(train_cells / len(ids))
        subsamples = map_samples(functools.partial(_subsample_task, study_dir, n_train, seed), ids,
                                 workers=workers, scheduler=scheduler)
        markers, grid, k = panel_markers(study, panel, [c for c in subsamples[0].columns if c != "sample_id"])
        model = train(subsamples, markers, grid=grid, k=k, seed=seed,
                      marker_table=marker_table or panel_marker_table(study, panel))
        del subsamples
        embed_n = math.ceil(max(embed_cells, 0) / len(ids))
        mapped = map_samples(functools.partial(_map_task, study_dir, model, embed_n, seed), ids,
                             workers=workers, scheduler=scheduler)
        counts = pd.concat([m["cluster_counts"] for m in mapped], ignore_index=True)
        clusters = model.clusters.copy()
        clusters.insert(3, "n_cells", counts.groupby("cluster")["count"].sum().reindex(clusters["cluster"])
                        .to_numpy())
        embedding = pd.concat([m["embedding"] for m in mapped], ignore_index=True)
        xy = (umap_embedding(embedding[markers].to_numpy(), random_state=seed) if len(embedding)
              else np.empty((0, 2), dtype=np.float32))
        embedding.insert(3, "umap_1", xy[:, 0])
        embedding.insert(4, "umap_2", xy[:, 1])
        meta = rows.set_index("sample_id")[[c for c in ("patient_id", "visit", "disease") if c in rows]]
        embedding = embedding.join(meta, on="sample_id")
        tables = {"clusters": clusters, "cluster_counts": counts,
                  "cluster_markers": pd.concat([m["cluster_markers"] for m in mapped], ignore_index=True),
                  "embedding": embedding}
        for name, table in tables.items():
            table["panel"] = panel
            parts[name].append(table)
    out = {name: pd.concat(p, ignore_index=True) if p else pd.DataFrame() for name, p in parts.items()}
    for name, table in out.items():
        write_table(out_dir, name, table)
    return out
