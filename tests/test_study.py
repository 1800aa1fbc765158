"""The study manifest: loading a generated study and catching every kind of problem."""

from __future__ import annotations

import shutil
import sys

import pandas as pd
import pytest
import yaml

from immunomon.cli import main
from immunomon.errors import UserError
from immunomon.io.fcs import read_fcs, write_fcs
from immunomon.io.study import SAMPLE_COLUMNS, load_study, validate_study
from immunomon.simulate import simulate_study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    return simulate_study(tmp_path_factory.mktemp("study") / "s", patients=4,
                          visits=("D1", "D8"), events=1000, seed=5)


@pytest.fixture
def broken(study_dir, tmp_path):
    """A fresh copy of the generated study, to break."""
    return shutil.copytree(study_dir, tmp_path / "copy")


def run_cli(args, capsys):
    old = sys.argv
    sys.argv = ["immunomon", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def edit_csv(path, fn):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df)
    df.to_csv(path, index=False)


def edit_yaml(path, fn):
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def problems_of(root):
    problems = validate_study(root)
    with pytest.raises(UserError) as err:
        load_study(root)
    assert err.value.problems == problems
    return problems


def test_generated_study_loads(study_dir):
    study = load_study(study_dir)
    assert list(study.samples.columns[:len(SAMPLE_COLUMNS)]) == list(SAMPLE_COLUMNS)
    assert len(study.samples) == 8
    assert study.config.baseline == "D1"
    assert [v.name for v in study.config.visits] == ["D1", "D8"]
    assert study.samples.set_index("sample_id").loc["P001_D8", "day"] == 8
    panel = study.config.panels["treg"]
    assert panel.gating.template == "treg"
    assert panel.transform.type == "arcsinh" and panel.transform.cofactor == 150
    assert panel.clustering.grid == (10, 10) and panel.clustering.metaclusters == 20
    assert "Viability" not in panel.clustering.markers and len(panel.clustering.markers) == 14
    path = study.path_of("P002_D1")
    assert path.is_absolute() and path.is_file()
    assert read_fcs(path).names == list(panel.channels)
    assert set(study.clinical.columns) >= {"patient_id", "visit", "score", "value"}
    assert set(study.adverse_events["USUBJID"]) <= set(study.samples["patient_id"])
    assert (study.samples["excluded_reason"] == "").all()


def test_cli_validate_accepts_generated_study(study_dir, capsys):
    code, out, err = run_cli(["validate", study_dir], capsys)
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 and "8 samples" in out and "valid" in out


def test_missing_file(broken):
    (broken / "fcs" / "P001_D8.fcs").unlink()
    [p] = problems_of(broken)
    assert "samples.csv, line 3, column 'file'" in p and "file not found" in p


def test_duplicate_sample_id(broken):
    edit_csv(broken / "samples.csv", lambda df: df.loc.__setitem__((2, "sample_id"), "P001_D1"))
    [p] = problems_of(broken)
    assert "line 4, column 'sample_id'" in p and "duplicate sample id 'P001_D1'" in p
    assert "line 2" in p


def test_patient_without_baseline(broken):
    edit_csv(broken / "samples.csv", lambda df: df.drop(index=2, inplace=True))
    [p] = problems_of(broken)
    assert "patient P002 has no baseline (D1) sample" in p and "column 'visit'" in p


def test_unknown_visit_and_panel(broken):
    def change(df):
        df.loc[1, "visit"] = "D9"
        df.loc[3, "panel"] = "bcell"
    edit_csv(broken / "samples.csv", change)
    problems = problems_of(broken)
    assert any("line 3, column 'visit'" in p and "unknown visit 'D9'" in p for p in problems)
    assert any("line 5, column 'panel'" in p and "unknown panel 'bcell'" in p
               for p in problems)


def test_channel_missing_from_file(broken):
    path = broken / "fcs" / "P003_D8.fcs"
    f = read_fcs(path)
    names = [n if n != "BV421-A" else "BV421-H" for n in f.names]
    write_fcs(path, f.events, names, f.labels)
    [p] = problems_of(broken)
    assert "line 7, column 'file'" in p and "channel 'BV421-A' (marker CD25)" in p


def test_marker_mapped_twice(broken):
    edit_yaml(broken / "study.yaml",
              lambda d: d["panels"]["treg"]["channels"]["BV510-A"].update(marker="CD3"))
    problems = problems_of(broken)
    assert any("study.yaml, line" in p and "marker 'CD3' is mapped twice" in p
               and "BUV395-A" in p for p in problems)


def test_adverse_event_subject_unknown(broken):
    edit_csv(broken / "adverse_events.csv", lambda df: df.loc.__setitem__((0, "USUBJID"), "X9"))
    [p] = problems_of(broken)
    assert "adverse_events.csv, line 2, column 'USUBJID'" in p and "unknown subject 'X9'" in p


def test_bad_yaml(broken):
    (broken / "study.yaml").write_text("study_id: SIM\nvisits: [\n  {name: D1\n")
    [p] = problems_of(broken)
    assert "study.yaml, line" in p and "not valid YAML" in p


def test_missing_required_field_and_unknown_key(broken):
    def change(d):
        del d["baseline"]
        d["panels"]["treg"]["clustering"]["metaclusterz"] = 3
    edit_yaml(broken / "study.yaml", change)
    problems = problems_of(broken)
    assert any("baseline: required field is missing" in p for p in problems)
    assert any("panels.treg.clustering.metaclusterz: unknown field" in p and ", line " in p
               for p in problems)


def test_clinical_and_exclusion_problems(broken):
    edit_csv(broken / "clinical.csv", lambda df: df.loc.__setitem__((0, "value"), "high"))
    edit_yaml(broken / "study.yaml", lambda d: d.update(
        exclusions=[{"sample_id": "P009_D1", "reason": "haemolysed"}]))
    problems = problems_of(broken)
    assert any("clinical.csv, line 2, column 'value'" in p for p in problems)
    assert any("exclusions.0.sample_id: unknown sample 'P009_D1'" in p for p in problems)


def test_exclusion_is_loaded(broken):
    edit_yaml(broken / "study.yaml", lambda d: d.update(
        exclusions=[{"sample_id": "P001_D8", "reason": "haemolysed"}]))
    study = load_study(broken)
    reasons = study.samples.set_index("sample_id")["excluded_reason"]
    assert reasons["P001_D8"] == "haemolysed" and (reasons.drop("P001_D8") == "").all()
    assert len(study.kept) == 7


def test_cli_lists_every_problem_at_once(broken, capsys):
    (broken / "fcs" / "P001_D8.fcs").unlink()
    edit_csv(broken / "adverse_events.csv", lambda df: df.loc.__setitem__((0, "USUBJID"), "X9"))
    edit_csv(broken / "samples.csv", lambda df: df.loc.__setitem__((5, "visit"), "D99"))
    code, out, err = run_cli(["validate", broken], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    assert any("file not found" in x for x in lines)
    assert any("unknown subject" in x for x in lines)
    assert any("unknown visit 'D99'" in x for x in lines)


def test_panel_qc_settings_reach_prepare(broken):
    """study.yaml's panel ``qc`` block sets the QC of every file of that panel."""
    from immunomon.pipeline.prepare import prepare_sample

    study = load_study(broken)
    sid = study.samples["sample_id"].iloc[0]
    default = prepare_sample(study, sid)
    assert list(default.qc_steps["step"]) == ["margins", "time", "doublets", "debris", "dead"]

    edit_yaml(broken / "study.yaml", lambda d: d["panels"]["treg"].update(
        qc={"steps": ["doublets", "dead"], "doublet_mad": 1.0, "max_loss": 0.01}))
    tuned = prepare_sample(load_study(broken), sid)
    assert list(tuned.qc_steps["step"]) == ["doublets", "dead"]
    assert "median + 1 MAD" in tuned.qc_steps["reason"].iloc[0]
    doublets = lambda p: int(p.qc_steps.set_index("step").loc["doublets", "events_removed"])  # noqa: E731
    assert doublets(tuned) > doublets(default)  # a tighter doublet gate removes more
    assert not tuned.qc_pass  # more than 1 % lost


def test_panel_qc_settings_are_validated(broken):
    edit_yaml(broken / "study.yaml", lambda d: d["panels"]["treg"].update(
        qc={"steps": ["doublets", "coffee"], "max_loss": 2, "dead_bound": [1, 4]}))
    text = "\n".join(problems_of(broken))
    assert "qc.steps.1" in text and "'debris', 'dead', 'beads', 'dna' or 'gaussian'" in text
    assert "qc.max_loss" in text
    assert "qc.dead_bound" in text  # misspelt key: unknown field


# ------------------------------------------------------- study format shared by every stage
def test_set_overrides_apply_before_validation(broken):
    study = load_study(broken, overrides={"analysis.min_patients": "3",
                                          "panels.treg.clustering.grid": "[4, 5]"})
    assert study.config.analysis.min_patients == 3
    assert study.config.panels["treg"].clustering.grid == (4, 5)
    assert study.overrides == {"analysis.min_patients": "3",
                               "panels.treg.clustering.grid": "[4, 5]"}
    problems = validate_study(broken, overrides={"analysis.min_patients": "many",
                                                 "visits.9.day": "3"})
    assert any("visits.9.day" in p and "not one of its indexes" in p for p in problems)
    problems = validate_study(broken, overrides={"analysis.min_patients": "many"})
    assert any("analysis.min_patients" in p and "integer" in p for p in problems)


def test_arm_control_and_optional_baseline(broken):
    def arms(df):
        df["arm"] = "placebo"
        df.loc[1, "arm"] = "ld-IL2"          # P001_D8: patient P001 changes arm
        df["control"] = "no"
        df.loc[2, "control"] = "maybe"
    edit_csv(broken / "samples.csv", arms)
    problems = problems_of(broken)
    assert any("column 'arm'" in p and "patient P001" in p for p in problems)
    assert any("column 'control'" in p and "'maybe' is not true or false" in p for p in problems)

    # a bridge control needs no baseline sample
    def control_only_at_d8(df):
        df["arm"] = ""
        df["control"] = (df["patient_id"] == "P001").map({True: "true", False: ""})
        df.drop(df.index[(df["patient_id"] == "P001") & (df["visit"] == "D1")], inplace=True)
    edit_csv(broken / "samples.csv", control_only_at_d8)
    study = load_study(broken)
    assert study.samples.loc[study.samples["patient_id"] == "P001", "control"].all()
    assert not study.samples.loc[study.samples["patient_id"] != "P001", "control"].any()

    # one visit: baseline may be left out; two visits: it is required
    def single_visit(d):
        del d["baseline"]
        d["visits"] = d["visits"][1:]
    edit_yaml(broken / "study.yaml", single_visit)
    for table in ("samples.csv", "clinical.csv"):
        edit_csv(broken / table, lambda df: df.drop(df.index[df["visit"] == "D1"], inplace=True))
    assert load_study(broken).config.baseline is None


def test_validate_set_option(broken, capsys):
    code, out, err = run_cli(["validate", broken, "--set", "analysis.min_patients=1"], capsys)
    assert code == 2 and "analysis.min_patients" in err and "Traceback" not in err
    code, out, err = run_cli(["validate", broken, "--set", "analysis.min_patients=3"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["validate", broken, "--set", "nonsense"], capsys)
    assert code == 2 and "expected KEY=VALUE" in err
