"""The CITE-seq branch of a run: panels with ``assay: citeseq``.

Per sample (parallel, cached like the cytometry ``prepare`` stage): read the Cell Ranger
output (:mod:`immunomon.io.tenx`), keep the sample's hashtag singlets of a pooled library
(:mod:`immunomon.preprocess.hashtag`), cell QC (:mod:`immunomon.preprocess.cellqc`), ADT
normalisation (:mod:`immunomon.preprocess.adt`: dsb with the raw matrix's empty droplets,
else CLR across cells), RNA log-normalised as scanpy does (``adt+rna`` only).

Per panel (cached): Leiden clusters on the kNN graph of the type markers (ADT, or ADT + RNA
principal components) of at most ``graph_cells`` cells, the others joining their nearest
graph cells' cluster; clusters and cells named with the marker table
(:mod:`immunomon.clustering.cells`); UMAP of a subsample. Per sample again: pseudobulk RNA
counts per cluster (RNA only). The tables are the cytometry ones (``clusters``,
``cluster_counts``, ``cluster_markers``, ``embedding``, ``populations``, ``parameters``,
``qc_steps``) plus ``cells`` (sample_id, barcode, cluster, population) and ``pseudobulk``
(sample_id, cluster, gene, count), the input of :mod:`immunomon.stats.de`.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from immunomon.errors import UserError

from .cache import Cache, code_fingerprint, make_key

__all__ = ["citeseq_panels", "source_files", "prepare_citeseq_sample", "cluster_citeseq_panel",
           "pseudobulk_sample", "run_citeseq", "check_citeseq", "CiteseqRun", "NORMALISATIONS"]

log = logging.getLogger("immunomon.run")

#: Minimum empty droplets (in the ``background_counts`` window) for dsb.
MIN_BACKGROUND = 50
#: Cells embedded with UMAP per panel (split evenly over its samples).
EMBED_CELLS = 20_000
#: Human-readable names of the normalisations, for the methods text.
NORMALISATIONS = {"dsb": "dsb (empty-droplet background, isotype/background technical component)",
                  "clr": "CLR across cells"}
_CODE = ("immunomon.io.tenx", "immunomon.preprocess.adt", "immunomon.preprocess.hashtag",
         "immunomon.preprocess.cellqc", "immunomon.clustering.graph",
         "immunomon.clustering.cells", "immunomon.clustering.annotate",
         "immunomon.pipeline.citeseq")


def citeseq_panels(study) -> list[str]:
    """Names of the study's CITE-seq panels."""
    return [name for name, p in study.config.panels.items() if p.assay == "citeseq"]


def _settings(panel):
    from immunomon.io.study import CiteSeq

    return panel.citeseq or CiteSeq()


def source_files(source: Path) -> list[Path]:
    """The matrix files of a Cell Ranger source (filtered, then raw): what provenance
    hashes and what the cache keys follow."""
    from immunomon.io.tenx import locate

    out = []
    for m in locate(source):
        if m is None:
            continue
        out += [m] if m.is_file() else sorted(p for p in m.iterdir() if p.is_file())
    return [p.resolve() for p in out]


# ------------------------------------------------------------------------- one library
@functools.lru_cache(maxsize=2)
def _library(path: str, hashtags: tuple[str, ...], seed: int) -> dict:
    """A library's filtered matrix split by modality, its empty droplets' ADT counts (raw
    minus filtered barcodes) and its hashtag calls (pooled libraries)."""
    from immunomon.io.tenx import locate, read_matrix, split_modalities
    from immunomon.preprocess.hashtag import demultiplex

    filtered, raw = locate(path)
    adata = read_matrix(filtered)
    mods = split_modalities(adata)
    if "adt" not in mods:
        raise UserError(f"{filtered}: no Antibody Capture feature (not a CITE-seq library)")
    lib = {"barcodes": adata.obs_names.to_numpy(), "adt": mods["adt"], "rna": mods.get("rna"),
           "empty": None, "calls": None, "source": str(filtered)}
    if raw is not None:
        r = read_matrix(raw)
        r_adt = r[~r.obs_names.isin(adata.obs_names), (r.var["feature_types"] ==
                                                      "Antibody Capture").to_numpy()]
        lib["empty"] = r_adt[:, r_adt.var_names.isin(mods["adt"].var_names)]
    if hashtags:
        hto = _hashtag_matrix(mods, hashtags, filtered)
        lib["calls"] = demultiplex(hto.X, list(hto.var["name"]), seed=seed)
        lib["hto_names"] = dict(zip(hto.var_names, hto.var["name"]))
    return lib


def _hashtag_matrix(mods: dict, hashtags: tuple[str, ...], where):
    """The hashtag counts: Multiplexing Capture features, else Antibody Capture features
    named as the samples' hashtags."""
    if "hto" in mods:
        return mods["hto"]
    adt = mods["adt"]
    mask = adt.var_names.isin(hashtags) | adt.var["name"].isin(hashtags)
    if not mask.any():
        raise UserError(f"{where}: no Multiplexing Capture feature and none of the hashtags "
                        f"{', '.join(hashtags)} among the features")
    return adt[:, mask]


def _hashtags_of(study, file: str) -> tuple[str, ...]:
    s = study.samples
    if "hashtag" not in s.columns:
        return ()
    tags = s.loc[s["file"] == file, "hashtag"].fillna("").astype(str)
    return tuple(sorted(t for t in tags if t))


def _call_name(lib: dict, hashtag: str) -> str:
    """The call (hashtag name) of ``hashtag`` given as feature id or name."""
    return lib.get("hto_names", {}).get(hashtag, hashtag)


# ------------------------------------------------------------------------- per sample
@dataclass
class CiteseqSample:
    """One sample after QC and normalisation: normalised ADT values (cells × markers,
    float32) of its QC-passed cells, their barcodes, RNA (log-normalised, ``adt+rna``
    only), QC steps and counts, and the normalisation used."""

    sample_id: str
    panel: str
    adt: pd.DataFrame
    barcodes: np.ndarray
    rna: Any
    qc_steps: pd.DataFrame
    events_total: int
    events_after_qc: int
    qc_pass: bool
    normalisation: str


def _feature_columns(panel, adt) -> tuple[list[str], list[str], list[str]]:
    """(feature ids used, their marker names, isotype feature ids) of a library's ADT."""
    from immunomon.preprocess.adt import is_isotype

    ids, markers, isotypes = [], [], []
    for fid, f in panel.features.items():
        if fid not in adt.var_names:
            continue
        cls = f.marker_class
        if cls == "isotype" or (cls is None and is_isotype(f.marker)):
            isotypes.append(fid)
        elif cls != "none":
            ids.append(fid)
            markers.append(f.marker)
    return ids, markers, isotypes


def prepare_citeseq_sample(study, sample_id: str, seed: int = 0) -> CiteseqSample:
    """Read, demultiplex, QC and normalise one CITE-seq sample."""
    from immunomon.preprocess.adt import clr, dsb
    from immunomon.preprocess.cellqc import cell_qc

    row = study.sample(sample_id)
    panel_name = str(row["panel"])
    panel = study.config.panels[panel_name]
    cfg = _settings(panel)
    lib = _library(str(study.path_of(sample_id)), _hashtags_of(study, row["file"]), seed)
    tag = str(row.get("hashtag", "") or "")
    singlet = None
    if tag:
        singlet = (lib["calls"]["call"] == _call_name(lib, tag)).to_numpy()
    adt, rna = lib["adt"], lib["rna"]
    keep, steps = cell_qc(adt.X, None if rna is None else rna.X,
                          None if rna is None else rna.var["name"].to_numpy(), singlet,
                          mad=cfg.qc.mad, max_mito=cfg.qc.max_mito,
                          rna_doublets=cfg.qc.rna_doublets, seed=seed)
    if tag:
        calls = lib["calls"]["call"]
        steps.loc[steps["step"] == "hashtag", "reason"] = (
            f"library of {len(calls)} cells: {int((calls == 'Doublet').sum())} doublets, "
            f"{int((calls == 'Negative').sum())} negatives, {int(singlet.sum())} singlets "
            f"of {tag}, the rest singlets of other hashtags")
    ids, markers, isotypes = _feature_columns(panel, adt)
    counts = adt[keep]
    method = cfg.normalisation
    empty = lib["empty"]
    if empty is not None:
        totals = np.asarray(empty.X.sum(axis=1)).ravel()
        lo, hi = cfg.background_counts
        empty = empty[(totals >= lo) & (totals <= hi)]
    has_background = empty is not None and empty.n_obs >= MIN_BACKGROUND
    if method == "auto":
        method = "dsb" if has_background else "clr"
    if method == "dsb" and not has_background:
        raise UserError(f"{lib['source']}: dsb needs at least {MIN_BACKGROUND} empty droplets "
                        f"with {cfg.background_counts[0]}–{cfg.background_counts[1]} ADT "
                        f"counts in the raw matrix (found "
                        f"{0 if empty is None else empty.n_obs})")
    if keep.sum() == 0:
        values = np.zeros((0, len(ids)))
    elif method == "dsb":
        cols = list(adt.var_names)
        full = dsb(counts.X, empty[:, cols].X, [cols.index(i) for i in isotypes])
        values = full[:, [cols.index(i) for i in ids]]
    else:
        values = clr(counts[:, ids].X)
    norm_rna = None
    if cfg.modality == "adt+rna" and rna is not None:
        norm_rna = _log_normalise(rna[keep].X)
    n_after = int(keep.sum())
    label = NORMALISATIONS[method]
    if method == "dsb":
        label += f"; {empty.n_obs} empty droplets, {len(isotypes)} isotype controls"
    steps.insert(0, "sample_id", sample_id)
    total = int(len(keep))  # a pooled sample: the library's cells (see the hashtag step)
    return CiteseqSample(
        sample_id=sample_id, panel=panel_name,
        adt=pd.DataFrame(values.astype(np.float32), columns=markers),
        barcodes=lib["barcodes"][keep], rna=norm_rna, qc_steps=steps, events_total=total,
        events_after_qc=n_after,
        qc_pass=n_after >= cfg.qc.min_cells, normalisation=label)


def _log_normalise(counts) -> sparse.csr_matrix:
    """scanpy's ``normalize_total(target_sum=1e4)`` + ``log1p`` (float32, sparse)."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(sparse.csr_matrix(counts, dtype=np.float32))
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return sparse.csr_matrix(a.X)


# ------------------------------------------------------------------------- per panel
def _rna_space(samples: list[CiteseqSample], n_pcs: int, seed: int) -> np.ndarray:
    """RNA principal components of the pooled cells (scanpy: highly variable genes, PCA)."""
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(sparse.vstack([s.rna for s in samples]).tocsr())
    n_top = min(2000, a.n_vars)
    sc.pp.highly_variable_genes(a, n_top_genes=n_top)
    sc.pp.pca(a, n_comps=min(n_pcs, n_top - 1, a.n_obs - 1), mask_var="highly_variable",
              random_state=seed)
    return a.obsm["X_pca"]


def cluster_citeseq_panel(study, panel: str, samples: list[CiteseqSample], seed: int,
                          embed_cells: int = EMBED_CELLS, n_jobs: int = 1) -> dict:
    """Cluster and name one panel's cells; its cytometry-shaped tables plus ``cells``.
    ``n_jobs`` threads search the (exact) nearest neighbours: the result does not depend
    on it."""
    from immunomon.clustering.cells import annotate_cells, cell_counts, load_cell_table
    from immunomon.clustering.embedding import subsample_indices, umap_embedding
    from immunomon.clustering.graph import leiden_clusters, transfer_labels

    cfg = _settings(study.config.panels[panel])
    table = load_cell_table(study.root / cfg.marker_table if cfg.marker_table else None)
    values = pd.concat([s.adt for s in samples], ignore_index=True)
    sample_of = np.concatenate([np.full(len(s.adt), s.sample_id, dtype=object)
                                for s in samples])
    types = _type_markers(study.config.panels[panel], list(values.columns))
    space = values[types].to_numpy(dtype=np.float32)
    if cfg.modality == "adt+rna" and all(s.rna is not None for s in samples):
        pcs = _rna_space(samples, 20, seed)
        space = np.hstack([space / max(float(space.std(axis=0).mean()), 1e-9),
                           pcs / max(float(pcs[:, 0].std()), 1e-9)]).astype(np.float32)
    graph = subsample_indices(len(space), cfg.graph_cells, seed, key=f"{panel}:graph")
    clusters = np.empty(len(space), dtype=np.int64)
    clusters[graph] = leiden_clusters(space[graph], resolution=cfg.resolution,
                                      k=cfg.neighbours, seed=seed, n_jobs=n_jobs)
    rest = np.setdiff1d(np.arange(len(space)), graph, assume_unique=True)
    clusters[rest] = transfer_labels(space[graph], clusters[graph], space[rest],
                                     k=cfg.neighbours, n_jobs=n_jobs)
    ann = annotate_cells(values, clusters, sample_of, table)
    cl = ann.clusters
    k = int(clusters.max()) if len(clusters) else 0
    ids = [s.sample_id for s in samples]
    counts = pd.crosstab(pd.Categorical(sample_of, categories=ids),
                         pd.Categorical(clusters, categories=range(1, k + 1)), dropna=False)
    labels = dict(zip(cl["cluster"], cl["label"]))
    cluster_counts = (counts.rename_axis(index="sample_id", columns="cluster").stack()
                      .rename("count").reset_index())
    cluster_counts["cluster"] = cluster_counts["cluster"].astype(np.int64)
    cluster_counts.insert(2, "label", cluster_counts["cluster"].map(labels))
    cluster_counts["sample_id"] = cluster_counts["sample_id"].astype(str)
    cluster_counts["count"] = cluster_counts["count"].astype(np.int64)
    markers = (values.assign(sample_id=sample_of, cluster=clusters)
               .groupby(["sample_id", "cluster"], sort=True).median()
               .rename_axis(columns="marker").stack().rename("median").reset_index())
    markers["median"] = markers["median"].astype(np.float64)
    n_cells = pd.Series(clusters).value_counts().reindex(cl["cluster"], fill_value=0)
    cl.insert(4, "n_cells", n_cells.to_numpy())
    meta = study.samples.set_index("sample_id")
    per = math.ceil(embed_cells / max(len(samples), 1))
    offsets = np.cumsum([0] + [len(s.adt) for s in samples])
    pick = np.concatenate([o + subsample_indices(len(s.adt), per, seed, key=f"{s.sample_id}:embedding")
                           for s, o in zip(samples, offsets[:-1])]).astype(np.int64)
    emb = values.iloc[pick].reset_index(drop=True)
    xy = umap_embedding(space[pick], random_state=seed)
    emb.insert(0, "umap_2", xy[:, 1])
    emb.insert(0, "umap_1", xy[:, 0])
    emb.insert(0, "label", [labels[c] for c in clusters[pick]])
    emb.insert(0, "cluster", clusters[pick])
    emb.insert(0, "sample_id", sample_of[pick].astype(str))
    for col in ("patient_id", "visit", "disease"):
        emb[col] = emb["sample_id"].map(meta[col].astype(str))
    cells = pd.DataFrame({"sample_id": sample_of.astype(str),
                          "barcode": np.concatenate([s.barcodes for s in samples]).astype(str),
                          "cluster": clusters, "population": ann.cell_labels.astype(str)})
    pops = cell_counts(ann.cell_labels, sample_of, table)
    pops["sample_id"] = pops["sample_id"].astype(str)
    return {"clusters": cl, "cluster_counts": cluster_counts, "cluster_markers": markers,
            "embedding": emb, "cells": cells, "populations": pops,
            "parameters": _parameters(pops), "marker_table": table.source,
            "refined": {f"{p} in {s}": v for (p, s), v in ann.refined.items()}}


def _type_markers(panel, columns: list[str]) -> list[str]:
    """Marker names of the panel's ``type`` features (all non-state ones when none is typed)."""
    typed = [f.marker for f in panel.features.values() if f.marker_class == "type"]
    chosen = [m for m in columns if m in typed]
    state = {f.marker for f in panel.features.values() if f.marker_class == "state"}
    return chosen or [m for m in columns if m not in state] or columns


def _parameters(pops: pd.DataFrame) -> pd.DataFrame:
    """``<population> % of <parent>`` parameters (percent) from the cell populations."""
    out = pops.assign(parameter=pops["population"] + " % of " + pops["parent"],
                      measure="percent", value=100 * pops["freq_parent"])
    return out[["sample_id", "parameter", "population", "measure", "value"]].reset_index(drop=True)


def pseudobulk_sample(study, sample: CiteseqSample, cells: pd.DataFrame, seed: int = 0
                      ) -> pd.DataFrame:
    """Pseudobulk RNA counts of one sample's QC-passed cells per cluster (genes with a
    count): sample_id, cluster, gene, count."""
    lib = _library(str(study.path_of(sample.sample_id)),
                   _hashtags_of(study, study.sample(sample.sample_id)["file"]), seed)
    rna = lib["rna"]
    if rna is None:
        return pd.DataFrame(columns=["sample_id", "cluster", "gene", "count"])
    pos = pd.Index(lib["barcodes"]).get_indexer(cells["barcode"].to_numpy())
    cl = cells["cluster"].to_numpy()
    uniq = np.unique(cl)
    member = sparse.csr_matrix((np.ones(len(pos)), (np.searchsorted(uniq, cl), pos)),
                               shape=(len(uniq), rna.n_obs))
    sums = sparse.coo_matrix(member @ sparse.csr_matrix(rna.X))
    names = rna.var["name"].astype(str).to_numpy()
    return pd.DataFrame({"sample_id": sample.sample_id, "cluster": uniq[sums.row],
                         "gene": names[sums.col], "count": np.rint(sums.data).astype(np.int64)})


# ------------------------------------------------------------------------- the branch
@dataclass
class CiteseqRun:
    """What :func:`run_citeseq` hands back to the run: per-sample results (the shape of the
    cytometry ``prepare`` results: events, QC, error, ``tables``), the panel tables, and
    the normalisation and clustering facts for provenance and methods."""

    by_id: dict
    tables: dict
    facts: dict


@dataclass(frozen=True)
class _Job:
    study: Any
    sample_id: str
    key: str
    cache_root: str | None
    seed: int


def _prepare_job(job: _Job) -> dict:
    cache = Cache(job.cache_root)
    hit = cache.get("citeseq_prepare", job.key)
    if hit is not None:
        return {**hit, "cached": True}
    try:
        sample = prepare_citeseq_sample(job.study, job.sample_id, job.seed)
    except UserError as err:
        return {"sample_id": job.sample_id, "error": "; ".join(err.problems), "cached": False}
    result = {"sample_id": job.sample_id, "sample": sample, "error": ""}
    cache.put("citeseq_prepare", job.key, result)
    return {**result, "cached": False}


def _pseudobulk_job(args) -> pd.DataFrame:
    job, sample, cells = args
    cache = Cache(job.cache_root)
    key = make_key("citeseq_pseudobulk", job.key, pd.util.hash_pandas_object(cells).sum())
    hit = cache.get("citeseq_pseudobulk", key)
    if hit is None:
        hit = cache.put("citeseq_pseudobulk", key,
                        pseudobulk_sample(job.study, sample, cells, job.seed))
    return hit


def run_citeseq(study, sample_ids: list[str], file_sha: dict, seed: int, cache: Cache,
                parallel: dict, stages, embed_cells: int = EMBED_CELLS) -> CiteseqRun:
    """Every CITE-seq sample of ``sample_ids`` through QC, normalisation, clustering and
    pseudobulk; the per-sample results and the tables of the CITE-seq panels
    (``embed_cells`` cells per panel in the UMAP)."""
    from .executor import map_samples

    code = code_fingerprint(*_CODE)
    root = str(cache.root) if cache.root is not None else None
    jobs = []
    for sid in sample_ids:
        row = study.sample(sid)
        panel = study.config.panels[row["panel"]].model_dump(mode="json")
        jobs.append(_Job(study, sid, make_key("citeseq_prepare", code, file_sha[sid],
                                              {k: v for k, v in row.items()
                                               if k != "excluded_reason"}, panel, seed),
                         root, seed))
    results = map_samples(_prepare_job, jobs, progress=stages.start("citeseq", len(jobs)),
                          **parallel)
    by_id, facts = {}, {"normalisation": {}, "marker_table": {}, "refined": {}}
    for r in results:
        if r["error"]:
            by_id[r["sample_id"]] = {"sample_id": r["sample_id"], "error": r["error"],
                                     "cached": r["cached"]}
            continue
        s = r["sample"]
        steps = s.qc_steps.assign(panel=s.panel)
        by_id[s.sample_id] = {"sample_id": s.sample_id, "panel": s.panel, "error": "",
                              "events_total": s.events_total,
                              "events_after_qc": s.events_after_qc, "qc_pass": s.qc_pass,
                              "cached": r["cached"], "tables": {"qc_steps": steps}}
        facts["normalisation"][s.sample_id] = s.normalisation
    stages.done("citeseq", samples=len(jobs), cached=sum(r["cached"] for r in results),
                cells=sum(b.get("events_after_qc", 0) for b in by_id.values()))
    ok = {r["sample_id"]: r["sample"] for r in results if not r["error"] and r["sample"].qc_pass}
    tables: dict[str, list[pd.DataFrame]] = {}
    # the clustering runs here: as many neighbour-search threads as local workers
    local_cores = 1 if parallel.get("scheduler") is not None else \
        max(1, int(parallel.get("workers") or 1))
    for panel in citeseq_panels(study):
        ids = [s for s in sample_ids if s in ok and ok[s].panel == panel]
        if not ids:
            continue
        progress = stages.start("citeseq_cluster", 1)
        key = make_key("citeseq_cluster", code, [j.key for j in jobs if j.sample_id in ids],
                       seed, embed_cells)
        result = cache.get("citeseq_cluster", key)
        if result is None:
            result = cache.put("citeseq_cluster", key,
                               cluster_citeseq_panel(study, panel, [ok[s] for s in ids], seed,
                                                     embed_cells, n_jobs=local_cores))
        facts["marker_table"][panel] = result["marker_table"]
        facts["refined"].update(result["refined"])
        cells = result["cells"]
        by_sample = dict(tuple(cells.groupby("sample_id", sort=False)))
        pb_jobs = [(j, ok[j.sample_id], by_sample[j.sample_id]) for j in jobs if j.sample_id in ids]
        bulk = map_samples(_pseudobulk_job, pb_jobs, **parallel)
        for name in ("clusters", "cluster_counts", "cluster_markers", "embedding", "cells",
                     "populations", "parameters"):
            tables.setdefault(name, []).append(result[name].assign(panel=panel))
        pb = [b for b in bulk if len(b)]
        if pb:
            tables.setdefault("pseudobulk", []).append(pd.concat(pb, ignore_index=True)
                                                       .assign(panel=panel))
        stages.progress.advance(progress[1])
        stages.done("citeseq_cluster", panel=panel, samples=len(ids), cells=len(cells),
                    clusters=len(result["clusters"]))
    return CiteseqRun(by_id, {k: pd.concat(v, ignore_index=True) for k, v in tables.items()},
                      facts)


# ------------------------------------------------------------------------- validation
def check_citeseq(study) -> list[str]:
    """Problems of the CITE-seq panels' sources (registered in ``pipeline.checks.CHECKS``):
    Cell Ranger layout and sizes, panel features missing from the library, hashtags
    absent from a pooled library or missing on some of its rows, dsb without a raw matrix,
    an unreadable marker table."""
    from immunomon.io.tenx import check_source, locate

    panels = {n: p for n, p in study.config.panels.items() if p.assay == "citeseq"}
    if not panels:
        return []
    problems: list[str] = []
    samples_csv = Path(study.root) / "samples.csv"
    s = study.samples.reset_index(drop=True)
    for name, panel in panels.items():
        cfg = _settings(panel)
        if cfg.marker_table:
            try:
                from immunomon.clustering.cells import load_cell_table

                load_cell_table(Path(study.root) / cfg.marker_table)
            except UserError as err:
                problems += [f"{Path(study.root) / 'study.yaml'}: panels.{name}.citeseq."
                             f"marker_table: {p}" for p in err.problems]
    seen: dict[str, list[str]] = {}
    for i, row in s.iterrows():
        panel = panels.get(str(row["panel"]))
        if panel is None or not row["file"]:
            continue
        at = f"{samples_csv}, line {i + 2}, column 'file'"
        path = Path(study.root) / str(row["file"])
        if not path.exists():
            continue  # io.study reports it
        if str(row["file"]) not in seen:
            seen[str(row["file"])] = [f"{at}: {p}" for p in check_source(path)]
            problems += seen[str(row["file"])]
        if seen[str(row["file"])]:
            continue
        filtered, raw = locate(path)
        feats = _features_of(filtered)
        missing = [fid for fid in panel.features if fid not in feats]
        if missing:
            problems.append(f"{at}: feature(s) {', '.join(missing)} of panel '{row['panel']}' "
                            f"are not in {filtered}")
        if _settings(panel).normalisation == "dsb" and raw is None:
            problems.append(f"{at}: normalisation dsb needs the raw_feature_bc_matrix next to "
                            f"{filtered}")
        tag = str(row.get("hashtag", "") or "")
        if tag:
            tags = {fid for fid, (name, ftype) in feats.items()
                    if ftype == "Multiplexing Capture"}
            names = {name for fid, (name, ftype) in feats.items()
                     if ftype == "Multiplexing Capture"}
            pool = (tags | names) or (set(feats) | {n for n, _ in feats.values()})
            if tag not in pool:
                problems.append(f"{samples_csv}, line {i + 2}, column 'hashtag': hashtag "
                                f"'{tag}' is not in the library {filtered} (its hashtags: "
                                f"{', '.join(sorted(names)) or 'none'})")
    if "hashtag" in s.columns:
        tagged = s["hashtag"].fillna("").astype(str) != ""
        for file, grp in s[s["panel"].isin(panels)].groupby("file"):
            has = tagged[grp.index]
            if has.any() and not has.all():
                line = int(grp.index[~has.to_numpy()][0]) + 2
                problems.append(f"{samples_csv}, line {line}, column 'hashtag': the library "
                                f"'{file}' is pooled (other rows have hashtags) but this row "
                                f"has none")
    return problems


def _features_of(matrix: Path) -> dict[str, tuple[str, str]]:
    """Feature id → (name, feature type) of a matrix, without reading its counts."""
    from immunomon.io.tenx import read_features

    f = read_features(matrix)
    return {i: (n, t) for i, n, t in zip(f["gene_ids"], f["name"], f["feature_types"])}
