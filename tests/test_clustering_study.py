"""Study-level clustering on the simulated study: Treg metacluster, streaming, workers, CLI."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from immunomon.cli import app
from immunomon.clustering import FlowSOM
from immunomon.clustering.metrics import adjusted_rand_score, mean_f1
from immunomon.io.fcs import write_fcs
from immunomon.pipeline.unsupervised import cluster_study, map_sample, train, training_subsample

DATA = Path(__file__).parent / "data" / "clustering"
runner = CliRunner()
TREG = ("Treg naive", "Treg memory")  # most specific truth labels of Tregs


@pytest.fixture(scope="module")
def trained(small_study):
    """(model, {sample_id: PreparedSample}) trained on 2,000 events per sample."""
    from immunomon.io.study import load_study
    from immunomon.pipeline.prepare import prepare_sample

    study = load_study(small_study)
    prepared = {sid: prepare_sample(study, sid) for sid in study.samples["sample_id"]}
    markers = list(study.config.panels["treg"].clustering.markers)
    subsamples = [training_subsample(p, 2_000, seed=1) for p in prepared.values()]
    return train(subsamples, markers, grid=(10, 10), k=20, seed=1), prepared


def test_treg_metacluster_found_and_named(trained, small_study):
    model, prepared = trained
    clusters, truth = [], []
    for sid, p in prepared.items():
        clusters.append(model.som.predict(p.events[model.markers]))
        pop = pd.read_parquet(small_study / "truth" / "events" / f"{sid}.parquet")["population"]
        truth.append(pop.to_numpy()[p.keep])
    clusters, truth = np.concatenate(clusters), np.concatenate(truth).astype(str)
    treg_fraction = pd.Series(np.isin(truth, TREG)).groupby(clusters).mean()
    pure = treg_fraction[treg_fraction >= 0.8].index
    assert len(pure) >= 1
    labels = model.clusters.set_index("cluster")["label"]
    assert (labels[pure] == "Treg").all()
    # and the Treg-labelled metaclusters hold most true Tregs
    assert np.isin(truth[np.isin(clusters, labels.index[labels == "Treg"])], TREG).mean() >= 0.8


def test_quality_on_simulated_study_matches_flowsom_package(trained, small_study):
    """ARI / mean F1 against the simulator's truth, median over seeds 0-9, versus the
    ``flowsom`` package's medians stored by ``benchmarks/flowsom_quality_reference.py``."""
    _, prepared = trained
    ref = json.loads((DATA / "flowsom_reference.json").read_text())
    markers = trained[0].markers
    X = np.vstack([p.events[markers].to_numpy(np.float64) for p in prepared.values()])
    truth = np.concatenate([
        pd.read_parquet(small_study / "truth" / "events" / f"{sid}.parquet")["population"].to_numpy()[p.keep]
        for sid, p in prepared.items()]).astype(str)
    aris, f1s = [], []
    for seed in ref["seeds"]:
        clusters = FlowSOM(grid=(10, 10), n_metaclusters=ref["small_study"]["k"], random_state=seed).fit_predict(X)
        aris.append(adjusted_rand_score(truth, clusters))
        f1s.append(mean_f1(truth, clusters))
    assert np.median(aris) >= ref["small_study"]["flowsom_median_ari"] - 0.01
    assert np.median(f1s) >= ref["small_study"]["flowsom_median_mean_f1"] - 0.01


def test_map_sample_streams_like_in_memory(trained):
    model, prepared = trained
    sid, p = next(iter(prepared.items()))
    out = map_sample(model, p, embed_n=50, seed=1)
    whole = model.som.predict(p.events[model.markers])
    counts = out["cluster_counts"]
    assert counts["cluster"].tolist() == list(range(1, 21))
    assert counts["count"].tolist() == np.bincount(whole, minlength=21)[1:].tolist()
    assert counts["count"].sum() == p.events_after_qc
    cm = out["cluster_markers"]
    treg = model.clusters.loc[model.clusters.label == "Treg", "cluster"].iloc[0]
    expect = p.events.loc[whole == treg, "FOXP3"].median()
    assert cm.query("cluster == @treg and marker == 'FOXP3'")["median"].iloc[0] == pytest.approx(expect)
    assert len(out["embedding"]) == 50 and set(out["embedding"]["sample_id"]) == {sid}


def test_training_subsample_is_balanced_and_seeded(trained):
    _, prepared = trained
    p = next(iter(prepared.values()))
    a, b = training_subsample(p, 300, seed=5), training_subsample(p, 300, seed=5)
    assert len(a) == 300 and a.equals(b) and (a["sample_id"] == p.sample_id).all()
    assert not a.equals(training_subsample(p, 300, seed=6))
    assert len(training_subsample(p, 10**9, seed=5)) == p.events_after_qc


def _first_two_pcs(X, random_state=0):
    """Cheap stand-in for UMAP (whose numba compilation costs about a minute of CPU)."""
    X = X - X.mean(axis=0)
    return (X @ np.linalg.svd(X, full_matrices=False)[2][:2].T).astype(np.float32)


@pytest.mark.slow
def test_umap_embedding_is_seeded():
    from immunomon.clustering.embedding import umap_embedding

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.3, (150, 4)), rng.normal(3, 0.3, (150, 4))])
    a, b = umap_embedding(X, random_state=3), umap_embedding(X, random_state=3)
    assert a.shape == (300, 2) and np.array_equal(a, b)
    centre = a[:150].mean(axis=0), a[150:].mean(axis=0)
    assert np.linalg.norm(centre[0] - centre[1]) > 3 * a[:150].std(axis=0).max()


def test_study_cli_and_workers_give_identical_tables(small_study, tmp_path, monkeypatch):
    monkeypatch.setattr("immunomon.pipeline.unsupervised.umap_embedding", _first_two_pcs)
    res = runner.invoke(app, ["cluster", str(small_study), "--out", str(tmp_path / "a"), "--embed-cells", "300"])
    assert res.exit_code == 0, res.output
    tables = cluster_study(small_study, tmp_path / "b", workers=2, embed_cells=0)
    assert tables["embedding"].empty
    for name in ("clusters", "cluster_counts", "cluster_markers"):
        a = pd.read_parquet(tmp_path / "a" / "tables" / f"{name}.parquet")
        assert (tmp_path / "a" / "tables" / f"{name}.csv").exists()
        pd.testing.assert_frame_equal(a, tables[name])
    emb = pd.read_parquet(tmp_path / "a" / "tables" / "embedding.parquet")
    assert len(emb) == 300
    assert list(emb.columns[:5]) == ["sample_id", "cluster", "label", "umap_1", "umap_2"]
    assert {"visit", "disease", "panel"} <= set(emb.columns) and np.isfinite(emb[["umap_1", "umap_2"]]).all().all()
    clusters = tables["clusters"]
    assert clusters["cluster"].tolist() == list(range(1, 21)) and "Treg" in set(clusters["label"])
    assert clusters["n_cells"].sum() == tables["cluster_counts"]["count"].sum()


@pytest.fixture(scope="module")
def transformed_fcs(tmp_path_factory):
    """A transformed FCS file with 3 populations in channels A/B/C ($PnS x, y, z)."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=3000)
    X = (np.array([[0, 0, 4], [4, 0, 0], [0, 4, 4]])[truth] + rng.normal(0, 0.3, (3000, 3))).astype(np.float32)
    events = np.column_stack([rng.uniform(0, 1e5, 3000).astype(np.float32), X])
    path = tmp_path_factory.mktemp("cli") / "t.fcs"
    write_fcs(path, events, ["FSC-A", "A", "B", "C"], ["", "x", "y", "z"])
    return path, X


def test_cli_file_mode_writes_one_label_per_event(transformed_fcs, tmp_path):
    path, X = transformed_fcs
    out = tmp_path / "labels.csv"
    res = runner.invoke(app, ["cluster", str(path), "--channels", "A,y,C", "--metaclusters", "3",
                              "--seed", "2", "--grid", "5x5", "--labels", str(out)])
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == "metacluster" and len(lines) == 3001
    expect = FlowSOM(grid=(5, 5), n_metaclusters=3, random_state=2).fit_predict(X)
    assert np.array_equal(np.array(lines[1:], dtype=int), expect)


def test_cli_errors_exit_2(transformed_fcs, tmp_path, monkeypatch, capsys):
    from immunomon.cli import main

    path, _ = transformed_fcs
    for argv, message in [(["--channels", "A,nope", "--labels", tmp_path / "o.csv"], "no channel 'nope'"),
                          ([], "needs --labels")]:
        monkeypatch.setattr("sys.argv", ["immunomon", "cluster", str(path), *map(str, argv)])
        with pytest.raises(SystemExit) as info:
            main()
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and "Traceback" not in err
