"""Cell Ranger feature-barcode matrices (10x Genomics) → AnnData / MuData.

>>> from immunomon.io.tenx import read_10x, locate
>>> adata = read_10x("pbmc/outs")                         # doctest: +SKIP
>>> adata.var["feature_types"].value_counts()             # doctest: +SKIP
>>> empty = read_10x("pbmc/outs", which="raw")            # doctest: +SKIP

A *source* is what ``samples.csv`` ``file`` names: a Cell Ranger sample folder (with or
without ``outs/``), a ``filtered_feature_bc_matrix`` folder (``matrix.mtx.gz``,
``features.tsv.gz``, ``barcodes.tsv.gz``; Cell Ranger 2 ``genes.tsv`` accepted), or a
``filtered_feature_bc_matrix.h5`` (Cell Ranger ≥ 3 layout; the 2.x one-group-per-genome
layout accepted). :func:`locate` finds the filtered matrix and, next to it, the raw one (all
barcodes, empty droplets included: the dsb background).

Matrices are read as AnnData, cells × features, ``X`` = UMI counts (``scipy.sparse`` CSR,
float32), ``obs_names`` = barcodes, ``var`` = ``gene_ids`` (Cell Ranger feature id),
``feature_types`` (``Gene Expression`` / ``Antibody Capture`` / ``Multiplexing Capture`` / …),
``genome``; ``var_names`` are the feature ids (unique, unlike gene names).
:func:`split_modalities` splits one into ``rna`` / ``adt`` / ``hto`` (a MuData with
:func:`to_mudata`). Problems raise :class:`~immunomon.errors.UserError`, one line each naming
the file: not a Cell Ranger output, sizes that disagree, a truncated ``.h5``.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from immunomon.errors import UserError

__all__ = ["MODALITIES", "locate", "read_matrix", "read_10x", "split_modalities", "to_mudata",
           "check_source", "discover", "read_features"]

#: Cell Ranger ``feature_type`` → modality name (MuData key).
MODALITIES = {"Gene Expression": "rna", "Antibody Capture": "adt",
              "Multiplexing Capture": "hto"}
_FILTERED, _RAW = "filtered_feature_bc_matrix", "raw_feature_bc_matrix"
_CANDIDATES = ("", "outs")


def _matrix_in(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` (mtx folder) or ``folder/stem.h5``, whichever exists (folder first)."""
    if (folder / stem).is_dir():
        return folder / stem
    if (folder / f"{stem}.h5").is_file():
        return folder / f"{stem}.h5"
    return None


def locate(source: str | Path) -> tuple[Path, Path | None]:
    """The filtered matrix (mtx folder or ``.h5``) of a Cell Ranger source, and the raw one
    beside it (``None`` when absent).

    Raises :class:`UserError` when ``source`` holds no filtered feature-barcode matrix.
    """
    path = Path(source)
    if path.is_file():
        if path.suffix != ".h5":
            raise UserError(f"{path}: not a Cell Ranger output (expected a folder holding "
                            f"{_FILTERED}/ or a feature-barcode matrix .h5 file)")
        raw = path.with_name(path.name.replace("filtered_", "raw_"))
        return path, raw if raw != path and raw.is_file() else None
    if not path.is_dir():
        raise UserError(f"{path}: Cell Ranger output not found")
    if _has_mtx(path):  # the matrix folder itself
        raw = path.with_name(path.name.replace("filtered_", "raw_"))
        return path, raw if raw != path and _has_mtx(raw) else None
    for sub in _CANDIDATES:
        folder = path / sub
        filtered = _matrix_in(folder, _FILTERED)
        if filtered is not None:
            return filtered, _matrix_in(folder, _RAW)
    raise UserError(f"{path}: not a Cell Ranger output (no {_FILTERED}/ or {_FILTERED}.h5 "
                    f"in it or in outs/)")


def _has_mtx(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).is_file() for n in ("matrix.mtx.gz", "matrix.mtx"))


def _file(folder: Path, *names: str) -> Path:
    for name in names:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    raise UserError(f"{folder}: not a Cell Ranger matrix folder ({' or '.join(names)}[.gz] "
                    f"missing)")


def _lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as fh:
            return [line.rstrip("\r\n") for line in fh if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot be read ({err})") from None


def _mtx_header(path: Path) -> tuple[int, int, int]:
    """(rows, columns, entries) from a MatrixMarket header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="ascii", errors="replace") as fh:
            first = fh.readline()
            if not first.lower().startswith("%%matrixmarket matrix coordinate"):
                raise UserError(f"{path}, line 1: not a MatrixMarket coordinate matrix")
            line, n = fh.readline(), 2
            while line.startswith("%"):
                line, n = fh.readline(), n + 1
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot be read ({err})") from None
    sizes = line.split()
    if len(sizes) != 3 or not all(s.isdigit() for s in sizes):
        raise UserError(f"{path}, line {n}: expected 'rows columns entries', got {line.strip()!r}")
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


def _features_frame(rows: list[list[str]], where: Path) -> pd.DataFrame:
    """``var`` from features.tsv rows: id, name, feature type (Cell Ranger 2: gene rows)."""
    out = []
    for i, r in enumerate(rows):
        if len(r) < 2:
            raise UserError(f"{where}, line {i + 1}: expected 'id<TAB>name[<TAB>type]', got "
                            f"{chr(9).join(r)!r}")
        out.append((r[0], r[1], r[2] if len(r) > 2 else "Gene Expression"))
    var = pd.DataFrame(out, columns=["gene_ids", "name", "feature_types"])
    var["genome"] = ""
    return var


def _read_mtx(folder: Path):
    import anndata as ad
    from scipy.io import mmread

    mtx = _file(folder, "matrix.mtx")
    feats = _file(folder, "features.tsv", "genes.tsv")
    bcs = _file(folder, "barcodes.tsv")
    n_feat, n_bc, n_entries = _mtx_header(mtx)
    var = _features_frame([line.split("\t") for line in _lines(feats)], feats)
    barcodes = [line.split("\t")[0] for line in _lines(bcs)]
    problems = []
    if len(var) != n_feat:
        problems.append(f"{mtx}: the matrix has {n_feat} feature rows but {feats.name} lists "
                        f"{len(var)} features")
    if len(barcodes) != n_bc:
        problems.append(f"{mtx}: the matrix has {n_bc} barcode columns but {bcs.name} lists "
                        f"{len(barcodes)} barcodes")
    if problems:
        raise UserError(problems)
    try:
        m = mmread(mtx)
    except (ValueError, OSError, EOFError, IndexError, RuntimeError) as err:
        raise UserError(f"{mtx}: not a valid matrix of {n_feat} × {n_bc} with {n_entries} "
                        f"entries ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                        ) from None
    X = sparse.csr_matrix(sparse.coo_matrix(m).T, dtype=np.float32)
    return ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes, name="barcode")),
                      var=_var(var))


def _var(var: pd.DataFrame) -> pd.DataFrame:
    var = var.copy()
    var.index = pd.Index(_unique(var["gene_ids"].astype(str).tolist()), name="feature_id")
    return var


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        out.append(n if k == 0 else f"{n}-{k}")
        seen[n] = k + 1
    return out


def _read_h5(path: Path):
    import anndata as ad
    import h5py

    def text(ds) -> list[str]:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]]

    try:
        with h5py.File(path, "r") as f:
            if "matrix" in f:  # Cell Ranger >= 3
                g, feats = f["matrix"], f["matrix"]["features"]
                var = pd.DataFrame({"gene_ids": text(feats["id"]), "name": text(feats["name"]),
                                    "feature_types": text(feats["feature_type"])})
                var["genome"] = text(feats["genome"]) if "genome" in feats else ""
            elif len(f.keys()) == 1 and "genes" in next(iter(f.values())):  # Cell Ranger 2
                genome = next(iter(f.keys()))
                g = f[genome]
                var = pd.DataFrame({"gene_ids": text(g["genes"]), "name": text(g["gene_names"]),
                                    "feature_types": "Gene Expression", "genome": genome})
            else:
                raise UserError(f"{path}: not a Cell Ranger feature-barcode matrix (no "
                                f"'matrix' group)")
            shape = tuple(int(x) for x in g["shape"][()])
            barcodes = text(g["barcodes"])
            data, indices, indptr = g["data"][()], g["indices"][()], g["indptr"][()]
    except UserError:
        raise
    except (OSError, KeyError, ValueError) as err:
        what = "truncated or corrupt HDF5 file" if isinstance(err, OSError) else \
            "not a Cell Ranger feature-barcode matrix"
        raise UserError(f"{path}: {what} ({str(err).splitlines()[0]})") from None
    problems = []
    if len(var) != shape[0]:
        problems.append(f"{path}: the matrix has {shape[0]} feature rows but "
                        f"{len(var)} features are listed")
    if len(barcodes) != shape[1] or len(indptr) != shape[1] + 1:
        problems.append(f"{path}: the matrix has {shape[1]} barcode columns but "
                        f"{len(barcodes)} barcodes (and {len(indptr) - 1} column pointers)")
    if len(data) != len(indices) or (len(indptr) and indptr[-1] != len(data)):
        problems.append(f"{path}: {len(data)} values, {len(indices)} row indices and a last "
                        f"column pointer of {indptr[-1] if len(indptr) else 0} disagree")
    if problems:
        raise UserError(problems)
    X = sparse.csc_matrix((data.astype(np.float32), indices, indptr), shape=shape).T.tocsr()
    return ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes, name="barcode")),
                      var=_var(var))


def read_matrix(path: str | Path):
    """One feature-barcode matrix (mtx folder or ``.h5``) → AnnData (cells × features)."""
    path = Path(path)
    adata = _read_h5(path) if path.is_file() else _read_mtx(path)
    adata.uns["source"] = str(path)
    return adata


def read_10x(source: str | Path, which: str = "filtered"):
    """The ``filtered`` (cells) or ``raw`` (all barcodes) matrix of a Cell Ranger source.

    Raises :class:`UserError` when the source has no such matrix or it cannot be read.
    """
    filtered, raw = locate(source)
    if which == "filtered":
        return read_matrix(filtered)
    if which != "raw":
        raise ValueError(f"which must be 'filtered' or 'raw', not {which!r}")
    if raw is None:
        raise UserError(f"{source}: no {_RAW} next to the filtered matrix")
    return read_matrix(raw)


def split_modalities(adata) -> dict:
    """``{"rna" | "adt" | "hto" | <other type>: AnnData}``, one view per feature type present
    (in the order of :data:`MODALITIES`, others after)."""
    types = adata.var["feature_types"].astype(str)
    names = {t: MODALITIES.get(t, re.sub(r"\W+", "_", t.lower())) for t in types.unique()}
    order = sorted(names, key=lambda t: (list(MODALITIES).index(t) if t in MODALITIES else 9, t))
    return {names[t]: adata[:, (types == t).to_numpy()] for t in order}


def to_mudata(adata):
    """The modalities of :func:`split_modalities` as a :class:`mudata.MuData`."""
    import mudata as md

    return md.MuData({k: v.copy() for k, v in split_modalities(adata).items()})


def check_source(source: str | Path) -> list[str]:
    """Problems of a Cell Ranger source found without reading its counts (folder layout,
    header sizes, ``.h5`` opens and has its datasets); empty when it looks readable."""
    try:
        filtered, raw = locate(source)
        for path in (filtered, raw):
            if path is None:
                continue
            if path.is_file():
                _check_h5(path)
            else:
                mtx = _file(path, "matrix.mtx")
                n_feat, n_bc, _ = _mtx_header(mtx)
                feats = _file(path, "features.tsv", "genes.tsv")
                bcs = _file(path, "barcodes.tsv")
                problems = []
                if (n := len(_lines(feats))) != n_feat:
                    problems.append(f"{mtx}: the matrix has {n_feat} feature rows but "
                                    f"{feats.name} lists {n} features")
                if (n := len(_lines(bcs))) != n_bc:
                    problems.append(f"{mtx}: the matrix has {n_bc} barcode columns but "
                                    f"{bcs.name} lists {n} barcodes")
                if problems:
                    return problems
    except UserError as err:
        return err.problems
    return []


def _check_h5(path: Path) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            g = f["matrix"] if "matrix" in f else next(iter(f.values()))
            shape = tuple(int(x) for x in g["shape"][()])
            n_bc = g["barcodes"].shape[0]
            n_ptr = g["indptr"].shape[0]
            n_data = g["data"].shape[0]
            g["data"][max(n_data - 1, 0):]  # the last chunk is readable (not truncated)
    except (OSError, KeyError, ValueError, StopIteration) as err:
        what = "truncated or corrupt HDF5 file" if isinstance(err, OSError) else \
            "not a Cell Ranger feature-barcode matrix"
        raise UserError(f"{path}: {what} ({str(err).splitlines()[0] if str(err) else err!r})"
                        ) from None
    if n_bc != shape[1] or n_ptr != shape[1] + 1:
        raise UserError(f"{path}: the matrix has {shape[1]} barcode columns but {n_bc} "
                        f"barcodes (and {n_ptr - 1} column pointers)")


def find_outputs(folder: str | Path) -> list[Path]:
    """Every sample folder below ``folder`` holding a Cell Ranger ``filtered_feature_bc_matrix``
    (folder or ``.h5``), directly or in ``outs/``, in path order."""
    found: list[Path] = []
    for stem in sorted({p.parent for p in Path(folder).rglob(f"{_FILTERED}*")
                        if p.name in (_FILTERED, f"{_FILTERED}.h5")}):
        sample_dir = stem.parent if stem.name == "outs" else stem
        if sample_dir not in found:
            found.append(sample_dir)
    return found


def discover(folder: str | Path, pattern: str | re.Pattern | None = None
             ) -> tuple[dict, pd.DataFrame]:
    """Find the Cell Ranger outputs under ``folder`` for ``immunomon init``.

    A sample is any folder holding ``filtered_feature_bc_matrix`` (folder or ``.h5``),
    directly or in ``outs/``; its name is that folder's name (the one above ``outs/``).
    ``pattern`` (a regular expression with named groups ``patient``, ``visit`` and
    optionally ``sample``, ``batch``, ``disease``, ``arm``) is matched against the sample
    folder's name; without one each sample is its own patient at visit ``V1``.

    Returns
    -------
    panel
        ``study.yaml`` panel settings: ``{"assay": "citeseq", "features": {id: {marker,
        class}}}`` from the union of the samples' Antibody Capture features (isotype
        controls, found by name, get ``class: isotype``; the others ``type``).
    samples
        ``samples.csv`` rows: sample_id, file (relative to ``folder``), patient_id, visit,
        panel (``citeseq``), and batch / disease / arm where the pattern gives them, in
        folder order.

    Raises :class:`UserError` when no Cell Ranger output is found or a name does not match
    ``pattern``.
    """
    from immunomon.preprocess.adt import is_isotype

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    found = find_outputs(root)
    if not found:
        raise UserError(f"{root}: no Cell Ranger output ({_FILTERED} folder or .h5) found")
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    rows, problems, features = [], [], {}
    for sample_dir in found:
        name = sample_dir.name if sample_dir != root else root.resolve().name
        patient, visit, sid, extra = name, "V1", name, {}
        if regex is not None:
            m = regex.search(name)
            if m is None:
                problems.append(f"{sample_dir}: the folder name {name!r} does not match "
                                f"--pattern {pattern!r}")
                continue
            groups = m.groupdict()
            patient = groups.get("patient") or name
            visit = groups.get("visit") or "V1"
            sid = groups.get("sample") or (f"{patient}_{visit}" if "visit" in groups else name)
            extra = {k: groups[k] for k in ("batch", "disease", "arm") if groups.get(k)}
        filtered, _ = locate(sample_dir)
        for fid, marker in _antibody_features(filtered).items():
            features.setdefault(fid, {"marker": marker,
                                      "class": "isotype" if is_isotype(marker) else "type"})
        rel = sample_dir.relative_to(root).as_posix() if sample_dir != root else "."
        rows.append({"sample_id": sid, "file": rel, "patient_id": patient, "visit": visit,
                     "panel": "citeseq", **extra})
    if problems:
        raise UserError(problems)
    return {"assay": "citeseq", "features": features}, pd.DataFrame(rows)


def read_features(matrix: str | Path) -> pd.DataFrame:
    """The features of a matrix (mtx folder or ``.h5``) without reading its counts:
    ``gene_ids``, ``name``, ``feature_types``, one row per feature in file order."""
    matrix = Path(matrix)
    if matrix.is_file():
        import h5py

        try:
            with h5py.File(matrix, "r") as f:
                if "matrix" in f:
                    feats = f["matrix"]["features"]
                    cols = [[x.decode() for x in feats[k][()]]
                            for k in ("id", "name", "feature_type")]
                else:
                    g = next(iter(f.values()))
                    ids = [x.decode() for x in g["genes"][()]]
                    cols = [ids, [x.decode() for x in g["gene_names"][()]],
                            ["Gene Expression"] * len(ids)]
        except (OSError, KeyError, StopIteration) as err:
            raise UserError(f"{matrix}: truncated or corrupt HDF5 file ({err})") from None
        return pd.DataFrame(dict(zip(["gene_ids", "name", "feature_types"], cols)))
    feats = _file(matrix, "features.tsv", "genes.tsv")
    return _features_frame([line.split("\t") for line in _lines(feats)], feats).drop(
        columns="genome")


def _antibody_features(matrix: Path) -> dict[str, str]:
    """Antibody Capture feature id → name of a matrix (features only, counts not read)."""
    f = read_features(matrix)
    f = f[f["feature_types"] == "Antibody Capture"]
    return dict(zip(f["gene_ids"], f["name"]))
