"""Supervised statistics: paired tests, LMM, BH, not-estimable strata, planted effects."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immunomon.simulate.tables import simulate_tables
from immunomon.stats import StatsOptions, analyze
from immunomon.stats._common import kept_samples, strata, visit_order
from immunomon.stats.multiple import add_q, bh
from immunomon.stats.supervised import (_design, fit_mixed, fit_random_intercept,
                                        hodges_lehmann, lmm_tests, observations, signed_rank_p)
from immunomon.stats.validation import check_run, check_tables

SUP = StatsOptions(per_disease=False, supervised_methods=("paired_t", "wilcoxon", "lmm"))


@pytest.fixture(scope="module")
def planted():
    """The default simulated trial (46 patients, 7 visits, planted effects), pooled."""
    t = simulate_tables(seed=1)
    res = analyze({k: t[k] for k in ("samples", "parameters")}, baseline="D1", options=SUP)
    return t, res


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


def test_profile_reml_equals_statsmodels_mixedlm():
    t = simulate_tables(patients=20, seed=4)
    s = kept_samples(t["samples"])
    visits = visit_order(s, "D1", None)
    g = observations(s, t["parameters"])
    g = g[g["parameter"] == "Treg % of CD4 T"].reset_index(drop=True)
    for by_disease in (False, True):  # visit x disease with a patient random effect
        X, _ = _design(g, visits, by_disease)
        b1, c1, *_ = fit_random_intercept(g["model"].to_numpy(), X, g["patient_id"].to_numpy())
        b2, c2, note = fit_mixed(g["model"].to_numpy(), X, g["patient_id"].to_numpy())
        assert np.allclose(b1, b2, atol=1e-4)
        assert np.allclose(np.sqrt(np.diag(c1)), np.sqrt(np.diag(c2)), rtol=1e-2)


def test_paired_t_matches_scipy_and_effect_is_ratio_of_geometric_means(planted):
    t, res = planted
    s = kept_samples(t["samples"])
    par = t["parameters"]
    par = par[par["parameter"] == "Treg % of CD4 T"].merge(s, on="sample_id")
    w = par.pivot(index="patient_id", columns="visit", values="value")[["D1", "D8"]].dropna()
    row = res["stats_supervised"].query(
        "parameter == 'Treg % of CD4 T' and visit == 'D8' and method == 'paired_t'").iloc[0]
    lr = np.log(w["D8"] / w["D1"])
    assert row["n"] == len(w)
    assert row["p"] == pytest.approx(stats.ttest_1samp(lr, 0).pvalue, rel=1e-9)
    gm = stats.gmean(w["D8"]) / stats.gmean(w["D1"])
    assert row["effect"] == pytest.approx(gm, rel=1e-9)
    assert row["ci_low"] < row["effect"] < row["ci_high"]


def test_every_planted_d8_effect_found_and_effector_null(planted):
    t, res = planted
    report = check_tables(res["stats_supervised"], t["effects"])
    assert len(report["planted"]) == 2 * 6  # 6 planted parameters x (paired_t, lmm)
    assert report["planted"]["passed"].all(), report["planted"]
    assert report["effector"]["m"].min() == 5
    assert report["effector"]["passed"].all(), report["effector"]
    lmm = report["planted"][report["planted"]["method"] == "lmm"]
    assert set(lmm["effect_scale"]) == {"odds ratio", "fold change"}


def test_qc_failed_and_excluded_samples_are_left_out():
    t = simulate_tables(patients=8, seed=2, qc_fail=0.3)
    s = t["samples"]
    dropped = s[~s["qc_pass"] | (s["excluded_reason"] != "")]
    assert len(dropped) > 0
    kept = kept_samples(s)
    assert not set(dropped["sample_id"]) & set(kept["sample_id"])
    par = t["parameters"][t["parameters"]["parameter"].isin(["Treg % of CD4 T", "CD8 T Ki67+ %"])]
    res = analyze({"samples": s, "parameters": par}, options=SUP)
    fc = res["fold_changes"]
    n_pairs = len(kept.merge(kept[kept["visit"] == "D1"][["patient_id"]], on="patient_id")
                  .query("visit != 'D1'"))
    assert fc.groupby("parameter").size().max() == n_pairs


def test_small_strata_not_estimable_with_effect_and_reason():
    t = simulate_tables(patients=22, seed=5)
    par = t["parameters"][t["parameters"]["parameter"].isin(["Treg % of CD4 T", "CD8 T Ki67+ %"])]
    res = analyze({"samples": t["samples"], "parameters": par},
                  options=StatsOptions(supervised_methods=("paired_t", "lmm")))
    sup = res["stats_supervised"]
    per = sup[(sup["disease"] != "all") & (sup["parameter"] == "Treg % of CD4 T") & (sup["visit"] == "D8")]
    assert len(per) == 2 * 11
    assert (per["status"] == "not estimable").all()
    assert per["p"].isna().all() and per["q"].isna().all()
    assert per["reason"].str.contains("too few patients").all(), per["reason"]
    with_ci = per[per["n"] >= 2]
    assert np.isfinite(with_ci[["effect", "ci_low", "ci_high"]].to_numpy()).all()
    assert (with_ci["effect"] > 1).mean() > 0.8  # Tregs rise in (nearly) every disease
    # no silent NA: every NaN p has a reason
    assert (sup["p"].notna() | (sup["reason"] != "")).all()
    assert set(sup["status"]) <= {"ok", "not estimable"}


def test_visit_by_disease_with_patient_random_effect_fits():
    """The design that makes diffcyt/CATALYST mixed models return NA: visit x disease with a
    patient random intercept, 2 diseases large enough to test."""
    t = simulate_tables(patients=33, seed=6)
    s = t["samples"].copy()
    s["disease"] = np.where(s["patient_id"].str[-1].astype(int) % 2 == 0, "A", "B")
    opts = StatsOptions(supervised_methods=("lmm",))
    obs = observations(kept_samples(s), t["parameters"])
    visits = visit_order(kept_samples(s), "D1", None)
    rows = lmm_tests(obs[obs["parameter"].isin(["Treg % of CD4 T", "CD8 T Ki67+ %"])], visits,
                     strata(s["disease"], True), opts)
    assert (rows["status"] == "ok").all(), rows[rows["status"] != "ok"]
    treg = rows[(rows["parameter"] == "Treg % of CD4 T") & (rows["visit"] == "D8")]
    assert (treg["p"] < 1e-6).all() and (treg["effect"] > 1.5).all()
    cd8 = rows[(rows["parameter"] == "CD8 T Ki67+ %") & (rows["visit"] == "D8")]
    assert ((cd8["ci_low"] < 1) & (cd8["ci_high"] > 1)).sum() >= 2


def test_responders_primary_endpoint(planted):
    t, res = planted
    r = res["responders"].query("parameter == 'Treg % of CD4 T' and visit == 'D8' and disease == 'all'")
    assert r["n_up"].iloc[0] == r["n"].iloc[0]  # Tregs rise in every patient at D8
    assert r["fraction_up"].iloc[0] == 1.0


def test_deterministic_output():
    t = simulate_tables(patients=8, seed=9)
    a = analyze(t, options=StatsOptions(per_disease=False))
    b = analyze(simulate_tables(patients=8, seed=9), options=StatsOptions(per_disease=False))
    assert a.keys() == b.keys()
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])


@pytest.mark.skipif(not os.environ.get("IMMUNOMON_RUN_DIR"),
                    reason="set IMMUNOMON_RUN_DIR (and IMMUNOMON_STUDY_DIR) to check a real run")
def test_real_run_planted_effects():
    """Point at a run of ``immunomon run`` on ``immunomon simulate`` output."""
    run = Path(os.environ["IMMUNOMON_RUN_DIR"])
    study = Path(os.environ.get("IMMUNOMON_STUDY_DIR", run.parent / "study"))
    report = check_run(run, study)
    assert report["passed"], (report["planted"], report["effector"])


def test_rank_deficient_design_is_reported_not_fitted():
    from immunomon.stats.supervised import fit_lmm
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(20), np.repeat([0.0, 1.0], 10), np.repeat([0.0, 1.0], 10)])
    b, cov, reason = fit_lmm(rng.normal(size=20), X, np.repeat(np.arange(5), 4))
    assert b is None and reason == "design not of full rank"
