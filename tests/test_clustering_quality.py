"""Quality of immunomon's FlowSOM against the ``flowsom`` package on FlowSOM's test file.

The reference scores of ``flowsom`` (median over seeds 0-9) are computed by
``benchmarks/flowsom_quality_reference.py`` and stored in
``tests/data/clustering/flowsom_reference.json``, so this test does not need
``flowsom`` installed.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from immunomon.clustering import FlowSOM
from immunomon.clustering.metrics import adjusted_rand_score, mean_f1

DATA = Path(__file__).parent / "data" / "clustering"
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from flowsom_quality_reference import load_68983  # noqa: E402  (the data the reference was computed on)


@pytest.fixture(scope="module")
def data_68983():
    """Compensated, logicle-transformed (T=262144, W=0.5, M=4.5, A=0) lineage markers."""
    return load_68983(DATA)


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
