"""gate_study on a simulated study: the tables written, determinism across workers, gate plots."""

import pandas as pd

from immunomon.gating.statistics import MARKERS_COLUMNS, PARAMETERS_COLUMNS, POPULATIONS_COLUMNS
from immunomon.io.study import load_study
from immunomon.pipeline.supervised import SUPERVISED_TABLES, gate_study, plot_sample_gates
from immunomon.preprocess.qc import QC_STEPS_COLUMNS

KEYS = {"populations": POPULATIONS_COLUMNS, "population_markers": MARKERS_COLUMNS,
        "parameters": PARAMETERS_COLUMNS, "qc_steps": QC_STEPS_COLUMNS}


def test_tables_are_written_with_their_key_columns(gated_small_study, small_study):
    out, tables = gated_small_study
    samples = load_study(small_study).samples["sample_id"].tolist()
    for name in SUPERVISED_TABLES:
        assert (out / "tables" / f"{name}.parquet").is_file() and (out / "tables" / f"{name}.csv").is_file()
        on_disk = pd.read_parquet(out / "tables" / f"{name}.parquet")
        pd.testing.assert_frame_equal(on_disk, tables[name])
        assert set(on_disk["panel"]) == {"treg"}
    for name, cols in KEYS.items():
        assert set(cols) <= set(tables[name].columns), name
    pops = tables["populations"]
    assert pops.groupby("sample_id").size().to_dict() == {s: 16 for s in samples}
    assert tables["qc_steps"].groupby("sample_id").size().eq(5).all()
    assert tables["population_markers"]["marker"].nunique() == 15
    assert not pops["abs_per_ul"].isna().any()  # the simulator gives lymphocyte counts
    cd4 = pops[pops["population"] == "CD4 T"]
    assert (cd4["path"] == "Cells/Singlets/Live/Lymphocytes/T cells/CD4 T").all()
    thr = tables["gate_thresholds"]
    assert set(thr["source"]) <= {"valley", "mad", "fixed", "override"}


def test_same_tables_with_two_workers(gated_small_study, small_study, tmp_path):
    out, _ = gated_small_study
    gate_study(small_study, tmp_path, workers=2)
    for name in SUPERVISED_TABLES:
        assert (tmp_path / "tables" / f"{name}.csv").read_bytes() == (out / "tables" / f"{name}.csv").read_bytes()


def test_gate_plot_png(small_study, tmp_path):
    png = plot_sample_gates(small_study, "P001_D8", tmp_path / "gates.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
