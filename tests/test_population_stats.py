"""Population statistics: unit tests on hand-made memberships, then accuracy on a simulated study."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunomon.gating.statistics import (
    MARKERS_COLUMNS,
    PARAMETERS_COLUMNS,
    POPULATIONS_COLUMNS,
    ParameterSpec,
    ancestor_table,
    marker_table,
    parameter_table,
    population_table,
)
from immunomon.preprocess.transforms import ArcsinhTransform

PARENTS = {"Lymphocytes": None, "T": "Lymphocytes", "CD4": "T", "Treg": "CD4", "Tconv": "CD4"}


def _memberships():
    n = 1000
    idx = np.arange(n)
    return {
        "Lymphocytes": idx < 800, "T": idx < 600, "CD4": idx < 400, "Treg": idx < 40,
        "Tconv": (idx >= 40) & (idx < 400),
    }


def test_population_table_counts_and_frequencies():
    pops = population_table(_memberships(), PARENTS, sample_id="S", lymphocytes_per_ul=2000.0)
    assert list(pops.columns) == POPULATIONS_COLUMNS
    row = pops.set_index("population").loc["Treg"]
    assert row["count"] == 40 and row["parent"] == "CD4" and row["path"] == "Lymphocytes/T/CD4/Treg"
    assert row["freq_parent"] == pytest.approx(0.1) and row["freq_total"] == pytest.approx(0.04)
    assert row["abs_per_ul"] == pytest.approx(2000.0 * 40 / 800)
    assert pops.set_index("population").loc["Lymphocytes", "freq_parent"] == pytest.approx(0.8)
    no_count = population_table(_memberships(), PARENTS, sample_id="S", lymphocytes_per_ul=float("nan"))
    assert no_count["abs_per_ul"].isna().all()
    anc = ancestor_table(pops).set_index(["population", "ancestor"])["percent"]
    assert anc[("Treg", "CD4")] == pytest.approx(10.0) and anc[("Treg", "Lymphocytes")] == pytest.approx(5.0)
    assert len(anc) == 0 + 1 + 2 + 3 + 3  # one row per (population, ancestor)


def test_marker_table_linear_median_generalised_geometric_mean_and_positive():
    t = ArcsinhTransform(150.0)
    values = np.array([-100.0, 10.0, 150.0, 1000.0, 20000.0])
    events = pd.DataFrame({"CD25": t.transform(np.tile(values, 200)), "FSC-A": np.tile(values, 200)})
    members = {"All": np.ones(1000, bool), "Empty": np.zeros(1000, bool)}
    m = marker_table(events, members, ["CD25", "FSC-A"], transforms={"CD25": t},
                     thresholds={"CD25": float(t.transform(np.array([500.0]))[0])}, sample_id="S")
    assert list(m.columns[:6]) == MARKERS_COLUMNS
    cd25 = m.set_index(["population", "marker"]).loc[("All", "CD25")]
    assert cd25["median"] == pytest.approx(150.0)  # back on the linear scale
    expected_gmean = 150.0 * np.sinh(np.mean(np.arcsinh(values / 150.0)))
    assert cd25["geo_mean"] == pytest.approx(expected_gmean)
    assert cd25["pct_positive"] == pytest.approx(40.0)
    fsc = m.set_index(["population", "marker"]).loc[("All", "FSC-A")]
    assert fsc["median"] == 150.0 and np.isnan(fsc["pct_positive"])  # no transform, no threshold
    assert m.set_index("population").loc["Empty", "median"].isna().all()


def test_parameter_strings_and_measures():
    members = _memberships()
    pops = population_table(members, PARENTS, sample_id="S", lymphocytes_per_ul=2000.0)
    events = pd.DataFrame({"Ki67": np.r_[np.full(10, 4.0), np.zeros(990)], "CD25": np.ones(1000)})
    marks = marker_table(events, members, ["Ki67", "CD25"], thresholds={"Ki67": 2.0}, sample_id="S")
    spec = ParameterSpec.from_dict({
        "percent_of": {"Treg": ["Lymphocytes"]}, "count_per_ul": ["Treg"], "positive": {"Treg": ["Ki67"]},
        "median": {"Treg": ["CD25"]}, "gmfi": {"Treg": ["CD25"]}, "ratios": [["Treg", "Tconv"]],
        "exclude": ["T % of Lymphocytes"],
    })
    p = parameter_table(pops, marks, spec)
    assert list(p.columns) == PARAMETERS_COLUMNS
    v = p.set_index("parameter")["value"]
    assert v["Treg % of CD4"] == pytest.approx(10.0)
    assert v["Treg % of Lymphocytes"] == pytest.approx(5.0)
    assert v["Treg count/uL"] == pytest.approx(100.0)
    assert v["Treg Ki67+ %"] == pytest.approx(25.0)
    assert v["CD25 median in Treg"] == pytest.approx(1.0)
    assert v["CD25 gMFI in Treg"] == pytest.approx(1.0)
    assert v["Treg/Tconv ratio"] == pytest.approx(40 / 360)
    assert "T % of Lymphocytes" not in v.index and "Lymphocytes" not in set(p["population"])
    assert set(p["measure"]) == {"percent", "count_per_ul", "pct_positive", "median", "gmfi", "ratio"}
    with pytest.raises(ValueError):
        ParameterSpec.from_dict({"bogus": []})


def _compare(gated_small_study, small_study):
    _, tables = gated_small_study
    truth = pd.read_csv(Path(small_study) / "truth" / "parameters.csv")
    merged = truth.merge(tables["parameters"], on=["sample_id", "parameter"], how="left", suffixes=("_true", ""))
    merged["abs_err"] = (merged["value"] - merged["value_true"]).abs()
    return merged


def test_treg_percent_of_cd4_matches_truth(gated_small_study, small_study):
    m = _compare(gated_small_study, small_study)
    treg = m[m["parameter"] == "Treg % of CD4 T"]
    mae = treg["abs_err"].median()
    print(f"\nTreg % of CD4 T: median |error| = {mae:.3f} percentage points over {len(treg)} samples "
          f"(max {treg['abs_err'].max():.3f})")
    assert len(treg) == 12 and mae <= 0.5


def test_every_truth_parameter_is_reported_and_planted_ones_are_close(gated_small_study, small_study):
    m = _compare(gated_small_study, small_study)
    assert not m["value"].isna().any(), sorted(m.loc[m["value"].isna(), "parameter"].unique())
    effects = pd.read_csv(Path(small_study) / "truth" / "effects.csv")
    planted = effects.loc[effects["kind"] == "planted", "parameter"].unique()
    assert {"Treg % of CD4 T", "Treg memory % of Treg", "Treg Ki67+ %", "Treg HLA-DR+ %",
            "CD25 median in Treg", "NK CD56bright % of NK"} <= set(planted)
    rel = (m["abs_err"] / m["value_true"].abs()).groupby(m["parameter"]).median()
    print("\nmedian relative error of the planted parameters:", rel[planted].round(4).to_dict())
    assert (rel[planted] < 0.1).all()
