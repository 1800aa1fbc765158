"""Batch diagnostics over tidy tables: how far acquisition batches differ, and whether a batch
effect can pass for a visit effect.

The input is one row per sample × marker × stage × quantile level (``batch_quantiles``, from
:mod:`immunomon.preprocess.batch`: 25 quantiles of each sample's QC-passed events per marker
on the transformed scale; ``stage`` ``transformed`` before and ``normalised`` after batch
normalisation). A batch's distribution of a marker is the equal-weight mixture of its samples'
quantile points, so every sample counts the same whatever its number of events.

Tables (each row with ``panel``; ``group`` is ``controls`` — bridge controls the
normalisation is fitted on, or every control without normalisation —, ``holdout`` — controls
held out of the fit — or ``samples`` — the trial's samples):

``batch_design``
    batch × visit: trial samples and controls acquired.
``batch_emd``
    marker × group × stage × pair of batches × scope: earth mover's (1-Wasserstein)
    distance between the two batches' distributions, transformed units. ``scope`` ``all
    events`` compares whole distributions; ``within clusters`` (bridge controls of a
    clustered normalisation) is the events-weighted mean over the normalisation's
    metaclusters of the distance within each, the batch effect left inside cell
    populations, which a difference of the controls' cluster proportions does not enter
    (CytoNorm's evaluation, per population).
``batch_cluster_quantiles``
    the per-metacluster quantiles of the controls behind the ``within clusters`` rows.
``batch_variance``
    marker × stage × factor (``batch``, ``visit``): share of the variance of the trial
    samples' per-sample medians explained by the factor alone (one-way ω², 0 when
    negative), with η², the F test's p and the levels.
``batch_pca``
    sample × stage: the first two principal components of the samples' standardised
    per-marker medians (controls included), with the explained shares.
``batch_densities``
    marker × group × stage × batch × 80 grid points: density of the batch's distribution
    (Gaussian kernel over the quantile points).
``batch_extrapolation``
    sample × normalised marker: share of its QC-passed events outside the range of its
    batch's control events (the spline extrapolates there).
``batch_warnings``
    one row per warning: ``confounded`` (visits unevenly spread over batches: χ² test of
    visit × batch p < 0.05 and Cramér's V ≥ 0.3) and ``batch_over_visit`` (markers whose
    batch F test has p < 0.01 and whose batch share exceeds the visit share), per stage.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats import wasserstein_distance

__all__ = ["batch_diagnostics", "emd_within_clusters", "omega_squared", "cramers_v",
           "BATCH_TABLES"]

BATCH_TABLES = ("normalisation", "batch_quantiles", "batch_cluster_quantiles", "batch_design",
                "batch_emd", "batch_variance", "batch_pca", "batch_densities",
                "batch_extrapolation", "batch_warnings")
SCOPES = ("all events", "within clusters")
STAGES = ("transformed", "normalised")
#: Thresholds of the warnings (see the module docstring).
CONFOUND_P, CONFOUND_V, BATCH_P = 0.05, 0.3, 0.01
GRID_POINTS = 80
WARNING_COLUMNS = ["panel", "kind", "stage", "value", "message"]


def omega_squared(y: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """One-way ANOVA of ``y`` by ``groups``: ω² (≥ 0), η², F, p and the number of levels;
    NaN when there are fewer than 2 levels or no residual degrees of freedom."""
    y, groups = np.asarray(y, float), np.asarray(groups)
    ok = np.isfinite(y)
    y, groups = y[ok], groups[ok]
    levels = pd.unique(groups)
    k, n = len(levels), len(y)
    if k < 2 or n <= k:
        return {"omega2": np.nan, "eta2": np.nan, "F": np.nan, "p": np.nan, "levels": k}
    means = pd.Series(y).groupby(groups).transform("mean").to_numpy()
    ss_total = float(((y - y.mean()) ** 2).sum())
    ss_within = float(((y - means) ** 2).sum())
    ss_between = ss_total - ss_within
    ms_within = ss_within / (n - k)
    if ss_total <= 0:
        return {"omega2": 0.0, "eta2": 0.0, "F": np.nan, "p": np.nan, "levels": k}
    f = (ss_between / (k - 1)) / ms_within if ms_within > 0 else np.inf
    return {"omega2": max(0.0, (ss_between - (k - 1) * ms_within) / (ss_total + ms_within)),
            "eta2": ss_between / ss_total, "F": f, "p": float(stats.f.sf(f, k - 1, n - k)),
            "levels": k}


def cramers_v(a, b) -> tuple[float, float]:
    """Cramér's V and the χ² test p of the association of two categorical arrays."""
    table = pd.crosstab(np.asarray(a), np.asarray(b))
    if min(table.shape) < 2:
        return np.nan, np.nan
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    return float(np.sqrt(chi2 / (table.to_numpy().sum() * (min(table.shape) - 1)))), float(p)


def _groups(samples: pd.DataFrame) -> pd.Series:
    """``controls`` / ``holdout`` / ``samples`` of each sample (``batch_role`` column if
    given, else from ``control``)."""
    if "batch_role" in samples:
        return samples["batch_role"].astype(str)
    control = samples.get("control", pd.Series(False, index=samples.index))
    return pd.Series(np.where(control.fillna(False).astype(bool), "controls", "samples"),
                     index=samples.index)


def _by_cluster(q: pd.DataFrame, ids, scope: str) -> dict:
    """One batch's values for :func:`emd_within_clusters`: cluster → (the mixture of its
    samples' quantile points, events) — for ``all events`` a single cluster of every point."""
    g = q[q["sample_id"].isin(ids)]
    if scope == SCOPES[0]:
        return {0: (g["value"].to_numpy(float), 1)}
    return {c: (x["value"].to_numpy(float), x.drop_duplicates("sample_id")["events"].sum())
            for c, x in g.groupby("cluster")}


def _emd_rows(q: pd.DataFrame, meta: pd.DataFrame, batches: list[str],
              scope: str = SCOPES[0]) -> list[dict]:
    """Rows of ``batch_emd`` of one ``scope`` per marker, stage, group and pair of batches;
    a batch's distribution is the mixture of its samples' quantile points (per cluster for
    ``within clusters``, with ``q`` the cluster quantiles)."""
    rows = []
    for (marker, stage), g in q.groupby(["marker", "stage"], sort=True):
        for group, gm in meta.groupby("group", sort=True):
            ids = {b: gm.loc[gm["batch"] == b, "sample_id"].tolist() for b in batches}
            have = [b for b in batches if ids[b]]
            values = {b: _by_cluster(g, ids[b], scope) for b in have}
            for i, a in enumerate(have):
                for b in have[i + 1:]:
                    rows.append({"marker": marker, "group": group, "stage": stage,
                                 "batch_a": a, "batch_b": b,
                                 "emd": emd_within_clusters(values[a], values[b]),
                                 "samples_a": len(ids[a]), "samples_b": len(ids[b]),
                                 "scope": scope})
    return rows


def emd_within_clusters(a: Mapping, b: Mapping) -> float:
    """Earth mover's distance between two batches within clusters: the mean over the
    clusters present in both of the EMD of their values in the cluster, weighted by the
    two batches' events in it.

    Parameters
    ----------
    a, b
        Cluster → (values ``(n,)`` (events, or quantile points standing for them), number
        of events the cluster holds in the batch).

    Returns
    -------
    The distance (NaN when no cluster has values in both).
    """
    num = den = 0.0
    for c in sorted(set(a) & set(b)):
        (u, na), (v, nb) = a[c], b[c]
        u, v = np.asarray(u, float), np.asarray(v, float)
        u, v = u[np.isfinite(u)], v[np.isfinite(v)]
        if len(u) and len(v):
            num += (na + nb) * wasserstein_distance(u, v)
            den += na + nb
    return num / den if den else float("nan")


def _medians(q: pd.DataFrame) -> pd.DataFrame:
    """sample × (stage, marker) medians; the normalised stage falls back to the transformed
    value of markers that are not normalised."""
    med = q[np.isclose(q["p"], 0.5)].pivot_table(index="sample_id", columns=["stage", "marker"],
                                                  values="value", aggfunc="first")
    out = {}
    for stage in STAGES:
        if stage not in med.columns.get_level_values(0):
            continue
        frame = med["transformed"].copy()
        if stage == "normalised":
            frame.update(med["normalised"])
        out[stage] = frame
    return pd.concat(out, axis=1, names=["stage", "marker"])


def _variance_rows(med: pd.DataFrame, meta: pd.DataFrame) -> list[dict]:
    trial = meta[meta["group"] == "samples"].set_index("sample_id")
    rows = []
    for (stage, marker) in med.columns:
        y = med[(stage, marker)].reindex(trial.index).to_numpy(float)
        for factor in ("batch", "visit"):
            r = omega_squared(y, trial[factor].astype(str).to_numpy())
            rows.append({"marker": marker, "stage": stage, "factor": factor,
                         "share": r["omega2"], "eta2": r["eta2"], "F": r["F"], "p": r["p"],
                         "levels": r["levels"], "n": int(np.isfinite(y).sum())})
    return rows


def _pca_rows(med: pd.DataFrame, meta: pd.DataFrame) -> list[pd.DataFrame]:
    out = []
    info = meta.set_index("sample_id")
    for stage in med.columns.get_level_values(0).unique():
        X = med[stage].dropna(axis=1, how="any")
        X = X.loc[:, X.std(ddof=1) > 0]
        if X.shape[0] < 3 or X.shape[1] < 2:
            continue
        Z = ((X - X.mean()) / X.std(ddof=1)).to_numpy()
        u, s, vt = np.linalg.svd(Z, full_matrices=False)
        sign = np.sign(vt[:2].sum(axis=1))  # a stable orientation
        sign[sign == 0] = 1
        pcs = u[:, :2] * s[:2] * sign
        share = s ** 2 / (s ** 2).sum()
        frame = info.loc[X.index, ["batch", "visit", "group"]].reset_index()
        frame.insert(0, "stage", stage)
        frame["pc1"], frame["pc2"] = pcs[:, 0], pcs[:, 1] if pcs.shape[1] > 1 else np.nan
        frame["pc1_share"], frame["pc2_share"] = share[0], share[1] if len(share) > 1 else np.nan
        out.append(frame)
    return out


def _density_rows(q: pd.DataFrame, meta: pd.DataFrame, batches: list[str]) -> list[pd.DataFrame]:
    out = []
    for marker, g in q.groupby("marker", sort=True):
        v = g["value"].to_numpy(float)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        lo, hi = np.quantile(v, [0.005, 0.995])
        pad = 0.1 * (hi - lo) or 0.5
        grid = np.linspace(lo - pad, hi + pad, GRID_POINTS)
        for (stage, group), gs in g.merge(meta[["sample_id", "batch", "group"]],
                                          on="sample_id").groupby(["stage", "group"]):
            for b, gb in gs.groupby("batch", sort=True):
                x = gb["value"].to_numpy(float)
                x = x[np.isfinite(x)]
                if len(x) < 2:
                    continue
                iqr = np.subtract(*np.quantile(x, [0.75, 0.25]))
                bw = 0.9 * min(x.std(), iqr / 1.34 if iqr > 0 else x.std()) * len(x) ** -0.2
                bw = max(bw, (hi - lo) / 200 or 1e-3)
                dens = stats.norm.pdf((grid[:, None] - x[None, :]) / bw).mean(axis=1) / bw
                out.append(pd.DataFrame({"marker": marker, "group": group, "stage": stage,
                                         "batch": b, "x": grid, "density": dens}))
    return out


def _warnings(panel: str, meta: pd.DataFrame, variance: pd.DataFrame) -> list[dict]:
    rows = []
    trial = meta[meta["group"] == "samples"]
    if trial["visit"].nunique() > 1 and trial["batch"].nunique() > 1:
        v, p = cramers_v(trial["visit"].astype(str), trial["batch"].astype(str))
        if np.isfinite(v) and p < CONFOUND_P and v >= CONFOUND_V:
            rows.append({"panel": panel, "kind": "confounded", "stage": "", "value": v,
                         "message": f"Visits are confounded with batches in panel '{panel}': "
                                    f"Cramér's V = {v:.2f} (χ² test p = {p:.2g}); a batch "
                                    f"effect would look like a change between visits."})
    normalised = (variance["stage"] == "normalised").any()
    for stage, g in variance.groupby("stage", sort=False):
        wide = g.pivot_table(index="marker", columns="factor", values=["share", "p"])
        if ("share", "visit") not in wide or ("share", "batch") not in wide:
            continue
        bad = wide[(wide[("p", "batch")] < BATCH_P)
                   & (wide[("share", "batch")] > wide[("share", "visit")].fillna(0))]
        if len(bad):
            what = ("not normalised" if not normalised else "before normalisation"
                    if stage == "transformed" else "after normalisation")
            listed = ", ".join(f"{m} (batch {100 * r[('share', 'batch')]:.0f} %, visit "
                               f"{100 * np.nan_to_num(r[('share', 'visit')]):.0f} %)"
                               for m, r in bad.sort_values(("share", "batch"),
                                                           ascending=False).iterrows())
            rows.append({"panel": panel, "kind": "batch_over_visit", "stage": stage,
                         "value": float(len(bad)),
                         "message": f"Batch explains more of the variance of the per-sample "
                                    f"medians than visit for {len(bad)} of {len(wide)} markers "
                                    f"of panel '{panel}' ({what}): {listed}."})
    return rows


def batch_diagnostics(samples: pd.DataFrame, quantiles: pd.DataFrame,
                      extrapolated: pd.DataFrame | None = None,
                      normalisation: pd.DataFrame | None = None,
                      cluster_quantiles: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every batch table the inputs allow (see the module docstring).

    Parameters
    ----------
    samples
        Analysed samples: sample_id, panel, batch, visit and ``control`` (or
        ``batch_role``: ``controls``/``holdout``/``samples``).
    quantiles
        sample_id, marker, stage, p, value (the per-sample summaries).
    extrapolated
        sample_id, marker, share (normalised samples only), or None.
    normalisation
        The fitted splines (``CytoNorm.to_table`` rows with ``panel``), or None.
    cluster_quantiles
        sample_id, cluster, events, marker, stage, p, value (controls of a clustered
        normalisation), or None.

    Returns
    -------
    dict name → table (tables without rows are left out, but for ``batch_warnings``); empty
    when no panel has two batches or more.
    """
    s = samples.copy()
    s["batch"] = s.get("batch", pd.Series("", index=s.index)).fillna("").astype(str).str.strip()
    s["group"] = _groups(s)
    s["panel"] = s["panel"].astype(str) if "panel" in s else ""
    out: dict[str, list] = {name: [] for name in BATCH_TABLES}
    for panel, meta in s.groupby("panel", sort=True):
        meta = meta[meta["batch"] != ""]
        batches = sorted(meta["batch"].unique())
        if len(batches) < 2:
            continue
        meta = meta[["sample_id", "batch", "visit", "group"]].reset_index(drop=True)
        q = quantiles[quantiles["sample_id"].isin(set(meta["sample_id"]))]
        design = (meta.assign(samples=meta["group"] == "samples",
                              controls=meta["group"] != "samples")
                  .groupby(["batch", "visit"], sort=True)[["samples", "controls"]].sum()
                  .reset_index())
        out["batch_design"].append(design.assign(panel=panel))
        out["batch_quantiles"].append(q.merge(meta[["sample_id", "batch"]], on="sample_id")
                                      .assign(panel=panel))
        out["batch_emd"].append(pd.DataFrame(_emd_rows(q, meta, batches)).assign(panel=panel))
        if cluster_quantiles is not None and len(cluster_quantiles):
            cq = cluster_quantiles[cluster_quantiles["sample_id"].isin(set(meta["sample_id"]))]
            cmeta = meta[meta["sample_id"].isin(set(cq["sample_id"]))]
            out["batch_emd"].append(pd.DataFrame(_emd_rows(cq, cmeta, batches, SCOPES[1]))
                                    .assign(panel=panel))
            out["batch_cluster_quantiles"].append(
                cq.merge(meta[["sample_id", "batch"]], on="sample_id").assign(panel=panel))
        med = _medians(q)
        variance = pd.DataFrame(_variance_rows(med, meta)).assign(panel=panel)
        out["batch_variance"].append(variance)
        out["batch_pca"] += [f.assign(panel=panel) for f in _pca_rows(med, meta)]
        out["batch_densities"] += [f.assign(panel=panel) for f in _density_rows(q, meta, batches)]
        out["batch_warnings"].append(pd.DataFrame(_warnings(panel, meta, variance)))
        if extrapolated is not None and len(extrapolated):
            e = extrapolated.merge(meta[["sample_id", "batch"]], on="sample_id")
            out["batch_extrapolation"].append(e.assign(panel=panel))
    if not out["batch_design"]:
        return {}
    if normalisation is not None and len(normalisation):
        out["normalisation"].append(normalisation)
    tables = {"batch_warnings": pd.DataFrame(columns=WARNING_COLUMNS)}  # none is news too
    for name, frames in out.items():
        frames = [f for f in frames if len(f)]
        if frames:
            t = pd.concat(frames, ignore_index=True)
            tables[name] = t[["panel"] + [c for c in t.columns if c != "panel"]]
    return tables
