"""The real 4-donor CyTOF study (Ref vs BCR-XL) at table level: estimates and CIs for every
parameter and cluster, descriptive (no p) under the default min_patients 6, p-values once the
plan sets min_patients 3; the known biology (pS6 up in B cells) comes out."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunomon.stats import analyze

DATA = Path(__file__).parent / "data" / "stats" / "bcrxl"


@pytest.fixture(scope="module")
def tables():
    t = {k: pd.read_csv(DATA / f"{k}.csv", keep_default_na=False, na_values=[""])
         for k in ("samples", "parameters", "cluster_counts", "cluster_markers")}
    t["samples"][["disease", "arm"]] = ""
    return t


def _run(tables, plan=None):
    return analyze(tables, baseline="Ref", visits=["Ref", "BCRXL"], plan=plan)


def test_default_min_patients_gives_estimates_and_cis_without_p(tables):
    res = _run(tables)
    sup = res["stats_supervised"]
    assert set(sup["disease"]) == {"all"} and set(sup["arm"]) == {"all"}  # no empty strata
    assert sup["parameter"].nunique() == tables["parameters"]["parameter"].nunique()
    assert (sup["status"] == "descriptive").all() and sup["p"].isna().all()
    ci = sup[sup["method"] != "wilcoxon"]  # 4 pairs: no 95 % signed-rank interval exists
    assert np.isfinite(ci[["effect", "ci_low", "ci_high"]].to_numpy()).all()
    assert sup.loc[sup["method"] == "wilcoxon", "reason"].str.contains("too small").all()
    for name, col in (("stats_da", "log2fc"), ("stats_ds", "effect")):
        t = res[name]
        assert (t["status"] == "descriptive").all() and t["p"].isna().all()
        assert np.isfinite(t[[col, "ci_low", "ci_high"]].to_numpy()).all()


def test_min_patients_3_in_the_plan_gives_p_values(tables):
    res = _run(tables, plan={"min_patients": 3})
    sup = res["stats_supervised"]
    assert (sup["status"] == "ok").all() and sup["p"].between(0, 1).all()
    assert (sup.loc[sup["method"] == "wilcoxon", "p"] >= 0.125).all()  # exact, 4 pairs
    mm = sup[sup["method"] == "mmrm"].set_index("parameter")
    assert np.allclose(mm["df"], 3.0) and (mm["covariance"] == "unstructured").all()  # n - 1
    ps6 = mm.loc["pS6 median in B cells"]
    assert ps6["effect_scale"] == "difference (arcsinh(5))"
    assert ps6["effect"] > 2 and ps6["p"] < 0.01
    assert mm.loc["pS6 median in CD4 T", "effect"] < 0.3       # small outside B cells
    for name in ("stats_da", "stats_ds"):
        assert (res[name]["status"] == "ok").all() and res[name]["p"].notna().all()
    ds = res["stats_ds"].set_index(["label", "marker"])
    assert ds.loc[("B cells", "pS6"), "q"] < 0.05
