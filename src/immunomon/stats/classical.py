"""Classical tests on per-patient values of one parameter (analysis scale: log, logit or a
transformed difference), each returning one row fragment of ``stats_supervised``.

* ``paired_t`` — one-sample t test of the within-patient changes (complete pairs), t CI
  on n − 1 df.
* ``wilcoxon`` — Wilcoxon signed-rank test of the same changes (exact for n <= 50 without
  ties), Hodges–Lehmann estimate and its signed-rank CI (none when n is too small for the
  level: with 4 pairs the smallest two-sided p is 0.125).
* ``welch_t`` — two-group t test with unequal variances (Welch–Satterthwaite df) of
  changes (arm difference) or values (group difference).
* ``rank_sum`` — Wilcoxon rank-sum (Mann–Whitney) test, Hodges–Lehmann shift and its CI
  (exact U distribution for small groups without ties, else the normal approximation).

Estimates are on the analysis scale; :mod:`.supervised` turns them into fold changes or
odds ratios.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import stats

from ._common import DESCRIPTIVE, NOT_ESTIMABLE, OK

#: ``df_method`` of each classical test.
DF_METHOD = {"paired_t": "n-1", "wilcoxon": "", "welch_t": "Welch", "rank_sum": ""}


def _row(**kw) -> dict:
    out = dict(estimate=np.nan, ci_low=np.nan, ci_high=np.nan, df=np.nan, p=np.nan,
               status=OK, reason="")
    out.update(kw)
    return out


@lru_cache(maxsize=None)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T <= t), t = 0..n(n+1)/2, of the Wilcoxon signed-rank statistic (no ties)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / 2.0 ** n


def signed_rank_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p value (zeros dropped; exact for n <= 50 without ties,
    else normal approximation with tie correction), as ``scipy.stats.wilcoxon``."""
    d = np.asarray(d, float)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 1.0
    r = stats.rankdata(np.abs(d))
    t_plus = float(r[d > 0].sum())
    ties = np.unique(r, return_counts=True)[1]
    if n <= 50 and np.all(ties == 1):
        cdf = _signed_rank_cdf(n)
        t = int(round(min(t_plus, n * (n + 1) / 2 - t_plus)))
        return float(min(1.0, 2 * cdf[t]))
    mu = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - (ties ** 3 - ties).sum() / 48
    return float(2 * stats.norm.sf(abs(t_plus - mu) / np.sqrt(var)))


def _order_k(cdf: np.ndarray | None, mu: float, sd: float, a: float) -> int:
    """Largest k with P(stat <= k - 1) <= a (exact cdf) or its normal approximation."""
    if cdf is not None:
        return int(np.searchsorted(cdf, a, side="right"))
    return int(np.floor(mu - stats.norm.ppf(1 - a) * sd))


def hodges_lehmann(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Hodges–Lehmann estimate of the pseudo-median of ``d`` and its signed-rank CI
    (exact for n <= 50, normal approximation above; NaN bounds when n is too small for
    the level)."""
    d = np.sort(np.asarray(d, float))
    n = d.size
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    est = float(np.median(walsh))
    m = walsh.size
    k = _order_k(_signed_rank_cdf(n) if n <= 50 else None, n * (n + 1) / 4,
                 np.sqrt(n * (n + 1) * (2 * n + 1) / 24), (1 - level) / 2)
    if k < 1:
        return est, np.nan, np.nan
    return est, float(walsh[k - 1]), float(walsh[m - k])


def paired(d: np.ndarray, method: str, testable: bool, why: str) -> dict:
    """``paired_t`` or ``wilcoxon`` on within-patient changes ``d``; ``testable`` False (below
    ``min_patients``) keeps the estimate and CI as a descriptive row with reason ``why``."""
    n = int(d.size)
    if n == 0:
        return _row(status=NOT_ESTIMABLE, reason="no complete pair (baseline and visit)")
    if method == "paired_t":
        mean = float(d.mean())
        if n < 2:
            return _row(estimate=mean, status=NOT_ESTIMABLE, reason="1 complete pair: no variance")
        se = float(d.std(ddof=1) / np.sqrt(n))
        if se == 0:
            return _row(estimate=mean, status=NOT_ESTIMABLE, reason="changes have no variation")
        tq = stats.t.ppf(0.975, n - 1)
        row = _row(estimate=mean, ci_low=mean - tq * se, ci_high=mean + tq * se, df=n - 1.0)
        p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    else:
        est, lo, hi = hodges_lehmann(d)
        row = _row(estimate=est, ci_low=lo, ci_high=hi)
        if np.all(d == 0):
            return {**row, "status": NOT_ESTIMABLE, "reason": "changes are all zero"}
        if not np.isfinite(lo):
            row["reason"] = f"n = {n} too small for a 95 % signed-rank interval"
        p = signed_rank_p(d)
    if not testable:
        return {**row, "status": DESCRIPTIVE, "reason": "; ".join(x for x in (why, row["reason"]) if x)}
    return {**row, "p": p}


@lru_cache(maxsize=None)
def _rank_sum_cdf(m: int, n: int) -> np.ndarray:
    """P(U <= u), u = 0..mn, of the Mann–Whitney U statistic of groups of m and n (no ties)."""
    # f[j][u]: ways for j of the first i+j items to be in group 1 with U = u (DP over items)
    f = np.zeros((m + 1, m * n + 1))
    f[0, 0] = 1.0
    for item in range(1, m + n + 1):
        g = np.zeros_like(f)
        for j in range(0, min(item, m) + 1):
            k = item - j  # group-2 items so far
            if k < 0 or k > n:
                continue
            if k >= 1:          # the item is in group 2: group-1 items so far lie below it
                g[j] += f[j]
            if j >= 1:          # in group 1: U gains the group-2 items below it
                g[j, k:] += f[j - 1, : m * n + 1 - k]
        f = g
    counts = f[m]
    return np.cumsum(counts) / counts.sum()


def two_group(x: np.ndarray, y: np.ndarray, method: str, testable: bool, why: str) -> dict:
    """``welch_t`` or ``rank_sum``: group ``x`` minus reference group ``y`` (estimate =
    difference of means or Hodges–Lehmann shift)."""
    nx, ny = int(x.size), int(y.size)
    if min(nx, ny) == 0:
        return _row(status=NOT_ESTIMABLE, reason="a group has no patient")
    if method == "welch_t":
        est = float(x.mean() - y.mean())
        if min(nx, ny) < 2:
            return _row(estimate=est, status=NOT_ESTIMABLE,
                        reason="a group has 1 patient: no variance")
        vx, vy = x.var(ddof=1) / nx, y.var(ddof=1) / ny
        se = float(np.sqrt(vx + vy))
        if se == 0:
            return _row(estimate=est, status=NOT_ESTIMABLE, reason="no variation")
        df = float((vx + vy) ** 2 / (vx ** 2 / (nx - 1) + vy ** 2 / (ny - 1)))
        tq = stats.t.ppf(0.975, df)
        row = _row(estimate=est, ci_low=est - tq * se, ci_high=est + tq * se, df=df)
        p = float(2 * stats.t.sf(abs(est / se), df))
    else:
        diff = np.sort(np.subtract.outer(x, y).ravel())
        est = float(np.median(diff))
        exact = nx + ny <= 60 and np.unique(np.r_[x, y]).size == nx + ny
        k = _order_k(_rank_sum_cdf(nx, ny) if exact else None, nx * ny / 2,
                     np.sqrt(nx * ny * (nx + ny + 1) / 12), 0.025)
        row = _row(estimate=est)
        if k >= 1:
            row.update(ci_low=float(diff[k - 1]), ci_high=float(diff[diff.size - k]))
        else:
            row["reason"] = f"groups of {nx} and {ny} too small for a 95 % rank-sum interval"
        p = float(stats.mannwhitneyu(x, y, alternative="two-sided",
                                     method="exact" if exact else "asymptotic").pvalue)
    if not testable:
        return {**row, "status": DESCRIPTIVE, "reason": "; ".join(x for x in (why, row["reason"]) if x)}
    return {**row, "p": p}
