"""The embed stage: immunomon's UMAP of 20,000 cells against umap-learn's defaults, one run.

Each measurement is a fresh subprocess (as a new ``immunomon run`` is): the import of
umap-learn, the loading (or compiling) of numba kernels, the neighbour search and the layout
are all inside the timed call; data generation is not. A first, untimed round per method
compiles what the installation has not cached yet ("after the first run of an
installation"). Rounds alternate the two methods; medians are printed, with the ratio
umap-learn / immunomon of each round's wall times (median).

- immunomon: ``clustering.embedding.umap_embedding`` (exact neighbours, PCA start,
  ``UMAP_EPOCHS`` epochs, numba kernels cached on disk);
- umap-learn: ``umap.UMAP(random_state=seed).fit_transform(X)`` (its nearest-neighbour
  descent, spectral start, 200 epochs above 10,000 cells).

Quality, on the same cells: the share of each cell's 15 nearest neighbours (markers) that are
among its 15 nearest on the map, and the silhouette of the true populations on the map
(5,000 cells). Data: 20 synthetic populations in 15 markers (``bench_clustering.make_data``),
or the ``embedding`` table of a run (``--table RUN/tables/embedding.parquet``; populations =
its metaclusters).

Run from the repository root::

    python benchmarks/bench_embedding.py [--cells 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NOT_MARKERS = {"sample_id", "cluster", "label", "umap_1", "umap_2", "patient_id", "visit",
               "disease", "panel"}


def load(table: str | None, cells: int) -> tuple[np.ndarray, np.ndarray]:
    if table is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_clustering import make_data

        return make_data(cells, seed=3)
    import pandas as pd

    frame = pd.read_parquet(table).head(cells)
    markers = [c for c in frame.columns if c not in NOT_MARKERS]
    return frame[markers].to_numpy(np.float32), frame["cluster"].to_numpy()


def child(method: str, table: str | None, cells: int, seed: int) -> None:
    """Time one embedding in this (fresh) process; print JSON."""
    X, truth = load(table, cells)
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "immunomon":
        from immunomon.clustering.embedding import umap_embedding

        Y = umap_embedding(X, random_state=seed)
    else:
        import umap

        Y = umap.UMAP(random_state=seed).fit_transform(X)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    _, high = NearestNeighbors(n_neighbors=15).fit(X).kneighbors(X)
    _, low = NearestNeighbors(n_neighbors=15).fit(Y).kneighbors(Y)
    kept = float(np.mean([len(set(a) & set(b)) / 15 for a, b in zip(high, low)]))
    sub = np.random.default_rng(0).choice(len(Y), min(5000, len(Y)), replace=False)
    print(json.dumps({"wall": wall, "cpu": cpu, "neighbours": kept,
                      "silhouette": float(silhouette_score(Y[sub], truth[sub]))}))


def run_child(method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--cells", str(args.cells),
           "--seed", str(args.seed)] + (["--table", args.table] if args.table else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--table", default=None)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.table, args.cells, args.seed)
        return
    methods = ("immunomon", "umap-learn")
    for method in methods:  # compile and cache what this installation has not yet
        run_child(method, args)
    runs = {m: [] for m in methods}
    for _ in range(args.rounds):
        for method in methods:
            runs[method].append(run_child(method, args))
    ratio = np.median([p["wall"] / o["wall"] for o, p in zip(runs["immunomon"], runs["umap-learn"])])
    print(f"{args.cells:,} cells, {args.rounds} alternating rounds, fresh process each (medians)")
    print(f"{'method':<12} {'wall s':>7} {'cpu s':>7} {'neighbours kept':>16} {'silhouette':>11}")
    for method in methods:
        med = {k: np.median([r[k] for r in runs[method]]) for k in runs[method][0]}
        print(f"{method:<12} {med['wall']:7.2f} {med['cpu']:7.2f} {med['neighbours']:16.3f} "
              f"{med['silhouette']:11.3f}")
    print(f"speed-up (umap-learn / immunomon, wall): {ratio:.1f}x")


if __name__ == "__main__":
    main()
