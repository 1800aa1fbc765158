"""Antibody-derived tag (ADT) normalisation: dsb and CLR.

>>> from immunomon.preprocess.adt import dsb, clr
>>> norm = dsb(cells, empty, isotypes=[80, 81, 82, 83])      # doctest: +SKIP
>>> norm = clr(cells)                                          # doctest: +SKIP

**dsb** (Mulè, Martins & Tsang 2022, *Nat Commun* 13:2099), as defined by the authors' R
function ``DSBNormalizeProtein``:

1. *Ambient background*: ``y = log(x + 10)`` for cells and empty droplets; each protein is
   centred on the mean and scaled by the SD of its empty-droplet values
   (``(y_cell − μ_empty) / σ_empty``).
2. *Technical component*: per cell, a two-component univariate Gaussian mixture over the
   cell's proteins (mclust ``Mclust(x, G = 2)``: models ``E`` and ``V``, the better BIC,
   started from the split at the median); its first component's mean μ₁ is the cell's
   background level. With isotype controls, the technical component is the first principal
   component (scaled variables) of [isotype values, μ₁] across cells, else μ₁ itself; it is
   regressed out of every protein (``limma::removeBatchEffect(covariates = …)``: a linear fit
   with intercept per protein, minus slope × component).

**CLR across cells** (Seurat ``margin = 2`` / muon ``pt.clr``): per protein,
``log1p(x / g)`` with ``g = exp(mean(log1p(x)))`` over the sample's cells.

Everything is vectorised over cells (the mixture is fitted for all cells at once), float64,
deterministic. Inputs are cells × proteins count arrays (dense or scipy.sparse).
"""

from __future__ import annotations

import re

import numpy as np
from scipy import sparse

__all__ = ["dsb", "dsb_background", "cell_background_mean", "technical_component", "clr",
           "is_isotype", "PSEUDOCOUNT"]

#: dsb's pseudocount before the log (the published default for CITE-seq).
PSEUDOCOUNT = 10.0
_ISOTYPE = re.compile(r"isotype|iso[_ -]?ctrl|(mouse|rat|hamster|armenian)[ _-]?ig[gma]",
                      re.IGNORECASE)


def is_isotype(name: str) -> bool:
    """Whether a feature name reads as an isotype control (``Mouse IgG1k isotype``,
    ``RatIgG2bkIsotype_PROT``, ``IsoCtrl``…); ``IgA``/``IgD``/``IgM`` markers are not."""
    return bool(_ISOTYPE.search(name))


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)


def dsb_background(cells, empty, pseudocount: float = PSEUDOCOUNT) -> np.ndarray:
    """dsb step 1: ``(log(cells + p) − μ) / σ`` with μ, σ (SD, n − 1) of ``log(empty + p)``
    per protein. ``cells`` (n_cells × proteins), ``empty`` (n_empty × proteins)."""
    log_empty = np.log(_dense(empty) + pseudocount)
    mu = log_empty.mean(axis=0)
    sd = log_empty.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, 1.0)
    return (np.log(_dense(cells) + pseudocount) - mu) / sd


def cell_background_mean(values: np.ndarray, tol: float = 1e-5, max_iter: int = 1000
                         ) -> np.ndarray:
    """Per row of ``values`` (cells × proteins): the mean of the first component of a
    two-component Gaussian mixture over the row's values, mclust's way.

    Each row is started from the split at its median (values below it in component 1: mclust's ``qclass``: component 1 the
    lower half), fitted by EM (M step first) under equal (``E``) and unequal (``V``)
    variances until the log-likelihood changes by less than ``tol`` relative, and the model
    with the larger BIC (``2 loglik − k log n``; k = 4 and 5) is kept; as mclust's summary
    does, the means then come from one more M step on the final responsibilities.
    """
    x = np.asarray(values, dtype=np.float64)
    n, p = x.shape
    med = np.median(x, axis=1, keepdims=True)
    z0 = (x < med).astype(np.float64)  # component 1: below the median (mclust qclass)
    fits = [_em(x, z0, equal, tol, max_iter) for equal in (True, False)]
    (mu_e, ll_e), (mu_v, ll_v) = fits
    bic_e = 2 * ll_e - 4 * np.log(p)
    bic_v = 2 * ll_v - 5 * np.log(p)
    use_v = np.isfinite(bic_v) & (~np.isfinite(bic_e) | (bic_v > bic_e))
    return np.where(use_v, mu_v, mu_e)


def _em(x: np.ndarray, z1: np.ndarray, equal: bool, tol: float, max_iter: int):
    """EM of a two-component univariate mixture on every row at once → (μ₁, loglik)."""
    n, p = x.shape
    z1 = z1.copy()
    mu1, pro1 = np.zeros(n), np.zeros(n)
    loglik = np.full(n, -np.inf)
    active = np.ones(n, dtype=bool)
    failed = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        xa, za = x[rows], z1[rows]
        w1, w2 = za.sum(axis=1), (1 - za).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            m1 = (za * xa).sum(axis=1) / w1
            m2 = ((1 - za) * xa).sum(axis=1) / w2
            ss1 = (za * (xa - m1[:, None]) ** 2).sum(axis=1)
            ss2 = ((1 - za) * (xa - m2[:, None]) ** 2).sum(axis=1)
            if equal:
                v1 = v2 = (ss1 + ss2) / p
            else:
                v1, v2 = ss1 / w1, ss2 / w2
            pi1 = w1 / p
            d1 = pi1[:, None] * _normal(xa, m1, v1)
            d2 = (1 - pi1)[:, None] * _normal(xa, m2, v2)
            total = d1 + d2
            new_ll = np.log(total).sum(axis=1)
            za_new = d1 / total
        bad = ~np.isfinite(new_ll) | (v1 <= 1e-12 * (1 + np.abs(m1))) | \
            (v2 <= 1e-12 * (1 + np.abs(m2)))
        old = loglik[rows]
        done = np.abs(new_ll - old) / (1 + np.abs(new_ll)) <= tol
        mu1[rows], pro1[rows] = m1, pi1
        loglik[rows] = new_ll
        z1[rows] = np.where(np.isfinite(za_new), za_new, za)
        failed[rows[bad]] = True
        active[rows[bad | done]] = False
    loglik[failed] = -np.inf
    # mclust's summary: when the last M step's proportion differs from the final
    # responsibilities' mean, the means come from one more M step on those responsibilities
    final = z1.mean(axis=1)
    redo = 2 * (pro1 - final) ** 2 > np.sqrt(np.finfo(float).eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_z = (z1 * x).sum(axis=1) / z1.sum(axis=1)
    return np.where(redo & np.isfinite(mu_z), mu_z, mu1), loglik


def _normal(x, mu, var):
    return np.exp(-0.5 * (x - mu[:, None]) ** 2 / var[:, None]) / np.sqrt(2 * np.pi * var)[:, None]


def technical_component(background_mean: np.ndarray, isotype_values: np.ndarray | None
                        ) -> np.ndarray:
    """dsb's per-cell technical component: the first principal component scores of the
    scaled [isotype values, background mean] (cells × (k + 1)), or the background mean
    itself without isotypes. The sign of a principal component is arbitrary (the regression
    that uses it is not)."""
    mu = np.asarray(background_mean, dtype=np.float64)
    if isotype_values is None or np.size(isotype_values) == 0:
        return mu
    noise = np.column_stack([np.asarray(isotype_values, dtype=np.float64), mu])
    centred = noise - noise.mean(axis=0)
    sd = centred.std(axis=0, ddof=1)
    scaled = centred / np.where(sd > 0, sd, 1.0)
    u, s, vt = np.linalg.svd(scaled, full_matrices=False)
    pc = u[:, 0] * s[0]
    # a fixed sign (the loading of the background mean positive) for reproducible output
    return pc if vt[0, -1] >= 0 else -pc


def _remove_covariate(values: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """``limma::removeBatchEffect(t(values), covariates = covariate)``: per column, fit
    ``value ~ 1 + covariate`` and subtract slope × covariate."""
    c = covariate - covariate.mean()
    denom = float(c @ c)
    if denom == 0:
        return values
    slope = (c @ (values - values.mean(axis=0))) / denom
    return values - np.outer(covariate, slope)


def dsb(cells, empty, isotypes=None, denoise: bool = True,
        pseudocount: float = PSEUDOCOUNT) -> np.ndarray:
    """dsb-normalised ADT values, cells × proteins (float64).

    Parameters
    ----------
    cells
        ADT counts of the cells (n_cells × proteins).
    empty
        ADT counts of empty droplets (n_empty × proteins, same proteins): the background.
    isotypes
        Column indices (or a boolean mask) of the isotype-control proteins; ``None`` or
        empty: the technical component is the background mean alone.
    denoise
        Run step 2 (technical component); ``False`` returns step 1 only.
    """
    norm = dsb_background(cells, empty, pseudocount)
    if not denoise:
        return norm
    mu1 = cell_background_mean(norm)
    iso = None
    if isotypes is not None and np.size(isotypes):
        iso = norm[:, np.asarray(isotypes)]
    return _remove_covariate(norm, technical_component(mu1, iso))


def clr(cells) -> np.ndarray:
    """CLR across cells: per protein ``log1p(x / exp(mean(log1p(x))))`` (cells × proteins)."""
    x = _dense(cells)
    if x.shape[0] == 0:
        return x
    return np.log1p(x / np.exp(np.log1p(x).mean(axis=0)))
