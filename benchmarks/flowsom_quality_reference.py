"""Quality of immunomon's FlowSOM against the ``flowsom`` package on FlowSOM's own test file.

``68983.fcs`` (FlowSOM's inst/extdata) is compensated with its ``$SPILL``, the
fluorescence channels are logicle-transformed (T = 262144, W = 0.5, M = 4.5, A = 0,
as FlowSOM's vignette), and the 7 lineage markers CD8, TCRyd, TCRb, NK1/1, CD4, CD19,
CD3 (``$PnS``) are clustered on a 10×10 grid into k = 10 metaclusters, for seeds
0–9, by both implementations. Events labelled "Unlabeled" in ``gatingResult.csv``
(the manual gating) are left out of the scores: adjusted Rand index and mean F1 of
Hungarian-matched populations.

The same comparison on the simulated study of the tests' ``small_study`` fixture
(``simulate_study(patients=6, visits=(D1, D8), events=5000, seed=1)``, prepared with
:func:`immunomon.pipeline.prepare.prepare_sample`, the panel's 14 clustering markers,
k = 20) against the simulator's per-event truth (most specific population).

Writes ``tests/data/clustering/flowsom_reference.json`` (the per-seed and median
scores of ``flowsom``; the tests assert immunomon's medians against them) and prints
the side-by-side tables. Run from the repository root::

    python benchmarks/flowsom_quality_reference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from immunomon.clustering import FlowSOM
from immunomon.clustering.metrics import adjusted_rand_score, mean_f1

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "clustering"
MARKERS = ["CD8", "TCRyd", "TCRb", "NK1/1", "CD4", "CD19", "CD3"]
SEEDS = range(10)
GRID, K = (10, 10), 10


def load_68983(data_dir: Path = DATA) -> tuple[np.ndarray, np.ndarray]:
    """Compensated, logicle-transformed lineage markers and manual-gating labels."""
    from flowutils import transforms

    from immunomon.io.fcs import read_fcs

    fcs = read_fcs(data_dir / "68983.fcs", dtype="float64")
    names, labels = list(fcs.names), [s.strip() for s in fcs.labels]
    cols = [names.index(c) for c in fcs.spillover.columns]
    events = fcs.events.copy()
    events[:, cols] = events[:, cols] @ np.linalg.inv(fcs.spillover.to_numpy())
    events = transforms.logicle(events, cols, t=262144, m=4.5, w=0.5, a=0)
    X = events[:, [labels.index(m) for m in MARKERS]]
    truth = pd.read_csv(data_dir / "gatingResult.csv", header=None).iloc[:, 0].to_numpy()
    return X, truth


def load_small_study() -> tuple[np.ndarray, np.ndarray]:
    """Clustering markers of every QC-passed event of the tests' small study, and truth."""
    import tempfile

    from immunomon.io.study import load_study
    from immunomon.pipeline.prepare import prepare_sample
    from immunomon.simulate import simulate_study

    with tempfile.TemporaryDirectory() as tmp:
        root = simulate_study(Path(tmp) / "study", patients=6, visits=("D1", "D8"), events=5_000, seed=1)
        study = load_study(root)
        markers = list(study.config.panels["treg"].clustering.markers)
        X, truth = [], []
        for sid in study.samples["sample_id"]:
            p = prepare_sample(study, sid)
            X.append(p.events[markers].to_numpy(np.float64))
            pop = pd.read_parquet(root / "truth" / "events" / f"{sid}.parquet")["population"]
            truth.append(pop.to_numpy().astype(str)[p.keep])
    return np.vstack(X), np.concatenate(truth)


def scores(truth: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """(ARI, mean F1) over the events with a manual-gating label."""
    keep = truth != "Unlabeled"
    return adjusted_rand_score(truth[keep], clusters[keep]), mean_f1(truth[keep], clusters[keep])


def run_flowsom(X: np.ndarray, seed: int, k: int = K) -> np.ndarray:
    """Metacluster of every event by the ``flowsom`` package."""
    import flowsom

    model = flowsom.models.FlowSOMEstimator(xdim=GRID[0], ydim=GRID[1], n_clusters=k, seed=seed)
    return np.asarray(model.fit_predict(X))


def run_immunomon(X: np.ndarray, seed: int, k: int = K) -> np.ndarray:
    """Metacluster of every event by immunomon."""
    return FlowSOM(grid=GRID, n_metaclusters=k, random_state=seed).fit_predict(X)


def compare(X: np.ndarray, truth: np.ndarray, k: int, title: str) -> pd.DataFrame:
    """Scores of both tools over the seeds; prints the table."""
    rows = []
    for seed in SEEDS:
        for tool, fn in [("flowsom", run_flowsom), ("immunomon", run_immunomon)]:
            ari, f1 = scores(truth, fn(X, seed, k))
            rows.append({"tool": tool, "seed": seed, "ari": ari, "mean_f1": f1})
    table = pd.DataFrame(rows)
    print(f"\n## {title}\n")
    print(table.pivot(index="seed", columns="tool", values=["ari", "mean_f1"]).round(4).to_string())
    print("\nmedian over seeds\n" + table.groupby("tool")[["ari", "mean_f1"]].median().round(4).to_string())
    return table[table.tool == "flowsom"]


def main() -> None:
    import flowsom

    out = {"source": "benchmarks/flowsom_quality_reference.py", "flowsom_version": flowsom.__version__,
           "grid": list(GRID), "seeds": list(SEEDS)}
    for key, (X, truth), k, title in [
        ("68983", load_68983(), K, "68983.fcs vs manual gating (k = 10)"),
        ("small_study", load_small_study(), 20, "simulated small study vs truth (k = 20)"),
    ]:
        ref = compare(X, truth, k, title)
        out[key] = {"k": k, "flowsom_ari": ref.ari.round(6).tolist(), "flowsom_mean_f1": ref.mean_f1.round(6).tolist(),
                    "flowsom_median_ari": round(float(ref.ari.median()), 6),
                    "flowsom_median_mean_f1": round(float(ref.mean_f1.median()), 6)}
    (DATA / "flowsom_reference.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {DATA / 'flowsom_reference.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
