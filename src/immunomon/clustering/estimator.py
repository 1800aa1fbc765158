"""scikit-learn style FlowSOM estimator: SOM + metaclustering."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin

from .metacluster import consensus_metaclusters, hierarchical_metaclusters, relabel_by_first_node
from .som import DEFAULT_CHUNK, nearest_nodes, train_som

__all__ = ["FlowSOM"]


class FlowSOM(ClusterMixin, BaseEstimator):
    """Self-organising map followed by metaclustering of its nodes (FlowSOM).

    Parameters
    ----------
    grid
        ``(xdim, ydim)`` of the SOM; ``xdim·ydim`` nodes.
    n_metaclusters
        Number of metaclusters ``k``.
    rlen
        Passes over the training events (``rlen · n_train`` online updates).
    alpha
        Learning rate at the start and the end of training.
    metaclustering
        ``"consensus"`` (FlowSOM R: ConsensusClusterPlus, 100 resamplings of 90 % of
        the nodes, average linkage) or ``"hierarchical"`` (average linkage on the
        codes, as the Python ``flowsom`` package).
    max_train
        Train the SOM on at most this many events, drawn at random without
        replacement (``None``: all). Every event is still mapped by :meth:`predict`.
    chunk_size
        Events per BLAS call when mapping (memory ``O(chunk_size · n_nodes)``).
    random_state
        Seed of the node initialisation, the event draws and the consensus resampling.

    Attributes
    ----------
    codes_ : ndarray, shape (n_nodes, n_markers)
        Node vectors; node ``i`` at grid position ``(i // ydim, i % ydim)``.
    node_metacluster_ : ndarray, shape (n_nodes,)
        Metacluster (``1 … k``) of each node, numbered by their lowest node index.
    feature_names_in_ : ndarray of str
        Column names when fitted on a DataFrame.
    """

    def __init__(
        self,
        grid: tuple[int, int] = (10, 10),
        n_metaclusters: int = 20,
        rlen: int = 10,
        alpha: tuple[float, float] = (0.05, 0.01),
        metaclustering: str = "consensus",
        max_train: int | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        random_state: int | None = 0,
    ):
        self.grid = grid
        self.n_metaclusters = n_metaclusters
        self.rlen = rlen
        self.alpha = alpha
        self.metaclustering = metaclustering
        self.max_train = max_train
        self.chunk_size = chunk_size
        self.random_state = random_state

    def _array(self, X) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            if hasattr(self, "feature_names_in_"):
                X = X[list(self.feature_names_in_)]
            return X.to_numpy()
        return np.asarray(X)

    def fit(self, X, y=None):
        """Train the SOM on ``X`` (``(n_events, n_markers)``) and metacluster its nodes."""
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        X = self._array(X)
        if self.metaclustering not in ("consensus", "hierarchical"):
            raise ValueError(f"metaclustering must be 'consensus' or 'hierarchical', got {self.metaclustering!r}")
        xdim, ydim = self.grid
        if not 2 <= self.n_metaclusters <= xdim * ydim:
            raise ValueError(f"n_metaclusters must be in 2..{xdim * ydim}, got {self.n_metaclusters}")
        seeds = np.random.SeedSequence(self.random_state).spawn(3)
        if self.max_train is not None and X.shape[0] > self.max_train:
            pick = np.sort(np.random.default_rng(seeds[0]).choice(X.shape[0], self.max_train, replace=False))
            X = X[pick]
        self.n_features_in_ = X.shape[1]
        self.codes_ = train_som(X, xdim, ydim, rlen=self.rlen, alpha=self.alpha,
                                random_state=np.random.default_rng(seeds[1]))
        if self.metaclustering == "consensus":
            meta = consensus_metaclusters(self.codes_, self.n_metaclusters,
                                          random_state=np.random.default_rng(seeds[2]))
        else:
            meta = hierarchical_metaclusters(self.codes_, self.n_metaclusters)
        self.node_metacluster_ = relabel_by_first_node(meta) + 1
        return self

    def predict_nodes(self, X) -> np.ndarray:
        """Nearest SOM node (``0 … n_nodes−1``, int32) of every event of ``X``."""
        return nearest_nodes(self._array(X), self.codes_, chunk_size=self.chunk_size)

    def predict(self, X) -> np.ndarray:
        """Metacluster (``1 … k``, int32) of every event of ``X``."""
        return self.node_metacluster_.astype(np.int32)[self.predict_nodes(X)]

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit on ``X`` then return the metacluster of each of its events."""
        return self.fit(X).predict(X)
