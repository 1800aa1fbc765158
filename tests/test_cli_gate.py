"""The `immunomon gate` verb on real files (Gating-ML membership, FlowJo counts, errors)."""

from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from immunomon.cli import app

DATA = Path(__file__).parent / "data"
runner = CliRunner()


def test_gatingml_membership_csv(tmp_path):
    out = tmp_path / "m.csv"
    res = runner.invoke(app, ["gate", str(DATA / "gatingml/data1.fcs"), "--gatingml",
                              str(DATA / "gatingml/gates/gml_quadrant1_gate.xml"), "--membership", str(out)])
    assert res.exit_code == 0, res.output
    m = pd.read_csv(out)
    assert list(m.columns) == ["FL2P-FL4P", "FL2N-FL4P", "FL2N-FL4N", "FL2P-FL4N"]
    assert len(m) == 13367
    for col in m.columns:
        truth = np.loadtxt(DATA / "gatingml/truth" / f"Results_{col}.txt", dtype=np.int64)
        np.testing.assert_array_equal(m[col].to_numpy(), truth)


def test_wsp_counts_csv(tmp_path):
    out = tmp_path / "c.csv"
    res = runner.invoke(app, ["gate", str(DATA / "flowjo/68983.fcs"), "--wsp", str(DATA / "flowjo/gating.wsp"),
                              "--sample", "68983.fcs", "--counts", str(out)])
    assert res.exit_code == 0, res.output
    c = pd.read_csv(out)
    assert list(c.columns) == ["gate_path", "count"]
    assert c.gate_path.iloc[1] == "Lymphocytes/Singlets"
    assert (c["count"] > 0).all() and len(c) == 15


def _main(argv, monkeypatch, capsys):
    """Run the console entry point in-process; returns (exit status, stderr)."""
    import pytest

    from immunomon.cli import main

    monkeypatch.setattr("sys.argv", ["immunomon", *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_user_errors_exit_2(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.xml"
    bad.write_text('<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
    fcs = DATA / "gatingml/data1.fcs"
    code, err = _main(["gate", fcs, "--gatingml", bad, "--membership", tmp_path / "o.csv"], monkeypatch, capsys)
    assert code == 2 and "bad.xml: refused" in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()
    code, err = _main(["gate", fcs], monkeypatch, capsys)
    assert code == 2 and "exactly one of --gatingml" in err
    code, err = _main(["gate", tmp_path], monkeypatch, capsys)
    assert code == 2 and "needs --out" in err
    code, err = _main(["gate", fcs, "--wsp", DATA / "flowjo/gating.wsp", "--sample", "nope.fcs"], monkeypatch, capsys)
    assert code == 2 and "no sample 'nope.fcs'" in err


def test_study_folder_delegates_to_gate_study(tmp_path, monkeypatch):
    import immunomon.pipeline.supervised as supervised

    calls = []
    monkeypatch.setattr(supervised, "gate_study", lambda study, out, workers=1: calls.append((study, out, workers)))
    res = runner.invoke(app, ["gate", str(tmp_path), "--out", str(tmp_path / "out"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert calls == [(tmp_path, tmp_path / "out", 2)]
