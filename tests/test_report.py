"""report.html and figures/ from a run directory: sections, escaping, privacy, offline."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from test_report_cdp import find_chromium, open_page
from test_report_fixture import EVIL, IDENTIFYING, build_run_dir

from immunomon.report import render_report, safe_keywords
from immunomon.report.html import SECTIONS, build_html
from immunomon.report.htmltable import fmt_p, table_html
from immunomon.report.methods import methods_paragraphs
from immunomon.report.prep import label_points, sample_values
from immunomon.report.privacy import scrub
from immunomon.report.rundata import load_run
from immunomon.report.sections_more import ae_grid

KEY_FIGURES = ("primary_endpoint", "kinetics", "volcano", "fold_change_heatmap", "pca")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str]:
    run = build_run_dir(tmp_path_factory.mktemp("run"))
    out = render_report(run)
    return run, out.read_text(encoding="utf-8")


def test_every_section_is_drawn(rendered):
    run, page = rendered
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert ids[:2] == ["primary", "overview"]                  # the plan leads
    assert {"kinetics", "volcano", "foldchange", "pca", "clusters", "differential", "selectivity",
            "clinical", "safety", "methods", "provenance", "figures"} <= set(ids)
    # + the figure gallery - key secondaries (none planned) - CITE-seq (a cytometry study)
    # - batch effects (the fixture writes no batch tables)
    assert len(ids) == len(SECTIONS) - 2 and not {"citeseq", "batches"} & set(ids)
    assert "could not be drawn" not in page and 'class="missing"' not in page
    assert page.count('class="plot"') == page.count("Plotly.newPlot(") > 10


def test_report_states_what_the_tables_hold(rendered):
    run, page = rendered
    s = pd.read_parquet(run / "tables" / "samples.parquet")
    st = pd.read_parquet(run / "tables" / "stats_supervised.parquet")
    assert f"{s['patient_id'].nunique()} patients, {len(s)} samples" in page
    left_out = s[~s["qc_pass"] | (s["excluded_reason"] != "")]
    for sid in left_out["sample_id"]:
        assert f"<td>{sid}</td>" in page
    assert "excluded: haemolysed sample (lab note)" in page
    row = st[st["role"] == "primary"].iloc[0]
    header = page.split("</header>")[0]
    assert "Primary analysis — Treg % of CD4 T at D8" in header  # the plan's headline
    assert f"p = {fmt_p(row['p'])}" in header
    sel = pd.read_parquet(run / "tables" / "selectivity.parquet")
    assert sel["summary"].iloc[0].replace("'", "&#x27;") in page


def test_data_text_is_escaped(rendered):
    _, page = rendered
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page      # in tables and plot labels
    assert "alert(1)</script>" not in page


def test_identifying_keywords_never_appear(rendered):
    _, page = rendered
    for value in IDENTIFYING.values():
        assert value not in page
    assert "BD LSRFortessa" in page and "12-MAR-2024" in page  # instrument and date do


def test_offline_and_plotly_embedded_once(rendered):
    _, page = rendered
    assert not re.search(r"<(script|img|iframe|link|source)\b[^>]*\b(src|href)\s*=\s*[\"']?"
                         r"(https?:)?//", page, re.I)
    assert "cdn.plot.ly" not in page.split("<script>", 1)[0]
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1
    assert "default-src 'none'" in page                       # CSP forbids any fetch
    assert re.search(r'src="data:image/png;base64,', page)


def test_chromium_no_console_error_no_network(rendered, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    run, page = rendered
    load = open_page(chromium, run / "report.html", tmp_path / "profile")
    assert load.errors == []
    assert load.network == []
    assert load.dialogs == []                                 # the injected alert never ran
    assert load.requests and load.requests[0].startswith("file://")
    assert load.n_plots == page.count('class="plot"')         # every figure was drawn
    shot = tmp_path / "report.png"
    shot.write_bytes(load.screenshot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_figures_png_and_pdf(rendered):
    run, _ = rendered
    for name in KEY_FIGURES:
        png, pdf = run / "figures" / f"{name}.png", run / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert pdf.read_bytes()[:5] == b"%PDF-"
        assert b"CreationDate" not in pdf.read_bytes()
    assert not list(run.rglob("*.tmp"))


def test_page_is_deterministic(rendered):
    run, page = rendered
    figures = [run / "figures" / f"{name}.png" for name in KEY_FIGURES]
    figures += sorted(p for p in (run / "figures").glob("*.png") if p not in figures)
    assert build_html(load_run(run), figures) == page


def test_missing_tables_are_named_not_fatal(tmp_path):
    run = build_run_dir(tmp_path / "run", n_patients=4, n_visits=2, n_cells=200,
                        skip=("stats_supervised", "fold_changes", "pca", "embedding",
                              "stats_da", "stats_ds", "clinical_change", "clinical_immune",
                              "adverse_events_summary", "selectivity", "responders", "clusters"))
    page = build_html(load_run(run), [])
    for name in ("stats_supervised", "fold_changes", "pca", "stats_da", "adverse_events_summary"):
        assert f"tables/{name}.parquet is missing" in page
    assert "could not be drawn" not in page
    empty = tmp_path / "empty"
    empty.mkdir()
    page = render_report(empty).read_text(encoding="utf-8")
    assert "tables/samples.parquet is missing" in page and "provenance.json is missing" in page


def test_malformed_table_gives_a_notice(tmp_path):
    run = build_run_dir(tmp_path / "run", n_patients=4, n_visits=2, n_cells=200)
    pd.DataFrame({"nonsense": [1]}).to_parquet(run / "tables" / "pca.parquet")
    (run / "tables" / "clusters.parquet").write_bytes(b"not parquet")
    page = build_html(load_run(run), [])
    assert "could not be drawn" in page                       # pca: no pc1 column
    assert "tables/clusters.parquet cannot be read" in page


def test_methods_paragraph_from_provenance_and_tables(tmp_path):
    run = load_run(build_run_dir(tmp_path / "run", n_patients=4, n_visits=3, n_cells=200))
    text = " ".join(methods_paragraphs(run))
    s = run.get("samples")
    assert f"{len(s)} samples from {s['patient_id'].nunique()} patients" in text
    assert "immunomon 0.1.0" in text and "numpy 1.26.4" in text
    assert "Wilcoxon signed-rank" in text and "paired t-tests" in text
    assert "Benjamini–Hochberg" in text and "seed 7" in text and "cofactor 150" in text
    assert "`edgeR_glm`" in text and "`lmm`" in text


def test_safe_keywords_allow_list():
    kw = {"$CYT": "Aurora", "$cytsn": "U123", "$DATE": "01-JAN-2024", "$BTIM": "10:00:00",
          "$ETIM": "10:05:00", "$TOT": "1000", "$PAR": "3", "$P1N": "FSC-A", "$P2S": "CD4",
          "$P12V": "450", **IDENTIFYING, "$COM": "free text", "$FIL": "Dupont.fcs",
          "@SAMPLEID": "x", "$EXP": "Dr X", "$INST": "Hôpital", "$LAST_MODIFIER": "me"}
    out = safe_keywords(kw)
    assert out == {"$BTIM": "10:00:00", "$CYT": "Aurora", "$CYTSN": "U123",
                   "$DATE": "01-JAN-2024", "$ETIM": "10:05:00", "$P12V": "450",
                   "$P1N": "FSC-A", "$P2S": "CD4", "$PAR": "3", "$TOT": "1000"}
    assert safe_keywords(None) == {}
    nested = scrub({"inputs": [{"path": "a.fcs", "keywords": kw}], "seed": 1})
    assert nested["inputs"][0]["keywords"] == out and nested["seed"] == 1
    assert "Jeanne" not in json.dumps(nested)


def test_table_formats_and_escapes():
    df = pd.DataFrame({"name": ["<b>x</b>", "y"], "p": [3.2e-7, 0.0412], "n": [12, 3],
                       "ok": [True, False]})
    out = table_html(df)
    assert "&lt;b&gt;x&lt;/b&gt;" in out and "<b>x</b>" not in out
    assert ">3.2e-07<" in out and ">0.041<" in out and 'data-v="12.0"' in out
    assert ">yes<" in out and ">no<" in out
    assert "Showing 1 of 2 rows" in table_html(df, max_rows=1, source="tables/x.csv")


@pytest.mark.parametrize("value,text", [(0.5, "0.5"), (0.01234, "0.012"), (4.1e-5, "4.1e-05"),
                                        (float("nan"), "—"), (None, "—")])
def test_fmt_p(value, text):
    assert fmt_p(value) == text



def test_parameter_in_two_panels_gets_one_line_each(tmp_path):
    run_dir = build_run_dir(tmp_path / "run", n_patients=4, n_visits=2, n_cells=200)
    t = run_dir / "tables"
    s, p = pd.read_parquet(t / "samples.parquet"), pd.read_parquet(t / "parameters.parquet")
    s2 = s.assign(sample_id=s["sample_id"] + "-nk", panel="nk")
    p2 = p.assign(sample_id=p["sample_id"] + "-nk")
    pd.concat([s, s2]).to_parquet(t / "samples.parquet")
    pd.concat([p, p2]).to_parquet(t / "parameters.parquet")
    vals = sample_values(load_run(run_dir))
    assert {"Treg % of CD4 T [treg]", "Treg % of CD4 T [nk]"} <= set(vals["parameter"])
    assert not vals.duplicated(["patient_id", "visit", "parameter"]).any()


def test_adverse_event_grid_from_summary_rows():
    rows = [("ANY", "ANY", "any", "any", 10), ("ANY", "ANY", "1", "any", 8),
            ("ANY", "ANY", "any", "Y", 9), ("SOC A", "ANY", "any", "any", 6),
            ("SOC A", "Term a", "any", "any", 6), ("SOC A", "Term a", "2", "any", 1)]
    ae = pd.DataFrame(rows, columns=["aebodsys", "aedecod", "grade", "related", "patients"])
    ae = ae.assign(serious="any", disease="all", events=1, n_at_risk=20)
    grid = ae_grid(ae)
    assert list(grid.columns) == ["system organ class", "term", "any grade", "grade 1",
                                  "grade 2", "related"]
    first = grid.iloc[0]
    assert first["system organ class"] == "Any adverse event" and first["any grade"] == "10 (50 %)"
    assert first["related"] == "9 (45 %)"
    assert grid.iloc[2]["term"] == "Term a" and grid.iloc[2]["grade 2"] == "1 (5 %)"


def test_volcano_labels_do_not_pile_up():
    g = pd.DataFrame({"x": [1.0, 1.1, -1.0, 0.5], "mlog10p": [10.0, 9.9, 9.95, 2.0],
                      "p": [1e-10, 1.2e-10, 1.1e-10, 1e-2], "sig": [True, True, True, True]})
    assert label_points(g, 5) == [0, 2, 3]        # 1 sits under 0's label; 2 is on the left


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    """A figure write that fails midway (disk full, kill) leaves the previous file as it was
    and no temporary file: the report's, the cluster maps' and the gate plots' writers."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from immunomon.report import cluster_figures, gate_plots
    from immunomon.report.figures import savefig_atomic

    def broken(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    fig = plt.figure()
    monkeypatch.setattr(gate_plots, "plot_gates", lambda *a, **k: fig)
    writers = (lambda p: savefig_atomic(fig, p), lambda p: cluster_figures._save(fig, p),
               lambda p: gate_plots.write_gate_plots(p, None, None))
    for write in writers:
        target = tmp_path / "figure.png"
        target.write_bytes(b"previous")
        with monkeypatch.context() as m:
            m.setattr(Figure, "savefig", broken)
            with pytest.raises(OSError):
                write(target)
        assert target.read_bytes() == b"previous"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]
        write(target)
        assert target.read_bytes().startswith(b"\x89PNG")
    plt.close("all")


def test_visits_of_each_batch_are_listed_in_study_order(tmp_path):
    """The overview's batch table lists a batch's visits in study order (D8 before D15), not
    in the order the samples come or alphabetically."""
    run = build_run_dir(tmp_path / "run", n_patients=4, n_visits=4, n_cells=200)
    samples = pd.read_parquet(run / "tables" / "samples.parquet")
    samples.sample(frac=1.0, random_state=3).to_parquet(run / "tables" / "samples.parquet")
    page = render_report(run).read_text(encoding="utf-8")
    overview = page.split('<section id="overview">')[1].split("</section>")[0]
    table = overview.split("Samples per acquisition batch")[1].split("<h3>")[0]
    rows = re.findall(r"<td>(D[0-9][^<]*)</td>", table)
    assert rows and all(r == "D1, D8, D15, D29" for r in rows), rows[:3]
