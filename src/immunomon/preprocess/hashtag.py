"""Hashtag (cell multiplexing) demultiplexing of a pooled 10x library, HTODemux-like.

>>> from immunomon.preprocess.hashtag import demultiplex
>>> calls = demultiplex(hto_counts, ["HTO1", "HTO2", "HTO3"], seed=0)   # doctest: +SKIP
>>> calls["call"].value_counts()                                       # doctest: +SKIP

As Seurat's ``HTODemux`` (Stoeckius et al. 2018): hashtag counts are CLR-normalised per
hashtag across cells, cells are split by k-means into (hashtags + 1) groups, and for each
hashtag the group with the lowest mean normalised value is its background; a negative
binomial fitted to that group's raw counts (method of moments; Poisson when not
over-dispersed) gives the positive threshold at its 0.99 quantile. A cell above the
threshold of exactly one hashtag is a singlet of it, of several a doublet, of none a
negative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse, stats

__all__ = ["demultiplex", "QUANTILE"]

#: Quantile of the background negative binomial above which a count is positive.
QUANTILE = 0.99


def _background_threshold(counts: np.ndarray, quantile: float) -> float:
    m = float(counts.mean()) if counts.size else 0.0
    v = float(counts.var(ddof=1)) if counts.size > 1 else 0.0
    if m <= 0:
        return 0.0
    if v <= m:  # not over-dispersed: Poisson
        return float(stats.poisson.ppf(quantile, m))
    size = m * m / (v - m)
    return float(stats.nbinom.ppf(quantile, size, size / (size + m)))


def demultiplex(counts, hashtags: list[str], seed: int = 0, quantile: float = QUANTILE
                ) -> pd.DataFrame:
    """Call each cell's hashtag.

    Parameters
    ----------
    counts
        Hashtag UMI counts, cells × hashtags (dense or sparse), columns in ``hashtags`` order.
    hashtags
        Hashtag names.
    seed
        k-means seed.

    Returns
    -------
    DataFrame, one row per cell: ``call`` (the hashtag, ``Doublet`` or ``Negative``),
    ``n_positive`` and each hashtag's threshold as ``attrs["thresholds"]``.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(counts.toarray() if sparse.issparse(counts) else counts, dtype=np.float64)
    n, k = x.shape
    norm = np.log1p(x / np.exp(np.log1p(x).mean(axis=0)))
    groups = KMeans(n_clusters=min(k + 1, max(n, 1)), n_init=10, random_state=seed
                    ).fit_predict(norm) if n > k else np.zeros(n, dtype=int)
    thresholds = {}
    positive = np.zeros_like(x, dtype=bool)
    for j, tag in enumerate(hashtags):
        means = pd.Series(norm[:, j]).groupby(groups).mean()
        background = x[groups == means.idxmin(), j]
        thresholds[tag] = _background_threshold(background, quantile)
        positive[:, j] = x[:, j] > thresholds[tag]
    n_pos = positive.sum(axis=1)
    call = np.where(n_pos == 0, "Negative", np.where(n_pos > 1, "Doublet", ""))
    single = n_pos == 1
    call[single] = np.asarray(hashtags, dtype=object)[positive[single].argmax(axis=1)]
    out = pd.DataFrame({"call": call, "n_positive": n_pos})
    out.attrs["thresholds"] = thresholds
    return out
