"""Per-cluster summaries and the UMAP embedding of a (balanced) subsample of cells."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd

__all__ = ["subsample_indices", "cluster_medians", "pooled_spread", "umap_embedding"]


def subsample_indices(n: int, size: int, seed: int, key: str = "") -> np.ndarray:
    """Sorted indices of ``min(n, size)`` of ``n`` events drawn without replacement.

    The draw depends only on ``(seed, key)`` (e.g. the sample id), not on the order in
    which samples are processed or on which worker.
    """
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    return np.sort(rng.choice(n, size, replace=False))


def cluster_medians(X: pd.DataFrame, clusters: np.ndarray) -> pd.DataFrame:
    """Cluster × marker median of ``X`` (events × markers); index = sorted cluster ids."""
    return X.groupby(np.asarray(clusters), sort=True).median().rename_axis("cluster")


def pooled_spread(X: pd.DataFrame, clusters: np.ndarray) -> pd.Series:
    """Marker → median over clusters of the within-cluster robust SD (1.4826 MAD)."""
    grouped = X.groupby(np.asarray(clusters), sort=True)
    mad = (X - grouped.transform("median")).abs().groupby(np.asarray(clusters), sort=True).median()
    return (1.4826 * mad).median()


#: Epochs of the UMAP layout (umap-learn's default above 10,000 cells: 200). The layout is
#: nearly all of an embedding's cost; from a PCA start, 80 epochs keep 94 % of the
#: neighbourhoods that umap-learn's defaults keep and separate the metaclusters nearly as
#: well (demo, 20,000 cells: silhouette 0.72; umap-learn's defaults 0.76, or 0.69-0.74 with
#: exact neighbours), in 40 % of the layout time (README, "Cluster a study";
#: benchmarks/bench_embedding.py).
UMAP_EPOCHS = 80


def umap_embedding(
    X: np.ndarray, random_state: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
    n_epochs: int = UMAP_EPOCHS,
) -> np.ndarray:
    """2-D UMAP (umap-learn) of ``X`` (``(n_cells, n_markers)``) → ``(n_cells, 2)`` float32.

    Exact nearest neighbours (scikit-learn, brute force with BLAS), a PCA start (Kobak &
    Linderman 2021: it keeps the global structure as a spectral start does, without the
    eigensolver) and ``n_epochs`` epochs of umap-learn's layout. With a ``random_state``
    umap-learn runs single-threaded and is reproducible.
    """
    from sklearn.neighbors import NearestNeighbors

    umap = _import_umap()

    X = np.asarray(X, dtype=np.float32)
    if X.shape[0] < 3:
        return np.zeros((X.shape[0], 2), dtype=np.float32)
    k = min(n_neighbors, X.shape[0] - 1)
    # Exact neighbours from scikit-learn, handed to UMAP as precomputed: umap-learn's own
    # nearest-neighbour descent (pynndescent) costs ~60 s of numba compilation per process,
    # the exact search on a few 10^4 cells a second.
    dists, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X).kneighbors(X)
    reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, init="pca",
                        n_epochs=n_epochs, random_state=random_state, n_jobs=1,
                        precomputed_knn=(idx, dists.astype(np.float32), None))
    with warnings.catch_warnings():  # no search index: we never call reducer.transform
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")
        return reducer.fit_transform(X).astype(np.float32)


def _import_umap():
    """``import umap``, with every numba kernel umap-learn defines cached on disk.

    umap-learn declares some kernels without ``cache=True`` (the layout epoch, the fuzzy-set
    weights, and two random draws compiled eagerly at import), so every process compiled
    them again: about 10 s per process, 1.5 s of them at import. While umap-learn's modules
    are imported, ``numba.njit`` defaults to ``cache=True``: they compile once per
    installation and later processes load them. Only the default changes: a kernel that
    asks for no cache keeps none.
    """
    import sys

    if "umap" in sys.modules:
        return sys.modules["umap"]
    import numba

    njit = numba.njit

    def cached_njit(*args, **options):
        options.setdefault("cache", True)
        return njit(*args, **options)

    numba.njit = cached_njit
    try:
        with warnings.catch_warnings():  # numba says so of what it cannot cache; harmless
            warnings.filterwarnings("ignore", message="Cannot cache compiled function")
            import umap
    finally:
        numba.njit = njit
    return umap
