"""The analysis plan: multiplicity procedures, roles, selectivity verdicts, and the plan
checker behind ``immunomon validate``."""

import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from statsmodels.stats.multitest import multipletests

from immunomon.cli import main
from immunomon.simulate import simulate_study
from immunomon.simulate.study import SELECTIVITY_OFF_TARGETS, SELECTIVITY_TARGETS, analysis_plan
from immunomon.simulate.tables import VISITS, simulate_tables
from immunomon.stats import StatsOptions, analyze
from immunomon.stats.plan import Plan, fixed_sequence, holm

VISIT_NAMES = [v for v, _ in VISITS]
SELECTIVITY = {"targets": ["Treg % of CD4 T", "Treg Ki67+ %", "Treg HLA-DR+ %"],
               "off_targets": ["CD4 Tconv Ki67+ %", "CD4 Tconv HLA-DR+ %", "CD8 T Ki67+ %",
                               "CD8 T HLA-DR+ %"], "margins": [0.8, 1.25]}
PLAN = {"primary": [{"parameter": "Treg % of CD4 T", "visits": ["D8"]}],
        "selectivity": SELECTIVITY}


def test_holm_matches_statsmodels_and_fixed_sequence_stops():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.005])
    ok = np.isfinite(p)
    got = holm(p)
    assert np.allclose(got[ok], multipletests(p[ok], method="holm")[1]) and np.isnan(got[3])
    assert np.allclose(fixed_sequence([0.01, 0.03, 0.02], gate=0.02), [0.02, 0.03, 0.03])
    seq = fixed_sequence([0.01, np.nan, 0.001])
    assert seq[0] == 0.01 and np.isnan(seq[1:]).all()   # testing stops at the gap


def test_plan_from_study_yaml_mapping_and_defaults():
    plan = Plan.of(analysis_plan(VISIT_NAMES, ("placebo", "ld-IL2")))
    assert plan.control_arm == "placebo" and plan.primary[0].comparison == "arm_difference"
    assert plan.primary[0].resolved_method == "mmrm"
    assert plan.key_secondary[0].resolved_method == "mmrm"
    assert Plan.of({"primary": [{"cluster": "Treg memory", "marker": "CD25"}]}).primary[0] \
        .resolved_method == "limma"
    assert Plan.of(None) is None
    assert "Treg" not in " ".join(Plan.of({}).parameters())


def _selectivity(**sim):
    t = simulate_tables(patients=30, seed=31, **sim)
    keep = set(SELECTIVITY["targets"]) | set(SELECTIVITY["off_targets"])
    par = t["parameters"][t["parameters"]["parameter"].isin(keep)]
    res = analyze({"samples": t["samples"], "parameters": par}, options=StatsOptions(
        per_disease=False), plan=PLAN)
    return res["selectivity"].set_index(["visit", "disease", "arm"]).loc[("D8", "all", "all")]


def test_selectivity_verdicts_follow_the_margins():
    """Treg response alone: selective; an effector parameter tripled: not selective;
    no treatment effect: no change."""
    sel = _selectivity()
    assert sel["verdict"] == "selective", sel["summary"]
    assert sel["n_off_within"] == sel["n_off_targets"] == 4 and sel["targets_changed"]
    tripled = _selectivity(off_target={"CD8 T Ki67+ %": 3.0})
    assert tripled["verdict"] == "not selective", tripled["summary"]
    assert tripled["n_off_beyond"] >= 1
    null = _selectivity(effect="none")
    assert null["verdict"] == "no change", null["summary"]
    assert "no change" in null["summary"] and "Treg" not in null["summary"].split(":")[0]


def test_no_plan_no_confirmatory_rows_and_no_selectivity():
    t = simulate_tables(patients=12, seed=32, n_clusters=4)
    par = t["parameters"][t["parameters"]["parameter"].isin(SELECTIVITY["targets"])]
    res = analyze({**t, "parameters": par}, options=StatsOptions(per_disease=False))
    assert "selectivity" not in res
    for name in ("stats_supervised", "stats_da", "stats_ds"):
        assert set(res[name]["role"]) <= {"exploratory", "sensitivity"}


def test_cluster_end_point_gets_the_primary_role():
    t = simulate_tables(patients=16, seed=33, n_clusters=8)
    t["parameters"] = t["parameters"][t["parameters"]["parameter"] == "Treg % of CD4 T"]
    plan = {"primary": [{"cluster": "Treg memory", "visits": ["D8"]}],
            "key_secondary": {"strategy": "holm", "endpoints": [
                {"parameter": "Treg % of CD4 T", "visits": ["D8"]},
                {"cluster": "Treg memory", "marker": "CD25", "visits": ["D8"]}]}}
    res = analyze(t, options=StatsOptions(per_disease=False, tables=(
        "stats_supervised", "stats_da", "stats_ds")), plan=plan)
    da = res["stats_da"]
    prim = da[da["role"] == "primary"]
    assert len(prim) == 1 and prim.iloc[0]["method"] == "edger_ql"
    assert prim.iloc[0]["p_adjusted"] == prim.iloc[0]["p"] < 1e-3
    ks_sup = res["stats_supervised"].query("role == 'key_secondary'")
    ks_ds = res["stats_ds"].query("role == 'key_secondary'")
    assert len(ks_sup) == len(ks_ds) == 1
    p = np.r_[ks_sup["p"], ks_ds["p"]]
    expected = np.maximum(holm(p), prim.iloc[0]["p_adjusted"])
    assert np.allclose(np.r_[ks_sup["p_adjusted"], ks_ds["p_adjusted"]], expected)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return simulate_study(tmp_path_factory.mktemp("plan") / "study", patients=4,
                          visits=("D1", "D8"), events=300, seed=5, arms=("placebo", "ld-IL2"))


def _validate(study, capsys, *sets) -> tuple[int, str]:
    """``immunomon validate --no-files`` as the console script runs it: (exit code, stderr)."""
    old, code = sys.argv, 0
    sys.argv = ["immunomon", "validate", str(study), "--no-files"]
    for s in sets:
        sys.argv += ["--set", s]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def test_simulated_plan_is_valid(study, capsys):
    code, err = _validate(study, capsys)
    assert code == 0, err
    plan = yaml.safe_load((study / "study.yaml").read_text())["analysis"]
    assert plan["selectivity"]["targets"] == list(SELECTIVITY_TARGETS)
    assert plan["selectivity"]["off_targets"] == list(SELECTIVITY_OFF_TARGETS)
    arms = pd.read_csv(study / "samples.csv").groupby("patient_id")["arm"].nunique()
    assert (arms == 1).all()


@pytest.mark.parametrize("setting, message", [
    ("analysis.primary.0.parameter=Treg % of CD8 T", "unknown parameter 'Treg % of CD8 T'"),
    ("analysis.primary.0.visits=[D9]", "unknown visit 'D9'"),
    ("analysis.control_arm=vehicle", "'vehicle' is not an arm of samples.csv"),
    ("analysis.selectivity.margins=[low, 1.25]", "margins.0: Input should be a valid number"),
    ("analysis.key_secondary.endpoints.0.method=lmm", "'lmm' is not a method of arm_difference"),
    ("analysis.selectivity.off_targets.0=CD8 T Ki67 %", "unknown parameter 'CD8 T Ki67 %'"),
])
def test_bad_plan_is_one_line_exit_2(study, setting, message, capsys):
    code, err = _validate(study, capsys, setting)
    assert code == 2
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith(str(study / "study.yaml")) and ", line " in lines[0]


def test_arm_without_patients(study, tmp_path, capsys):
    import shutil
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    s = pd.read_csv(copy / "samples.csv", dtype=str, keep_default_na=False)
    s["control"] = "false"
    bridge = s.iloc[[0]].assign(sample_id="BRIDGE1", patient_id="BRIDGE", arm="reference",
                                control="true", file="fcs/bridge.fcs")
    pd.concat([s, bridge]).to_csv(copy / "samples.csv", index=False)
    code, err = _validate(copy, capsys)
    assert code == 2
    assert "arm 'reference' has no patient" in err


def test_planned_end_point_missing_from_the_run_is_reported_and_gates():
    """A primary parameter the run does not report: one not-estimable primary row, and the
    key secondaries behind it are not tested."""
    t = simulate_tables(patients=8, seed=34)
    par = t["parameters"][t["parameters"]["parameter"] == "CD8 T Ki67+ %"]
    plan = {"primary": [{"parameter": "Treg % of CD8 T", "visits": ["D8"]}],
            "key_secondary": {"endpoints": [{"parameter": "CD8 T Ki67+ %", "visits": ["D8"]}]}}
    sup = analyze({"samples": t["samples"], "parameters": par},
                  options=StatsOptions(per_disease=False), plan=plan)["stats_supervised"]
    prim = sup[sup["role"] == "primary"].iloc[0]
    assert prim["parameter"] == "Treg % of CD8 T" and prim["status"] == "not estimable"
    assert "not in this run's tables" in prim["reason"]
    ks = sup[sup["role"] == "key_secondary"].iloc[0]
    assert np.isfinite(ks["p"]) and np.isnan(ks["p_adjusted"])
    assert "not tested" in ks["reason"]
