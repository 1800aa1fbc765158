"""SOM, mapping, metaclustering, annotation: determinism, streaming = in-memory, exactness."""

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from immunomon.clustering import FlowSOM, nearest_nodes, train_som
from immunomon.clustering.annotate import annotate_clusters, load_marker_table, otsu_threshold
from immunomon.clustering.metacluster import consensus_matrix, relabel_by_first_node
from immunomon.clustering.som import grid_distances, initial_radius
from immunomon.errors import UserError


@pytest.fixture(scope="module")
def blobs():
    """4,000 events, 5 markers, 4 well separated populations."""
    rng = np.random.default_rng(7)
    centres = rng.uniform(0, 5, size=(4, 5))
    truth = rng.integers(0, 4, size=4000)
    return (centres[truth] + rng.normal(0, 0.3, size=(4000, 5))).astype(np.float32), truth


def test_grid_and_radius_follow_flowsom():
    d = grid_distances(10, 10)
    assert d.shape == (100, 100) and d[0, 99] == 9 and d[0, 11] == 1 and d[5, 5] == 0
    assert initial_radius(d) == np.quantile(d, 0.67)


def test_same_seed_identical_other_seed_differs(blobs):
    X, _ = blobs
    a = FlowSOM(grid=(5, 5), n_metaclusters=4, rlen=5, random_state=3).fit(X)
    b = FlowSOM(grid=(5, 5), n_metaclusters=4, rlen=5, random_state=3).fit(X)
    c = FlowSOM(grid=(5, 5), n_metaclusters=4, rlen=5, random_state=4).fit(X)
    assert a.codes_.tobytes() == b.codes_.tobytes()
    assert np.array_equal(a.node_metacluster_, b.node_metacluster_)
    assert np.array_equal(a.predict(X), b.predict(X))
    assert not np.array_equal(a.codes_, c.codes_)


def test_metaclusters_recover_populations(blobs):
    X, truth = blobs
    model = FlowSOM(grid=(5, 5), n_metaclusters=4, rlen=5, random_state=0)
    pred = model.fit_predict(X)
    assert sorted(np.unique(pred)) == [1, 2, 3, 4]
    assert pd.crosstab(truth, pred).to_numpy().max(axis=1).sum() == len(truth)
    assert model.node_metacluster_[0] == 1  # numbered by lowest node index
    assert np.array_equal(model.predict(X), model.node_metacluster_[model.predict_nodes(X)])


def test_training_reduces_quantisation_error(blobs):
    X, _ = blobs
    codes = train_som(X, 4, 4, rlen=3, random_state=0)
    init = X[np.sort(np.random.default_rng(0).choice(len(X), 16, replace=False))]
    err = cdist(X, codes).min(axis=1).mean()
    assert codes.shape == (16, 5) and err < cdist(X, init).min(axis=1).mean()


@pytest.mark.parametrize("chunk", [1, 97, 4096, 10**6])
def test_mapping_is_exact_and_independent_of_chunks(blobs, chunk):
    X, _ = blobs
    rng = np.random.default_rng(1)
    codes = rng.uniform(0, 5, size=(30, 5))
    codes[7] = codes[3]  # an exact tie: the lowest index wins
    X = np.vstack([X[:2000], codes[3:4].astype(np.float32)])
    nodes, dist = nearest_nodes(X, codes, chunk_size=chunk, return_distance=True)
    direct = cdist(X.astype(np.float64), codes)
    assert np.array_equal(nodes, direct.argmin(axis=1))
    assert nodes[-1] == 3
    np.testing.assert_allclose(dist, direct.min(axis=1), atol=1e-9)


def test_streaming_equals_in_memory(blobs):
    X, _ = blobs
    model = FlowSOM(grid=(4, 4), n_metaclusters=3, rlen=2, random_state=0).fit(X)
    whole = model.predict(X)
    pieces = np.concatenate([model.predict(X[i:i + 333]) for i in range(0, len(X), 333)])
    assert np.array_equal(whole, pieces)


def test_dataframe_input_uses_fitted_column_order(blobs):
    X, _ = blobs
    df = pd.DataFrame(X, columns=list("abcde"))
    model = FlowSOM(grid=(4, 4), n_metaclusters=3, rlen=2, random_state=0).fit(df)
    assert list(model.feature_names_in_) == list("abcde")
    assert np.array_equal(model.predict(df[list("edcba")]), model.predict(X))


def test_consensus_and_relabel():
    codes = np.array([[0.0], [0.1], [5.0], [5.1], [10.0]])
    m = consensus_matrix(codes, 3, reps=20, random_state=0)
    assert m.shape == (5, 5) and np.allclose(np.diag(m), 1) and m[2, 3] == 1 and m[0, 4] == 0
    assert 0 < m[0, 1] < 1  # split whenever node 4 is left out of a resampling
    assert relabel_by_first_node(np.array([2, 2, 0, 1, 0])).tolist() == [0, 0, 1, 2, 1]


def test_bad_parameters_raise(blobs):
    X, _ = blobs
    with pytest.raises(ValueError):
        FlowSOM(grid=(3, 3), n_metaclusters=10).fit(X)
    with pytest.raises(ValueError):
        FlowSOM(grid=(100, 100)).fit(X[:50])


# --- annotation ------------------------------------------------------------------------

MEDIANS = pd.DataFrame(
    {  # arcsinh-like units: negative ~0.3, positive ~4-5; cluster 6 = CD14-dim granulocytes
        "CD3": [5.0, 5.0, 5.1, 0.3, 0.3, 0.3, 5.0, 0.3],
        "CD4": [4.5, 4.6, 0.3, 0.3, 0.3, 0.3, 4.6, 2.9],
        "CD8": [0.3, 0.3, 5.6, 0.3, 0.4, 0.3, 0.3, 0.3],
        "CD25": [4.4, 1.2, 0.5, 0.3, 2.4, 0.3, 1.3, 0.3],
        "CD127": [1.5, 4.0, 3.7, 0.3, 2.6, 0.3, 4.1, 0.3],
        "FOXP3": [4.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2],
        "CD19": [0.3, 0.3, 0.3, 4.8, 0.3, 0.3, 0.3, 0.3],
        "CD56": [0.3, 0.3, 0.3, 0.3, 6.0, 0.3, 0.3, 0.3],
        "CD16": [0.3, 0.3, 0.3, 0.3, 1.0, 5.6, 0.3, 1.2],
        "CD14": [0.3, 0.3, 0.3, 0.3, 0.3, 2.2, 0.3, 5.2],
    },
    index=pd.Index([1, 2, 3, 4, 5, 6, 7, 8], name="cluster"),
)


def test_annotation_names_populations_and_ranks_duplicates():
    spread = pd.Series(0.4, index=MEDIANS.columns)
    ann = annotate_clusters(MEDIANS, spread)
    assert ann["label"].tolist() == ["Treg", "CD4 Tconv", "CD8 T", "B cells", "NK CD56bright",
                                     "unassigned", "CD4 Tconv", "Classical monocytes"]
    assert 0.8 < ann.loc[1, "confidence"] < 1.0  # CD127 only 1.4 SD below its threshold
    assert ann.loc[2, "confidence"] == pytest.approx(1.0)
    assert ann.loc[6, "confidence"] == 0.0
    assert sorted(ann.loc[ann.label == "CD4 Tconv", "label_rank"]) == [1, 2]
    assert ((ann.confidence >= 0) & (ann.confidence <= 1)).all()


def test_annotation_margin_and_user_table(tmp_path):
    # a blurred FOXP3 (median 1 SD above the threshold at most) lowers the confidence
    blurred = MEDIANS.copy()
    blurred.loc[1, "FOXP3"] = 1.0
    spread = pd.Series(0.4, index=MEDIANS.columns)
    assert annotate_clusters(blurred, spread).loc[1, "confidence"] < 1.0
    table = tmp_path / "markers.yaml"
    table.write_text("populations:\n  Helper: CD3+ CD4+\n  Killer: CD3+ CD8hi\nthresholds: {CD4: 6.0}\n")
    ann = annotate_clusters(MEDIANS, spread, load_marker_table(table))
    assert ann["label"].tolist()[:3] == ["unassigned", "unassigned", "Killer"]


def test_bad_marker_table_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("populations:\n  Treg: CD3+ CD4*\n")
    with pytest.raises(UserError, match=r"bad.yaml: population 'Treg': rule 'CD4\*'"):
        load_marker_table(bad)


def test_otsu_threshold_splits_two_groups():
    assert otsu_threshold(np.array([0.2, 0.3, 0.4, 4.0, 4.5])) == pytest.approx(2.2)


def test_cluster_figures_draw_tables(tmp_path):
    from matplotlib.figure import Figure

    from immunomon.report.cluster_figures import draw_cluster_figures

    rng = np.random.default_rng(0)
    clusters = MEDIANS.reset_index()
    clusters.insert(1, "label", annotate_clusters(MEDIANS, pd.Series(0.4, index=MEDIANS.columns))["label"].values)
    clusters.insert(2, "n_cells", 10)
    emb = pd.DataFrame({"sample_id": rng.choice(["s1", "s2"], 200), "cluster": rng.integers(1, 9, 200)})
    emb["label"] = clusters.set_index("cluster").loc[emb.cluster, "label"].values
    emb["umap_1"], emb["umap_2"] = rng.normal(size=(2, 200))
    emb["CD3"] = rng.normal(size=200)
    emb["visit"] = rng.choice(["D1", "D8"], 200)
    emb["disease"] = "RA"
    figs = draw_cluster_figures({"embedding": emb, "clusters": clusters}, tmp_path, formats=("png", "pdf"))
    assert set(figs) == {"umap_clusters", "umap_panels", "cluster_heatmap"}
    assert all(isinstance(f, Figure) for f in figs.values())
    assert len(figs["umap_panels"].axes) >= 4  # cluster, visit, disease, CD3 (+ colour bar)
    for name in figs:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000 and (tmp_path / f"{name}.pdf").exists()
