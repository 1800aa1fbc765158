"""MMRM (stats.mmrm) against R: nlme::gls REML fits and the published KR / Satterthwaite
formulas (tests/data/stats/mmrm/, made by make_mmrm_reference.R)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunomon.simulate.tables import VISITS, simulate_endpoint
from immunomon.stats.mmrm import MMRMError, _Model, _patterns, fit_mmrm, fit_mmrm_fallback

DATA = Path(__file__).parent / "data" / "stats" / "mmrm"
GLS = pd.read_csv(DATA / "gls_reference.csv")
DF = pd.read_csv(DATA / "df_reference.csv")
RUNS = list(GLS[["fixture", "structure"]].drop_duplicates().itertuples(index=False, name=None))


def _design(d: pd.DataFrame) -> pd.DataFrame:
    """The R script's design: per-visit intercepts v, baseline slopes b (and arm effects a)."""
    cols = {f"v{k + 1}": (d["visit_index"] == k).astype(float) for k in range(4)}
    cols |= {f"b{k + 1}": (d["visit_index"] == k) * d["baseline_c"] for k in range(4)}
    if d["arm"].nunique() > 1:
        cols |= {f"a{k + 1}": ((d["visit_index"] == k) & (d["arm"] == "active")).astype(float)
                 for k in range(4)}
    return pd.DataFrame(cols)


def _fit(fixture: str, structure: str):
    d = pd.read_csv(DATA / f"{fixture}.csv")
    X = _design(d)
    fit = fit_mmrm(d["change"], X.to_numpy(), d["subject"].to_numpy(), d["visit_index"],
                   structure=structure, n_visits=4)
    return fit, list(X.columns)


def _contrast(name: str, cols: list[str]) -> np.ndarray:
    k = name[-1]
    L = np.zeros(len(cols))
    if not name.startswith("arm"):
        L[cols.index(f"v{k}")] = 1.0
    if not name.startswith("change"):
        L[cols.index(f"a{k}")] = 1.0
    return L


@pytest.mark.parametrize("fixture, structure", RUNS)
def test_estimates_and_model_based_se_match_nlme_gls(fixture, structure):
    fit, cols = _fit(fixture, structure)
    ref = GLS[(GLS["fixture"] == fixture) & (GLS["structure"] == structure)].set_index("term")
    beta = pd.Series(fit.beta, cols)[ref.index]
    se = pd.Series(np.sqrt(np.diag(fit.vcov)), cols)[ref.index]
    np.testing.assert_allclose(beta, ref["estimate"], rtol=1e-4)
    np.testing.assert_allclose(se, ref["se"], rtol=1e-4)
    assert fit.loglik == pytest.approx(ref["loglik"].iloc[0], rel=1e-7)
    sigma = pd.read_csv(DATA / f"sigma_{fixture}_{structure}.csv")
    np.testing.assert_allclose(fit.sigma[0][sigma["row"] - 1, sigma["col"] - 1], sigma["sigma"],
                               rtol=1e-3)
    assert fit.structure == structure


@pytest.mark.parametrize("fixture, structure", RUNS)
def test_kenward_roger_and_satterthwaite_match_the_published_formulas(fixture, structure):
    fit, cols = _fit(fixture, structure)
    ref = DF[(DF["fixture"] == fixture) & (DF["structure"] == structure)]
    assert len(ref) >= 4
    for row in ref.itertuples():
        L = _contrast(row.contrast, cols)
        kr = fit.contrast(L, "kr", information="expected")
        sat = fit.contrast(L, "satterthwaite", information="expected")
        assert kr.estimate == pytest.approx(row.estimate, rel=1e-4, abs=1e-6)
        assert kr.se == pytest.approx(row.se_kr, rel=1e-3)
        assert kr.df == pytest.approx(row.df_kr, rel=1e-3)
        assert kr.p == pytest.approx(row.p_kr, rel=1e-3)
        assert sat.se == pytest.approx(row.se_model, rel=1e-4)
        assert sat.df == pytest.approx(row.df_satterthwaite, rel=1e-3)
        assert sat.p == pytest.approx(row.p_satterthwaite, rel=1e-3)


def test_balanced_complete_kr_is_the_per_visit_ancova():
    """Complete balanced data, baseline x visit: KR df = n - p and SE = lm ANCOVA SE."""
    fit, cols = _fit("balanced", "us")
    ref = pd.read_csv(DATA / "ancova_reference.csv")
    for row in ref.itertuples():
        c = fit.contrast(_contrast(row.contrast, cols), "kr")
        assert c.df == pytest.approx(row.df, rel=1e-6)
        assert c.se == pytest.approx(row.se, rel=1e-6)
        assert c.estimate == pytest.approx(row.estimate, rel=1e-6)


def test_r_formula_script_agrees_with_pbkrtest_and_lmertest():
    """The formulas the references come from reproduce pbkrtest and lmerTest."""
    chk = pd.read_csv(DATA / "formula_check.csv")
    np.testing.assert_allclose(chk["se_kr_formula"], chk["se_kr_pbkrtest"], rtol=1e-6)
    np.testing.assert_allclose(chk["df_kr_formula"], chk["df_kr_pbkrtest"], rtol=1e-6)
    np.testing.assert_allclose(chk["df_satterthwaite_formula"],
                               chk["df_satterthwaite_lmerTest"], rtol=1e-4)


def test_fallback_when_unstructured_is_not_identifiable():
    """Visits 3 and 4 never observed together: their covariance has no data, so the
    unstructured model is not identifiable and the heterogeneous Toeplitz one is used."""
    d = pd.read_csv(DATA / "dropouts.csv")
    odd = d["subject"].str[1:].astype(int) % 2 == 1
    d = d[~((odd & (d["visit_index"] == 3)) | (~odd & (d["visit_index"] == 2)))]
    X = _design(d).to_numpy()
    with pytest.raises(MMRMError, match="unstructured"):
        fit_mmrm(d["change"], X, d["subject"].to_numpy(), d["visit_index"], structure="us")
    fit = fit_mmrm_fallback(d["change"], X, d["subject"].to_numpy(), d["visit_index"])
    assert fit.structure == "toeph"
    assert fit.notes and "unstructured" in fit.notes[0]


def test_rank_deficient_design_and_too_few_subjects_are_reported():
    d = pd.read_csv(DATA / "balanced.csv")
    X = _design(d).to_numpy()
    with pytest.raises(MMRMError, match="full rank"):
        fit_mmrm_fallback(d["change"], np.column_stack([X, X[:, 0]]), d["subject"].to_numpy(),
                          d["visit_index"])
    few = d[d["subject"].isin(["S01", "S02", "S03"])]
    fit = fit_mmrm_fallback(few["change"], _design(few).to_numpy(), few["subject"].to_numpy(),
                            few["visit_index"])
    assert fit.structure != "us" and "not identifiable" in fit.notes[0]


def test_covariance_groups_equal_separate_fits():
    """A covariance per group with group-specific fixed effects is two separate fits."""
    d = pd.read_csv(DATA / "dropouts.csv")
    X = _design(d).to_numpy()
    g = (d["subject"].str[1:].astype(int) % 2).to_numpy()
    joint = fit_mmrm(d["change"], np.column_stack([X * (g == 0)[:, None], X * (g == 1)[:, None]]),
                     d["subject"].to_numpy(), d["visit_index"], group=g)
    p = X.shape[1]
    for k in (0, 1):
        m = g == k
        alone = fit_mmrm(d["change"][m], X[m], d["subject"].to_numpy()[m], d["visit_index"][m])
        np.testing.assert_allclose(joint.beta[k * p:(k + 1) * p], alone.beta, rtol=1e-6)
        np.testing.assert_allclose(np.diag(joint.vcov)[k * p:(k + 1) * p], np.diag(alone.vcov),
                                   rtol=1e-5)
        L = np.zeros(2 * p)
        L[k * p] = 1.0
        assert joint.contrast(L).df == pytest.approx(alone.contrast(L[k * p:(k + 1) * p]).df,
                                                     rel=1e-4)


@pytest.mark.parametrize("structure", ["us", "csh"])
def test_cross_information_is_the_derivative_of_the_beta_score(structure):
    """B_r = -d/dpsi_r of X' S^-1 (y - X b) at fixed b (central differences)."""
    d = pd.read_csv(DATA / "dropouts.csv")
    X, y = _design(d).to_numpy(), d["change"].to_numpy()
    subject, visit = d["subject"].to_numpy(), d["visit_index"].to_numpy()
    fit = fit_mmrm(y, X, subject, visit, structure=structure, n_visits=4)
    model = _Model(_patterns(y, X, subject, visit, np.zeros(len(y), int)), 4, 1, structure,
                   X.shape[1])
    B = model.information(fit.psi)["cross"]

    def score(psi):
        S = model.st.sigma_psi(psi)
        return sum(np.einsum("iop,io->p", pt.X, (pt.y - pt.X @ fit.beta)
                             @ np.linalg.inv(S[np.ix_(pt.obs, pt.obs)]))
                   for pt in model.pats)

    h = 1e-6 * np.maximum(np.abs(fit.psi), 1e-2)
    num = np.array([(score(fit.psi + h[r] * e) - score(fit.psi - h[r] * e)) / (2 * h[r])
                    for r, e in enumerate(np.eye(len(fit.psi)))])
    np.testing.assert_allclose(-num, B, rtol=1e-5, atol=1e-6 * np.abs(B).max())
    assert np.abs(B).max() > 0


def test_cross_term_vanishes_with_complete_data():
    """Complete data, a mean per visit: the observed-information SE is the textbook one."""
    fit, cols = _fit("balanced", "us")
    assert np.abs(fit.vcov_cross).max() < 1e-10 * np.abs(fit.vcov).max()
    L = _contrast("change4", cols)
    assert fit.contrast(L).se == pytest.approx(fit.contrast(L, information="expected").se,
                                               rel=1e-9)


def test_observed_information_se_matches_the_spread_under_mar_dropout():
    """40 % of patients leave after D29, the likelier the higher their D29 value: over 300
    simulated trials the SE of the D85 change with the observed information matches the
    spread of the estimates; the model-based (expected information) SE is too small."""
    names = [v for v, _ in VISITS]
    L = np.zeros(len(names))
    L[[names.index("D85"), 0]] = (1.0, -1.0)
    est, se_obs, se_exp = [], [], []
    for seed in range(300):
        t = simulate_endpoint(seed=seed, mar_dropout=0.4, dropout_after="D29")
        d = t["parameters"].merge(t["samples"], on="sample_id")
        j = d["visit"].map({v: k for k, v in enumerate(names)}).to_numpy()
        fit = fit_mmrm_fallback(np.log(d["value"] / (100 - d["value"])), np.eye(len(names))[j],
                                d["patient_id"].to_numpy(), j, n_visits=len(names))
        est.append(fit.contrast(L).estimate)
        se_obs.append(fit.contrast(L, "satterthwaite").se)
        se_exp.append(fit.contrast(L, "satterthwaite", information="expected").se)
    spread = np.std(est, ddof=1)
    assert 0.90 < np.sqrt(np.mean(np.square(se_obs))) / spread < 1.10  # measured 0.94
    assert np.sqrt(np.mean(np.square(se_exp))) / spread < 0.85  # measured 0.79
