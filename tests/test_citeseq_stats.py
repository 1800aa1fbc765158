"""Pseudobulk differential expression: TMM against edgeR, and the stats_de table shape."""

from pathlib import Path

import numpy as np
import pandas as pd

from immunomon.stats.de import DE_COLUMNS, differential_expression, tmm_factors

TMM = Path(__file__).parent / "data" / "citeseq" / "tmm"


def test_tmm_equals_edger():
    y = np.loadtxt(TMM / "counts.csv", delimiter=",")
    ref = pd.read_csv(TMM / "tmm_factors.csv")["factor"].to_numpy()
    np.testing.assert_allclose(tmm_factors(y), ref, rtol=1e-6)


def test_differential_expression_finds_a_planted_gene():
    rng = np.random.default_rng(4)
    patients = [f"P{i}" for i in range(8)]
    samples = pd.DataFrame([{"sample_id": f"{p}_{v}", "patient_id": p, "visit": v,
                             "disease": "RA"} for p in patients for v in ("D1", "D8")])
    rows = []
    for sid, visit in zip(samples["sample_id"], samples["visit"]):
        mu = np.full(50, 200.0) * np.exp(rng.normal(0, 0.1, 50))
        if visit == "D8":
            mu[0] *= 3
        for g, count in enumerate(rng.poisson(mu)):
            rows.append({"sample_id": sid, "cluster": 1, "gene": f"G{g}", "count": count})
    de = differential_expression(samples, pd.DataFrame(rows), ["D1", "D8"])
    assert list(de.columns) == DE_COLUMNS
    ok = de[(de["status"] == "ok") & (de["disease"] == "all")]
    assert len(ok) == 50 and ok.nsmallest(1, "p")["gene"].item() == "G0"
    assert ok.loc[ok["gene"] == "G0", "q"].item() < 1e-6
    assert abs(ok.loc[ok["gene"] == "G0", "log2fc"].item() - np.log2(3)) < 0.2
    assert (ok.loc[ok["gene"] != "G0", "q"] > 0.05).mean() > 0.9
    few = differential_expression(samples[samples["patient_id"].isin(patients[:3])],
                                  pd.DataFrame(rows), ["D1", "D8"])
    assert (few["status"] == "not estimable").all() and few["reason"].str.contains("too few").all()
