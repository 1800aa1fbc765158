"""Supervised statistics: one analysis scale per parameter, the MMRM primary analysis and its
sensitivity analyses, arms, cross-sectional groups, descriptive strata, responders, BH."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immunomon.simulate.study import analysis_plan
from immunomon.simulate.tables import VISITS, simulate_tables
from immunomon.stats import StatsOptions, analyze
from immunomon.stats.classical import _rank_sum_cdf, hodges_lehmann, signed_rank_p, two_group
from immunomon.stats.multiple import add_q, bh
from immunomon.stats.validation import check_run, check_tables

SUP = StatsOptions(per_disease=False)
PLAN = analysis_plan([v for v, _ in VISITS])


def _logit(pct):
    return np.log(pct / (100 - pct))


@pytest.fixture(scope="module")
def planted():
    """The default simulated trial (46 patients, 7 visits, planted effects) with the model
    trial's plan, pooled."""
    t = simulate_tables(seed=1)
    res = analyze({k: t[k] for k in ("samples", "parameters")}, baseline="D1", options=SUP,
                  plan=PLAN)
    return t, res


def _pairs(t, parameter, visit="D8"):
    s = t["samples"]
    s = s[s["qc_pass"] & (s["excluded_reason"] == "")]
    par = t["parameters"][t["parameters"]["parameter"] == parameter].merge(s, on="sample_id")
    return par.pivot(index="patient_id", columns="visit", values="value")[["D1", visit]].dropna()


def test_bh_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests
    p = np.random.default_rng(0).uniform(size=50) ** 2
    assert np.allclose(bh(p), multipletests(p, method="fdr_bh")[1])
    q = bh(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(q[1]) and np.allclose(q[[0, 2]], [0.02, 0.04])


def test_q_within_families_only():
    df = pd.DataFrame({"method": ["a", "a", "b"], "visit": "D8", "disease": "all",
                       "p": [0.01, 0.02, 0.01]})
    q = add_q(df, ["method", "visit", "disease"])["q"].to_numpy()
    assert np.allclose(q, [0.02, 0.02, 0.01])


def test_signed_rank_and_hodges_lehmann_match_scipy():
    rng = np.random.default_rng(1)
    for n in (7, 20, 60):
        d = rng.normal(0.3, 1, n)
        assert signed_rank_p(d) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-6)
        est, lo, hi = hodges_lehmann(d)
        walsh = [(d[i] + d[j]) / 2 for i in range(n) for j in range(i, n)]
        assert est == pytest.approx(np.median(walsh))
        assert lo < est < hi


def test_two_group_tests_match_scipy():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.4, 1.0, 9), rng.normal(0.0, 2.0, 12)
    w = two_group(x, y, "welch_t", True, "")
    ref = stats.ttest_ind(x, y, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert w["df"] == pytest.approx(ref.df, rel=1e-9)
    assert (w["ci_low"], w["ci_high"]) == pytest.approx(tuple(ref.confidence_interval()), rel=1e-9)
    r = two_group(x, y, "rank_sum", True, "")
    assert r["p"] == pytest.approx(stats.mannwhitneyu(x, y, method="exact").pvalue, rel=1e-9)
    assert r["estimate"] == pytest.approx(np.median(np.subtract.outer(x, y)))
    assert r["ci_low"] < r["estimate"] < r["ci_high"]
    # the exact U distribution against enumeration
    for m, n in ((3, 4), (2, 6)):
        u = [sum(j < i for i in c for j in range(m + n) if j not in c)
             for c in itertools.combinations(range(m + n), m)]
        cdf = [np.mean(np.array(u) <= k) for k in range(m * n + 1)]
        assert np.allclose(_rank_sum_cdf(m, n), cdf)


def test_one_scale_and_estimand_per_parameter(planted):
    """Percentages on the logit scale (odds ratio) for every method; paired t by hand."""
    t, res = planted
    sup = res["stats_supervised"]
    treg = sup[(sup["parameter"] == "Treg % of CD4 T") & (sup["visit"] == "D8")]
    assert set(treg["effect_scale"]) == {"odds ratio"}
    counts = sup[sup["parameter"] == "Treg count/uL"]
    assert set(counts["effect_scale"]) == {"fold change"}
    w = _pairs(t, "Treg % of CD4 T")
    d = _logit(w["D8"]) - _logit(w["D1"])
    row = treg[treg["method"] == "paired_t"].iloc[0]
    assert row["n"] == len(w) and row["df"] == len(w) - 1
    assert row["effect"] == pytest.approx(np.exp(d.mean()), rel=1e-9)
    assert row["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue, rel=1e-9)


def test_primary_analysis_is_the_mmrm(planted):
    t, res = planted
    sup = res["stats_supervised"]
    prim = sup[sup["role"] == "primary"]
    assert len(prim) == 1
    row = prim.iloc[0]
    assert (row["parameter"], row["visit"], row["method"]) == ("Treg % of CD4 T", "D8", "mmrm")
    assert row["covariance"] == "unstructured" and row["df_method"] == "Kenward-Roger"
    assert row["n"] + row["n_missing"] == t["samples"]["patient_id"].nunique()
    assert row["n"] - 3 < row["df"] < row["n"] + 3
    assert row["p_adjusted"] == row["p"] and np.isnan(row["q"])
    assert row["effect"] > 1.8 and row["ci_low"] < row["effect"] < row["ci_high"]
    sens = sup[(sup["parameter"] == "Treg % of CD4 T") & (sup["visit"] == "D8")
               & (sup["role"] == "sensitivity")]
    assert set(sens["method"]) == {"paired_t", "wilcoxon"}
    p_t = sens.set_index("method").loc["paired_t", "p"]
    assert abs(np.log10(row["p"]) - np.log10(p_t)) <= 2


def test_key_secondaries_fixed_sequence_behind_the_primary(planted):
    _, res = planted
    sup = res["stats_supervised"]
    prim = sup[sup["role"] == "primary"].iloc[0]
    ks = sup[sup["role"] == "key_secondary"].set_index("parameter")
    order = [e["parameter"] for e in PLAN["key_secondary"]["endpoints"]]
    assert list(ks.loc[order, "method"]) == ["mmrm"] * 3
    expected = np.maximum.accumulate(np.r_[prim["p_adjusted"], ks.loc[order, "p"]])[1:]
    assert np.allclose(ks.loc[order, "p_adjusted"], expected)
    assert ks["q"].isna().all()
    explo = sup[sup["role"] == "exploratory"]
    assert (explo["p_adjusted"].dropna() == explo["q"].dropna()).all()


def test_mmrm_is_the_paired_t_with_complete_data():
    """No missing visit: the within-arm MMRM (every visit a response, the baseline
    included) is the paired t — the same estimate, KR df = n - 1 and the same p. (With the
    baseline as a covariate, the change tested at the sample's mean baseline ignores its
    regression to the mean: p too small when visits correlate weakly.)"""
    t = simulate_tables(patients=20, seed=8, dropout=0.0, missing=0.0, qc_fail=0.0)
    t["samples"]["excluded_reason"] = ""
    par = t["parameters"][t["parameters"]["parameter"] == "CD8 T Ki67+ %"]
    res = analyze({"samples": t["samples"], "parameters": par}, baseline="D1", options=SUP)
    sup = res["stats_supervised"].set_index(["visit", "method"])
    for visit in ("D8", "D85"):
        mm, pt = sup.loc[(visit, "mmrm")], sup.loc[(visit, "paired_t")]
        assert mm["effect"] == pytest.approx(pt["effect"], rel=1e-9)
        assert mm["df"] == pytest.approx(19, rel=1e-6)
        assert mm["p"] == pytest.approx(pt["p"], rel=1e-4)
        assert mm["ci_low"] == pytest.approx(pt["ci_low"], rel=1e-5)


def test_within_arm_mmrm_is_calibrated_when_visits_correlate_weakly():
    """A null change (visits exchangeable, correlation 0.3, 24 patients, two visits): the
    MMRM rejects at the nominal rate (a baseline-covariate MMRM rejected ~10 %)."""
    rng = np.random.default_rng(11)
    hits = []
    for trial in range(300):
        z = rng.multivariate_normal([0, 0], [[1, 0.3], [0.3, 1]], size=24)
        pct = 100 / (1 + np.exp(-(-2.5 + 0.4 * z)))
        ids = [f"P{i:02d}" for i in range(24)]
        samples = pd.DataFrame({"sample_id": [f"{p}_{v}" for v in ("D1", "D8") for p in ids],
                                "patient_id": ids * 2, "visit": ["D1"] * 24 + ["D8"] * 24,
                                "day": [1] * 24 + [8] * 24, "disease": "all"})
        params = pd.DataFrame({"sample_id": samples["sample_id"], "parameter": "X %",
                               "measure": "percent", "value": pct.T.ravel()})
        sup = analyze({"samples": samples, "parameters": params}, baseline="D1",
                      options=StatsOptions(per_disease=False, supervised_methods=("mmrm",),
                                           tables=("stats_supervised",)))["stats_supervised"]
        hits.append(float(sup.loc[sup["method"] == "mmrm", "p"].iloc[0]) < 0.05)
    assert 0.02 <= np.mean(hits) <= 0.08, np.mean(hits)


def test_planted_effects_found_and_unchanged_parameters_quiet(planted):
    t, res = planted
    report = check_tables(res["stats_supervised"], t["effects"])
    assert len(report["planted"]) == 2 * 6  # 6 planted parameters x (mmrm, paired_t)
    assert report["planted"]["passed"].all(), report["planted"]
    assert report["null"]["m"].min() >= 10
    assert report["null"]["passed"].all(), report["null"]


def test_small_strata_are_descriptive_with_estimate_and_ci():
    t = simulate_tables(patients=22, seed=5)
    par = t["parameters"][t["parameters"]["parameter"].isin(["Treg % of CD4 T", "CD8 T Ki67+ %"])]
    res = analyze({"samples": t["samples"], "parameters": par}, options=StatsOptions())
    sup = res["stats_supervised"]
    per = sup[(sup["disease"] != "all") & (sup["parameter"] == "Treg % of CD4 T")
              & (sup["visit"] == "D8")]
    assert len(per) == 3 * 11
    assert per["p"].isna().all() and per["q"].isna().all()
    desc = per[per["status"] == "descriptive"]
    assert len(desc) > 20 and (per["status"].isin(["descriptive", "not estimable"])).all()
    assert desc["reason"].str.contains("< min_patients 6: descriptive").all(), desc["reason"]
    with_ci = desc[desc["method"] != "wilcoxon"]  # 2 pairs: no signed-rank interval
    assert np.isfinite(with_ci[["effect", "ci_low", "ci_high"]].to_numpy()).all()
    assert (desc["effect"] > 1).mean() > 0.8  # Tregs rise in (nearly) every disease
    assert (sup["p"].notna() | (sup["reason"] != "")).all()
    assert set(sup["status"]) <= {"ok", "descriptive", "not estimable"}
    # min_patients from the plan makes the same strata inferential
    res3 = analyze({"samples": t["samples"], "parameters": par}, plan={"min_patients": 2})
    per3 = res3["stats_supervised"].query("disease != 'all' and method == 'paired_t' "
                                          "and visit == 'D8' and n >= 2")
    assert len(per3) >= 8 and (per3["status"] == "ok").all()


def test_study_without_disease_has_no_disease_strata():
    t = simulate_tables(patients=8, seed=3)
    t["samples"]["disease"] = ""
    par = t["parameters"][t["parameters"]["parameter"] == "Treg % of CD4 T"]
    sup = analyze({"samples": t["samples"], "parameters": par})["stats_supervised"]
    assert set(sup["disease"]) == {"all"}
    assert not sup.duplicated(["parameter", "visit", "disease", "arm", "method"]).any()


def test_randomised_arms_compare_the_change_between_arms():
    t = simulate_tables(patients=30, seed=13, arms=("placebo", "ld-IL2"))
    par = t["parameters"][t["parameters"]["parameter"].isin(["Treg % of CD4 T", "CD8 T Ki67+ %"])]
    plan = {"control_arm": "placebo", "primary": [
        {"parameter": "Treg % of CD4 T", "visits": ["D8"], "comparison": "arm_difference"}]}
    sup = analyze({"samples": t["samples"], "parameters": par}, options=SUP,
                  plan=plan)["stats_supervised"]
    d8 = sup[(sup["visit"] == "D8") & (sup["parameter"] == "Treg % of CD4 T")]
    by = d8.set_index(["arm", "method"])
    assert set(d8["arm"]) == {"placebo", "ld-IL2", "ld-IL2 vs placebo"}
    diff = by.loc[("ld-IL2 vs placebo", "mmrm")]
    assert diff["role"] == "primary" and diff["comparison"] == "arm_difference"
    assert diff["p"] < 1e-6 and diff["effect"] > 1.5
    assert by.loc[("placebo", "mmrm"), "p"] > 0.001
    assert set(d8.loc[d8["comparison"] == "arm_difference", "method"]) == {"mmrm", "welch_t",
                                                                            "rank_sum"}
    # Welch t of the changes by hand
    s = t["samples"][t["samples"]["qc_pass"] & (t["samples"]["excluded_reason"] == "")]
    w = par[par["parameter"] == "Treg % of CD4 T"].merge(s, on="sample_id").pivot_table(
        index=["patient_id", "arm"], columns="visit", values="value")[["D1", "D8"]].dropna()
    ch = (_logit(w["D8"]) - _logit(w["D1"])).groupby(level="arm")
    x, y = ch.get_group("ld-IL2").to_numpy(), ch.get_group("placebo").to_numpy()
    welch = by.loc[("ld-IL2 vs placebo", "welch_t")]
    assert welch["effect"] == pytest.approx(np.exp(x.mean() - y.mean()), rel=1e-9)
    assert welch["p"] == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-9)


def test_cross_sectional_study_compares_groups_at_its_visit():
    t = simulate_tables(patients=24, seed=14, visits=(("D1", 1),))
    t["samples"]["disease"] = np.where(t["samples"]["patient_id"].str[-1].astype(int) % 2,
                                       "healthy", "SLE")
    par = t["parameters"][t["parameters"]["parameter"] == "CD4 T % of T cells"]
    res = analyze({"samples": t["samples"], "parameters": par}, baseline=None,
                  plan={"reference_group": "healthy"})
    sup = res["stats_supervised"]
    assert set(sup["comparison"]) == {"group_difference"}
    assert set(sup["disease"]) == {"SLE vs healthy"} and "responders" not in res
    s = t["samples"][t["samples"]["qc_pass"] & (t["samples"]["excluded_reason"] == "")]
    v = par.merge(s, on="sample_id")
    x = _logit(v.loc[v["disease"] == "SLE", "value"])
    y = _logit(v.loc[v["disease"] == "healthy", "value"])
    row = sup.set_index("method").loc["welch_t"]
    assert row["role"] == "exploratory"
    assert row["p"] == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-9)


def test_transformed_values_are_compared_as_differences():
    """A finite value_transformed (intensities) is analysed as a difference on that scale."""
    t = simulate_tables(patients=12, seed=15)
    par = t["parameters"][t["parameters"]["parameter"] == "CD25 median in Treg"].copy()
    par["value_transformed"] = np.arcsinh(par["value"] / 150)
    par["transform"] = "arcsinh(150)"
    sup = analyze({"samples": t["samples"], "parameters": par}, options=SUP)["stats_supervised"]
    assert set(sup["effect_scale"]) == {"difference (arcsinh(150))"}
    w = _pairs({"samples": t["samples"], "parameters": par}, "CD25 median in Treg")
    d = np.arcsinh(w["D8"] / 150) - np.arcsinh(w["D1"] / 150)
    row = sup.query("visit == 'D8' and method == 'paired_t'").iloc[0]
    assert row["effect"] == pytest.approx(d.mean(), rel=1e-9)
    assert row["ci_low"] < row["effect"] < row["ci_high"]


def test_responders_above_a_threshold_with_exact_ci(planted):
    t, res = planted
    w = _pairs(t, "CD8 T Ki67+ %")
    r = res["responders"].query("parameter == 'CD8 T Ki67+ %' and visit == 'D8' "
                                "and disease == 'all'").iloc[0]
    k = int((w["D8"] / w["D1"] >= 1.25).sum())
    assert (r["n"], r["n_responders"], r["threshold"]) == (len(w), k, 1.25)
    ci = stats.binomtest(k, len(w)).proportion_ci(method="exact")
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["fraction"] < 0.5  # an unchanged parameter: few responders above 1.25


def test_deterministic_output():
    def tables():
        t = simulate_tables(patients=8, seed=9, n_clusters=6)
        keep = list(PLAN["selectivity"]["targets"]) + list(PLAN["selectivity"]["off_targets"])
        t["parameters"] = t["parameters"][t["parameters"]["parameter"].isin(keep)]
        return t

    a = analyze(tables(), options=SUP, plan=PLAN)
    b = analyze(tables(), options=SUP, plan=PLAN)
    assert a.keys() == b.keys()
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])


def test_check_run_reads_a_run_directory_and_the_truth(planted, tmp_path):
    """``check_run`` finds ``tables/stats_supervised`` (parquet, else csv) of a run and
    ``truth/effects.csv`` of its study, and judges them as :func:`check_tables` does."""
    t, res = planted
    (tmp_path / "run" / "tables").mkdir(parents=True)
    (tmp_path / "study" / "truth").mkdir(parents=True)
    res["stats_supervised"].to_csv(tmp_path / "run" / "tables" / "stats_supervised.csv", index=False)
    t["effects"].to_csv(tmp_path / "study" / "truth" / "effects.csv", index=False)
    report = check_run(tmp_path / "run", tmp_path / "study")
    assert report["passed"], (report["planted"], report["null"])
    pd.testing.assert_frame_equal(report["planted"], check_tables(res["stats_supervised"],
                                                                  t["effects"])["planted"])
