"""Synthetic CITE-seq trials in Cell Ranger's layout, with truth.

``simulate_citeseq(out_dir, patients=8, visits=("D1", "D8"), cells=2000, seed=1,
effect="planted", genes=300, pool=0, empty=3000, fmt="mtx")`` writes a study folder:
``study.yaml`` (a panel with ``assay: citeseq``), ``samples.csv``, one Cell Ranger output
per sample (``data/<sample>/outs/{filtered,raw}_feature_bc_matrix``; per library of
``pool`` samples with a ``hashtag`` column when pooled) and ``truth/``: ``cells.csv``
(barcode → cell type), ``effects.csv`` (planted fold changes) and ``de_genes.csv``.

The model (documented choices, not measurements):

* Cell types and PBMC fractions: CD4 Tconv 30 %, Treg 1.8 % (≈ 5.5 % of CD4 T, the model
  trial's baseline), CD8 T 15 %, NK CD56dim 9.3 %, NK CD56bright 0.7 %, B cells 10 %,
  Monocytes 25 %, Other (DC-like) 8.2 %; per patient log-normal variation (SD 0.2), per
  visit 0.1 (within-patient CV ≈ 10 %).
* ADT counts: negative binomial (dispersion 0.1) around cell size × (type-specific level
  + ambient level of the antibody); positive markers 150–600 UMIs, negatives at the
  ambient level (5–30); isotype controls ambient only. Empty droplets carry the ambient
  profile at ~1/20 of a cell's size (their totals fall in dsb's background window).
* Planted effect (``effect="planted"``): at the first post-baseline visit Treg fractions
  ×2 (per patient ×1.3–×4, log-normal) and HLA-DR on Tregs ×2; 10 genes (``DEG01``–``DEG10``)
  ×2 in CD4 T cells (Tconv and Treg). ``effect="none"``: a null trial.
* RNA (``genes`` > 0): ``genes`` genes plus 13 mitochondrial ``MT-`` genes, type-specific
  log-normal profiles, ~1,500 UMIs per cell, negative binomial (dispersion 0.2).
* Hashtags (``pool`` ≥ 2): one Multiplexing Capture feature per sample of the library
  (~300 UMIs on its own cells, ambient ~5 elsewhere), 4 % doublets (two cells merged,
  two hashtags) and 2 % negatives.

This module never imports the analysis code.
"""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import io as spio
from scipy import sparse

from immunomon.atomic import atomic_path, atomic_write, write_csv

__all__ = ["simulate_citeseq", "CELL_TYPES", "ANTIBODIES"]

#: Cell type → PBMC fraction.
CELL_TYPES = {"CD4 Tconv": 0.30, "Treg": 0.018, "CD8 T": 0.15, "NK CD56dim": 0.093,
              "NK CD56bright": 0.007, "B cells": 0.10, "Monocytes": 0.25, "Other": 0.082}
#: Antibody → (feature id, class).
ANTIBODIES = {"CD3": "type", "CD4": "type", "CD8": "type", "CD14": "type", "CD19": "type",
              "CD25": "type", "CD45RA": "type", "CD56": "type", "CD127": "type", "CD16": "type",
              "HLA-DR": "state", "Mouse IgG1 isotype": "isotype",
              "Mouse IgG2a isotype": "isotype"}
# positive markers (and their level, UMIs) per type
_POSITIVE = {
    "CD4 Tconv": {"CD3": 400, "CD4": 300, "CD127": 250, "CD45RA": 200},
    "Treg": {"CD3": 400, "CD4": 300, "CD25": 350, "CD127": 20, "HLA-DR": 60},
    "CD8 T": {"CD3": 400, "CD8": 500, "CD127": 150, "CD45RA": 250},
    "NK CD56dim": {"CD56": 300, "CD16": 500, "CD45RA": 300},
    "NK CD56bright": {"CD56": 800, "CD25": 80, "CD127": 60},
    "B cells": {"CD19": 400, "HLA-DR": 500, "CD45RA": 300},
    "Monocytes": {"CD14": 600, "CD4": 60, "HLA-DR": 400, "CD16": 40},
    "Other": {"HLA-DR": 450, "CD4": 40},
}
_DISPERSION = 0.1
_N_DE = 10


def _nb(rng, mean, dispersion):
    """Negative-binomial counts (gamma–Poisson) with the given means and dispersion."""
    mean = np.asarray(mean, dtype=np.float64)
    return rng.poisson(rng.gamma(1 / dispersion, mean * dispersion)).astype(np.int32)


def _write_matrix(folder: Path, counts: sparse.csr_matrix, features: pd.DataFrame,
                  barcodes: list[str], fmt: str) -> None:
    """Cell Ranger's layout: mtx folder (features × barcodes) or ``<folder>.h5``."""
    if fmt == "h5":
        import h5py

        csc = sparse.csc_matrix(counts.T)  # features × barcodes, CSC over barcodes
        with atomic_path(folder.with_suffix(".h5")) as tmp, h5py.File(tmp, "w") as f:
            g = f.create_group("matrix")
            g["barcodes"] = np.array(barcodes, dtype="S")
            g["data"] = csc.data.astype(np.int32)
            g["indices"] = csc.indices.astype(np.int64)
            g["indptr"] = csc.indptr.astype(np.int64)
            g["shape"] = np.array(csc.shape, dtype=np.int32)
            ft = g.create_group("features")
            for key, col in (("id", "id"), ("name", "name"), ("feature_type", "type"),
                             ("genome", "genome")):
                ft[key] = np.array(features[col].tolist(), dtype="S")
        return
    folder.mkdir(parents=True, exist_ok=True)
    mtx = io.BytesIO()
    spio.mmwrite(mtx, sparse.coo_matrix(counts.T), field="integer")
    _write_gzip(folder / "matrix.mtx.gz", mtx.getvalue())
    _write_gzip(folder / "features.tsv.gz", "".join(
        f"{r.id}\t{r.name}\t{r.type}\n" for r in features.itertuples()).encode())
    _write_gzip(folder / "barcodes.tsv.gz", "".join(f"{b}\n" for b in barcodes).encode())


def _write_gzip(path: Path, data: bytes) -> None:
    """``data`` gzip-compressed with a fixed header time (the same seed gives the same bytes),
    written atomically."""
    atomic_write(path, gzip.compress(data, compresslevel=1, mtime=0))


def _fractions(rng, n_patients: int, visits: list[str], effect: str):
    """Per patient × visit cell-type fractions and the planted Treg fold change."""
    base = np.array(list(CELL_TYPES.values()))
    types = list(CELL_TYPES)
    out, fold = {}, {}
    for p in range(n_patients):
        pat = base * np.exp(rng.normal(0, 0.2, len(base)))
        fc = float(np.clip(np.exp(rng.normal(np.log(2), 0.35)), 1.3, 4.0))
        fold[p] = fc if effect == "planted" else 1.0
        for i, v in enumerate(visits):
            f = pat * np.exp(rng.normal(0, 0.1, len(base)))
            if i == 1:
                f[types.index("Treg")] *= fold[p]
            out[(p, v)] = f / f.sum()
    return out, fold


def _genes(genes: int) -> list[str]:
    mito = ["MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3", "MT-ND3",
            "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB"]
    de = [f"DEG{i + 1:02d}" for i in range(_N_DE)]
    return de + [f"GENE{i + 1:04d}" for i in range(genes - _N_DE)] + mito


def simulate_citeseq(out_dir, patients: int = 8, visits=("D1", "D8"), cells: int = 2000,
                     seed: int = 1, effect: str = "planted", genes: int = 300, pool: int = 0,
                     empty: int = 3000, fmt: str = "mtx", overwrite: bool = False) -> Path:
    """Write a simulated CITE-seq trial (see the module docstring); returns its folder.

    Parameters
    ----------
    patients, visits, cells
        Cohort size, visit names (``D<day>``; the first is baseline), cells per sample.
    effect
        ``"planted"`` (Treg expansion, HLA-DR and DE genes at the second visit) or ``"none"``.
    genes
        RNA genes (0: ADT-only libraries); at least 20 when given.
    pool
        Samples per hashtag-pooled library (0 or 1: one library per sample).
    empty
        Empty droplets per library in the raw matrix (0: no raw matrix; CLR is then used).
    fmt
        ``"mtx"`` (``matrix.mtx.gz`` folders) or ``"h5"`` (``*_feature_bc_matrix.h5``).
    """
    if effect not in ("planted", "none"):
        raise ValueError(f"effect must be 'planted' or 'none', not {effect!r}")
    if fmt not in ("mtx", "h5"):
        raise ValueError(f"fmt must be 'mtx' or 'h5', not {fmt!r}")
    if genes and genes < 20:
        raise ValueError("genes: 0 (ADT only) or at least 20")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty (use overwrite=True)")
        shutil.rmtree(root)
    (root / "truth").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    visits = list(visits)
    types = list(CELL_TYPES)
    markers = list(ANTIBODIES)
    ambient = rng.uniform(5, 30, len(markers))
    level = np.zeros((len(types), len(markers)))
    for i, t in enumerate(types):
        for m, v in _POSITIVE[t].items():
            level[i, markers.index(m)] = v
    gene_names = _genes(genes) if genes else []
    profile = None
    if genes:
        profile = np.exp(rng.normal(0, 1.2, (len(types), len(gene_names))))
        profile[:, -13:] *= 0.05 / 0.95 * profile[:, :-13].sum(axis=1, keepdims=True) / \
            profile[:, -13:].sum(axis=1, keepdims=True)  # mitochondrial genes: 5 % of UMIs
        profile /= profile.sum(axis=1, keepdims=True)
    fractions, fold = _fractions(rng, patients, visits, effect)
    ids = [(p, v) for p in range(patients) for v in visits]
    size = max(pool, 1)
    libraries = [ids[i:i + size] for i in range(0, len(ids), size)]
    rows, truth = [], []
    adt_feats = pd.DataFrame({"id": [m.replace(" ", "_") + "_ADT" for m in markers],
                              "name": markers, "type": "Antibody Capture", "genome": ""})
    for li, lib in enumerate(libraries):
        counts, cell_types, owner = [], [], []
        for si, (p, v) in enumerate(lib):
            frac = fractions[(p, v)]
            ct = rng.choice(len(types), size=cells, p=frac)
            lv = level[ct].copy()
            if effect == "planted" and v == visits[min(1, len(visits) - 1)] and len(visits) > 1:
                lv[ct == types.index("Treg"), markers.index("HLA-DR")] *= 2
            sf = np.exp(rng.normal(0, 0.3, cells))[:, None]
            adt = _nb(rng, sf * (lv + ambient), _DISPERSION)
            block = [adt]
            if genes:
                mu = profile[ct].copy()
                if effect == "planted" and len(visits) > 1 and v == visits[1]:
                    cd4 = np.isin(ct, [types.index("CD4 Tconv"), types.index("Treg")])
                    mu[np.ix_(cd4, np.arange(_N_DE))] *= 2
                mu /= mu.sum(axis=1, keepdims=True)
                lib_size = 1500 * np.exp(rng.normal(0, 0.3, cells))[:, None]
                block.append(_nb(rng, lib_size * mu, 0.2))
            counts.append(np.hstack(block))
            cell_types += [types[c] for c in ct]
            owner += [si] * cells
        x = np.vstack(counts)
        owner = np.array(owner)
        n = len(x)
        call = np.array([f"S{o}" for o in owner], dtype=object)
        if size > 1:  # hashtags, doublets, negatives
            hto = _nb(rng, np.full((n, size), 5.0), 0.3)
            hto[np.arange(n), owner] = _nb(rng, np.full(n, 300.0), 0.1)
            n_dbl = int(0.04 * n)
            a, b = rng.choice(n, n_dbl, replace=False), rng.choice(n, n_dbl, replace=False)
            x[a] = x[a] + x[b]
            hto[a] = hto[a] + hto[b]
            same = owner[a] == owner[b]
            call[a[~same]] = "Doublet"
            neg = rng.choice(np.setdiff1d(np.arange(n), a), int(0.02 * n), replace=False)
            hto[neg] = _nb(rng, np.full((len(neg), size), 5.0), 0.3)
            call[neg] = "Negative"
            x = np.hstack([x, hto])
        folder_name = "_".join(_sample_id(p, v) for p, v in lib) if size == 1 else f"L{li + 1:02d}"
        barcodes = [f"{_barcode(li, i)}-1" for i in range(n)]
        feats = [adt_feats]
        if genes:
            feats.append(pd.DataFrame({"id": [f"ENSG{i:011d}" for i in range(len(gene_names))],
                                       "name": gene_names, "type": "Gene Expression",
                                       "genome": "GRCh38"}))
        if size > 1:
            feats.append(pd.DataFrame({"id": [f"HTO_{j + 1}" for j in range(size)],
                                       "name": [f"HTO_{j + 1}" for j in range(size)],
                                       "type": "Multiplexing Capture", "genome": ""}))
        features = pd.concat(feats, ignore_index=True)
        outs = root / "data" / folder_name / "outs"
        outs.mkdir(parents=True)
        _write_matrix(outs / "filtered_feature_bc_matrix", sparse.csr_matrix(x), features,
                      barcodes, fmt)
        if empty:
            es = np.exp(rng.normal(np.log(0.05), 0.5, empty))[:, None]
            e_adt = _nb(rng, es * ambient * 10, _DISPERSION)
            extra = [e_adt]
            if genes:
                extra.append(rng.poisson(0.2, (empty, len(gene_names))).astype(np.int32))
            if size > 1:
                extra.append(rng.poisson(1.0, (empty, size)).astype(np.int32))
            e = np.hstack(extra)
            raw = sparse.vstack([sparse.csr_matrix(x), sparse.csr_matrix(e)]).tocsr()
            e_bc = [f"{_barcode(li, n + i)}-1" for i in range(empty)]
            _write_matrix(outs / "raw_feature_bc_matrix", raw, features, barcodes + e_bc, fmt)
        for si, (p, v) in enumerate(lib):
            rows.append({"sample_id": _sample_id(p, v), "file": f"data/{folder_name}",
                         "patient_id": f"P{p + 1:03d}", "visit": v, "panel": "citeseq",
                         "disease": "RA", **({"hashtag": f"HTO_{si + 1}"} if size > 1 else {})})
        sample_of = {f"S{si}": _sample_id(p, v) for si, (p, v) in enumerate(lib)}
        truth.append(pd.DataFrame({"file": f"data/{folder_name}", "barcode": barcodes,
                                   "sample_id": [sample_of.get(c, c) for c in call],
                                   "cell_type": cell_types}))
    write_csv(pd.DataFrame(rows), root / "samples.csv")
    write_csv(pd.concat(truth, ignore_index=True), root / "truth" / "cells.csv")
    effects = [{"patient_id": f"P{p + 1:03d}", "visit": visits[1] if len(visits) > 1 else "",
                "parameter": "Treg % of CD4 T", "fold_change": fold[p]} for p in range(patients)]
    write_csv(pd.DataFrame(effects), root / "truth" / "effects.csv")
    if genes:
        write_csv(pd.DataFrame({"gene": gene_names[:_N_DE], "cell_types": "CD4 Tconv;Treg",
                                "fold_change": 2.0 if effect == "planted" else 1.0}),
                  root / "truth" / "de_genes.csv")
    days = [int(v.lstrip("Dd")) if v.lstrip("Dd").isdigit() else i + 1
            for i, v in enumerate(visits)]
    config = {"study_id": "SIM-CITESEQ", "seed": seed,
              "description": f"Simulated CITE-seq trial ({effect} effect)",
              "visits": [{"name": v, "day": d} for v, d in zip(visits, days)],
              **({"baseline": visits[0]} if len(visits) > 1 else {}),
              "panels": {"citeseq": {"assay": "citeseq", "features": {
                  f: {"marker": m, "class": ANTIBODIES[m]}
                  for f, m in zip(adt_feats["id"], markers)}}},
              "analysis": {"min_patients": max(2, min(6, patients))}}
    atomic_write(root / "study.yaml", yaml.safe_dump(config, sort_keys=False))
    return root


def _sample_id(p: int, v: str) -> str:
    return f"P{p + 1:03d}_{v}"


def _barcode(library: int, i: int) -> str:
    """A 16-letter barcode, unique within the library."""
    digits = np.base_repr(library * 10_000_000 + i, 4).rjust(16, "0")
    return digits.translate(str.maketrans("0123", "ACGT"))
