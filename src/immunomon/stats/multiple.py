"""Benjamini–Hochberg q values within families (docs/architecture.md: one family per table ×
method × visit × disease stratum)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def bh(p) -> np.ndarray:
    """Benjamini–Hochberg adjusted p values (q) of a 1-D array; NaN stays NaN and is not
    counted in the number of tests."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="mergesort")
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def add_q(df: pd.DataFrame, family: list[str], p: str = "p", q: str = "q") -> pd.DataFrame:
    """Add column ``q``: BH over the rows of each ``family`` group (rows whose p is NaN,
    i.e. not tested, are neither adjusted nor counted)."""
    df = df.copy()
    df[q] = np.nan
    if df.empty:
        return df
    fam = [c for c in family if c in df.columns]
    group = df.groupby(fam, sort=False, dropna=False).ngroup().to_numpy()
    pv = df[p].to_numpy(dtype=float)
    out = np.full(len(df), np.nan)
    order = np.argsort(group, kind="mergesort")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for idx in np.split(order, bounds):
        out[idx] = bh(pv[idx])
    df[q] = out
    return df
