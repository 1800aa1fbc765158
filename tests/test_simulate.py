"""The trial simulator: files other readers accept, determinism, truth, planted effects."""

from __future__ import annotations

import filecmp

import numpy as np
import pandas as pd
import pytest

from immunomon.errors import UserError
from immunomon.io.fcs import read_fcs
from immunomon.simulate import simulate_study
from immunomon.simulate.clinical import clinical_tables
from immunomon.simulate.events import ARTEFACTS, simulate_events
from immunomon.simulate.model import make_patient, rng_for, sample_state
from immunomon.simulate.panel import CHANNELS, LABELS, MARKERS, spillover_matrix
from immunomon.simulate.truth import HIERARCHY

flowio = pytest.importorskip("flowio")
flowkit = pytest.importorskip("flowkit")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return simulate_study(tmp_path_factory.mktemp("sim") / "s", patients=6,
                          visits=("D1", "D8"), events=4000, seed=11)


def truth_events(root, sid):
    return pd.read_parquet(root / "truth" / "events" / f"{sid}.parquet")


def compensated(f):
    """Compensated fluorescence of an FCSFile (n, 15), columns in spillover order."""
    spill = f.spillover
    idx = [f.names.index(c) for c in spill.columns]
    return f.events[:, idx].astype(np.float64) @ np.linalg.inv(spill.to_numpy())


def test_layout(study):
    for name in ("study.yaml", "samples.csv", "clinical.csv", "adverse_events.csv",
                 "truth/populations.csv", "truth/parameters.csv", "truth/effects.csv"):
        assert (study / name).is_file(), name
    samples = pd.read_csv(study / "samples.csv")
    assert len(samples) == 12 and samples["disease"].nunique() == 6
    for sid in samples["sample_id"]:
        assert (study / "fcs" / f"{sid}.fcs").is_file()
        assert (study / "truth" / "events" / f"{sid}.parquet").is_file()


def test_files_read_by_immunomon_flowio_and_flowkit(study):
    path = study / "fcs" / "P001_D8.fcs"
    f = read_fcs(path)
    assert f.version == "3.1"
    assert f.names == list(CHANNELS) and f.labels == list(LABELS)
    assert f.events.shape == (4000, 19)
    np.testing.assert_allclose(f.spillover.to_numpy(), spillover_matrix())
    assert list(f.spillover.columns) == list(CHANNELS[4:])

    fd = flowio.FlowData(str(path))
    assert fd.event_count == 4000 and fd.channel_count == 19
    np.testing.assert_array_equal(
        np.asarray(fd.as_array(preprocess=False), dtype=np.float32), f.events)

    sample = flowkit.Sample(str(path))
    assert sample.pnn_labels == list(CHANNELS)
    assert sample.pns_labels == list(LABELS)
    raw = sample.get_events(source="raw")
    np.testing.assert_array_equal(np.delete(raw, 3, axis=1).astype(np.float32),
                                  np.delete(f.events, 3, axis=1))
    np.testing.assert_allclose(raw[:, 3], f.events[:, 3] * 0.01, rtol=1e-6)  # $TIMESTEP
    sample.apply_compensation(sample.metadata["spillover"])
    comp = sample.get_events(source="comp")[:, 4:]
    np.testing.assert_allclose(comp, compensated(f), rtol=1e-4, atol=1e-2)


def test_compensated_values_look_like_cytometry(study):
    f = read_fcs(study / "fcs" / "P002_D1.fcs")
    comp = compensated(f)
    assert (comp < 0).mean() > 0.05            # negative populations spread below zero
    assert f.events[:, 4:].max() < 262144      # within the instrument range
    pop = truth_events(study, "P002_D1")["population"].astype(str).to_numpy()
    cd4, cd8 = MARKERS.index("CD4"), MARKERS.index("CD8")
    x = np.arcsinh(comp / 150)
    assert np.median(x[pop == "CD4 Tconv", cd4]) > 4 > np.median(x[pop == "CD8 T", cd4])
    assert np.median(x[pop == "CD8 T", cd8]) > 4 > np.median(x[pop == "CD4 Tconv", cd8])


def test_deterministic_bytes_and_workers(tmp_path):
    kw = dict(patients=2, visits=("D1", "D15"), events=800, seed=3)
    a = simulate_study(tmp_path / "a", **kw)
    b = simulate_study(tmp_path / "b", workers=2, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 5 + 4 + 4 + 1 + 2  # tables, fcs, parquet, study.yaml, clinical/AE
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in files], shallow=False)
    assert mismatch == [] and errors == []
    c = simulate_study(tmp_path / "c", **{**kw, "seed": 4})
    assert not filecmp.cmp(a / "fcs" / "P001_D1.fcs", c / "fcs" / "P001_D1.fcs", shallow=False)


def test_citeseq_simulation_is_byte_identical_at_another_time(tmp_path):
    """Same seed, a second later: the same bytes, gzip members of the matrices included
    (their header holds no write time)."""
    import time

    from immunomon.simulate.citeseq import simulate_citeseq

    kw = dict(patients=2, visits=("D1", "D8"), cells=100, genes=20, pool=2, empty=150, seed=5)
    a = simulate_citeseq(tmp_path / "a", **kw)
    time.sleep(1.1)
    b = simulate_citeseq(tmp_path / "b", **kw)
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert any(f.endswith("matrix.mtx.gz") for f in files)
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(files)


def test_truth_counts_match_labels(study):
    pops = pd.read_csv(study / "truth" / "populations.csv")
    params = pd.read_csv(study / "truth" / "parameters.csv")
    assert list(pops["population"].unique()) == list(HIERARCHY)
    for sid in ("P001_D1", "P004_D8"):
        t = truth_events(study, sid)
        assert len(t) == 4000
        good = t.loc[t["artefact"] == "none", "population"].astype(str)
        leaves = good.value_counts()

        def count(pop):
            return sum(n for leaf, n in leaves.items() if _within(leaf, pop))

        got = pops.loc[pops["sample_id"] == sid].set_index("population")
        for pop in HIERARCHY:
            assert got.loc[pop, "count"] == count(pop), pop
        assert got.loc["Cells", "count"] == len(good)
        p = params.loc[params["sample_id"] == sid].set_index("parameter")["value"]
        assert p["Treg % of CD4 T"] == pytest.approx(100 * count("Treg") / count("CD4 T"),
                                                     rel=1e-5)
        # artefacts carry the population they truly are in
        by = t.groupby("artefact", observed=True)["population"].agg(lambda s: set(s.astype(str)))
        assert by["debris"] == {"Other"} and by["doublet"] == {"Cells"}
        assert by["dead"] == {"Singlets"}


def _within(leaf, pop):
    while leaf is not None:
        if leaf == pop:
            return True
        leaf = HIERARCHY.get(leaf)
    return False


def test_artefacts_are_where_qc_looks(study):
    f = read_fcs(study / "fcs" / "P003_D1.fcs")
    t = truth_events(study, "P003_D1")["artefact"].astype(str).to_numpy()
    ratio = f.events[:, 0] / np.maximum(f.events[:, 1], 1)
    assert np.median(ratio[t == "doublet"]) > 1.4 > np.quantile(ratio[t == "none"], 0.99)
    assert np.median(f.events[t == "debris", 0]) < 0.3 * np.median(f.events[t == "none", 0])
    viab = np.arcsinh(compensated(f)[:, MARKERS.index("Viability")] / 150)
    assert np.median(viab[t == "dead"]) > 3.5 > np.quantile(viab[t == "none"], 0.99)


def test_time_anomaly_is_a_fast_dim_contiguous_segment():
    patient = make_patient("P001", "RA", rng_for(0, "patient", "P001"))
    seen = 0
    for k in range(12):
        rng = rng_for(0, "events", str(k))
        sim = simulate_events(sample_state(patient, 1, rng=rng), 5000, rng,
                              spillover_matrix(), np.ones(18))
        idx = np.flatnonzero(sim.artefact == ARTEFACTS.index("time_anomaly"))
        assert np.all(np.diff(sim.events[:, 3]) >= 0)  # Time increases
        if len(idx):
            seen += 1
            assert np.all(np.diff(idx) == 1)
            gaps = np.diff(sim.events[:, 3])
            assert np.median(gaps[idx[:-1]]) < 0.4 * np.median(gaps)
    assert 0 < seen < 12


def test_planted_effect_in_truth(study, tmp_path):
    def treg_ratio(root):
        p = pd.read_csv(root / "truth" / "parameters.csv")
        p = p.loc[p["parameter"] == "Treg % of CD4 T"].copy()
        p[["patient", "visit"]] = p["sample_id"].str.split("_", expand=True)
        w = p.pivot(index="patient", columns="visit", values="value")
        return w["D8"] / w["D1"]

    ratio = treg_ratio(study)
    assert (ratio > 1).all() and ratio.median() > 1.5
    null = simulate_study(tmp_path / "null", patients=6, visits=("D1", "D8"), events=4000,
                          seed=11, effect="none")
    assert 0.8 < treg_ratio(null).median() < 1.25
    eff = pd.read_csv(study / "truth" / "effects.csv").set_index("parameter")
    assert eff.loc["Treg % of CD4 T", "fold_change"] == pytest.approx(2.0)
    assert eff.loc["Treg % of CD4 T", "kind"] == "planted"
    for name in ("CD8 T Ki67+ %", "CD4 Tconv HLA-DR+ %", "CD25 median in CD4 Tconv"):
        assert eff.loc[name, "fold_change"] == 1.0 and eff.loc[name, "kind"] == "none"
    assert (pd.read_csv(null / "truth" / "effects.csv")["fold_change"] == 1.0).all()


def test_effect_size_scales_log_fold_changes(tmp_path):
    root = simulate_study(tmp_path / "h", patients=1, visits=("D1", "D8", "D240"), events=200,
                          seed=1, effect_size=0.5)
    eff = pd.read_csv(root / "truth" / "effects.csv").set_index(["parameter", "visit"])
    assert eff.loc[("Treg % of CD4 T", "D8"), "log2_fold_change"] == pytest.approx(0.5)
    assert 0 < eff.loc[("Treg % of CD4 T", "D240"), "log2_fold_change"] < 0.1


def test_batches_are_not_confounded_with_visit(tmp_path):
    root = simulate_study(tmp_path / "b", patients=10, visits=("D1", "D8", "D15", "D29", "D85",
                          "D183", "D240"), events=100, seed=2)
    s = pd.read_csv(root / "samples.csv")
    assert s["batch"].nunique() == 3
    assert (s.groupby("batch")["visit"].nunique() >= 5).all()
    assert s["disease"].nunique() == 10


def test_bad_arguments_are_user_errors(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UserError) as err:
        simulate_study(tmp_path / "full", visits=("D1", "week2"), effect="strong")
    text = "\n".join(err.value.problems)
    assert "week2" in text and "strong" in text and "not empty" in text


def test_clinical_and_adverse_events_tables():
    visits = [("D1", 1), ("D8", 8), ("D85", 85), ("D240", 240)]
    cohort = [make_patient(f"P{i:03d}", d, rng_for(7, "patient", str(i)))
              for i, d in enumerate(["RA", "SLE", "UC", "AIH"] * 10)]
    clinical, ae = clinical_tables(cohort, visits, "S", "planted", 1.0, seed=7)
    scores = clinical.groupby("visit")["score"].agg(set)
    assert {"DAS28", "SLEDAI", "Mayo", "ALT", "CRP", "CGI-S", "EQ-5D"} <= scores["D1"]
    assert "CGI-E" in scores["D85"] and "CGI-E" not in scores["D1"] | scores["D8"]
    assert set(ae["USUBJID"]) <= {p.patient_id for p in cohort}
    assert (ae["AESEV"] == "MILD").mean() > 0.7 and (ae["AESTDY"] <= 7).mean() > 0.5
    assert not ((ae["AESER"] == "Y") & (ae["AEREL"] != "NOT RELATED")).any()
    das = clinical.loc[clinical["score"] == "DAS28"].pivot(index="patient_id", columns="visit",
                                                           values="value")
    assert (das["D85"] - das["D1"]).median() < 0  # a weak improvement
