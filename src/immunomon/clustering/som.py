"""Self-organising map with FlowSOM's online algorithm, and exact nearest-node mapping.

Training follows FlowSOM (Van Gassen et al. 2015, R ``SOM()`` / Python ``flowsom``):
nodes on a rectangular ``xdim × ydim`` grid, codes initialised from randomly drawn
events, ``rlen × n`` online updates on events drawn uniformly with replacement, a
learning rate falling linearly from ``alpha[0]`` to ``alpha[1]`` and a bubble
neighbourhood (Chebyshev grid distance) whose radius falls linearly from the 2/3
quantile of the grid distances to 0 (below 1: only the winning node moves).

The sequential update loop is compiled with numba (codes stored marker-major so the
distance and update loops vectorise over nodes). Mapping events to their nearest
node uses one BLAS matrix product per chunk (``||x||² − 2x·w + ||w||²``, float32);
rows whose best and second-best nodes are closer than the rounding-error bound of
that product are recomputed exactly, so the result does not depend on the chunk
size, the BLAS library or its threads.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

__all__ = ["grid_distances", "initial_radius", "train_som", "nearest_nodes"]

#: Rows mapped per BLAS call: bounds the temporary to ``chunk × n_nodes`` float64.
DEFAULT_CHUNK = 4096


def grid_distances(xdim: int, ydim: int) -> np.ndarray:
    """Chebyshev distances between the nodes of an ``xdim × ydim`` grid.

    Node ``i`` sits at ``(i // ydim, i % ydim)`` (FlowSOM's order).
    Returns an ``(xdim·ydim, xdim·ydim)`` float64 array.
    """
    gx, gy = np.divmod(np.arange(xdim * ydim), ydim)
    return np.maximum(np.abs(gx[:, None] - gx[None, :]), np.abs(gy[:, None] - gy[None, :])).astype(
        np.float64
    )


def initial_radius(nhbrdist: np.ndarray) -> float:
    """FlowSOM's starting neighbourhood radius: the 0.67 quantile of the grid distances."""
    return float(np.quantile(nhbrdist, 0.67))


@njit(cache=True, nogil=True)
def _som_updates(data, codes_t, nhbrdist, order, k0, niter, a0, a1, r0, r1):
    """Apply the online updates for events ``data[order]`` (iterations ``k0 …``) in place."""
    n_markers, n_nodes = codes_t.shape
    dist = np.empty(n_nodes)
    weight = np.empty(n_nodes)
    step = (r0 - r1) / niter
    for t in range(order.shape[0]):
        k = k0 + t
        x = data[order[t]]
        dist[:] = 0.0
        for j in range(n_markers):
            xj = x[j]
            row = codes_t[j]
            for cd in range(n_nodes):
                d = xj - row[cd]
                dist[cd] += d * d
        nearest = np.argmin(dist)  # first minimum, as FlowSOM's strict "<" scan
        threshold = r0 - step * k
        if threshold < 1.0:
            threshold = 0.5
        alpha = a0 - (a0 - a1) * k / niter
        near = nhbrdist[nearest]
        for cd in range(n_nodes):
            weight[cd] = alpha if near[cd] <= threshold else 0.0
        for j in range(n_markers):
            xj = x[j]
            row = codes_t[j]
            for cd in range(n_nodes):
                row[cd] += weight[cd] * (xj - row[cd])


def train_som(
    X: np.ndarray,
    xdim: int = 10,
    ydim: int = 10,
    rlen: int = 10,
    alpha: tuple[float, float] = (0.05, 0.01),
    radius: tuple[float, float] | None = None,
    random_state: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Train a self-organising map on ``X`` with FlowSOM's schedule.

    Parameters
    ----------
    X
        ``(n_events, n_markers)`` training events (transformed units).
    xdim, ydim
        Grid size; ``xdim·ydim`` nodes (at most ``n_events``).
    rlen
        Passes over the data: ``rlen · n_events`` updates.
    alpha
        Learning rate at the first and last update.
    radius
        Neighbourhood radius (grid units) at the first and last update; default
        ``(0.67 quantile of the grid distances, 0)``.
    random_state
        Seed (or generator) for the node initialisation and the event draws.

    Returns
    -------
    ``(xdim·ydim, n_markers)`` float64 codes (node vectors), node ``i`` at grid
    position ``(i // ydim, i % ydim)``.
    """
    data = np.ascontiguousarray(X, dtype=np.float64)
    n, _ = data.shape
    n_nodes = xdim * ydim
    if n < n_nodes:
        raise ValueError(f"need at least {n_nodes} events to train a {xdim}x{ydim} SOM, got {n}")
    rng = np.random.default_rng(random_state)
    nhbrdist = grid_distances(xdim, ydim)
    r0, r1 = radius if radius is not None else (initial_radius(nhbrdist), 0.0)
    codes_t = np.ascontiguousarray(data[np.sort(rng.choice(n, n_nodes, replace=False))].T)
    niter = rlen * n
    for epoch in range(rlen):
        order = rng.integers(0, n, size=n)
        _som_updates(data, codes_t, nhbrdist, order, epoch * n, niter,
                     float(alpha[0]), float(alpha[1]), float(r0), float(r1))
    return np.ascontiguousarray(codes_t.T)


@njit(cache=True, nogil=True)
def _exact_nearest(rows, codes):
    """Nearest code of each row by direct squared differences, fixed summation order."""
    n, p = rows.shape
    m = codes.shape[0]
    out = np.empty(n, dtype=np.int32)
    for i in range(n):
        best = np.inf
        arg = 0
        for cd in range(m):
            s = 0.0
            for j in range(p):
                d = rows[i, j] - codes[cd, j]
                s += d * d
            if s < best:
                best = s
                arg = cd
        out[i] = arg
    return out


@njit(cache=True, nogil=True)
def _best_two(xw, wnorm, best, gap):
    """Per row of ``xw`` (= x·wᵀ): argmin of ``||w||² − 2x·w`` and its gap to the runner-up."""
    n, m = xw.shape
    for i in range(n):
        b1 = np.inf
        b2 = np.inf
        arg = 0
        for cd in range(m):
            s = wnorm[cd] - 2.0 * xw[i, cd]
            if s < b1:
                b2 = b1
                b1 = s
                arg = cd
            elif s < b2:
                b2 = s
        best[i] = arg
        gap[i] = b2 - b1


def _map_chunk(X, start, stop, codes, codes32, wnorm, wmax, nodes, dists) -> None:
    """Nearest node of rows ``start:stop`` of ``X`` into ``nodes`` (and ``dists``)."""
    x = np.asarray(X[start:stop], dtype=np.float32)
    p = x.shape[1]
    best = np.empty(x.shape[0], dtype=np.int32)
    gap = np.empty(x.shape[0], dtype=np.float32)
    _best_two(x @ codes32.T, wnorm, best, gap)
    # bound on the error of the float32 expansion (rounding of events and codes and any
    # summation order of the product): below it the ranking is re-done exactly
    xnorm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    bound = 4.0 * (p + 4) * float(np.finfo(np.float32).eps) * (xnorm + wmax) ** 2
    unsure = np.flatnonzero(gap <= bound)
    if unsure.size:
        rows = np.ascontiguousarray(np.asarray(X[start + unsure], dtype=np.float64))
        best[unsure] = _exact_nearest(rows, codes)
    nodes[start:stop] = best
    if dists is not None:
        diff = np.asarray(X[start:stop], dtype=np.float64) - codes[best]
        dists[start:stop] = np.sqrt(np.einsum("ij,ij->i", diff, diff))


def nearest_nodes(
    X: np.ndarray,
    codes: np.ndarray,
    chunk_size: int = DEFAULT_CHUNK,
    return_distance: bool = False,
    n_threads: int = 1,
):
    """Index of the nearest code (Euclidean) for every row of ``X``.

    One float32 BLAS product per chunk ranks the nodes; rows whose two best nodes are
    closer than the product's rounding-error bound are recomputed exactly in float64,
    so the answer is the exact nearest node whatever the chunking or threads.

    Parameters
    ----------
    X
        ``(n_events, n_markers)`` events, any float dtype.
    codes
        ``(n_nodes, n_markers)`` node vectors.
    chunk_size
        Rows per BLAS call; memory is ``O(chunk_size · n_nodes)`` per thread. The result
        does not depend on it.
    return_distance
        Also return the Euclidean distance to the nearest node.
    n_threads
        Chunks mapped in parallel threads, each with single-threaded BLAS (the
        products are too small for threaded BLAS: it is 3x slower). Default 1: the
        pipeline parallelises over samples instead.

    Returns
    -------
    ``(n_events,)`` int32 node indices (ties: lowest index), and with
    ``return_distance`` a float64 ``(n_events,)`` array of distances.
    """
    codes = np.ascontiguousarray(codes, dtype=np.float64)
    codes32 = codes.astype(np.float32)
    n = X.shape[0]
    wnorm = np.einsum("ij,ij->i", codes, codes).astype(np.float32)
    wmax = float(np.sqrt(wnorm.max()))
    nodes = np.empty(n, dtype=np.int32)
    dists = np.empty(n, dtype=np.float64) if return_distance else None
    starts = range(0, n, chunk_size)
    work = functools.partial(_map_chunk, X, codes=codes, codes32=codes32, wnorm=wnorm, wmax=wmax,
                             nodes=nodes, dists=dists)
    n_threads = min(n_threads or 1, len(starts))
    with threadpool_limits(1, user_api="blas"):
        if n_threads <= 1:
            for start in starts:
                work(start, min(start + chunk_size, n))
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(lambda s: work(s, min(s + chunk_size, n)), starts))
    return (nodes, dists) if return_distance else nodes
