"""Metaclustering of SOM nodes: consensus hierarchical clustering as in FlowSOM.

FlowSOM's ``metaClustering_consensus`` calls ConsensusClusterPlus (Monti et al. 2003;
Wilkerson & Hayes 2010) with ``reps = 100``, ``pItem = 0.9``, hierarchical clustering
with average linkage on Euclidean distances, and an average-linkage tree on
``1 − consensus`` for the final cut. This module does the same with scipy, with a
numpy ``Generator`` for the resampling so the result depends only on the seed.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import cut_tree, linkage
from scipy.spatial.distance import squareform

__all__ = [
    "consensus_matrix",
    "consensus_metaclusters",
    "hierarchical_metaclusters",
    "relabel_by_first_node",
]


def _cut(Z: np.ndarray, k: int) -> np.ndarray:
    """Cut an average-linkage tree into exactly ``k`` groups (0-based labels)."""
    return cut_tree(Z, n_clusters=k).ravel().astype(np.int64)


def hierarchical_metaclusters(codes: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage hierarchical clustering of the codes (``flowsom``'s Python default).

    Returns ``(n_nodes,)`` labels in ``0 … k−1``.
    """
    return _cut(linkage(codes, method="average", metric="euclidean"), k)


def consensus_matrix(
    codes: np.ndarray, k: int, reps: int = 100, p_item: float = 0.9, random_state: int | None = 0
) -> np.ndarray:
    """Fraction of resamplings in which two nodes fall in the same of ``k`` clusters.

    Parameters
    ----------
    codes
        ``(n_nodes, n_markers)`` node vectors.
    k
        Number of clusters of each resampling.
    reps, p_item
        Resamplings and the fraction of nodes drawn (without replacement) in each.
    random_state
        Seed of the resampling.

    Returns
    -------
    ``(n_nodes, n_nodes)`` consensus in ``[0, 1]``; 1 on the diagonal.
    """
    n = codes.shape[0]
    rng = np.random.default_rng(random_state)
    together = np.zeros((n, n))
    sampled = np.zeros((n, n))
    size = int(n * p_item)
    for _ in range(reps):
        idx = np.sort(rng.choice(n, size, replace=False))
        labels = _cut(linkage(codes[idx], method="average", metric="euclidean"), k)
        same = (labels[:, None] == labels[None, :]).astype(np.float64)
        together[np.ix_(idx, idx)] += same
        sampled[np.ix_(idx, idx)] += 1.0
    consensus = np.divide(together, sampled, out=np.zeros_like(together), where=sampled > 0)
    np.fill_diagonal(consensus, 1.0)
    return consensus


def consensus_metaclusters(
    codes: np.ndarray, k: int, reps: int = 100, p_item: float = 0.9, random_state: int | None = 0
) -> np.ndarray:
    """FlowSOM's consensus metaclustering of the nodes into ``k`` groups.

    Returns ``(n_nodes,)`` labels in ``0 … k−1``.
    """
    consensus = consensus_matrix(codes, k, reps=reps, p_item=p_item, random_state=random_state)
    dist = squareform(1.0 - consensus, checks=False)
    return _cut(linkage(dist, method="average"), k)


def relabel_by_first_node(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``0 … k−1`` in order of their lowest node index (canonical order)."""
    uniq, first = np.unique(labels, return_index=True)
    mapping = np.empty(uniq.max() + 1, dtype=np.int64)
    mapping[uniq[np.argsort(first)]] = np.arange(uniq.size)
    return mapping[labels]
