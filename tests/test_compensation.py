"""Compensation: matrix readers and flowCore's reference column means."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunomon.errors import UserError
from immunomon.io.fcs import read_fcs
from immunomon.preprocess.compensation import compensate, parse_spill_string, read_spillover

DATA = Path(__file__).parent / "data" / "compensation"


def _read_scaled(path):
    """Events in linear units ($PnE log channels expanded) and channel names."""
    f = read_fcs(path, dtype="float64", scale=True)
    return f.events, list(f.names)


def test_read_flowcore_compmatrix_cr_line_endings():
    raw = (DATA / "compmatrix").read_bytes()
    assert b"\r" in raw and b"\n" not in raw
    s = read_spillover(DATA / "compmatrix")
    assert list(s.columns) == ["FL1-H", "FL2-H", "FL3-H", "FL4-H"]
    assert list(s.index) == list(s.columns)
    assert s.loc["FL1-H", "FL2-H"] == pytest.approx(0.24)
    assert s.loc["FL4-H", "FL1-H"] == pytest.approx(7.95e-4)
    np.testing.assert_array_equal(np.diag(s), 1.0)


@pytest.mark.parametrize("name", ["060909.001", "060909.002", "060909.003", "060909.004", "060909.005"])
def test_flowcore_column_means_float64(name):
    expected = json.loads((DATA / "expected_column_means.json").read_text())[name]
    events, names = _read_scaled(DATA / name)
    s = read_spillover(DATA / "compmatrix")
    comp = compensate(events, names, s, dtype=np.float64)
    assert comp.dtype == np.float64
    for channel, mean in expected.items():
        got = comp[:, names.index(channel)].mean()
        assert abs(got - mean) / abs(mean) < 1e-9, (name, channel, got, mean)


def test_float32_default_close_to_float64_and_untouched_columns():
    events, names = _read_scaled(DATA / "060909.002")
    s = read_spillover(DATA / "compmatrix")
    c32 = compensate(events, names, s)
    c64 = compensate(events, names, s, dtype=np.float64)
    assert c32.dtype == np.float32
    np.testing.assert_allclose(c32, c64, rtol=1e-4, atol=1e-3)
    for i, n in enumerate(names):
        if n not in s.columns:
            np.testing.assert_array_equal(c64[:, i], events[:, i])


def test_matches_flowutils_and_inverts_spillover():
    from flowutils.compensate import compensate as fu_compensate

    rng = np.random.default_rng(0)
    s = pd.DataFrame([[1, 0.2, 0.05], [0.1, 1, 0.3], [0.0, 0.15, 1]], index=list("abc"), columns=list("abc"))
    true = rng.gamma(2.0, 500.0, size=(1000, 3))
    observed = np.column_stack([rng.normal(size=1000), true @ s.to_numpy()])
    out = compensate(observed, ["FSC-A", "a", "b", "c"], s, dtype=np.float64)
    np.testing.assert_allclose(out[:, 1:], true, rtol=1e-10)
    ref = fu_compensate(observed, s.to_numpy(), fluoro_indices=[1, 2, 3])
    np.testing.assert_allclose(out, ref, rtol=1e-10)


def test_csv_with_and_without_row_labels_and_spill_string(tmp_path):
    s = read_spillover(DATA / "compmatrix")
    labelled = tmp_path / "m.csv"
    s.to_csv(labelled)
    plain = tmp_path / "p.csv"
    s.to_csv(plain, index=False)
    spill = tmp_path / "spill.txt"
    spill.write_text(f"{len(s)}," + ",".join(s.columns) + "," + ",".join(repr(float(v)) for v in s.to_numpy().ravel()))
    for p in (labelled, plain, spill):
        pd.testing.assert_frame_equal(read_spillover(p), s)
    titled = tmp_path / "titled.csv"
    s.rename_axis("Fluorochrome").to_csv(titled)
    assert titled.read_text().startswith("Fluorochrome,FL1-H")
    pd.testing.assert_frame_equal(read_spillover(titled), s)
    tsv = tmp_path / "m.tsv"
    s.to_csv(tsv, sep="\t")
    pd.testing.assert_frame_equal(read_spillover(tsv), s)


def test_flowjo_xml_matrix(tmp_path):
    p = tmp_path / "m.mtx"
    p.write_text(
        '<?xml version="1.0"?><gating:gatingML xmlns:gating="g" xmlns:transforms="t" xmlns:data-type="d">'
        '<transforms:spilloverMatrix transforms:id="x">'
        '<transforms:spillover data-type:parameter="A"><transforms:coefficient data-type:parameter="A" '
        'transforms:value="1"/><transforms:coefficient data-type:parameter="B" transforms:value="0.25"/>'
        '</transforms:spillover><transforms:spillover data-type:parameter="B">'
        '<transforms:coefficient data-type:parameter="A" transforms:value="0.5"/>'
        '<transforms:coefficient data-type:parameter="B" transforms:value="1"/></transforms:spillover>'
        "</transforms:spilloverMatrix></gating:gatingML>"
    )
    s = read_spillover(p)
    assert s.loc["A", "B"] == 0.25 and s.loc["B", "A"] == 0.5


def test_errors_name_file_and_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("A,B\n1,x\n0,1\n")
    with pytest.raises(UserError, match=r"bad.csv: line 2: 'x' is not a number"):
        read_spillover(bad)
    with pytest.raises(UserError, match="expected 7 comma-separated values"):
        parse_spill_string("2,A,B,1,0")
    s = pd.DataFrame(np.eye(2), index=["A", "Z"], columns=["A", "Z"])
    with pytest.raises(UserError, match="'Z'"):
        compensate(np.ones((3, 2)), ["A", "B"], s)
    singular = pd.DataFrame(np.ones((2, 2)), index=["A", "B"], columns=["A", "B"])
    with pytest.raises(UserError, match="singular"):
        compensate(np.ones((3, 2)), ["A", "B"], singular)


def test_column_major_result_equals_row_major():
    rng = np.random.default_rng(5)
    names = ["FSC-A", "FL1", "FL2", "FL3", "Time"]
    spill = pd.DataFrame([[1.0, 0.1, 0.02], [0.05, 1.0, 0.2], [0.0, 0.03, 1.0]],
                         index=["FL3", "FL1", "FL2"], columns=["FL1", "FL2", "FL3"])  # rows in another order
    events = (rng.random((3001, 5)) * 1e4).astype(np.float32)
    c = compensate(events, names, spill)
    f = compensate(events, names, spill, order="F")
    assert f.flags.f_contiguous and c.flags.c_contiguous
    np.testing.assert_array_equal(c, f)
    expected = events[:, 1:4].astype(np.float64) @ np.linalg.inv(spill.loc[["FL1", "FL2", "FL3"]].to_numpy())
    np.testing.assert_allclose(f[:, 1:4], expected, rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(f[:, [0, 4]], events[:, [0, 4]])
