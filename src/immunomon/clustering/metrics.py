"""Agreement between a clustering and reference labels (FlowCAP-style F1, ARI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

__all__ = ["f1_matrix", "mean_f1", "adjusted_rand_score"]


def f1_matrix(truth, clusters) -> pd.DataFrame:
    """F1 of every (reference class, cluster) pair; rows = classes, columns = clusters."""
    table = pd.crosstab(pd.Series(np.asarray(truth), name="truth"),
                        pd.Series(np.asarray(clusters), name="cluster"))
    both = table.to_numpy(dtype=np.float64)
    size_t = both.sum(axis=1, keepdims=True)
    size_c = both.sum(axis=0, keepdims=True)
    return pd.DataFrame(2.0 * both / (size_t + size_c), index=table.index, columns=table.columns)


def mean_f1(truth, clusters) -> float:
    """Mean over reference classes of the F1 of their Hungarian-matched cluster.

    Each class is matched to at most one cluster and each cluster to at most one
    class, maximising the total F1; a class left without a cluster scores 0.
    """
    f1 = f1_matrix(truth, clusters).to_numpy()
    rows, cols = linear_sum_assignment(f1, maximize=True)
    return float(f1[rows, cols].sum() / f1.shape[0])
