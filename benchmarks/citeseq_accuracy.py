"""Cell-type accuracy on the ADTnorm 10x PBMC samples (expert labels), immunomon against a
CLR + k-means + marker-rule baseline, measured in the same run.

    python benchmarks/citeseq_accuracy.py [DATA_DIR]

DATA_DIR holds the four ``10X_pbmc_*`` sample folders (default: the copy in
tests/data/citeseq/adtnorm_10x_pbmc). Prints, per sample, the fraction of the cells whose
expert ``cell_type_l1`` is B, CD4 T, CD8 T, monocytes or NK that get the corresponding
label (DCs and ``undefined`` are left out: 9 antibodies cannot name them) and the Treg F1
(``cell_type_l2``) on samples with at least 50 Tregs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "citeseq" / "adtnorm_10x_pbmc"
MARKERS = ["CD3", "CD4", "CD8", "CD14", "CD19", "CD25", "CD45RA", "CD56", "CD127"]
#: expert l1 label -> immunomon populations counted as that label
L1 = {"B": ["B cells"], "CD4 T": ["CD4 T", "Treg", "CD4 Tconv"], "CD8 T": ["CD8 T"],
      "monocytes": ["Monocytes"], "NK": ["NK", "NK CD56bright", "NK CD56dim"]}


def write_study(data: Path, out: Path) -> Path:
    """A cross-sectional study folder over the sample folders of ``data`` (read in place)."""
    out.mkdir(parents=True, exist_ok=True)
    samples = sorted(p for p in data.iterdir() if (p / "filtered_feature_bc_matrix").is_dir())
    config = {"study_id": "ADTNORM-10X-PBMC", "visits": [{"name": "V1", "day": 1}],
              "panels": {"citeseq": {"assay": "citeseq", "features": {
                  m: {"marker": m, "class": "type"} for m in MARKERS}}}}
    (out / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    pd.DataFrame({"sample_id": [p.name for p in samples], "file": [str(p) for p in samples],
                  "patient_id": [p.name for p in samples], "visit": "V1",
                  "panel": "citeseq"}).to_csv(out / "samples.csv", index=False)
    return out


def score(cells: pd.DataFrame, data: Path) -> pd.DataFrame:
    """Per sample: l1 accuracy, Treg F1 and counts, from a ``cells`` table."""
    from sklearn.metrics import f1_score

    rows = []
    for sid, part in cells.groupby("sample_id", sort=True):
        truth = pd.read_csv(data / sid / "cell_labels.csv").set_index("barcode")
        t = truth.loc[part["barcode"]]
        l1 = t["cell_type_l1"].to_numpy()
        pred = part["population"].to_numpy()
        ok = np.zeros(len(part), bool)
        for name, pops in L1.items():
            ok |= (l1 == name) & np.isin(pred, pops)
        den = np.isin(l1, list(L1))
        treg = t["cell_type_l2"].to_numpy() == "Treg"
        rows.append({"sample_id": sid, "cells": len(part), "scored": int(den.sum()),
                     "accuracy": ok[den].mean(), "tregs": int(treg.sum()),
                     "treg_f1": f1_score(treg, pred == "Treg") if treg.sum() else np.nan,
                     "cells_kept_of_labelled": len(part) / len(truth)})
    return pd.DataFrame(rows)


def immunomon_cells(data: Path) -> pd.DataFrame:
    """``tables/cells`` of an immunomon run (default settings) on the study."""
    from immunomon.pipeline.run import run_study

    with tempfile.TemporaryDirectory() as tmp:
        study = write_study(data, Path(tmp) / "study")
        run = run_study(study, Path(tmp) / "run", quiet=True, report=False)
        return pd.read_parquet(run / "tables" / "cells.parquet")


def baseline_cells(data: Path, k: int = 20, seed: int = 0) -> pd.DataFrame:
    """CLR per sample, k-means on the pooled cells, clusters named by the same marker table
    (no per-cell refinement), every cell kept."""
    from sklearn.cluster import KMeans

    from immunomon.clustering.cells import annotate_cells, load_cell_table
    from immunomon.io.tenx import read_10x
    from immunomon.preprocess.adt import clr

    parts, sid, bc = [], [], []
    for d in sorted(p for p in data.iterdir() if (p / "filtered_feature_bc_matrix").is_dir()):
        a = read_10x(d)
        parts.append(clr(a[:, MARKERS].X))
        sid += [d.name] * a.n_obs
        bc += list(a.obs_names)
    X = pd.DataFrame(np.vstack(parts), columns=MARKERS)
    clusters = KMeans(k, n_init=10, random_state=seed).fit_predict(X) + 1
    table = load_cell_table()
    table.refine = []
    ann = annotate_cells(X, clusters, np.array(sid), table)
    return pd.DataFrame({"sample_id": sid, "barcode": bc, "population": ann.cell_labels})


def main(data: Path = DATA) -> None:
    ours, base = score(immunomon_cells(data), data), score(baseline_cells(data), data)
    table = ours.merge(base[["sample_id", "accuracy", "treg_f1"]], on="sample_id",
                       suffixes=("", "_baseline"))
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    ok = (table["accuracy"] >= 0.95).all() and \
        (table.loc[table["tregs"] >= 50, "treg_f1"] >= 0.8).all()
    print(f"\nmean accuracy immunomon {table['accuracy'].mean():.4f}, baseline "
          f"{table['accuracy_baseline'].mean():.4f}; targets (>= 0.95 per sample, Treg F1 >= "
          f"0.8 where >= 50 Tregs): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)
