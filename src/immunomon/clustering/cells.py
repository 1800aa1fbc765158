"""Name single-cell (CITE-seq) clusters and cells with a marker table.

>>> from immunomon.clustering.cells import load_cell_table, annotate_cells
>>> table = load_cell_table()                          # the built-in CITE-seq table
>>> result = annotate_cells(adt, clusters, samples, table)         # doctest: +SKIP

Clusters are named by :func:`immunomon.clustering.annotate.annotate_clusters` (the
cytometry machinery: marker thresholds from the table or Otsu's split of the cluster
medians, the most specific satisfied population) on the cluster medians of the normalised
ADT values. The CITE-seq table (:file:`markers_citeseq.yaml`) adds two keys the cytometry
table does not use: ``parents`` (the population hierarchy, for ``populations`` and "% of"
parameters) and ``refine``: populations too small to form a cluster of their own at the
default resolution (Treg, ~5 % of CD4 T) whose extra rules are also applied cell by cell
inside their parent's clusters, per sample, with each marker's threshold at the midpoint
between the medians of the cells of the population's clusters (those whose medians satisfy
every rule) and of the parent's other cells
(the study-wide midpoint for samples with fewer than 10 cells of either; the table's
threshold when no cluster carries the population); the cut then moves to the midpoint of
the medians of the cells it puts on either side until it settles (a broad seed cluster
that holds intermediate cells would otherwise set it too low).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from immunomon.errors import UserError

from .annotate import UNASSIGNED, MarkerTable, annotate_clusters, load_marker_table, otsu_threshold
from .embedding import cluster_medians, pooled_spread

__all__ = ["CellTable", "load_cell_table", "annotate_cells", "CellAnnotation", "ancestors",
           "cell_counts"]

_BUILTIN = "markers_citeseq.yaml"
_MIN_SEED = 10
_ITERATIONS = 20


@dataclass
class CellTable:
    """A marker table with the population hierarchy and the populations refined per cell."""

    markers: MarkerTable
    parents: dict[str, str] = field(default_factory=dict)
    refine: list[str] = field(default_factory=list)
    source: str = ""


def load_cell_table(path: str | Path | None = None) -> CellTable:
    """Read a CITE-seq marker table (default: the built-in :file:`markers_citeseq.yaml`).

    Any cytometry marker table works too (no hierarchy, nothing refined)."""
    if path is None:
        ref = resources.files("immunomon.clustering").joinpath(_BUILTIN)
        with resources.as_file(ref) as p:
            markers, doc, source = load_marker_table(p), yaml.safe_load(p.read_text()), \
                f"{_BUILTIN} (built-in)"
    else:
        markers, source = load_marker_table(path), str(path)
        doc = yaml.safe_load(Path(path).read_text()) or {}
    parents = {str(k): str(v) for k, v in (doc.get("parents") or {}).items()}
    refine = [str(r) for r in doc.get("refine") or []]
    problems = [f"{source}: parents: {k!r} or its parent {v!r} is not a population"
                for k, v in parents.items()
                if k not in markers.populations or v not in markers.populations]
    problems += [f"{source}: refine: {r!r} needs a population with a parent" for r in refine
                 if r not in parents]
    if problems:
        raise UserError(problems)
    return CellTable(markers, parents, refine, source)


def rules_of(table: CellTable, population: str, columns) -> dict[str, int]:
    """The rule set ({marker: +1 / −1}) of ``population`` that the data can judge: its first
    alternative whose markers are all among ``columns`` (else its first; ``{}`` if unknown)."""
    alternatives = table.markers.populations.get(population, [])
    for rules in alternatives:
        if all(m in columns for m in rules):
            return rules
    return alternatives[0] if alternatives else {}


def ancestors(population: str, parents: dict[str, str]) -> list[str]:
    """``population`` and its ancestors, nearest first."""
    out = [population]
    while out[-1] in parents and parents[out[-1]] not in out:
        out.append(parents[out[-1]])
    return out


@dataclass
class CellAnnotation:
    """Cluster and cell labels.

    Attributes
    ----------
    clusters
        One row per cluster: ``cluster``, ``label``, ``confidence``, ``label_rank``, then the
        median of every marker.
    cell_labels
        Population of every cell (its cluster's label, refined per cell).
    thresholds
        Marker → threshold used to name clusters.
    refined
        ``(population, sample)`` → marker thresholds used to refine cells.
    """

    clusters: pd.DataFrame
    cell_labels: np.ndarray
    thresholds: dict[str, float]
    refined: dict = field(default_factory=dict)


def annotate_cells(values: pd.DataFrame, clusters: np.ndarray, samples: np.ndarray,
                   table: CellTable) -> CellAnnotation:
    """Name the clusters and the cells.

    Parameters
    ----------
    values
        Cells × markers normalised ADT values (columns = marker names).
    clusters
        Cluster id of every cell.
    samples
        Sample id of every cell (per-sample thresholds of refined populations).
    table
        :func:`load_cell_table`.
    """
    clusters = np.asarray(clusters)
    medians = cluster_medians(values, clusters)
    spread = pooled_spread(values, clusters)
    names = annotate_clusters(medians, spread, table.markers)
    thresholds = {m: table.markers.thresholds.get(m, otsu_threshold(medians[m].to_numpy()))
                  for m in medians.columns}
    names = _positive_rules_hold(names, medians, spread, thresholds, table)
    out = names.join(medians).rename_axis("cluster").reset_index()
    labels = names["label"].reindex(clusters).to_numpy(dtype=object)
    refined = {}
    def satisfying(population: str, positive_only: bool = False) -> np.ndarray:
        """Cells of the clusters whose medians satisfy every (positive) rule of
        ``population``."""
        rules = {m: sign for m, sign in rules_of(table, population, medians.columns).items()
                 if sign > 0 or not positive_only}
        ok = [c for c in medians.index
              if all(m in medians.columns and sign * (medians.at[c, m] - thresholds[m]) > 0
                     for m, sign in rules.items())]
        return np.isin(clusters, ok)

    for pop in table.refine:
        if pop not in table.parents:
            continue
        # clusters meeting every rule when the data has any; else their positive rules
        # (a marker with weak contrast, e.g. CD14 after dsb, can fail a negative rule
        # everywhere)
        seed = satisfying(pop) & (labels == pop)
        if not seed.any():
            seed = satisfying(pop, positive_only=True) & (labels == pop)
        eligible = satisfying(table.parents[pop])
        if not (eligible & seed).any():
            eligible = satisfying(table.parents[pop], positive_only=True)
        refined.update(_refine(values, labels, seed, eligible, np.asarray(samples), pop,
                               table, thresholds))
    return CellAnnotation(out, labels, thresholds, refined)


def _positive_rules_hold(names: pd.DataFrame, medians: pd.DataFrame, spread: pd.Series,
                         thresholds: dict, table: CellTable) -> pd.DataFrame:
    """A cluster keeps its label only if every positive (``+``/``hi``) rule of it holds; else
    it takes the nearest ancestor whose positive rules hold, or ``unassigned``. (A marker
    table may tolerate a failed rule, ``min_fraction``; tolerating a failed *negative* rule
    keeps doublet-contaminated clusters named, tolerating a failed positive one would name
    a cluster by absent markers: e.g. dendritic cells as CD56bright NK.)"""
    names = names.copy()
    sd = spread.reindex(medians.columns).where(lambda x: x > 0, 1.0)
    margin = (medians - pd.Series(thresholds)) / sd
    for c in names.index:
        label = names.at[c, "label"]
        if label == UNASSIGNED:
            continue
        new = UNASSIGNED
        for pop in ancestors(label, table.parents):
            rules = rules_of(table, pop, margin.columns)
            if all(margin.at[c, m] >= table.markers.min_margin
                   for m, sign in rules.items() if sign > 0 and m in margin.columns):
                new = pop
                break
        if new != label:
            names.at[c, "label"] = new
            names.at[c, "confidence"] = names.at[c, "confidence"] if new != UNASSIGNED else 0.0
    names["label_rank"] = (names.groupby("label")["confidence"]
                           .rank(method="first", ascending=False).astype(np.int64))
    return names


def _refine(values, labels, seed, eligible, samples, pop, table, thresholds) -> dict:
    """Relabel, in place, the cells of ``pop``'s parent family by ``pop``'s own rules.

    ``seed`` marks the cells of the clusters named ``pop`` whose medians satisfy its rules,
    ``eligible`` those of clusters satisfying the parent's rules: clusters named by a
    majority of rules (doublets) neither set thresholds nor gain refined cells."""
    parent = table.parents[pop]
    rules = rules_of(table, pop, values.columns)
    own = {m: s for m, s in rules.items()
           if rules_of(table, parent, values.columns).get(m) != s and m in values.columns}
    if pop not in table.markers.populations or not own or \
            any(m not in values.columns for m in rules):
        return {}
    named = labels == pop
    in_family = {lab for lab in pd.unique(labels) if parent in ancestors(str(lab), table.parents)}
    family = eligible & np.isin(labels, list(in_family))
    x = values[list(own)].to_numpy(dtype=np.float64)

    def midpoints(rows):
        s, o = rows & seed, rows & family & ~seed
        if s.sum() < _MIN_SEED or o.sum() < _MIN_SEED:
            return None
        return (np.median(x[s], axis=0) + np.median(x[o], axis=0)) / 2

    study = midpoints(np.ones(len(labels), dtype=bool))
    if study is None:
        study = np.array([thresholds[m] for m in own])
    used = {}
    signs = np.array(list(own.values()))
    for sid in pd.unique(samples):
        rows = samples == sid
        cut = midpoints(rows)
        cut = study if cut is None else cut
        idx = np.flatnonzero(rows & family)
        passes = ((x[idx] - cut) * signs > 0).all(axis=1)
        for _ in range(_ITERATIONS):  # move the cut to the midpoint of the two groups found
            if passes.sum() < _MIN_SEED or (~passes).sum() < _MIN_SEED:
                break
            new = (np.median(x[idx[passes]], axis=0) + np.median(x[idx[~passes]], axis=0)) / 2
            again = ((x[idx] - new) * signs > 0).all(axis=1)
            cut = new
            if (again == passes).all():
                break
            passes = again
        used[(pop, str(sid))] = dict(zip(own, np.round(cut, 6)))
        labels[idx[passes]] = pop
        labels[idx[~passes & named[idx]]] = parent
        labels[rows & named & ~family] = parent  # a doublet-like cluster named pop
    return used


def cell_counts(labels: np.ndarray, samples: np.ndarray, table: CellTable,
                order: list[str] | None = None) -> pd.DataFrame:
    """``populations`` rows: per sample × population the cells carrying it or a descendant
    (``count``), its fraction of the parent (``freq_parent``) and of all cells
    (``freq_total``), fractions 0–1."""
    pops = order or list(table.markers.populations)
    rows = []
    labels = np.asarray(labels, dtype=object)
    for sid in pd.unique(samples):
        lab = pd.Series(labels[samples == sid]).value_counts()
        total = int(lab.sum())
        counts = {p: 0 for p in pops}
        for label, n in lab.items():
            for p in (ancestors(str(label), table.parents) if label != UNASSIGNED else []):
                if p in counts:
                    counts[p] += int(n)
        for p in pops:
            parent = table.parents.get(p)
            denom = counts[parent] if parent else total
            rows.append({"sample_id": sid, "population": p,
                         "path": "/".join(reversed(ancestors(p, table.parents))),
                         "parent": parent or "Cells", "count": counts[p],
                         "freq_parent": counts[p] / denom if denom else np.nan,
                         "freq_total": counts[p] / total if total else np.nan,
                         "abs_per_ul": np.nan})
    return pd.DataFrame(rows)
