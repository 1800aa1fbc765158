"""Real instrument files: every INVENTORY.json entry, multi-data-set LMD, compensation."""

import json
import lzma
import warnings
from pathlib import Path

import numpy as np
import pytest

from immunomon.io.fcs import fcs_datasets, read_fcs, read_fcs_metadata, write_fcs

DATA = Path(__file__).parent / "data" / "fcs"
COMPENSATION = Path(__file__).parent / "data" / "compensation"
INVENTORY = json.loads((DATA / "INVENTORY.json").read_text())


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory):
    """Path of a real file of ``tests/data/fcs``: shipped raw, or shipped .xz (decompressed
    once). Every file of INVENTORY.json is shipped: a missing one fails, never skips."""
    cache = tmp_path_factory.mktemp("fcs_real")

    def get(name: str) -> Path:
        if (DATA / name).exists():
            return DATA / name
        out = cache / name
        if not out.exists():
            out.write_bytes(lzma.decompress((DATA / f"{name}.xz").read_bytes()))
        return out

    return get


@pytest.mark.parametrize("name", sorted(INVENTORY))
def test_inventory_file_reads(name, fixture_path):
    entry = INVENTORY[name]
    path = fixture_path(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real corpus reads without complaint
        f = read_fcs(path)
    assert f.events.shape == (entry["events"], entry["parameters"])
    assert f.events.dtype == np.float32 and f.events.flags.c_contiguous
    assert f.names == entry["channels"]
    assert f.version == entry["fcs_version"].removeprefix("FCS")
    assert f.n_datasets == (2 if entry["multi_dataset"] else 1)
    assert f.keywords["$TOT"].strip().lstrip("0") == str(entry["events"])
    assert np.isfinite(f.events).all()
    if entry["spill_keywords"]:
        assert f.spillover is not None
        assert list(f.spillover.index) == list(f.spillover.columns)
        unmatched = set(f.spillover.columns) - set(f.names)
        # that file's names were anonymised in TEXT, differently in $PnN and SPILL
        assert not unmatched or unmatched == {"x" * 28}


@pytest.mark.parametrize("name", ["G11.fcs", "B01 KC-A-W---91-US.fcs", "Data001.fcs",
                                  "Gates_PTLG021_Unstim_Control_1.fcs",
                                  "Stratedigm - S1400.fcs"])
def test_values_match_flowio(name, fixture_path):
    flowio = pytest.importorskip("flowio")
    path = fixture_path(name)
    ref = flowio.FlowData(str(path))
    ref_events = np.reshape(np.asarray(ref.events, dtype=np.float64), (-1, ref.channel_count))
    got = read_fcs(path, dtype="float64").events
    np.testing.assert_array_equal(got, ref_events)


def test_header_offsets_win_when_text_offsets_overlap_text(fixture_path):
    path = fixture_path("Accuri - C6.fcs")
    f = read_fcs(path)
    hdr = INVENTORY["Accuri - C6.fcs"]["header_data_offsets"]
    assert f.data_offsets[0] == hdr[0]
    # last event decodes to the same record as read by hand from the HEADER offset
    raw = path.read_bytes()
    rec = 14 * 4
    last = np.frombuffer(raw[hdr[0] + (f.n_events - 1) * rec: hdr[0] + f.n_events * rec], ">u4")
    np.testing.assert_array_equal(f.events[-1], last.astype(np.float32))


def test_text_offsets_win_when_header_offsets_overlap_text(fixture_path):
    f = read_fcs(fixture_path("data_start_offset_discrepancy_example.fcs"))
    assert f.data_offsets[0] == int(INVENTORY["data_start_offset_discrepancy_example.fcs"]
                                    ["text_data_offsets"][0])


def test_24bit_integers(fixture_path):
    path = fixture_path("Cytek xP5.fcs")
    f = read_fcs(path, dtype="float64")
    assert set(f.channels["bits"]) == {24}
    b0 = f.data_offsets[0]
    raw = np.frombuffer(path.read_bytes()[b0:b0 + 8 * 3 * 5], np.uint8).reshape(5, 8, 3)
    by_hand = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
    masks = [(1 << int(np.ceil(np.log2(r)))) - 1 if r < 2**24 else 2**24 - 1
             for r in f.channels["range"]]
    np.testing.assert_array_equal(f.events[:5], by_hand & np.array(masks))


def test_lmd_second_dataset_has_its_own_text(fixture_path):
    path = fixture_path("Beckman Coulter - Gallios.LMD")
    sets = fcs_datasets(path)
    assert len(sets) == 2
    second = sets[1]
    assert second.header.version == "3.0"
    assert second.header.text_begin > second.header.data_end  # TEXT after DATA
    f2 = read_fcs(path, dataset=2)
    assert f2.dataset == 2 and f2.n_datasets == 2 and f2.version == "3.0"
    assert f2.events.shape == (int(second.keywords["$TOT"]), int(second.keywords["$PAR"]))
    assert f2.events.shape[1] != read_fcs(path).events.shape[1]
    # Accuri-style spillover given by parameter numbers resolves to channel names
    assert list(f2.spillover.columns) == [f2.names[2], f2.names[3]]


def test_lmd_log_channels_are_not_divided_by_gain(fixture_path):
    path = fixture_path("Beckman Coulter - Gallios.LMD")
    raw = read_fcs(path, dtype="float64")
    lin = read_fcs(path, dtype="float64", scale=True)
    ch = raw.channels.set_index("name")
    for name in raw.names:
        j = raw.names.index(name)
        c = ch.loc[name]
        if c.log_decades > 0:
            f2 = c.log_offset if c.log_offset > 0 else 1.0
            expect = f2 * 10 ** (c.log_decades * raw.events[:, j] / c.range)
        else:
            expect = raw.events[:, j] / c.gain
        np.testing.assert_allclose(lin.events[:, j], expect, rtol=1e-12)
    assert (ch.gain[ch.log_decades == 0] != 1).any()  # the trap is present in this file


def test_beckman_dfc_spillover(fixture_path):
    f = read_fcs(fixture_path("Beckman Coulter - Gallios.LMD"))
    dfc = sorted(k for k in f.keywords if k.startswith("$DFC"))
    assert dfc and f.spillover is not None
    assert all(c.startswith("FL") for c in f.spillover.columns)
    np.testing.assert_array_equal(np.diag(f.spillover), 1.0)


def _compmatrix():
    lines = (DATA / "compensation" / "compmatrix").read_text().replace("\r", "\n").splitlines()
    names = lines[2].split("\t")
    return names, np.array([[float(x) for x in row.split("\t")] for row in lines[3:3 + len(names)]])


@pytest.mark.parametrize("name", [f"060909.00{i}" for i in range(1, 6)])
def test_compensation_files_scale_log_channels(name):
    """flowCore's column means after linearising and compensating (FCS 2.0, $PnE 4,0)."""
    expected = json.loads((DATA / "compensation" / "expected_column_means.json").read_text())[name]
    path = COMPENSATION / name
    f = read_fcs(path, dtype="float64", scale=True)
    assert f.version == "2.0"
    logs = f.channels[f.channels.log_decades > 0]
    assert set(logs["name"]) == {"FL1-H", "FL2-H", "FL3-H", "FL4-H"}
    names, spill = _compmatrix()
    idx = [f.names.index(n) for n in names]
    x = f.events.copy()
    x[:, idx] = np.linalg.solve(spill.T, x[:, idx].T).T
    means = dict(zip(f.names, x.mean(axis=0)))
    for channel, value in expected.items():
        assert means[channel] == pytest.approx(value, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", ["Stratedigm - S1400.fcs", "Cytek xP5.fcs", "G11.fcs",
                                  "Data001.fcs", "Beckman Coulter - Gallios.LMD"])
def test_read_write_read_is_exact(name, fixture_path, tmp_path):
    f = read_fcs(fixture_path(name), dtype="float64")
    kinds = set(f.channels["datatype"])
    assert len(kinds) == 1
    out = write_fcs(tmp_path / "copy.fcs", f.events, f.names, f.labels, datatype=kinds.pop(),
                    bits=list(f.channels["bits"]), ranges=list(f.channels["range"]),
                    spillover=f.spillover, keywords=f.keywords)
    g = read_fcs(out, dtype="float64")
    np.testing.assert_array_equal(g.events, f.events)
    assert g.names == f.names and g.labels == f.labels
    assert g.version == "3.1"
    assert list(g.channels["bits"]) == list(f.channels["bits"])
    for col in ("datatype", "range", "log_decades", "log_offset", "gain"):
        assert list(g.channels[col]) == list(f.channels[col])
    if f.spillover is not None:
        np.testing.assert_array_equal(g.spillover.to_numpy(), f.spillover.to_numpy())
        assert list(g.spillover.columns) == list(f.spillover.columns)
    # writing is deterministic
    again = write_fcs(tmp_path / "again.fcs", g.events, g.names, g.labels,
                      datatype=g.channels["datatype"][0], bits=list(g.channels["bits"]),
                      ranges=list(g.channels["range"]), spillover=g.spillover,
                      keywords=g.keywords)
    assert again.read_bytes() == out.read_bytes()


def test_metadata_read_does_not_decode(fixture_path):
    f = read_fcs_metadata(fixture_path("G11.fcs"))
    assert f.events.shape == (0, 12) and f.n_events == 5785


def test_to_anndata(fixture_path):
    f = read_fcs(fixture_path("G11.fcs"))
    ad = f.to_anndata()
    assert ad.shape == f.events.shape
    assert list(ad.var_names) == f.names
    assert ad.uns["fcs"]["$TOT"] == f.keywords["$TOT"]
    assert list(ad.var["label"]) == f.labels
