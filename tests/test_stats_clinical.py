"""Clinical change, clinical-immune correlation, adverse events, fold changes, PCA, and the
analyze() entry point."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immunomon.errors import UserError
from immunomon.simulate.tables import simulate_tables
from immunomon.stats import StatsOptions, analyze
from immunomon.stats.clinical import clinical_change
from immunomon.stats.safety import adverse_events_summary


@pytest.fixture(scope="module")
def small():
    t = simulate_tables(patients=14, seed=21)
    return t, analyze(t, baseline="D1", options=StatsOptions(supervised_methods=("paired_t",)))


def test_adverse_events_counts_by_hand():
    patients = pd.DataFrame({"patient_id": ["P1", "P2", "P3"], "disease": ["RA", "RA", "SLE"]})
    ae = pd.DataFrame({
        "USUBJID": ["P1", "P1", "P2", "P3"],
        "AEDECOD": ["Headache", "Headache", "Injection site reaction", "Appendicitis"],
        "AEBODSYS": ["Nervous", "Nervous", "General", "Infections"],
        "AETERM": ["headache", "headache", "ISR", "appendicitis"],
        "AESTDY": [2, 5, 1, 100],
        "AESEV": ["MILD", "MODERATE", "MILD", "SEVERE"],
        "AETOXGR": [np.nan, np.nan, np.nan, 4],
        "AESER": ["N", "N", "N", "Y"], "AEREL": ["Y", "Y", "RELATED", "N"]})
    s = adverse_events_summary(ae, patients).set_index(
        ["disease", "aebodsys", "aedecod", "grade", "serious", "related"])
    anyrow = ("all", "ANY", "ANY", "any", "any", "any")
    assert s.loc[anyrow, ["patients", "events", "n_at_risk"]].tolist() == [3, 4, 3]
    # P1: two headaches, worst grade 2 -> counted once, at grade 2
    assert s.loc[("RA", "Nervous", "Headache", "2", "any", "any"), "patients"] == 1
    assert s.loc[("RA", "Nervous", "Headache", "1", "any", "any"), ["patients", "events"]].tolist() == [0, 1]
    assert s.loc[("RA", "ANY", "ANY", "any", "any", "any"), "n_at_risk"] == 2
    # AETOXGR 4 -> grade 3; serious and not related
    assert s.loc[("SLE", "ANY", "ANY", "3", "any", "any"), "events"] == 1
    assert s.loc[("all", "ANY", "ANY", "any", "Y", "any"), "patients"] == 1
    assert s.loc[("all", "ANY", "ANY", "any", "any", "Y"), "patients"] == 2
    with pytest.raises(UserError):
        adverse_events_summary(ae.drop(columns="AEBODSYS"), patients)


def test_clinical_change_by_hand():
    clin = pd.DataFrame({"patient_id": ["P1", "P1", "P1", "P2"], "visit": ["D1", "D85", "D85", "D85"],
                         "score": ["DAS28", "DAS28", "CGI-E", "DAS28"], "value": [5.0, 3.5, 2.0, 4.0]})
    pats = pd.DataFrame({"patient_id": ["P1", "P2"], "disease": ["RA", "RA"]})
    ch = clinical_change(clin, pats, "D1").set_index(["patient_id", "score", "visit"])
    assert ch.loc[("P1", "DAS28", "D85"), "change"] == -1.5
    assert np.isnan(ch.loc[("P2", "DAS28", "D85"), "change"])
    assert ch.loc[("P2", "DAS28", "D85"), "reason"] == "no D1 value of this score"
    assert ch.loc[("P1", "CGI-E", "D85"), "reason"] != ""


def test_clinical_immune_is_spearman_of_fold_change_and_clinical_change(small):
    t, res = small
    ci = res["clinical_immune"]
    row = ci[(ci["score"] == "EQ-5D VAS") & (ci["parameter"] == "Treg % of CD4 T") & (ci["visit"] == "D85")].iloc[0]
    fc = res["fold_changes"].query("parameter == 'Treg % of CD4 T' and visit == 'D8'").set_index("patient_id")["log2fc"]
    ch = res["clinical_change"].query("score == 'EQ-5D VAS' and visit == 'D85'").set_index("patient_id")["change"].dropna()
    common = sorted(set(fc.index) & set(ch.index))
    assert row["n"] == len(common)
    assert row["rho"] == pytest.approx(stats.spearmanr(fc[common], ch[common]).statistic)
    cgi = ci[ci["score"] == "CGI-E"]
    assert (cgi["clinical_measure"] == "value").all()
    assert set(res["clinical_categories"]["score"]) == {"CGI-S", "CGI-E"}


def test_fold_changes_and_order(small):
    t, res = small
    fc = res["fold_changes"]
    assert set(fc["visit"]) <= {"D8", "D15", "D29", "D85", "D183", "D240"}
    n_par = fc["parameter"].nunique()
    assert sorted(fc.drop_duplicates("parameter")["parameter_order"]) == list(range(n_par))
    cols = fc.drop_duplicates(["patient_id", "visit"])
    assert sorted(cols["column_order"]) == list(range(len(cols)))
    # clustering puts the two Treg-fraction parameters that move together next to each other
    order = fc.drop_duplicates("parameter").set_index("parameter")["parameter_order"]
    assert abs(order["Treg % of CD4 T"] - order["Treg/CD4 Tconv ratio"]) == 1


def test_pca_scores(small):
    t, res = small
    p = res["pca"]
    kept = t["samples"][t["samples"]["qc_pass"] & (t["samples"]["excluded_reason"] == "")]
    assert len(p) == len(kept)
    assert np.allclose(p[["pc1", "pc2", "pc3"]].mean(), 0, atol=1e-9)
    var = res["pca_variance"]["explained_variance_ratio"].to_numpy()
    assert np.all(np.diff(var) <= 0) and var.sum() < 1
    assert np.allclose(np.var(p["pc1"], ddof=1) / np.var(p["pc2"], ddof=1), var[0] / var[1])


def test_analyze_tables_and_contracts(small):
    t, res = small
    expected = {"stats_supervised", "responders", "fold_changes", "pca",
                "pca_variance", "stats_da", "stats_ds", "clinical_change", "clinical_summary",
                "clinical_categories", "clinical_immune", "adverse_events_summary"}
    assert expected == set(res)  # no plan: no selectivity sets, no selectivity table
    cols = {"stats_supervised": ["parameter", "visit", "disease", "arm", "comparison", "method",
                                 "role", "n", "n_missing", "effect", "effect_scale", "ci_low",
                                 "ci_high", "df", "df_method", "covariance", "p", "p_adjusted",
                                 "q", "status", "reason"],
            "stats_da": ["cluster", "label", "visit", "disease", "arm", "comparison", "method",
                         "role", "log2fc", "ci_low", "ci_high", "p", "p_adjusted", "q", "status",
                         "reason"],
            "stats_ds": ["cluster", "label", "marker", "visit", "disease", "arm", "comparison",
                         "method", "role", "effect", "ci_low", "ci_high", "p", "p_adjusted", "q",
                         "status", "reason"],
            "responders": ["parameter", "visit", "disease", "arm", "n", "threshold",
                           "n_responders", "fraction", "ci_low", "ci_high"],
            "pca": ["sample_id", "pc1", "pc2", "pc3", "visit", "disease"],
            "adverse_events_summary": ["aebodsys", "aedecod", "grade", "serious", "related",
                                       "disease", "patients", "events", "n_at_risk"]}
    for name, c in cols.items():
        assert set(c) <= set(res[name].columns), name
    for name in ("stats_supervised", "stats_da", "stats_ds"):
        df = res[name]
        assert set(df["status"]) <= {"ok", "descriptive", "not estimable"}
        assert (df["p"].notna() | (df["reason"] != "")).all()
        assert set(df["role"]) <= {"exploratory", "sensitivity"}  # no plan: nothing confirmatory
        assert df.loc[df["status"] != "ok", "p"].isna().all()
    with pytest.raises(UserError):
        analyze({"samples": t["samples"]}, baseline="D0")
