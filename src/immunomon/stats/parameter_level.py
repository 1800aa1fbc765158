"""Parameter level: per-patient log2 fold changes, their clustering order, PCA of samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import leaves_list, linkage

FOLD_COLUMNS = ["patient_id", "disease", "visit", "parameter", "log2fc", "parameter_order",
                "column_order"]
PCA_COLUMNS = ["sample_id", "patient_id", "pc1", "pc2", "pc3", "visit", "disease"]


def _order(matrix: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage clustering (Euclidean, optimal leaf ordering) of the
    rows; missing values count as 0 (no change)."""
    if matrix.shape[0] < 3:
        return np.arange(matrix.shape[0])
    m = np.nan_to_num(matrix, nan=0.0)
    return leaves_list(linkage(m, method="average", metric="euclidean", optimal_ordering=True))


def fold_changes(obs: pd.DataFrame, visits: list[str]) -> pd.DataFrame:
    """``fold_changes``: log2(value at visit / value at baseline) per patient, visit and
    parameter (complete pairs only), with ``parameter_order`` (rank of the parameter in the
    hierarchical clustering of parameters over patient × visit columns) and ``column_order``
    (rank of the patient × visit column in the clustering of columns)."""
    base = obs[obs["visit"] == visits[0]].set_index(["parameter", "patient_id"])["log"]
    fc = obs[obs["visit"].isin(visits[1:])].copy()
    key = pd.MultiIndex.from_frame(fc[["parameter", "patient_id"]])
    fc["log2fc"] = (fc["log"].to_numpy() - base.reindex(key).to_numpy()) / np.log(2)
    fc = fc.dropna(subset=["log2fc"])
    if fc.empty:
        return pd.DataFrame(columns=FOLD_COLUMNS)
    rank = {v: i for i, v in enumerate(visits)}
    fc["col"] = fc["patient_id"] + "|" + fc["visit"]
    wide = fc.pivot_table(index="parameter", columns="col", values="log2fc", aggfunc="mean")
    cols = sorted(wide.columns, key=lambda c: (rank[c.split("|")[1]], c))
    wide = wide[cols]
    prow = dict(zip(wide.index[_order(wide.to_numpy())], range(len(wide))))
    pcol = dict(zip(np.asarray(cols)[_order(wide.to_numpy().T)], range(len(cols))))
    fc["parameter_order"] = fc["parameter"].map(prow)
    fc["column_order"] = fc["col"].map(pcol)
    fc["_v"] = fc["visit"].map(rank)
    fc = fc.sort_values(["parameter", "_v", "patient_id"], kind="mergesort")
    return fc[FOLD_COLUMNS].reset_index(drop=True)


def pca(obs_samples: pd.DataFrame, max_missing: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PCA of samples on standardised model-scale (log or logit) parameter values.

    ``obs_samples``: one row per sample × parameter with sample_id, patient_id, visit,
    disease, parameter, model. Parameters missing in more than ``max_missing`` of the samples
    are left out; other gaps are filled with the parameter median. Signs are fixed so that
    each component's largest loading is positive (deterministic output).

    Returns the ``pca`` table and ``pca_variance`` (component, explained_variance_ratio,
    n_parameters).
    """
    wide = obs_samples.pivot_table(index="sample_id", columns="parameter", values="model",
                                   aggfunc="mean").sort_index()
    wide = wide.loc[:, wide.isna().mean() <= max_missing]
    meta = (obs_samples.drop_duplicates("sample_id").set_index("sample_id")
            .reindex(wide.index)[["patient_id", "visit", "disease"]])
    if wide.shape[0] < 2 or wide.shape[1] < 2:
        return pd.DataFrame(columns=PCA_COLUMNS), pd.DataFrame(
            columns=["component", "explained_variance_ratio", "n_parameters"])
    x = wide.fillna(wide.median()).to_numpy()
    sd = x.std(axis=0, ddof=1)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(3, len(s))
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    scores = u[:, :k] * s[:k] * signs
    out = pd.DataFrame({"sample_id": wide.index, "patient_id": meta["patient_id"].to_numpy()})
    for i in range(3):
        out[f"pc{i + 1}"] = scores[:, i] if i < k else 0.0
    out["visit"], out["disease"] = meta["visit"].to_numpy(), meta["disease"].to_numpy()
    var = s ** 2 / (s ** 2).sum()
    pv = pd.DataFrame({"component": [f"pc{i + 1}" for i in range(k)],
                       "explained_variance_ratio": var[:k], "n_parameters": wide.shape[1]})
    return out[PCA_COLUMNS], pv
