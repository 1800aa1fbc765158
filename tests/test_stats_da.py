"""Differential abundance (edgeR-like NB GLM, GEE) and differential state (limma-like)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from immunomon.simulate.tables import simulate_tables
from immunomon.stats import StatsOptions
from immunomon.stats._common import kept_samples, visit_order
from immunomon.stats.design import study_design
from immunomon.stats.da import differential_abundance
from immunomon.stats.ds import differential_state, fit_f_dist
from immunomon.stats.nbglm import fit_f_dist_trend, fit_nb, lrt, ql_ftest

DATA = Path(__file__).parent / "data" / "stats"


def _fixture_design():
    counts = pd.read_csv(DATA / "counts.csv", index_col=0)
    design = pd.read_csv(DATA / "design.csv")
    assert list(counts.columns) == list(design["sample_id"])
    pats = sorted(design["patient_id"].unique())
    visits = ["D1", "D8", "D29", "D85"]
    X = np.column_stack([np.ones(len(design))]
                        + [(design["patient_id"] == p).to_numpy(float) for p in pats[1:]]
                        + [(design["visit"] == v).to_numpy(float) for v in visits[1:]])
    return counts, X, visits


def test_nb_lrt_agrees_with_r_edger():
    """R edgeR 3.40 glmFit + glmLRT, design ~ patient + visit (tests/data/stats/*.R)."""
    counts, X, visits = _fixture_design()
    ref = pd.read_csv(DATA / "edger_reference.csv")
    k = X.shape[1]
    res = lrt(counts.to_numpy(), counts.to_numpy().sum(axis=0), X, [k - 3, k - 2, k - 1])
    mine = pd.DataFrame({"cluster": np.repeat(counts.index, 3), "visit": visits[1:] * len(counts),
                         "p": res["p"].ravel(), "logFC_mine": res["log2fc"].ravel(),
                         "disp": np.repeat(res["dispersion"], 3)})
    m = mine.merge(ref, on=["cluster", "visit"])
    assert len(m) == len(ref) == 3 * len(counts)
    assert stats.spearmanr(m["p"], m["PValue"]).statistic >= 0.99
    assert np.allclose(m["logFC_mine"], m["logFC"], atol=1e-3)
    assert np.allclose(m["disp"], m["dispersion"], rtol=0.02)


@pytest.mark.parametrize("trend, reference", [(False, "edger_ql_reference.csv"),
                                               (True, "edger_ql_trend_reference.csv")])
def test_ql_ftest_agrees_with_r_edger(trend, reference):
    """R edgeR 3.40 glmQLFit (common dispersion, abundance trend off / on) + glmQLFTest."""
    counts, X, visits = _fixture_design()
    ref = pd.read_csv(DATA / reference)
    k = X.shape[1]
    res = ql_ftest(counts.to_numpy(), counts.to_numpy().sum(axis=0), X, [k - 3, k - 2, k - 1],
                   abundance_trend=trend)
    mine = pd.DataFrame({"cluster": np.repeat(counts.index, 3), "visit": visits[1:] * len(counts),
                         "p": res["p"].ravel(), "f": res["f"].ravel()})
    m = mine.merge(ref, on=["cluster", "visit"])
    assert len(m) == len(ref)
    assert stats.spearmanr(m["p"], m["PValue"]).statistic >= 0.99
    assert np.allclose(m["f"], m["F"], rtol=1e-3)


def test_nb_fit_is_the_mle_of_a_poisson_limit():
    """With dispersion ~0 the NB GLM is a Poisson GLM: compare with statsmodels."""
    import statsmodels.api as sm
    counts, X, _ = _fixture_design()
    y = counts.to_numpy()[:2].astype(float)
    off = np.log(counts.to_numpy().sum(axis=0))
    b, _, _ = fit_nb(y, X, off, np.full(2, 1e-8))
    for i in range(2):
        ref = sm.GLM(y[i], X, family=sm.families.Poisson(), offset=off).fit()
        assert np.allclose(b[i], ref.params, atol=1e-5)


ALL_DA = StatsOptions(da_methods=("edger_ql", "edger_lrt", "gee_binomial")).resolved()


def _design(s, per_disease=False, **kw):
    return study_design(s, "D1", visit_order(s, "D1", None), StatsOptions(per_disease=per_disease),
                        **kw)


@pytest.fixture(scope="module")
def trial():
    t = simulate_tables(patients=24, seed=11)
    s = kept_samples(t["samples"])
    return t, s, visit_order(s, "D1", None)


def test_da_finds_planted_clusters_and_explains_rare(trial):
    t, s, visits = trial
    da = differential_abundance(s, t["cluster_counts"], _design(s), ALL_DA)
    d8 = da[da["visit"] == "D8"].set_index(["label", "method"])
    for label in ("Treg naive", "Treg memory", "NK CD56bright"):
        for method in ("edger_ql", "edger_lrt", "gee_binomial"):
            assert d8.loc[(label, method), "p"] < 1e-4
            assert d8.loc[(label, method), "log2fc"] > 0.4
            lo, hi = d8.loc[(label, method), ["ci_low", "ci_high"]]
            assert 0 < lo < d8.loc[(label, method), "log2fc"] < hi
    gee = d8.xs("gee_binomial", level="method")
    assert (gee["df"].dropna() == 24 - 7).all()  # t on patients - parameters df
    rare = da[da["label"] == "Rare"]
    assert (rare["status"] == "not estimable").all()
    assert rare["reason"].str.match(r"cluster has < 3 cells in \d+ % of samples").all()
    assert (da["p"].notna() | (da["reason"] != "")).all()


def test_da_ci_inverts_the_ql_f_test(trial):
    """The edgeR QL CI excludes 0 exactly when p < 0.05."""
    t, s, _ = trial
    da = differential_abundance(s, t["cluster_counts"], _design(s), StatsOptions().resolved())
    ok = da[(da["status"] == "ok") & (da["method"] == "edger_ql")]
    excludes = (ok["ci_low"] > 0) | (ok["ci_high"] < 0)
    assert (excludes == (ok["p"] < 0.05)).all()


def test_da_per_disease_small_strata_are_descriptive(trial):
    t, s, _ = trial
    da = differential_abundance(s, t["cluster_counts"], _design(s, True),
                                StatsOptions(da_methods=("edger_ql", "edger_lrt")).resolved())
    per = da[(da["disease"] != "all") & (da["label"] == "Treg memory") & (da["visit"] == "D8")]
    assert (per["status"] == "descriptive").all() and per["p"].isna().all()
    assert per["reason"].str.contains("min_patients 6: descriptive").all()
    assert (per["log2fc"].dropna() > 0).mean() > 0.8
    assert np.isfinite(per[["ci_low", "ci_high"]].to_numpy()).all()


def test_da_and_ds_compare_randomised_arms():
    """Two arms: within-arm change and the arm difference; the effect only in ld-IL2."""
    t = simulate_tables(patients=24, seed=12, arms=("placebo", "ld-IL2"), dropout=0.0)
    s = kept_samples(t["samples"])
    d = _design(s, control_arm="placebo")
    da = differential_abundance(s, t["cluster_counts"], d, StatsOptions().resolved())
    d8 = da[(da["visit"] == "D8") & (da["label"] == "Treg memory") & (da["method"] == "edger_ql")]
    got = d8.set_index("arm")
    assert set(got.index) == {"placebo", "ld-IL2", "ld-IL2 vs placebo"}
    assert got.loc["ld-IL2 vs placebo", "comparison"] == "arm_difference"
    assert got.loc["ld-IL2 vs placebo", "p"] < 1e-3 and got.loc["placebo", "p"] > 0.01
    assert got.loc["ld-IL2 vs placebo", "log2fc"] == pytest.approx(
        got.loc["ld-IL2", "log2fc"] - got.loc["placebo", "log2fc"], abs=0.05)
    ds = differential_state(s, t["cluster_markers"], d, StatsOptions().resolved())
    x = ds[(ds["visit"] == "D8") & (ds["label"] == "Treg memory") & (ds["marker"] == "CD25")]
    x = x.set_index("arm")
    assert x.loc["ld-IL2 vs placebo", "effect"] == pytest.approx(
        x.loc["ld-IL2", "effect"] - x.loc["placebo", "effect"], abs=1e-9)
    assert x.loc["ld-IL2 vs placebo", "p"] < 1e-3


def test_fit_f_dist_recovers_prior():
    rng = np.random.default_rng(3)
    d, d0, s0 = 10, 8.0, 0.04
    s2_true = s0 * d0 / rng.chisquare(d0, 4000)
    s2 = s2_true * rng.chisquare(d, 4000) / d
    s0_hat, d0_hat = fit_f_dist(s2, np.full(4000, d, float))
    assert s0_hat == pytest.approx(s0, rel=0.1)
    assert d0_hat == pytest.approx(d0, rel=0.3)


def test_fit_f_dist_trend_follows_the_covariate():
    """A prior scale that grows with abundance is recovered; a flat prior is not fooled."""
    rng = np.random.default_rng(4)
    x = rng.uniform(4, 16, 2000)
    s0 = 0.7 + 0.03 * x
    s2 = s0 * rng.chisquare(20, x.size) / 20
    s0_hat, d0_hat = fit_f_dist_trend(s2, 20.0, x)
    assert np.allclose(s0_hat, s0, rtol=0.05)
    assert d0_hat > 200  # no variability left once the trend is removed
    _, d0_flat = fit_f_dist(s2, np.full(x.size, 20.0))
    assert d0_flat < d0_hat


def test_ds_detects_planted_markers_only(trial):
    t, s, visits = trial
    cm = t["cluster_markers"]
    gone = cm["sample_id"].isin(s["sample_id"].iloc[: int(0.6 * len(s))])
    cm = cm[~(gone & (cm["label"] == "MAIT"))]  # MAIT absent from 60 % of the samples
    ds = differential_state(s, cm, _design(s), StatsOptions().resolved())
    from immunomon.stats.multiple import add_q
    ds = add_q(ds, ["method", "visit", "disease"])
    d8 = ds[(ds["visit"] == "D8") & (ds["status"] == "ok")]
    hits = set(zip(d8.loc[d8["q"] < 0.05, "label"], d8.loc[d8["q"] < 0.05, "marker"]))
    planted = {(c, m) for c in ("Treg naive", "Treg memory") for m in ("CD25", "Ki67")}
    assert planted <= hits
    assert len(hits - planted) <= 3
    mait = ds[ds["label"] == "MAIT"]
    assert (mait["status"] == "not estimable").all()
    assert mait["reason"].str.match(r"cluster absent in 6\d % of samples").all()
    assert (ds["p"].notna() | (ds["reason"] != "")).all()
