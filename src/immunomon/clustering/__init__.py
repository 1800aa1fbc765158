"""Self-organising maps, metaclustering, embeddings and cluster annotation."""
