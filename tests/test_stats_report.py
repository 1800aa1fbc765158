"""The report leads with the analysis plan; a run without a plan has no primary section, no
headline and no Treg wording in the plan-led parts."""

import json

import pandas as pd
from test_report_fixture import build_run_dir

from immunomon.report.html import build_html
from immunomon.report.methods_stats import statistics_sentences
from immunomon.report.rundata import load_run


def _header(page: str) -> str:
    return page.split("</header>")[0]


def test_plan_primary_and_key_secondary_lead_the_report(tmp_path):
    run_dir = build_run_dir(tmp_path / "run", n_patients=6, n_visits=3, n_cells=200)
    t = run_dir / "tables" / "stats_supervised.parquet"
    st = pd.read_parquet(t)
    ks = (st["parameter"] == "Treg Ki67+ %") & (st["visit"] == "D8") & \
        (st["disease"] == "all") & (st["method"] == "paired_t")
    st.loc[ks, "role"] = "key_secondary"
    st.loc[ks, "p_adjusted"] = st.loc[ks, "p"].clip(lower=st.loc[st["role"] == "primary", "p"].max())
    st.to_parquet(t)
    page = build_html(load_run(run_dir), [])
    ids = [x.split('"')[0] for x in page.split('<section id="')[1:]]
    assert ids[:3] == ["primary", "key_secondary", "overview"]
    assert "Primary analysis — Treg % of CD4 T at D8" in _header(page)
    primary = page.split('<section id="primary">')[1].split("</section>")[0]
    assert "Sensitivity analyses of the same end point" in primary and "wilcoxon" in primary
    assert "Responders (value at D8 at least 1.25 × baseline)" in primary
    text = " ".join(statistics_sentences(load_run(run_dir)))
    assert "statistical analysis plan" in text and "Key secondary end points" in text
    assert "serial gatekeeping" in text


def test_no_plan_no_primary_section_no_headline_no_treg_wording(tmp_path):
    run_dir = build_run_dir(tmp_path / "run", n_patients=6, n_visits=3, n_cells=200,
                            skip=("selectivity",))
    t = run_dir / "tables" / "stats_supervised.parquet"
    st = pd.read_parquet(t)
    st["role"] = st["role"].replace({"primary": "exploratory"})
    st.to_parquet(t)
    prov = json.loads((run_dir / "provenance.json").read_text())
    del prov["parameters"]["analysis"]
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    run = load_run(run_dir)
    page = build_html(run, [])
    assert '<section id="primary">' not in page and '<section id="selectivity">' not in page
    assert 'class="headline"' not in _header(page)
    text = " ".join(statistics_sentences(run))
    assert "Treg" not in text and "plan" not in text
    assert "exploratory analyses" in text and "Sensitivity analyses" in text


def test_key_secondaries_are_listed_in_the_order_of_the_fixed_sequence(tmp_path):
    """The fixed sequence tests the key secondaries in the plan's order: the table shows
    them in that order (not sorted by name), and a cytometry study has no CITE-seq section."""
    run_dir = build_run_dir(tmp_path / "run", n_patients=6, n_visits=3, n_cells=200)
    t = run_dir / "tables" / "stats_supervised.parquet"
    st = pd.read_parquet(t)
    order = ["Treg Ki67+ %", "CD25 median in Treg", "B cells % of Lymphocytes"]
    pooled = (st["visit"] == "D8") & (st["disease"] == "all") & (st["method"] == "paired_t")
    assert set(order) <= set(st.loc[pooled, "parameter"])
    st.loc[pooled & st["parameter"].isin(order), "role"] = "key_secondary"
    st.to_parquet(t)
    prov = json.loads((run_dir / "provenance.json").read_text())
    prov["parameters"]["analysis"]["key_secondary"] = {
        "strategy": "fixed_sequence",
        "endpoints": [{"parameter": p, "visits": ["D8"]} for p in order]}
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    page = build_html(load_run(run_dir), [])
    section = page.split('<section id="key_secondary">')[1].split("</section>")[0]
    where = [section.index(f"<td>{p}</td>") for p in order]
    assert where == sorted(where)
    assert '<section id="citeseq">' not in page
