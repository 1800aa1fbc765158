"""End to end: a small simulated trial through ``run_study``, checked against ``truth/``.

One study (6 patients x 3 visits x 2,000 events, one sample excluded in study.yaml) is
simulated once per module and run once in-process (the reference). Other tests re-run it
killed midway and resumed, on a Dask ``LocalCluster``, and with a changed statistics
option, and compare the tables byte for byte with the reference.
"""

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from immunomon.pipeline.cache import sha256_file
from immunomon.pipeline.run import SAMPLE_COLUMNS, RunOptions, run_study
from immunomon.simulate import simulate_study

OPTIONS = RunOptions(embed_cells=600)
EXCLUDED = ("P002_D15", "clotted sample")
#: Key columns of the architecture's run-directory tables.
REQUIRED = {
    "samples": SAMPLE_COLUMNS,
    "qc_steps": ["sample_id", "step", "events_in", "events_removed", "reason"],
    "populations": ["sample_id", "population", "path", "parent", "count", "freq_parent",
                    "freq_total", "abs_per_ul"],
    "population_markers": ["sample_id", "population", "marker", "median", "geo_mean",
                           "pct_positive"],
    "parameters": ["sample_id", "parameter", "population", "measure", "value"],
    "clusters": ["cluster", "label", "confidence", "n_cells"],
    "cluster_counts": ["sample_id", "cluster", "label", "count"],
    "cluster_markers": ["sample_id", "cluster", "marker", "median"],
    "embedding": ["sample_id", "cluster", "umap_1", "umap_2"],
    "stats_supervised": ["parameter", "visit", "disease", "method", "n", "effect", "p", "q",
                         "status", "reason"],
}


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _csvs(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "tables").glob("*.csv"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = simulate_study(tmp_path_factory.mktemp("trial") / "study", patients=6,
                          visits=("D1", "D8", "D15"), events=2_000, seed=3)
    config = yaml.safe_load((root / "study.yaml").read_text())
    config["exclusions"] = [{"sample_id": EXCLUDED[0], "reason": EXCLUDED[1]}]
    (root / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def reference(study, tmp_path_factory):
    """The reference run (in-process) and the input digests taken before it."""
    before = _digests(study)
    run_dir = run_study(study, tmp_path_factory.mktemp("ref") / "run", quiet=True,
                        options=OPTIONS)
    return run_dir, before


def test_run_directory_contract(reference):
    run_dir, _ = reference
    for name, columns in REQUIRED.items():
        table = pd.read_parquet(run_dir / "tables" / f"{name}.parquet")
        assert set(columns) <= set(table.columns), name
        assert (run_dir / "tables" / f"{name}.csv").is_file()
    assert (run_dir / "report.html").stat().st_size > 0
    assert any((run_dir / "figures").iterdir())
    assert "prepare done" in (run_dir / "run.log").read_text()


def test_inputs_unchanged_and_checksummed(study, reference):
    run_dir, before = reference
    assert _digests(study) == before
    provenance = json.loads((run_dir / "provenance.json").read_text())
    recorded = {i["path"]: i["sha256"] for i in provenance["inputs"]}
    fcs_and_manifest = {k: v for k, v in before.items() if not k.startswith("truth/")}
    assert recorded == fcs_and_manifest
    assert provenance["seed"] == 3 and provenance["versions"]["immunomon"]
    assert provenance["started"] <= provenance["finished"]


def test_identifying_keywords_never_leave_the_files(study, reference):
    run_dir, _ = reference
    text = (run_dir / "provenance.json").read_text() + (run_dir / "report.html").read_text()
    # the simulator writes $SRC = patient id and $SMNO = sample id into every file
    assert "$SRC" not in text and "$SMNO" not in text and "$OP" not in text
    acquisition = json.loads((run_dir / "provenance.json").read_text())["acquisition"]
    assert {k for keywords in acquisition.values() for k in keywords} <= {
        "$CYT", "$CYTSN", "$DATE", "$BTIM", "$ETIM", "$TOT"}


def test_samples_lists_exclusions_and_counts(study, reference):
    run_dir, _ = reference
    samples = pd.read_parquet(run_dir / "tables" / "samples.parquet")
    manifest = pd.read_csv(study / "samples.csv")
    assert list(samples["sample_id"]) == list(manifest["sample_id"])
    row = samples.set_index("sample_id").loc[EXCLUDED[0]]
    assert row["excluded_reason"] == EXCLUDED[1]
    kept = samples[samples["excluded_reason"] == ""]
    assert (kept["events_total"] == 2_000).all()
    assert (kept["events_after_qc"] <= kept["events_total"]).all()
    parameters = pd.read_parquet(run_dir / "tables" / "parameters.parquet")
    assert EXCLUDED[0] not in set(parameters["sample_id"])
    counts = pd.read_parquet(run_dir / "tables" / "cluster_counts.parquet")
    assert set(counts["sample_id"]) == set(kept["sample_id"])


def test_treg_percentage_matches_truth(study, reference):
    run_dir, _ = reference
    parameters = pd.read_parquet(run_dir / "tables" / "parameters.parquet")
    truth = pd.read_csv(study / "truth" / "parameters.csv")
    name = "Treg % of CD4 T"
    got = parameters[parameters["parameter"] == name].set_index("sample_id")["value"]
    want = truth[truth["parameter"] == name].set_index("sample_id")["value"].reindex(got.index)
    assert len(got) == 17
    assert (got - want).abs().max() < 1.0  # percentage points, at ~30 Tregs per file


def test_stats_rows_have_status(reference):
    run_dir, _ = reference
    stats = pd.read_parquet(run_dir / "tables" / "stats_supervised.parquet")
    assert len(stats) and set(stats["status"]) <= {"ok", "descriptive", "not estimable"}
    assert (stats.loc[stats["status"] != "ok", "reason"].astype(str).str.len() > 0).all()
    ok = stats[stats["status"] == "ok"]
    assert ok["p"].between(0, 1).all() and ok["q"].dropna().between(0, 1).all()
    assert (ok["q"].notna() | ok["role"].isin(["primary", "key_secondary", "sensitivity"])).all()


def test_stats_option_reruns_only_statistics(study, reference, tmp_path):
    run_dir, _ = reference
    rerun = run_study(study, tmp_path / "run", cache_dir=run_dir / ".cache", quiet=True,
                      report=False, options=RunOptions(embed_cells=600, stats={"alpha": 0.1}))
    steps = {s["step"]: s for s in json.loads((rerun / "provenance.json").read_text())["steps"]}
    assert steps["prepare"]["cached"] == steps["prepare"]["samples"] == 17
    assert steps["map"]["cached"] == steps["map"]["samples"]
    assert steps["stats"]["cached"] == 0
    assert _csvs(rerun)["parameters.csv"] == _csvs(run_dir)["parameters.csv"]


def test_kill_midway_then_resume_gives_identical_tables(study, reference, tmp_path):
    run_dir, _ = reference
    out = tmp_path / "run"
    code = ("import sys; from immunomon.pipeline.run import RunOptions, run_study; "
            "run_study(sys.argv[1], sys.argv[2], quiet=True, options=RunOptions(embed_cells=600))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(study), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((out / ".cache" / "prepare").rglob("*.pkl")):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "tables" / "stats_supervised.csv").exists()
    run_study(study, out, workers=2, quiet=True, report=False, options=OPTIONS)
    steps = {s["step"]: s for s in json.loads((out / "provenance.json").read_text())["steps"]}
    assert 1 <= steps["prepare"]["cached"] < steps["prepare"]["samples"]
    assert _csvs(out) == _csvs(run_dir)


def test_dask_local_cluster_gives_identical_tables(study, reference, tmp_path):
    from distributed import LocalCluster

    run_dir, _ = reference
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        out = run_study(study, tmp_path / "run", scheduler=cluster.scheduler_address,
                        quiet=True, report=False, options=OPTIONS)
    assert _csvs(out) == _csvs(run_dir)


def test_two_panels_and_a_sample_failing_qc(study, reference, tmp_path):
    """A second panel (own gating and clustering) on copies of 6 files, one made of debris."""
    from immunomon.io.fcs import read_fcs, write_fcs

    root = tmp_path / "study"
    shutil.copytree(study, root, ignore=shutil.ignore_patterns("truth"))
    config = yaml.safe_load((root / "study.yaml").read_text())
    config["panels"]["treg_b"] = config["panels"]["treg"]
    (root / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    manifest = pd.read_csv(root / "samples.csv")
    extra = manifest[manifest["visit"].isin(["D1", "D8"])].head(6).copy()
    extra["sample_id"] += "_B"
    extra["panel"] = "treg_b"
    extra["file"] = "fcs/" + extra["sample_id"] + ".fcs"
    for src, dst in zip(manifest.loc[extra.index, "file"], extra["file"]):
        shutil.copy(root / src, root / dst)
    pd.concat([manifest, extra]).to_csv(root / "samples.csv", index=False)
    debris = extra["sample_id"].iloc[0]
    fcs = read_fcs(root / extra["file"].iloc[0])
    events = fcs.events.copy()
    events[: int(0.8 * len(events)), :3] *= 0.02  # scatter of debris in 80 % of the events
    write_fcs(root / extra["file"].iloc[0], events, fcs.names, fcs.labels,
              ranges=list(fcs.channels["range"]), spillover=fcs.spillover)

    out = run_study(root, tmp_path / "run", quiet=True, report=False, options=OPTIONS)
    tables = {n: pd.read_parquet(out / "tables" / f"{n}.parquet")
              for n in ("samples", "clusters", "cluster_counts", "stats_supervised")}
    row = tables["samples"].set_index("sample_id").loc[debris]
    assert not row["qc_pass"] and row["excluded_reason"].startswith("failed QC")
    assert set(tables["clusters"]["panel"]) == {"treg", "treg_b"}
    counted = tables["cluster_counts"].groupby("panel")["sample_id"].agg(set)
    assert counted["treg_b"] == set(extra["sample_id"]) - {debris}
    assert set(tables["stats_supervised"]["panel"]) == {"treg", "treg_b"}


def test_one_visit_one_group_report_describes_without_empty_sections(tmp_path):
    """Another lab's study: one sample per patient, one visit, no disease or arm. Nothing is
    compared, so the report has no change-over-visits, statistics, differential or batch
    section (no 'not available' notes), and its methods say the samples are described."""
    study = simulate_study(tmp_path / "study", patients=4, visits=("D1",), events=2000, seed=3)
    samples = pd.read_csv(study / "samples.csv").drop(columns=["disease", "batch"])
    samples.to_csv(study / "samples.csv", index=False)
    run = run_study(study, tmp_path / "run", quiet=True, options=RunOptions(embed_cells=1000))
    assert len(pd.read_parquet(run / "tables" / "parameters.parquet"))
    assert pd.read_parquet(run / "tables" / "stats_supervised.parquet").empty
    page = (run / "report.html").read_text()
    sections = set(re.findall(r'<section id="([^"]+)">', page))
    assert {"overview", "pca", "clusters", "methods", "provenance"} <= sections
    assert not sections & {"primary", "kinetics", "volcano", "foldchange", "differential",
                           "batches", "citeseq", "selectivity"}
    assert 'class="missing"' not in page
    assert "one visit and one group: the samples are described, nothing is compared" in page
