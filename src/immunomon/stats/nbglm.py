"""Negative-binomial GLMs the edgeR way (glmFit + glmLRT), vectorised over clusters.

A port of the parts of edgeR (Robinson, McCarthy & Smyth) that diffcyt's ``diffcyt-DA-edgeR``
uses, written for cluster-count tables (tens of clusters, hundreds of samples):

* :func:`fit_nb` — log-link NB GLMs with offsets log(library size), one per row of the count
  matrix, all fitted at once by IRLS with step halving (the MLE edgeR's Levenberg fit finds).
* :func:`common_dispersion` — Cox–Reid adjusted profile likelihood summed over rows, maximised
  over dispersion^(1/4) in (0, 4) (``estimateGLMCommonDisp``, rows with total < 5 left out).
* :func:`tagwise_dispersion` — weighted likelihood empirical Bayes towards the common value
  (``estimateGLMTagwiseDisp``, trend off): APL on the grid common × 2^(-6..6, 11 points),
  prior weight ``prior_df / (n - p)`` on the mean APL, maximum of a cubic spline.
* :func:`lrt` — likelihood-ratio test of one coefficient against the fit without it,
  chi-squared on 1 df (``glmLRT``); log2 fold changes from a fit with edgeR's prior count
  0.125 (``addPriorCount``).
* :func:`ql_ftest` — quasi-likelihood F test (``glmQLFit`` + ``glmQLFTest``) with edgeR's
  default abundance trend of the QL prior (:func:`fit_f_dist_trend` over
  :func:`ave_log_cpm`), the better calibrated choice (the LRT treats the estimated
  dispersions as known: see benchmarks/bench_stats_calibration.py).

inmoose's ``edgepy`` implements the same algorithms but fits rows one by one in Python
(~10 s per 20-cluster × 300-sample table); this module gives the same p values (tested
against R's edgeR 3.40 on ``tests/data/stats/counts.csv``) in a fraction of a second.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse, stats
from scipy.interpolate import CubicSpline
from scipy.optimize import minimize_scalar
from scipy.special import gammaln


def nb_deviance(y: np.ndarray, mu: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit NB deviances summed over the last axis; ``phi`` broadcasts against ``y``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(y > 0, y * np.log(y / mu), 0.0)
        t2 = (y + 1 / phi) * np.log((1 + phi * y) / (1 + phi * mu))
    return 2 * (t1 - t2).sum(axis=-1)


def nb_loglik(y, mu, phi) -> np.ndarray:
    """NB log likelihood summed over the last axis."""
    r = 1 / phi
    return (gammaln(y + r) - gammaln(r) - gammaln(y + 1) + y * np.log(phi * mu)
            - (y + r) * np.log1p(phi * mu)).sum(axis=-1)


def fit_nb(y: np.ndarray, X: np.ndarray, offset: np.ndarray, phi: np.ndarray,
           maxit: int = 50, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit NB GLMs ``log mu = X b + offset`` to every row of ``y``.

    Parameters
    ----------
    y
        Counts, shape (m, n) (m rows = clusters, or clusters × dispersion grid).
    X
        Design, shape (n, p), full column rank.
    offset
        Shape (n,) or (m, n), natural log scale.
    phi
        Dispersions, shape (m,).

    Returns
    -------
    beta (m, p), mu (m, n), deviance (m,).
    """
    y = np.asarray(y, float)
    m, n = y.shape
    off = np.broadcast_to(offset, (m, n))
    ph = np.asarray(phi, float)[:, None]
    outer = _outer(X)
    mu = y + 0.1
    w = mu / (1 + ph * mu)
    z = np.log(mu) - off + (y - mu) / mu
    beta = _wls(X, w, z, outer)
    old_beta = beta.copy()
    dev = np.full(m, np.inf)
    for _ in range(maxit):
        eta = np.clip(beta @ X.T + off, -50, 50)
        mu = np.exp(eta)
        new_dev = nb_deviance(y, mu, ph)
        bad = new_dev > dev + 1e-12 * (np.abs(dev) + 1)
        halve = 0
        while bad.any() and halve < 20:  # step halving for rows whose deviance rose
            beta[bad] = (beta[bad] + old_beta[bad]) / 2
            mu[bad] = np.exp(np.clip(beta[bad] @ X.T + off[bad], -50, 50))
            new_dev[bad] = nb_deviance(y[bad], mu[bad], ph[bad])
            bad = new_dev > dev + 1e-12 * (np.abs(dev) + 1)
            halve += 1
        done = np.abs(dev - new_dev) < tol * (np.abs(new_dev) + 0.1)
        dev = new_dev
        if done.all():
            break
        w = mu / (1 + ph * mu)
        z = (np.log(mu) - off) + (y - mu) / mu  # log(mu): current after any halving
        old_beta = beta.copy()
        beta = _wls(X, w, z, outer)
    mu = np.exp(np.clip(beta @ X.T + off, -50, 50))
    return beta, mu, nb_deviance(y, mu, ph)


_OUTER_CACHE: dict = {}


def _outer(X: np.ndarray) -> sparse.csc_matrix:
    """Per-sample outer products x x' as a sparse (n, p*p) matrix (designs of dummies are
    mostly zeros)."""
    key = (X.shape, X.tobytes())
    if key not in _OUTER_CACHE:
        if len(_OUTER_CACHE) > 8:
            _OUTER_CACHE.clear()
        n, p = X.shape
        _OUTER_CACHE[key] = sparse.csc_matrix((X[:, :, None] * X[:, None, :]).reshape(n, p * p))
    return _OUTER_CACHE[key]


def _xtwx(X: np.ndarray, w: np.ndarray, outer=None) -> np.ndarray:
    """X' diag(w_i) X for every row i of w (m, n) -> (m, p, p), as one product with the
    per-sample outer products."""
    p = X.shape[1]
    outer = _outer(X) if outer is None else outer
    return np.asarray((outer.T @ w.T).T).reshape(-1, p, p)


def _wls(X, w, z, outer=None):
    """Row-wise weighted least squares: solve (X' W_i X) b_i = X' W_i z_i for every row i."""
    p = X.shape[1]
    xtwx = _xtwx(X, w, outer)
    xtwz = (w * z) @ X
    xtwx = xtwx + 1e-10 * np.eye(p)  # all-zero levels (e.g. a patient without cells)
    return np.linalg.solve(xtwx, xtwz[..., None])[..., 0]


def adjusted_profile_lik(y, X, offset, phi) -> np.ndarray:
    """Cox–Reid adjusted profile log likelihood of each row at dispersion ``phi`` (m,)."""
    _, mu, _ = fit_nb(y, X, offset, phi)
    w = mu / (1 + np.asarray(phi)[:, None] * mu)
    xtwx = _xtwx(X, w) + 1e-10 * np.eye(X.shape[1])
    return nb_loglik(y, mu, np.asarray(phi)[:, None]) - 0.5 * np.linalg.slogdet(xtwx)[1]


def common_dispersion(y, X, offset) -> float:
    """edgeR ``estimateGLMCommonDisp`` (Cox–Reid): argmax of the summed APL over rows with
    total >= 5, searched on dispersion^(1/4) in (0, 4^(1/4))."""
    keep = y.sum(axis=1) >= 5
    yk = y[keep]
    if yk.shape[0] == 0:
        return 0.1

    def neg(x):
        phi = np.full(yk.shape[0], x ** 4)
        return -adjusted_profile_lik(yk, X, offset, phi).sum()

    res = minimize_scalar(neg, bounds=(1e-3, 4 ** 0.25), method="bounded",
                          options={"xatol": 1e-5})
    return float(res.x ** 4)


def tagwise_dispersion(y, X, offset, common: float, prior_df: float = 10.0,
                       grid_npts: int = 11, grid_range=(-6.0, 6.0)) -> np.ndarray:
    """edgeR ``estimateGLMTagwiseDisp`` without trend: per-row dispersions shrunk towards
    ``common`` with prior weight ``prior_df / (n - p)``; rows with total < 5 keep ``common``."""
    m, n = y.shape
    pts = np.linspace(*grid_range, grid_npts)
    keep = y.sum(axis=1) >= 5
    out = np.full(m, common)
    if not keep.any():
        return out
    yk = y[keep]
    mk = yk.shape[0]
    big = np.repeat(yk, grid_npts, axis=0)
    off = np.repeat(np.broadcast_to(offset, y.shape)[keep], grid_npts, axis=0)
    phis = np.tile(common * 2.0 ** pts, mk)
    apl = adjusted_profile_lik(big, X, off, phis).reshape(mk, grid_npts)
    prior_n = prior_df / (n - X.shape[1])
    smooth = (apl + prior_n * apl.mean(axis=0)) / (1 + prior_n)
    fine = np.linspace(pts[0], pts[-1], 2401)
    best = np.array([fine[np.argmax(CubicSpline(pts, row)(fine))] for row in smooth])
    out[keep] = common * 2.0 ** best
    return out


def lrt(counts: np.ndarray, lib_size: np.ndarray, X: np.ndarray, coefs,
        prior_count: float = 0.125, dispersion: np.ndarray | None = None):
    """edgeR glmFit + glmLRT for each coefficient index in ``coefs``.

    Parameters
    ----------
    counts
        (m clusters, n samples) integer counts.
    lib_size
        (n,) library sizes (total cells of each sample).
    X
        (n, p) design of full column rank.
    coefs
        Column indices of X to test, one at a time (null: the design without it).
    dispersion
        (m,) dispersions to use instead of estimating them.

    Returns
    -------
    dict with ``log2fc`` (m, len(coefs)), ``lr``, ``p`` (same shape) and ``dispersion`` (m,).
    """
    y = np.asarray(counts, float)
    lib = np.asarray(lib_size, float)
    off = np.log(lib)
    if dispersion is None:
        common = common_dispersion(y, X, off)
        phi = tagwise_dispersion(y, X, off, common)
    else:
        phi = np.asarray(dispersion, float)
        common = float(np.exp(np.log(phi).mean()))
    _, _, dev1 = fit_nb(y, X, off, phi)
    # log fold changes with edgeR's prior count (scaled by library size)
    pc = prior_count * lib / lib.mean()
    b_pc, _, _ = fit_nb(y + pc, X, np.log(lib + 2 * pc), phi)
    out = {k: np.full((y.shape[0], len(coefs)), np.nan) for k in ("log2fc", "lr", "p")}
    for j, c in enumerate(coefs):
        X0 = np.delete(X, c, axis=1)
        _, _, dev0 = fit_nb(y, X0, off, phi)
        lr = np.maximum(dev0 - dev1, 0.0)
        out["lr"][:, j] = lr
        out["p"][:, j] = stats.chi2.sf(lr, 1)
        out["log2fc"][:, j] = b_pc[:, c] / np.log(2)
    out["dispersion"] = phi
    out["common_dispersion"] = common
    return out


def ave_log_cpm(counts: np.ndarray, lib_size: np.ndarray, phi: np.ndarray,
                prior_count: float = 2.0) -> np.ndarray:
    """edgeR ``aveLogCPM``: log2 counts per million of each row from an intercept-only NB fit
    (dispersions ``phi``, shape (m,)) with prior counts scaled by library size, shape (m,)."""
    y = np.asarray(counts, float)
    lib = np.asarray(lib_size, float)
    pc = prior_count * lib / lib.mean()
    b, _, _ = fit_nb(y + pc, np.ones((y.shape[1], 1)), np.log(lib + 2 * pc), phi)
    return (b[:, 0] + np.log(1e6)) / np.log(2)


def _natural_spline(x: np.ndarray, df: int) -> np.ndarray:
    """Basis (n, df) of the natural cubic splines with an intercept and ``df - 2`` interior
    knots at quantiles of ``x`` (the space of R's ``splines::ns(x, df, intercept = TRUE)``)."""
    knots = np.quantile(x, np.linspace(0, 1, df))
    if df < 3 or np.ptp(x) == 0:
        return np.column_stack([np.ones_like(x), x][:max(df, 1)])

    def d(k):
        return ((np.maximum(x - knots[k], 0) ** 3 - np.maximum(x - knots[-1], 0) ** 3)
                / (knots[-1] - knots[k]))
    return np.column_stack([np.ones_like(x), x] + [d(k) - d(df - 2) for k in range(df - 2)])


def fit_f_dist_trend(s2: np.ndarray, df: float, covariate: np.ndarray) -> tuple[np.ndarray, float]:
    """limma ``fitFDist`` with a covariate (as ``squeezeVar(covariate = AveLogCPM)`` in edgeR's
    ``glmQLFit(abundance.trend = TRUE)``): prior scale s0² (m,) follows a natural spline in
    the covariate (1 + [m >= 3] + [m >= 6] + [m >= 30] df), prior df d0 from the residual
    spread of log s2 (``inf`` when there is no extra variability)."""
    from scipy import special

    from .ds import _trigamma_inverse

    s2 = np.maximum(s2, 1e-5 * np.median(s2))
    m = s2.size
    spline_df = min(1 + (m >= 3) + (m >= 6) + (m >= 30), np.unique(covariate).size)
    e = np.log(s2) - special.digamma(df / 2) + np.log(df / 2)
    basis = _natural_spline(np.asarray(covariate, float), spline_df)
    coef, *_ = np.linalg.lstsq(basis, e, rcond=None)
    emean = basis @ coef
    rank = np.linalg.matrix_rank(basis)
    evar = ((e - emean) ** 2).sum() / (m - rank) - special.polygamma(1, df / 2)
    if evar > 0:
        d0 = 2 * _trigamma_inverse(evar)
        return np.exp(emean + special.digamma(d0 / 2) - np.log(d0 / 2)), float(d0)
    return np.exp(emean), np.inf


def ql_ftest(counts: np.ndarray, lib_size: np.ndarray, X: np.ndarray, coefs,
             prior_count: float = 0.125, dispersion: float | None = None,
             abundance_trend: bool = True):
    """Quasi-likelihood F tests, edgeR ``glmQLFit`` + ``glmQLFTest`` style (no Poisson bound).

    NB GLMs with the common Cox–Reid dispersion; QL dispersion of each row = deviance /
    residual df, squeezed by limma's empirical Bayes (``fitFDist``) towards a prior that
    follows the row's average log CPM (``abundance_trend``, edgeR's default; a single
    value otherwise); F = LR / posterior QL dispersion on (1, d + d0) df, capped at the
    total residual df. ``dispersion`` fixes the common NB dispersion instead of
    estimating it.

    The abundance trend matters for cluster counts: the clusters of a sample share its
    total (the offset), so a large cluster varies less around its share than a small one
    (e.g. effective NB dispersion 0.010 vs 0.016 when 20 % vs 0.1 % of the cells); one
    common prior then under-estimates the variance of small clusters and the test is
    liberal for them.

    Returns dict with ``log2fc``, ``f``, ``p`` (m, len(coefs)), ``common_dispersion``,
    ``ql_prior_df``, ``df_total`` (denominator df of the F tests) and ``ql_prior`` (m,).
    """
    from .ds import fit_f_dist

    y = np.asarray(counts, float)
    lib = np.asarray(lib_size, float)
    off = np.log(lib)
    common = common_dispersion(y, X, off) if dispersion is None else float(dispersion)
    phi = np.full(y.shape[0], common)
    _, _, dev1 = fit_nb(y, X, off, phi)
    d = X.shape[0] - X.shape[1]
    s2 = dev1 / d
    if abundance_trend and len(s2) >= 3:
        s0, d0 = fit_f_dist_trend(s2, float(d), ave_log_cpm(y, lib, phi))
    else:
        s0, d0 = fit_f_dist(s2, np.full(len(s2), float(d)))
        if not np.isfinite(s0):  # a single row: no moderation
            s0, d0 = float(s2.mean()), 0.0
    s2_post = s0 if np.isinf(d0) else (d0 * s0 + d * s2) / (d0 + d)
    df_total = min(d + d0, d * len(s2))  # edgeR: df.total <= sum of residual df
    pc = prior_count * lib / lib.mean()
    b_pc, _, _ = fit_nb(y + pc, X, np.log(lib + 2 * pc), phi)
    out = {k: np.full((y.shape[0], len(coefs)), np.nan) for k in ("log2fc", "f", "p")}
    for j, c in enumerate(coefs):
        _, _, dev0 = fit_nb(y, np.delete(X, c, axis=1), off, phi)
        f = np.maximum(dev0 - dev1, 0.0) / s2_post
        out["f"][:, j] = f
        out["p"][:, j] = stats.f.sf(f, 1, df_total)
        out["log2fc"][:, j] = b_pc[:, c] / np.log(2)
    out["common_dispersion"], out["ql_prior_df"], out["df_total"] = common, d0, float(df_total)
    out["ql_prior"] = np.broadcast_to(s0, s2.shape).copy()
    return out
