"""Quality of immunomon's FlowSOM against the ``flowsom`` package on FlowSOM's test file.

The reference scores of ``flowsom`` (median over seeds 0-9) are computed by
``benchmarks/flowsom_quality_reference.py`` and stored in
``tests/data/clustering/flowsom_reference.json``, so this test does not need
``flowsom`` installed.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flowutils import transforms

from immunomon.clustering import FlowSOM
from immunomon.clustering.metrics import adjusted_rand_score, mean_f1
from immunomon.io.fcs import read_fcs

DATA = Path(__file__).parent / "data" / "clustering"
MARKERS = ["CD8", "TCRyd", "TCRb", "NK1/1", "CD4", "CD19", "CD3"]


@pytest.fixture(scope="module")
def data_68983():
    """Compensated, logicle-transformed (T=262144, W=0.5, M=4.5, A=0) lineage markers."""
    fcs = read_fcs(DATA / "68983.fcs", dtype="float64")
    names, labels = list(fcs.names), [s.strip() for s in fcs.labels]
    cols = [names.index(c) for c in fcs.spillover.columns]
    events = fcs.events.copy()
    events[:, cols] = events[:, cols] @ np.linalg.inv(fcs.spillover.to_numpy())
    events = transforms.logicle(events, cols, t=262144, m=4.5, w=0.5, a=0)
    truth = pd.read_csv(DATA / "gatingResult.csv", header=None).iloc[:, 0].to_numpy()
    return events[:, [labels.index(m) for m in MARKERS]], truth


def test_quality_matches_flowsom_package(data_68983):
    X, truth = data_68983
    ref = json.loads((DATA / "flowsom_reference.json").read_text())["68983"]
    seeds = json.loads((DATA / "flowsom_reference.json").read_text())["seeds"]
    keep = truth != "Unlabeled"
    aris, f1s = [], []
    for seed in seeds:
        clusters = FlowSOM(grid=(10, 10), n_metaclusters=ref["k"], random_state=seed).fit_predict(X)
        assert set(np.unique(clusters)) <= set(range(1, ref["k"] + 1))
        aris.append(adjusted_rand_score(truth[keep], clusters[keep]))
        f1s.append(mean_f1(truth[keep], clusters[keep]))
    assert np.median(aris) >= ref["flowsom_median_ari"] - 0.01
    assert np.median(f1s) >= ref["flowsom_median_mean_f1"] - 0.01


def test_mean_f1_hungarian():
    truth = np.array(["a"] * 4 + ["b"] * 4)
    # cluster 1 = all of a, clusters 2 and 3 split b: b matches one half (F1 = 2*2/(4+2))
    clusters = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    assert mean_f1(truth, clusters) == pytest.approx((1.0 + 4 / 6) / 2)
    assert adjusted_rand_score(truth, np.array([5] * 4 + [7] * 4)) == 1.0
