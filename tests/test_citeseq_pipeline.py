"""CITE-seq through the study, the statistics and the report: expert-label accuracy on the
ADTnorm 10x PBMC samples, a simulated pooled trial (Treg expansion, planted DE genes), a
null trial, determinism."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from immunomon.pipeline.checks import load_checked
from immunomon.pipeline.citeseq import cluster_citeseq_panel, prepare_citeseq_sample
from immunomon.pipeline.run import RunOptions, run_study
from immunomon.report.methods import methods_paragraphs
from immunomon.report.rundata import load_run
from immunomon.simulate.citeseq import simulate_citeseq

ADTNORM = Path(__file__).parent / "data" / "citeseq" / "adtnorm_10x_pbmc"
MARKERS = ["CD3", "CD4", "CD8", "CD14", "CD19", "CD25", "CD45RA", "CD56", "CD127"]
L1 = {"B": ["B cells"], "CD4 T": ["CD4 T", "Treg", "CD4 Tconv"], "CD8 T": ["CD8 T"],
      "monocytes": ["Monocytes"], "NK": ["NK", "NK CD56bright", "NK CD56dim"]}


@pytest.fixture(scope="module")
def adtnorm(tmp_path_factory):
    """The four samples as a cross-sectional study; (study, prepared samples, tables)."""
    root = tmp_path_factory.mktemp("adtnorm")
    samples = sorted(p for p in ADTNORM.iterdir() if p.is_dir())
    (root / "study.yaml").write_text(yaml.safe_dump({
        "study_id": "ADTNORM", "visits": [{"name": "V1", "day": 1}],
        "panels": {"cite": {"assay": "citeseq", "features": {
            m: {"marker": m, "class": "type"} for m in MARKERS}}}}))
    pd.DataFrame({"sample_id": [p.name for p in samples], "file": [str(p) for p in samples],
                  "patient_id": [p.name for p in samples], "visit": "V1", "panel": "cite"}
                 ).to_csv(root / "samples.csv", index=False)
    study = load_checked(root)
    prepared = [prepare_citeseq_sample(study, p.name) for p in samples]
    return study, prepared, cluster_citeseq_panel(study, "cite", prepared, seed=0,
                                                  embed_cells=400)


def test_adtnorm_expert_labels(adtnorm):
    """>= 95 % of B/CD4 T/CD8 T/monocytes/NK cells per sample get their label; Treg F1 >= 0.8
    on samples with >= 50 Tregs (the issue's targets; CLR, no raw matrix here)."""
    from sklearn.metrics import f1_score

    study, prepared, tables = adtnorm
    assert all(p.normalisation.startswith("CLR") for p in prepared)
    cells = tables["cells"]
    for sid, part in cells.groupby("sample_id"):
        truth = pd.read_csv(ADTNORM / sid / "cell_labels.csv").set_index("barcode")
        t = truth.loc[part["barcode"]]
        l1, pred = t["cell_type_l1"].to_numpy(), part["population"].to_numpy()
        scored = np.isin(l1, list(L1))
        hit = np.zeros(len(part), bool)
        for name, pops in L1.items():
            hit |= (l1 == name) & np.isin(pred, pops)
        removed = truth.drop(part["barcode"])  # QC-removed cells count as misses
        misses = np.isin(removed["cell_type_l1"], list(L1)).sum()
        assert hit[scored].sum() / (scored.sum() + misses) >= 0.95, sid
        treg = t["cell_type_l2"].to_numpy() == "Treg"
        if treg.sum() >= 50:
            assert f1_score(treg, pred == "Treg") >= 0.8, sid
    pops = tables["populations"]
    assert {"Treg", "CD4 T", "B cells"} <= set(pops["population"])
    tr = pops[pops["population"] == "Treg"]
    assert (tr["parent"] == "CD4 T").all() and tr["freq_parent"].between(0.01, 0.15).all()


def test_clustering_is_deterministic(adtnorm):
    """Same inputs and seed: the same tables, whatever the neighbour-search threads."""
    study, prepared, tables = adtnorm
    again = cluster_citeseq_panel(study, "cite", prepared, seed=0, embed_cells=400, n_jobs=2)
    for name in ("clusters", "cluster_counts", "cluster_markers", "cells", "embedding"):
        pd.testing.assert_frame_equal(tables[name], again[name])


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cite_planted")
    study = simulate_citeseq(root / "study", patients=8, visits=("D1", "D8"), cells=1000,
                             genes=40, pool=2, empty=1500, seed=11)
    return study, run_study(study, root / "run", quiet=True,
                            options=RunOptions(embed_cells=3000))


def test_simulated_trial_finds_treg_expansion_and_planted_genes(planted_run):
    study, run = planted_run
    t = run / "tables"
    da = pd.read_parquet(t / "stats_da.parquet")
    treg = da[(da["label"] == "Treg") & (da["method"] == "edger_ql") &
              (da["disease"] == "all") & (da["visit"] == "D8")]
    assert len(treg) and (treg["q"] < 0.05).any() and (treg["log2fc"] > 0.5).all()
    de = pd.read_parquet(t / "stats_de.parquet")
    ok = de[(de["status"] == "ok") & (de["disease"] == "all")]
    planted = set(pd.read_csv(study / "truth" / "de_genes.csv")["gene"])
    found = ok[(ok["q"] < 0.05) & ok["label"].isin(["CD4 Tconv", "CD4 T"])]
    assert planted <= set(found["gene"])
    false = ok[(ok["q"] < 0.05) & ~ok["gene"].isin(planted)]
    assert len(false) <= 0.05 * (~ok["gene"].isin(planted)).sum()
    sup = pd.read_parquet(t / "stats_supervised.parquet")  # cell-level populations too
    row = sup[(sup["parameter"] == "Treg % of CD4 T") & (sup["visit"] == "D8") &
              (sup["disease"] == "all") & (sup["method"] == "paired_t")]
    assert len(row) == 1 and row["effect"].iloc[0] > 1.3


def test_simulated_trial_tables_qc_provenance_report(planted_run):
    study, run = planted_run
    t = run / "tables"
    qc = pd.read_parquet(t / "qc_steps.parquet")
    assert {"hashtag", "adt_total", "rna_umis", "rna_genes", "mito", "rna_doublets"} <= \
        set(qc["step"])
    hashtag = qc[qc["step"] == "hashtag"]
    assert (hashtag["status"] == "ran").all() and (hashtag["events_removed"] > 0).all()
    samples = pd.read_parquet(t / "samples.parquet")
    assert samples["qc_pass"].all() and (samples["events_after_qc"] > 400).all()
    cells = pd.read_parquet(t / "cells.parquet")
    truth = pd.read_csv(study / "truth" / "cells.csv")
    merged = cells.merge(truth, on=["barcode"], suffixes=("", "_truth"))
    merged = merged[merged["file"] == merged["sample_id"].map(
        pd.read_csv(study / "samples.csv").set_index("sample_id")["file"])]
    assert (merged["sample_id"] == merged["sample_id_truth"]).mean() > 0.97  # demultiplexed
    treg = merged["cell_type"] == "Treg"
    assert (merged.loc[treg, "population"] == "Treg").mean() > 0.8
    import json

    prov = json.loads((run / "provenance.json").read_text())
    assert any(i["path"].endswith("filtered_feature_bc_matrix/matrix.mtx.gz")
               for i in prov["inputs"])
    assert all(v.startswith("dsb") for v in prov["citeseq"]["normalisation"].values())
    html = (run / "report.html").read_text()
    assert "CITE-seq: cell QC, markers and pseudobulk expression" in html
    assert "could not be drawn" not in html
    methods = " ".join(methods_paragraphs(load_run(run)))
    assert "demultiplexed HTODemux-style" in methods and "Pseudobulk RNA counts" in methods
    assert "spillover" not in methods and "self-organising map" not in methods


def test_methods_text_states_only_what_ran():
    """No hashtag, no RNA: the CITE-seq methods name neither demultiplexing, RNA filters,
    RNA doublets nor pseudobulk tests."""
    from types import SimpleNamespace

    from immunomon.report.sections_citeseq import methods_text

    qc = pd.DataFrame({"step": ["hashtag", "adt_total", "rna_umis", "rna_doublets"],
                       "status": ["skipped", "ran", "skipped", "skipped"]})
    tables = {"qc_steps": qc}
    run = SimpleNamespace(provenance={"citeseq": {"normalisation": {"s1": "CLR across cells"},
                                                  "marker_table": {"cite": "built-in"}}},
                          get=tables.get)
    text = methods_text(run)
    assert "CLR across cells" in text and "log ADT totals" in text
    for absent in ("demultiplexed", "RNA UMIs", "scrublet", "Pseudobulk"):
        assert absent not in text


def test_null_trial_is_calibrated(tmp_path):
    study = simulate_citeseq(tmp_path / "study", patients=6, visits=("D1", "D8"), cells=600,
                             genes=40, empty=1000, effect="none", seed=12)
    run = run_study(study, tmp_path / "run", quiet=True, report=False,
                    options=RunOptions(embed_cells=1000))
    da = pd.read_parquet(run / "tables" / "stats_da.parquet")
    assert not (da.loc[da["method"] == "edger_ql", "q"] < 0.05).any()
    de = pd.read_parquet(run / "tables" / "stats_de.parquet")
    p = de.loc[(de["status"] == "ok") & (de["disease"] == "all"), "p"]
    assert len(p) > 200 and stats.kstest(p, "uniform").pvalue > 0.001
    assert 0.01 < (p < 0.05).mean() < 0.1


def test_knn_graph_is_umaps_fuzzy_simplicial_set():
    """The numpy graph weights equal umap-learn's (compiled already by the runs above)."""
    from scipy import sparse
    from umap.umap_ import fuzzy_simplicial_set

    from immunomon.clustering.graph import knn, knn_graph

    X = np.random.default_rng(0).normal(size=(2000, 9))
    X[:5] = X[5]  # duplicated cells: zero distances
    idx, dist = knn(X, 15)
    ref, _, _ = fuzzy_simplicial_set(sparse.coo_matrix((2000, 1)), 15,
                                     np.random.RandomState(0), "euclidean",
                                     knn_indices=idx, knn_dists=dist)
    assert abs(knn_graph(idx, dist) - ref).max() < 1e-5
