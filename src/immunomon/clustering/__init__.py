"""Self-organising maps, metaclustering, embeddings and cluster annotation.

>>> from immunomon.clustering import FlowSOM
>>> model = FlowSOM(grid=(10, 10), n_metaclusters=20, rlen=10, random_state=0).fit(X)
>>> model.predict(X)          # metacluster 1..k of every event
"""

from .estimator import FlowSOM
from .metacluster import consensus_metaclusters, hierarchical_metaclusters
from .som import nearest_nodes, train_som

__all__ = ["FlowSOM", "consensus_metaclusters", "hierarchical_metaclusters", "nearest_nodes", "train_som"]
