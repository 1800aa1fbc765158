"""Batch effects end to end: simulator, validation, the normalise stage of a run, the batch
diagnostics and report section, and ``immunomon normalise`` against R CytoNorm's files."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from immunomon.io.fcs import read_fcs, read_fcs_metadata
from immunomon.pipeline.run import RunOptions, run_study
from immunomon.simulate import simulate_study
from immunomon.stats.batch import batch_diagnostics, cramers_v, omega_squared

DATA = Path(__file__).parent / "data" / "cytonorm"  # R outputs and references
REAL = Path(__file__).parent / "data" / "real" / "cytonorm"  # CytoNorm's example files
NORMALISE = "panels.treg.normalisation={method: cytonorm, quantiles: 99}"


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    """6 patients × D1, D8 in 2 batches (every D1 in B01, every D8 in B02), a bridge control
    per batch, a 0.3 batch effect."""
    return simulate_study(tmp_path_factory.mktemp("batch") / "study", patients=6,
                          visits=("D1", "D8"), events=3_000, seed=7, batches=2,
                          batch_effect=0.3, confound=1.0)


def test_simulated_batches_have_controls_and_leave_the_truth_alone(trial, tmp_path):
    samples = pd.read_csv(trial / "samples.csv")
    controls = samples[samples["control"]]
    assert sorted(controls["batch"]) == ["B01", "B02"] and set(controls["patient_id"]) == {"CTRL"}
    effects = pd.read_csv(trial / "truth" / "batch_effects.csv")
    assert len(effects) == 2 * 15 and effects["shift"].abs().max() > 0.1
    twin = simulate_study(tmp_path / "twin", patients=6, visits=("D1", "D8"), events=3_000,
                          seed=7, batches=2, batch_effect=0.0, confound=1.0)
    for name in ("parameters.csv", "populations.csv"):  # same biology, other batch effect
        assert (twin / "truth" / name).read_bytes() == (trial / "truth" / name).read_bytes()
    a, b = read_fcs(trial / "fcs" / "P001_D1.fcs").events, read_fcs(twin / "fcs" / "P001_D1.fcs").events
    assert np.array_equal(a[:, :4], b[:, :4]) and not np.array_equal(a[:, 4:], b[:, 4:])


def test_validate_names_each_normalisation_problem(trial, tmp_path, cli):
    from immunomon.io.fcs import write_fcs

    bad = shutil.copytree(trial, tmp_path / "bad")
    samples = pd.read_csv(bad / "samples.csv", dtype=str, keep_default_na=False)
    samples.loc[samples["sample_id"] == "CTRL_B02", "batch"] = "B03"
    samples.to_csv(bad / "samples.csv", index=False)
    f = read_fcs(bad / "fcs" / "CTRL_B01.fcs")
    keep = [j for j, n in enumerate(f.names) if n != "BV421-A"]
    write_fcs(bad / "fcs" / "CTRL_B01.fcs", f.events[:60, keep], [f.names[j] for j in keep],
              [f.labels[j] for j in keep])
    code, _, err = cli("validate", str(bad), "--set", NORMALISE)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 3 and "Traceback" not in err
    assert "line 14, column 'file'" in lines[0] and "'BV421-A' (marker CD25)" in lines[0]
    assert "batch 'B02' of panel 'treg' has no bridge control" in lines[1]
    assert "control CTRL_B01 has 60 events; 99 quantiles need at least 100" in lines[2]
    code, out, _ = cli("validate", str(trial), "--set", NORMALISE)
    assert code == 0


@pytest.fixture(scope="module")
def runs(trial, tmp_path_factory):
    """The trial run without and with normalisation."""
    opts = RunOptions(embed_cells=300, train_cells=6_000)
    plain = run_study(trial, tmp_path_factory.mktemp("plain") / "run", quiet=True, options=opts,
                      report=False)
    norm = run_study(trial, tmp_path_factory.mktemp("norm") / "run", quiet=True, options=opts,
                     overrides={"panels.treg.normalisation": "{method: cytonorm}"})
    return plain, norm


def _table(run, name):
    return pd.read_parquet(run / "tables" / f"{name}.parquet")


def test_run_normalises_and_diagnoses_batches(runs):
    plain, norm = runs
    assert not (plain / "tables" / "normalisation.parquet").exists()
    emd = _table(norm, "batch_emd").groupby(["group", "stage"])["emd"].mean()
    assert emd["controls", "normalised"] < 0.2 * emd["controls", "transformed"]
    assert emd["samples", "normalised"] < 0.5 * emd["samples", "transformed"]
    fit = _table(norm, "normalisation")
    assert set(fit["batch"]) == {"B01", "B02"} and fit["p"].nunique() == 99
    ext = _table(norm, "batch_extrapolation")
    assert ext["share"].between(0, 0.05).all() and set(ext["marker"]) == set(fit["marker"])
    warnings = _table(plain, "batch_warnings")
    assert "confounded" in set(warnings["kind"])  # fully confounded: batch share = visit share
    variance = _table(norm, "batch_variance").pivot_table(index="marker", columns=["stage", "factor"],
                                                          values="share")
    np.testing.assert_allclose(variance["transformed", "batch"], variance["transformed", "visit"])
    assert (variance["normalised", "batch"] < variance["transformed", "batch"]).mean() > 0.7
    # the normalised values reached the gates: controls' Treg % agree better across batches
    p = _table(norm, "parameters").set_index(["sample_id", "parameter"])["value"]
    q = _table(plain, "parameters").set_index(["sample_id", "parameter"])["value"]
    assert not np.allclose(p.loc[("CTRL_B01", "CD25 median in Treg")],
                           q.loc[("CTRL_B01", "CD25 median in Treg")])
    steps = {s["step"] for s in __import__("json").loads(
        (norm / "provenance.json").read_text())["steps"]}
    assert "normalise" in steps
    ae = _table(norm, "adverse_events_summary")
    assert set(ae.loc[ae["disease"] == "all", "n_at_risk"]) == {6}  # the control donor is no patient


def test_report_shows_the_batch_section(runs):
    plain, norm = runs
    html = (norm / "report.html").read_text()
    assert 'id="batches"' in html and "Normalisation splines" in html
    assert "Visits are confounded with batches" in html
    assert (norm / "figures" / "batch" / "batch_emd_treg.png").is_file()


def test_cached_rerun_gives_identical_tables(trial, runs, tmp_path):
    _, norm = runs
    again = run_study(trial, norm, quiet=True, report=False,
                      options=RunOptions(embed_cells=300, train_cells=6_000),
                      overrides={"panels.treg.normalisation": "{method: cytonorm}"})
    for name in ("normalisation", "batch_emd", "parameters"):
        assert (again / "tables" / f"{name}.csv").read_bytes() == \
            (norm / "tables" / f"{name}.csv").read_bytes()


def test_clustered_normalisation_reports_distances_within_clusters(trial, tmp_path):
    """With clustering, the controls' distances are also measured inside the normalisation's
    clusters (before and after), and the report shows them."""
    run = run_study(trial, tmp_path / "run", quiet=True,
                    options=RunOptions(embed_cells=300, train_cells=6_000),
                    overrides={"panels.treg.normalisation":
                               "{method: cytonorm, clustering: {grid: [3, 3], metaclusters: 3}}"})
    emd = _table(run, "batch_emd")
    assert set(emd["scope"]) == {"all events", "within clusters"}
    within = emd[emd["scope"] == "within clusters"]
    assert set(within["group"]) == {"controls"} and within["emd"].notna().all()
    mean = within.groupby("stage")["emd"].mean()
    assert mean["normalised"] < 0.5 * mean["transformed"]
    cq = _table(run, "batch_cluster_quantiles")
    assert set(cq["sample_id"]) == {"CTRL_B01", "CTRL_B02"} and cq["cluster"].between(1, 3).all()
    html = (run / "report.html").read_text()
    assert "<h4>Within the normalisation's clusters</h4>" in html


def test_diagnostics_statistics():
    rng = np.random.default_rng(0)
    g = np.repeat(["a", "b", "c"], 20)
    y = rng.normal(size=60) + np.repeat([0.0, 1.0, 2.0], 20)
    r = omega_squared(y, g)
    ss_b = sum(20 * (y[g == k].mean() - y.mean()) ** 2 for k in "abc")
    ms_w = sum(((y[g == k] - y[g == k].mean()) ** 2).sum() for k in "abc") / 57
    assert r["omega2"] == pytest.approx((ss_b - 2 * ms_w) / (((y - y.mean()) ** 2).sum() + ms_w))
    assert cramers_v(["D1", "D8"] * 10, ["B1", "B2"] * 10)[0] == pytest.approx(1.0)
    assert omega_squared(y, np.repeat("a", 60))["levels"] == 1
    samples = pd.DataFrame({"sample_id": ["s1", "s2"], "panel": "p", "batch": ["B1", "B1"],
                            "visit": ["D1", "D8"], "control": [False, False]})
    assert batch_diagnostics(samples, pd.DataFrame(columns=["sample_id", "marker", "stage",
                                                            "p", "value"])) == {}


def _cytonorm_study(root: Path) -> Path:
    """A study folder over CytoNorm's example files: 3 batches, `ref` files as controls."""
    meta = pd.read_csv(REAL / "metadata.csv")
    detectors = (REAL / "coding_detectors.txt").read_text().split()
    shutil.copytree(REAL / "fcs", root / "fcs")
    first = read_fcs_metadata(root / "fcs" / meta["file_name"].iloc[0])
    label = dict(zip(first.names, first.labels))
    channels = {c: {"marker": label[c] or c, "role": "marker"} for c in detectors}
    config = {"study_id": "CYTONORM", "visits": [{"name": "D1", "day": 1}],
              "panels": {"cytof": {"instrument": "mass", "channels": channels,
                                   "compensation": "none",
                                   "transform": {"type": "arcsinh", "cofactor": 5},
                                   "qc": {"steps": []},
                                   "normalisation": {"method": "cytonorm", "quantiles": 99}}}}
    (root / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    pd.DataFrame({"sample_id": meta["file_name"].str.replace(".fcs", "", regex=False),
                  "file": "fcs/" + meta["file_name"],
                  "patient_id": meta["file_name"].str.extract(r"(PTLG\d+)")[0],
                  "visit": "D1", "panel": "cytof", "batch": meta["batch"],
                  "control": meta["reference"] == "ref"}).to_csv(root / "samples.csv",
                                                                 index=False)
    return root


def test_normalise_cli_writes_r_cytonorm_values(tmp_path, cli):
    study = _cytonorm_study(tmp_path / "study")
    code, out, err = cli("normalise", str(study), "--out",
                          str(tmp_path / "out"))
    assert code in (None, 0), err
    detectors = (REAL / "coding_detectors.txt").read_text().split()
    meta = pd.read_csv(REAL / "metadata.csv")
    for name in meta.loc[meta["reference"] == "other", "file_name"]:
        src = read_fcs(study / "fcs" / name)
        mine = read_fcs(tmp_path / "out" / "fcs" / name)
        r = read_fcs(DATA / "r_normalised" / f"Norm_{name}")
        idx = [src.names.index(c) for c in detectors]
        asinh = lambda f: np.arcsinh(f.events[:, idx].astype(np.float64) / 5)  # noqa: E731
        assert np.abs(asinh(mine) - asinh(r)).max() < 1e-3
        others = [j for j in range(len(src.names)) if j not in idx]
        assert np.array_equal(mine.events[:, others], src.events[:, others])
        assert mine.names == src.names and mine.keywords["$CYT"] == src.keywords["$CYT"]
        assert "99 quantiles" in mine.keywords["IMMUNOMON_NORMALISATION"]
    table = pd.read_csv(tmp_path / "out" / "normalisation.csv")
    assert set(table["batch"]) == {1, 2, 3} and len(table) == 3 * 99 * len(detectors)


def test_written_files_read_back_as_the_normalised_events(trial, tmp_path):
    """Through the file's own $SPILLOVER: compensate + transform the written file = the
    normalised events of the run (every event), other channels unchanged."""
    from immunomon.pipeline.checks import load_checked
    from immunomon.pipeline.normalise import fit_panel, write_normalised
    from immunomon.pipeline.prepare import prepare_events, prepare_sample
    from immunomon.preprocess.qc import QualityControl
    from immunomon.preprocess.transforms import ArcsinhTransform

    study = load_checked(trial, overrides={"panels.treg.normalisation": "{method: cytonorm}"})
    write_normalised(study, tmp_path / "out", seed=7)
    expected = prepare_sample(study, "P002_D8", qc=QualityControl(steps=()),
                              normaliser=fit_panel(study, "treg", 7)).events
    f = read_fcs(tmp_path / "out" / "fcs" / "P002_D8.fcs")
    got = prepare_events(f.events, list(f.names), list(expected.columns), spillover=f.spillover,
                         transform=ArcsinhTransform(cofactor=150), qc=QualityControl(steps=()))
    assert np.abs(got.events.to_numpy() - expected.to_numpy()).max() < 1e-3
    src = read_fcs(trial / "fcs" / "P002_D8.fcs")
    assert np.array_equal(f.events[:, :4], src.events[:, :4])  # scatter and time
    assert f.spillover.equals(src.spillover)
