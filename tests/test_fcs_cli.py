"""``immunomon fcs info`` and ``immunomon fcs convert``."""

import json
import lzma
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from immunomon.cli import main
from immunomon.io.fcs import read_fcs

DATA = Path(__file__).parent / "data" / "fcs"
G11 = DATA / "G11.fcs"


def run(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["immunomon", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code or 0, out.out, out.err


@pytest.fixture(scope="module")
def lmd(tmp_path_factory):
    path = tmp_path_factory.mktemp("lmd") / "Gallios.LMD"
    path.write_bytes(lzma.decompress((DATA / "Beckman Coulter - Gallios.LMD.xz").read_bytes()))
    return path


def test_info_json(monkeypatch, capsys):
    code, out, _ = run(["fcs", "info", G11, "--json"], monkeypatch, capsys)
    assert code == 0
    info = json.loads(out)
    f = read_fcs(G11)
    assert info["datasets"] == 1 and info["dataset"] == 1
    assert info["fcs_version"] == "3.1"
    assert info["events"] == f.events.shape[0] and info["parameters"] == len(f.names)
    assert [c["name"] for c in info["channels"]] == f.names
    assert [c["label"] for c in info["channels"]] == f.labels
    assert info["spillover"]["channels"] == list(f.spillover.columns)
    np.testing.assert_array_equal(info["spillover"]["matrix"], f.spillover.to_numpy())


def test_info_second_dataset(lmd, monkeypatch, capsys):
    code, out, _ = run(["fcs", "info", lmd, "--dataset", "2", "--json"], monkeypatch, capsys)
    info = json.loads(out)
    assert code == 0 and info["datasets"] == 2 and info["dataset"] == 2
    assert info["fcs_version"] == "3.0"
    f2 = read_fcs(lmd, dataset=2)
    assert info["events"] == int(f2.keywords["$TOT"])
    assert info["parameters"] == int(f2.keywords["$PAR"])


def test_info_text(lmd, monkeypatch, capsys):
    code, out, _ = run(["fcs", "info", lmd], monkeypatch, capsys)
    assert code == 0
    assert "FCS 2.0, data set 1 of 2" in out
    assert "FL1 INT LOG" in out and "Gallios" in out and "spillover:" in out


def test_info_no_spillover_is_null(monkeypatch, capsys):
    code, out, _ = run(["fcs", "info", DATA / "Data001.fcs", "--json"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["spillover"] is None


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".h5ad"])
def test_convert_raw(tmp_path, suffix, monkeypatch, capsys):
    out = tmp_path / f"g11{suffix}"
    code, _, _ = run(["fcs", "convert", G11, out], monkeypatch, capsys)
    assert code == 0
    f = read_fcs(G11)
    if suffix == ".csv":
        got = pd.read_csv(out)
    elif suffix == ".parquet":
        got = pd.read_parquet(out)
        assert got.attrs["labels"] == dict(zip(f.names, f.labels))
    else:
        ad = anndata.read_h5ad(out)
        assert list(ad.var["label"]) == f.labels
        got = ad.to_df()
    assert list(got.columns) == f.names
    np.testing.assert_array_equal(got.to_numpy(dtype=np.float32), f.events)


def test_convert_scale_and_compensate(tmp_path, monkeypatch, capsys):
    path = DATA / "compensation" / "060909.001"
    out = tmp_path / "c.parquet"
    code, _, _ = run(["fcs", "convert", path, out, "--scale"], monkeypatch, capsys)
    assert code == 0
    scaled = pd.read_parquet(out)
    np.testing.assert_allclose(scaled.to_numpy(), read_fcs(path, scale=True).events)
    code, _, err = run(["fcs", "convert", path, out, "--compensate"], monkeypatch, capsys)
    assert code == 2 and "no spillover" in err
    out2 = tmp_path / "comp.csv"
    code, _, _ = run(["fcs", "convert", G11, out2, "--compensate"], monkeypatch, capsys)
    f = read_fcs(G11, dtype="float64")
    spill = f.spillover
    comp = pd.read_csv(out2)
    cols = list(spill.columns)
    # compensated @ S == observed, per event, on the spillover channels
    np.testing.assert_allclose(comp[cols].to_numpy() @ spill.to_numpy(),
                               f.events[:, [f.names.index(c) for c in cols]],
                               rtol=1e-4, atol=1e-2)


def test_bad_input_one_line_exit_2(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "cut.fcs"
    bad.write_bytes(G11.read_bytes()[:5000])
    code, _, err = run(["fcs", "info", bad], monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "byte offset" in lines[0]
    code, _, err = run(["fcs", "convert", G11, tmp_path / "x.xlsx"], monkeypatch, capsys)
    assert code == 2 and "unknown output format" in err
    code, _, err = run(["fcs", "info", G11, "--dataset", "2"], monkeypatch, capsys)
    assert code == 2 and "data set 2 does not exist" in err


def test_console_script_prints_no_traceback(tmp_path):
    bad = tmp_path / "not.fcs"
    bad.write_text("hello, this is not FCS" * 10)
    proc = subprocess.run([sys.executable, "-c", "from immunomon.cli import main; main()",
                           "fcs", "info", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"{bad}: not an FCS file: it does not start with an FCS "
                                   "version ('FCS<major>.<minor>', e.g. FCS3.1) (byte offset 0)")
