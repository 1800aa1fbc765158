"""Reshape run tables for drawing (selection, pivots, display order) — no new statistics.

Both figure back-ends (:mod:`.interactive` for the HTML, :mod:`.figures` for PNG/PDF) draw
from these frames, so the two always show the same numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import leaves_list, linkage

from .rundata import RunData

#: False discovery rate at which a q-value is called significant in figures and text.
FDR = 0.05
#: Name of the pooled stratum in the stats tables.
POOLED = "all"


def sample_values(run: RunData, parameter: str | None = None) -> pd.DataFrame | None:
    """Values of ``parameters`` joined to analysed samples.

    Returns
    -------
    DataFrame or None
        Columns ``sample_id, patient_id, disease, visit, parameter, value`` (one row per analysed
        sample × parameter, only ``parameter`` when given; without ``parameter``, one measured
        in several panels is named ``"<parameter> [<panel>]"``); ``None`` when a table is
        missing.
    """
    params, samples = run.get("parameters"), run.analysed_samples
    if params is None or samples is None:
        return None
    if parameter is not None:
        params = params[params["parameter"] == parameter]
    cols = ["sample_id", "patient_id", "disease", "visit"] + ["panel"] * ("panel" in samples)
    out = params[["sample_id", "parameter", "value"]].astype({"sample_id": str})
    out = out.merge(samples[cols].astype(str), on="sample_id", how="inner")
    if "panel" in out.columns:
        if parameter is None:       # a parameter measured in several panels: one line each
            shared = out.groupby("parameter")["panel"].transform("nunique") > 1
            out.loc[shared, "parameter"] = out["parameter"] + " [" + out["panel"] + "]"
        out = out.drop(columns="panel")
    order = {v: i for i, v in enumerate(run.visits)}
    out = out.assign(_v=out["visit"].map(order)).sort_values(
        ["parameter", "disease", "patient_id", "_v"], kind="stable")
    return out.drop(columns="_v").reset_index(drop=True)


def in_visit_order(values, visits: list[str]) -> list[str]:
    """The distinct ``values`` (visit names) in study order; names not among ``visits`` last,
    alphabetically."""
    rank = {v: i for i, v in enumerate(visits)}
    return sorted(map(str, pd.unique(pd.Series(list(values), dtype=object))),
                  key=lambda v: (rank.get(v, len(rank)), v))


def paired_values(run: RunData, parameter: str, visits: tuple[str, str]) -> pd.DataFrame:
    """Per-patient values of ``parameter`` at two visits, patients having both.

    Returns a frame indexed by ``patient_id`` with columns ``disease`` and the two visits.
    """
    vals = sample_values(run, parameter)
    if vals is None or vals.empty:
        return pd.DataFrame(columns=["disease", *visits])
    wide = vals.pivot_table(index=["patient_id", "disease"], columns="visit", values="value",
                            aggfunc="first")
    if not set(visits) <= set(wide.columns):
        return pd.DataFrame(columns=["disease", *visits])
    wide = wide[list(visits)].dropna().reset_index().set_index("patient_id")
    return wide.sort_values(["disease"], kind="stable")


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Row order of ``matrix`` (n_rows, n_cols) by average-linkage clustering (NaN as 0)."""
    m = np.nan_to_num(np.asarray(matrix, dtype=float))
    if m.shape[0] < 3:
        return np.arange(m.shape[0])
    return leaves_list(linkage(m, method="average", metric="euclidean", optimal_ordering=True))


def fold_change_matrix(run: RunData) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Parameters × patient-visits matrix of ``fold_changes.log2fc``, rows and columns clustered.

    The order is the table's ``parameter_order`` / ``column_order`` when it has them (the
    clustering of :mod:`immunomon.stats`), else average-linkage clustering done here for display.

    Returns
    -------
    (matrix, columns) or None
        ``matrix``: DataFrame (n_parameters, n_patient_visits) of log2 fold changes;
        ``columns``: one row per matrix column with ``patient_id, disease, visit``.
    """
    fc = run.get("fold_changes")
    if fc is None:
        return None
    fc = fc.astype({"patient_id": str, "disease": str, "visit": str})
    wide = fc.pivot_table(index="parameter", columns=["visit", "disease", "patient_id"],
                          values="log2fc", aggfunc="first")
    wide = wide.loc[:, wide.notna().any(axis=0)]
    wide = wide.loc[wide.notna().any(axis=1)]
    if wide.empty:
        return None
    if {"parameter_order", "column_order"} <= set(fc.columns):   # the order stats computed
        rows = fc.groupby("parameter")["parameter_order"].min()
        cols = fc.groupby(["visit", "disease", "patient_id"])["column_order"].min()
        wide = wide.iloc[np.argsort(rows.reindex(wide.index).to_numpy(), kind="stable")]
        wide = wide.iloc[:, np.argsort(cols.reindex(wide.columns).to_numpy(), kind="stable")]
    else:
        wide = wide.iloc[cluster_order(wide.to_numpy())]
        wide = wide.iloc[:, cluster_order(wide.to_numpy().T)]
    cols = wide.columns.to_frame(index=False)[["patient_id", "disease", "visit"]]
    return wide, cols


def colour_limit(values: np.ndarray, floor: float = 1.0) -> float:
    """Symmetric colour limit: the 98th percentile of ``|values|``, at least ``floor``."""
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    return float(max(floor, np.percentile(v, 98))) if v.size else floor


def named_strata(stats: pd.DataFrame) -> pd.DataFrame:
    """A stats table without the rows of an unnamed disease stratum (a study without a
    ``disease`` column: that stratum is every patient, the pooled rows again)."""
    if "disease" not in stats.columns:
        return stats
    return stats[stats["disease"].fillna("").astype(str).str.strip() != ""]


def pooled_stats(stats: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Pooled (``disease == "all"``), post-baseline, estimable rows of a stats table.

    Adds ``x`` (the effect on an additive scale: log2 of a fold change or odds ratio, the
    effect itself otherwise), ``x_label`` (its name), ``mlog10p`` (−log10 p) and ``sig``
    (q < :data:`FDR`).
    """
    df = stats[(stats["disease"].astype(str) == POOLED) & (stats["visit"].astype(str) != baseline)]
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "ok"]
    eff = df[effect_column(df)].astype(float)
    scale = df["effect_scale"].astype(str) if "effect_scale" in df.columns else \
        pd.Series("log2 fold change" if effect_column(df) == "log2fc" else "effect", df.index)
    mult = scale.map(is_ratio_scale).astype(bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(mult, np.log2(eff.where(eff > 0)), eff)
    df = df.assign(x=x, x_label=np.where(mult, "log2 " + scale, scale))
    df = df[np.isfinite(df["p"].astype(float)) & np.isfinite(df["x"])]
    p = df["p"].astype(float).clip(lower=1e-300)
    q = df["q"].astype(float) if "q" in df.columns else pd.Series(np.nan, index=df.index)
    return df.assign(mlog10p=-np.log10(p), sig=(q < FDR).to_numpy())


def is_ratio_scale(scale: str) -> bool:
    """True for a multiplicative effect scale (``fold change``, ``odds ratio``), not a log one."""
    s = str(scale).lower()
    return ("fold" in s or "ratio" in s) and "log" not in s


def effect_column(df: pd.DataFrame) -> str:
    """Name of the effect column of a stats table (``effect``, or ``log2fc`` for DA)."""
    return "effect" if "effect" in df.columns else "log2fc"


def marker_matrix(clusters: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Cluster × marker medians of ``clusters`` (rows clustered) and the row labels."""
    keys = {"cluster", "label", "confidence", "n_cells", "panel", "label_rank"}
    markers = [c for c in clusters.columns
               if c not in keys and pd.api.types.is_numeric_dtype(clusters[c])]
    m = clusters.set_index("cluster")[markers].astype(float)
    order = cluster_order(_scaled(m).to_numpy())
    m = m.iloc[order]
    info = clusters.set_index("cluster").loc[m.index]
    labels = [f"{c} · {info.at[c, 'label']}" if "label" in info.columns else str(c)
              for c in m.index]
    return m, labels


def _scaled(m: pd.DataFrame) -> pd.DataFrame:
    lo, hi = m.min(axis=0), m.max(axis=0)
    return (m - lo) / (hi - lo).replace(0, 1)


def scaled_markers(m: pd.DataFrame) -> pd.DataFrame:
    """Each marker column rescaled to 0–1 over clusters (display scale of the heatmap)."""
    return _scaled(m)


def pc_labels(run: RunData) -> tuple[str, str]:
    """Axis titles of PC1 and PC2, with the explained variance when ``pca_variance`` has it."""
    var = run.get("pca_variance")
    out = []
    for pc in ("pc1", "pc2"):
        label = pc.upper()
        if var is not None and {"component", "explained_variance_ratio"} <= set(var.columns):
            r = var.loc[var["component"].astype(str).str.lower() == pc, "explained_variance_ratio"]
            if len(r):
                label += f" ({100 * float(r.iloc[0]):.1f} % of variance)"
        out.append(label)
    return out[0], out[1]


def label_points(g: pd.DataFrame, n: int) -> list:
    """Index of at most ``n`` significant points of a volcano panel worth a text label.

    Labels are written outwards (left of points with x < 0, right otherwise). Smallest p
    first; a point is skipped when a label on the same side lies within 6 % of the panel's
    y range, so labels do not pile up.
    """
    sig = g[g["sig"]].sort_values("p", kind="stable")
    dy = max(float(g["mlog10p"].max()) if len(g) else 0.0, 1e-9) * 0.06
    chosen: list[tuple] = []
    for idx, x, y in zip(sig.index, sig["x"], sig["mlog10p"]):
        if all((x < 0) != (cx < 0) or abs(y - cy) > dy for _, cx, cy in chosen):
            chosen.append((idx, x, y))
        if len(chosen) == n:
            break
    return [c[0] for c in chosen]
