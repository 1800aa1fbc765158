"""Real public studies from ``immunomon init`` to the report, with only the commands the README
shows: BCR-XL CyTOF (4 donors × Ref/BCRXL, no gating) and CytoNorm CyTOF (55 channels, 3
batches, the mass template)."""

import contextlib
import io
import re
import sys
import warnings
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from immunomon.cli import main
from immunomon.pipeline.run import RunOptions, run_study

DATA = Path(__file__).parent / "data" / "real"


def _text(page: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", page))


def _run(mp, *args) -> tuple[str, list[str]]:
    """``immunomon ARGS`` in-process: its stdout and stderr, and every Python warning a terminal
    would show (fails on a non-zero exit)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), \
            warnings.catch_warnings(record=True) as caught:
        _terminal_filters()
        mp.setattr(sys, "argv", ["immunomon", *map(str, args)])
        try:
            main()
        except SystemExit as exit_:
            assert not exit_.code, buf.getvalue()
    return buf.getvalue(), [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught]


def _init_and_run(tmp: Path, init: tuple, run: tuple, embed_cells: int | None = None
                  ) -> tuple[Path, str, list[str]]:
    """``immunomon init INIT... --out tmp/study`` then ``immunomon run tmp/study --out tmp/run
    RUN...`` (with ``embed_cells``: the same run from Python with a smaller UMAP): the run
    directory, the commands' output and the warnings they raised."""
    mp = pytest.MonkeyPatch()
    try:
        log1, w1 = _run(mp, "init", *init, "--out", tmp / "study")
        if embed_cells is None:
            log2, w2 = _run(mp, "run", tmp / "study", "--out", tmp / "run", "--quiet", "--workers", "1",
                            *run)
        else:
            with warnings.catch_warnings(record=True) as caught:
                _terminal_filters()
                run_study(tmp / "study", tmp / "run", quiet=True, options=RunOptions(embed_cells=embed_cells))
            log2, w2 = "", [f"{w.category.__name__}: {w.message}" for w in caught]
    finally:
        mp.undo()
    return tmp / "run", log1 + log2, w1 + w2


def _terminal_filters() -> None:
    """Python's default warning filters: what a terminal shows."""
    warnings.simplefilter("default")
    for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=hidden)


@pytest.fixture(scope="module")
def bcrxl(tmp_path_factory):
    """The BCR-XL study as the README runs it: (run directory, output, warnings)."""
    return _init_and_run(tmp_path_factory.mktemp("bcrxl"),
                         (DATA / "bcrxl", "--pattern", "PBMC_{patient}_{visit}.fcs", "--template", "none"),
                         ("--set", "analysis.min_patients=3"))


def test_bcrxl_b_cell_metaclusters_are_labelled(bcrxl):
    run, _, _ = bcrxl
    cl = pd.read_csv(run / "tables" / "clusters.csv")
    b_like = cl[(cl["CD20"] > 2.5) & (cl["CD3"] < 1.0)]
    assert len(b_like) >= 2
    assert (b_like["label"] == "B cells").all()
    assert set(cl.loc[cl["label"] == "B cells", "cluster"]) == set(b_like["cluster"])


def test_bcrxl_signalling_rises_in_b_cells(bcrxl):
    run, _, _ = bcrxl
    ds = pd.read_csv(run / "tables" / "stats_ds.csv", keep_default_na=False)
    ds = ds[(ds["label"] == "B cells") & (ds["disease"] == "all") & (ds["visit"] == "BCRXL")]
    assert set(ds["marker"]) >= {"pS6", "pPlcg2"} and not set(ds["marker"]) & {"CD20", "CD3"}
    ps6 = ds[ds["marker"] == "pS6"]
    assert len(ps6) >= 2
    assert (ps6["effect"].astype(float) > 1.5).all()          # arcsinh difference, ~ +2.8
    assert (ps6["q"].astype(float) < 0.05).all()
    plcg2 = ds[ds["marker"] == "pPlcg2"].astype({"effect": float, "q": float})
    assert (plcg2["effect"] > 0).all() and (plcg2["q"] < 0.05).sum() >= 2


def test_bcrxl_qc_methods_and_report_tell_what_was_done(bcrxl):
    run, log, caught = bcrxl
    qc = pd.read_csv(run / "tables" / "qc_steps.csv", keep_default_na=False)
    margins = qc[qc["step"] == "margins"]
    assert margins["events_removed"].sum() < 0.001 * margins["events_in"].sum()
    assert (qc["status"] == "skipped").all()  # no Time, DNA, beads, cisplatin, Gaussian: all said
    page = (run / "report.html").read_text()
    text = _text(page)
    assert "Treg" not in text and "Primary end point" not in text and "Selectivity" not in text
    methods = text[text.index("Methods"):]
    assert "no compensation was applied (mass cytometry)" in methods
    assert "spillover" not in methods.split("Provenance")[0]
    assert "arcsinh-transformed (cofactor 5)" in methods
    assert "No gating was applied" in methods
    skipped = methods[methods.index("Skipped: "):methods.index("No gating was applied")]
    for step, why in (("margins", "no channel has an instrument limit"), ("time", "no column Time"),
                      ("beads", "no bead channel"), ("dna", "no DNA-intercalator channel"),
                      ("gaussian", "no Gaussian"), ("dead", "no column Viability")):
        assert f"‘{step}’ ({why}" in skipped
    assert "lineage (type) markers (CD3, CD45, CD4, CD20, CD33, CD123, CD14, IgM, HLA-DR, CD7)" in methods
    assert caught == []  # no library warnings (pandas FutureWarning, matplotlib legend ...)
    assert "3 visits" not in log and "8 samples" in log


@pytest.fixture(scope="module")
def cytonorm(tmp_path_factory):
    return _init_and_run(tmp_path_factory.mktemp("cytonorm"),
                         (DATA / "cytonorm", "--pattern", "Gates_{patient}_Unstim_Control_{visit}.fcs",
                          "--sheet", DATA / "cytonorm" / "metadata.csv"), (), embed_cells=1_000)


def test_cytonorm_runs_with_mass_cleanup_and_shows_batches(cytonorm):
    run, log, caught = cytonorm
    samples = pd.read_csv(run / "tables" / "samples.csv", dtype=str, keep_default_na=False)
    assert sorted(samples["batch"].unique()) == ["1", "2", "3"]
    qc = pd.read_csv(run / "tables" / "qc_steps.csv", keep_default_na=False)
    ran = set(qc.loc[qc["status"] == "ran", "step"])
    assert {"dna", "beads", "gaussian", "dead"} <= ran
    time = qc[qc["step"] == "time"]
    assert (time["status"] == "skipped").all() and time["reason"].str.contains("fewer than").all()
    assert set(qc.loc[qc["step"] == "margins", "status"]) == {"skipped"}
    assert qc.loc[qc["step"] == "dna", "events_removed"].sum() > 0
    pops = pd.read_csv(run / "tables" / "populations.csv")
    assert {"T cells", "CD4 T", "CD8 T", "B cells", "NK"} <= set(pops["population"])
    thr = pd.read_csv(run / "tables" / "gate_thresholds.csv")
    assert "at_bound" in thr.columns
    page = _text((run / "report.html").read_text())
    assert "Samples per acquisition batch" in page and "3 acquisition batches" in page
    assert "acquired in 3 batches" in page
    if thr["at_bound"].any():
        assert "Gates at their search bound" in page
    assert caught == []
