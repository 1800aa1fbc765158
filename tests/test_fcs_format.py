"""Format corner cases on files written by hand to the FCS 2.0–3.2 specifications."""

import re
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest

import immunomon.io.fcs_data as fcs_data
from immunomon.errors import UserError
from immunomon.io.fcs import FCSError, read_fcs, write_fcs
from immunomon.io.fcs_text import parse_text
from immunomon.io.fcs_write import encode_dataset, write_datasets


def _text(pairs, delim=b"/"):
    out = [delim]
    for k, v in pairs:
        out += [k.replace(delim, delim * 2), delim, v.replace(delim, delim * 2), delim]
    return b"".join(out)


def build(path, pairs, data, *, version=b"FCS3.0", header_data=True, text_offsets=True,
          delim=b"/"):
    """HEADER, then DATA, then TEXT (so TEXT can name the DATA offsets)."""
    d0 = 58
    d1 = d0 + len(data) - 1
    pairs = list(pairs)
    if text_offsets:
        pairs += [(b"$BEGINDATA", str(d0).encode()), (b"$ENDDATA", str(d1).encode())]
    text = _text(pairs, delim)
    t0 = d1 + 1
    t1 = t0 + len(text) - 1
    hd = (d0, d1) if header_data is True else header_data
    fields = [t0, t1, *hd, 0, 0]
    header = version + b"    " + b"".join(
        (b" " * 8 if f is None else str(f).rjust(8).encode()) for f in fields)
    path.write_bytes(header + data + text)
    return path


def _basic(par, tot, datatype=b"I", bits=b"16", byteord=b"1,2,3,4", extra=()):
    pairs = [(b"$BYTEORD", byteord), (b"$DATATYPE", datatype), (b"$MODE", b"L"),
             (b"$NEXTDATA", b"0"), (b"$PAR", str(par).encode()), (b"$TOT", str(tot).encode())]
    for n in range(1, par + 1):
        pairs += [(f"$P{n}N".encode(), f"C{n}".encode()), (f"$P{n}B".encode(), bits),
                  (f"$P{n}R".encode(), b"65536"), (f"$P{n}E".encode(), b"0,0")]
    return pairs + list(extra)


def test_escaped_delimiters_empty_values_and_padding():
    text = b"/$P1N/FSC//A/ $P1S /CD3 // CD4/$DATE//$P2N/SSC/CUSTOM/a//b//c/LAST//"
    kw = parse_text(text, 0, "x.fcs")
    assert kw["$P1N"] == "FSC/A"
    assert kw["$P1S"] == "CD3 / CD4"
    assert kw["$DATE"] == ""
    assert kw["$P2N"] == "SSC"
    assert kw["CUSTOM"] == "a/b/c"
    assert kw["LAST"] == ""


def test_text_without_final_delimiter_and_other_delimiter():
    assert parse_text(b"\x0c$PAR\x0c2\x0c$TOT\x0c7", 0, "x") == {"$PAR": "2", "$TOT": "7"}


def test_empty_channel_values_and_duplicate_names(tmp_path):
    data = np.arange(6, dtype="<u2").tobytes()
    pairs = _basic(3, 2)
    pairs = [(k, b"FSC" if k in (b"$P1N", b"$P2N") else v) for k, v in pairs]
    pairs.insert(0, (b"$P3S", b""))  # written as "/$P3S//$BYTEORD/..."
    path = build(tmp_path / "dup.fcs", pairs, data)
    with pytest.warns(UserWarning, match="duplicate channel names"):
        f = read_fcs(path)
    assert f.names == ["FSC", "FSC_2", "C3"]
    assert f.labels == ["", "", ""]
    np.testing.assert_array_equal(f.events.ravel(), np.arange(6))


def test_blank_header_offsets_use_text(tmp_path):
    data = np.arange(4, dtype=">u2").tobytes()
    path = build(tmp_path / "b.fcs", _basic(2, 2, byteord=b"4,3,2,1"), data,
                 header_data=(None, None))
    np.testing.assert_array_equal(read_fcs(path).events, [[0, 1], [2, 3]])


def test_offsets_above_99999999(tmp_path):
    """HEADER data offsets are 0 (too big for 8 digits); TEXT has the real ones."""
    path = tmp_path / "big.fcs"
    ev = np.arange(6, dtype=np.float32).reshape(3, 2)
    blob = encode_dataset(ev, ["a", "b"])
    text_begin, text_end = int(blob[10:18]), int(blob[18:26])
    kw = parse_text(blob[text_begin:text_end + 1], 0, "x")
    kw["$BEGINDATA"] = "100000100"
    kw["$ENDDATA"] = str(100000100 + 24 - 1)
    text = _text([(k.encode(), v.encode()) for k, v in kw.items()])
    header = b"FCS3.1    " + b"".join(str(x).rjust(8).encode()
                                      for x in (58, 58 + len(text) - 1, 0, 0, 0, 0))
    with open(path, "wb") as fh:
        fh.write(header + text)
        fh.truncate(100000100)  # sparse gap
        fh.seek(100000100)
        fh.write(ev.astype("<f4").tobytes())
    np.testing.assert_array_equal(read_fcs(path).events, ev)


def test_end_offset_overshoot_by_one_byte(tmp_path):
    data = np.arange(4, dtype="<u2").tobytes()
    path = build(tmp_path / "o.fcs", _basic(2, 2), data + b"\0", header_data=(58, 58 + 8))
    np.testing.assert_array_equal(read_fcs(path).events, [[0, 1], [2, 3]])


def test_range_bit_masks(tmp_path):
    vals = np.array([[1023, 0xFC00 | 5], [0x8000 | 7, 1]], dtype="<u2")
    pairs = [(k, b"1024" if re.fullmatch(rb"\$P\dR", k) else v)
             for k, v in _basic(2, 2)]
    f = read_fcs(build(tmp_path / "m.fcs", pairs, vals.tobytes()))
    np.testing.assert_array_equal(f.events, [[1023, 5], [7, 1]])


@pytest.mark.parametrize("bits", [b"10", b"12"])
def test_non_byte_widths_padded_to_words(tmp_path, bits):
    """FCS 2.0 files with $PnB 10 stored in 16-bit words: told apart by DATA size."""
    vals = np.array([[1000, 3], [512, 1023]], dtype=">u2")
    f = read_fcs(build(tmp_path / "w.fcs", _basic(2, 2, bits=bits, byteord=b"4,3,2,1"),
                       vals.tobytes(), version=b"FCS2.0"))
    mask = (1 << int(bits)) - 1
    np.testing.assert_array_equal(f.events, vals & mask)


def test_unusual_byte_order(tmp_path):
    vals = np.array([[1, 70000], [123456, 2]], dtype="<u4")
    raw = vals.view(np.uint8).reshape(-1, 4)[:, [2, 3, 0, 1]].tobytes()
    pairs = [(k, b"4294967296" if re.fullmatch(rb"\$P\dR", k) else v)
             for k, v in _basic(2, 2, bits=b"32", byteord=b"3,4,1,2")]
    np.testing.assert_array_equal(read_fcs(build(tmp_path / "p.fcs", pairs, raw)).events, vals)


def test_ascii_fixed_and_delimited(tmp_path):
    fixed = b"  12 3.5   7 8.0"
    pairs = [(k, b"4" if re.fullmatch(rb"\$P\dB", k) else v)
             for k, v in _basic(2, 2, datatype=b"A")]
    f = read_fcs(build(tmp_path / "a.fcs", pairs, fixed))
    np.testing.assert_array_equal(f.events, [[12, 3.5], [7, 8]])
    pairs = [(k, b"*" if re.fullmatch(rb"\$P\dB", k) else v)
             for k, v in _basic(2, 3, datatype=b"A")]
    f = read_fcs(build(tmp_path / "d.fcs", pairs, b"1,2\r\n3,4\r\n5,6\r\n"))
    np.testing.assert_array_equal(f.events, [[1, 2], [3, 4], [5, 6]])


def test_fcs32_per_channel_datatypes(tmp_path):
    ev = np.array([[1, 0.5, 1e300], [65535, -2.25, -1e-300]])
    path = tmp_path / "v32.fcs"
    path.write_bytes(encode_dataset(ev, ["i", "f", "d"], datatypes=["I", "F", "D"],
                                    bits=[16, 32, 64], byteorder="big", version="3.2"))
    assert path.read_bytes()[:6] == b"FCS3.2"
    f = read_fcs(path, dtype="float64")
    assert f.version == "3.2"
    assert list(f.channels["datatype"]) == ["I", "F", "D"]
    assert "$P1DATATYPE" in f.keywords or "$P2DATATYPE" in f.keywords
    np.testing.assert_array_equal(f.events, ev)


def test_several_datasets_one_based(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.arange(8).reshape(2, 4) * 3
    path = write_datasets(tmp_path / "m.fcs", [
        dict(events=a, names=["x", "y"]),
        dict(events=b, names=list("pqrs"), datatypes="I", bits=[8, 16, 24, 32],
             byteorder="big")])
    f1, f2 = read_fcs(path), read_fcs(path, dataset=2)
    assert (f1.n_datasets, f2.n_datasets) == (2, 2)
    np.testing.assert_array_equal(f1.events, a)
    np.testing.assert_array_equal(f2.events, b)
    assert f2.names == list("pqrs")
    with pytest.raises(FCSError, match="data set 3 does not exist"):
        read_fcs(path, dataset=3)
    with pytest.raises(FCSError):
        read_fcs(path, dataset=0)


def test_scaling_log_and_gain(tmp_path):
    ev = np.array([[0, 512, 100], [768, 256, 50]], dtype=float)
    path = write_fcs(tmp_path / "s.fcs", ev, ["log", "lin", "logoff"], datatype="I", bits=[16] * 3,
                     ranges=[1024] * 3, keywords={"$P1E": "4,0", "$P1G": "2", "$P2G": "4",
                                                  "$P3E": "2,0.5", "$P3G": "8"})
    f = read_fcs(path, dtype="float64", scale=True)
    np.testing.assert_allclose(f.events[:, 0], 10 ** (4 * ev[:, 0] / 1024))  # gain ignored
    np.testing.assert_allclose(f.events[:, 1], ev[:, 1] / 4)
    np.testing.assert_allclose(f.events[:, 2], 0.5 * 10 ** (2 * ev[:, 2] / 1024))
    np.testing.assert_array_equal(read_fcs(path, dtype="float64").events, ev)


def test_spillover_keywords(tmp_path):
    ev = np.zeros((2, 3), dtype=np.float32)
    spill = pd.DataFrame([[1, 0.1], [0.2, 1]], index=["b", "c"], columns=["b", "c"])
    for key, chans in [("$SPILLOVER", "b,c"), ("$SPILL", "B-lab,C-lab"), ("SPILL", "2,3")]:
        path = write_fcs(tmp_path / "sp.fcs", ev, ["a", "b", "c"], ["", "B-lab", "C-lab"],
                         keywords={key: f"2,{chans},1,0.1,0.2,1"})
        got = read_fcs(path).spillover
        pd.testing.assert_frame_equal(got, spill.astype(float))
    path = write_fcs(tmp_path / "sp2.fcs", ev, ["a", "b", "c"], spillover=spill)
    pd.testing.assert_frame_equal(read_fcs(path).spillover, spill.astype(float))


def test_writer_is_deterministic_and_validates(tmp_path):
    ev = np.random.default_rng(1).random((50, 3)).astype(np.float32)
    p1 = write_fcs(tmp_path / "1.fcs", ev, ["a", "b", "c"], keywords={"$SRC": "sim"})
    p2 = write_fcs(tmp_path / "2.fcs", ev, ["a", "b", "c"], keywords={"$SRC": "sim"})
    assert p1.read_bytes() == p2.read_bytes()
    assert p1.read_bytes()[:6] == b"FCS3.1"
    with pytest.raises(ValueError, match="unique"):
        write_fcs(tmp_path / "x.fcs", ev, ["a", "a", "c"])
    with pytest.raises(ValueError, match="outside"):
        write_fcs(tmp_path / "x.fcs", ev * 1000, ["a", "b", "c"], datatype="I", bits=[8] * 3)


def test_peak_memory_is_one_array_plus_a_chunk(tmp_path, monkeypatch):
    """Big-endian data needs conversion: still only the output array + one chunk."""
    monkeypatch.setattr(fcs_data, "CHUNK_BYTES", 1 << 20)
    ev = np.random.default_rng(0).random((200_000, 20)).astype(np.float32)  # 16 MB
    path = write_fcs(tmp_path / "big.fcs", ev, [f"c{i}" for i in range(20)], byteorder="big")
    del ev
    for dtype, factor in (("float32", 1), ("float64", 2)):
        tracemalloc.start()
        f = read_fcs(path, dtype=dtype)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= 1.2 * f.events.nbytes and f.events.nbytes == factor * 16_000_000


def test_claimed_sizes_are_checked_before_allocating(tmp_path):
    data = np.arange(4, dtype="<u2").tobytes()
    pairs = [(k, b"1000000000000" if k == b"$TOT" else v) for k, v in _basic(2, 2)]
    path = build(tmp_path / "huge.fcs", pairs, data)
    with pytest.raises(FCSError, match="truncated or .TOT is wrong") as err:
        read_fcs(path)
    assert str(path) in str(err.value) and "byte offset" in str(err.value)
    assert isinstance(err.value, UserError)


def test_claimed_parameter_count_is_checked(tmp_path):
    data = np.arange(4, dtype="<u2").tobytes()
    pairs = [(k, b"999999999999" if k == b"$PAR" else v) for k, v in _basic(2, 2)]
    with pytest.raises(FCSError, match=r"\$PAR claims 999999999999 parameters"):
        read_fcs(build(tmp_path / "par.fcs", pairs, data))


@pytest.mark.parametrize("cut", [0, 5, 40, 70, 200])
def test_truncated_files(tmp_path, cut):
    ev = np.ones((100, 3), dtype=np.float32)
    blob = write_fcs(tmp_path / "ok.fcs", ev, ["a", "b", "c"]).read_bytes()
    path = tmp_path / "cut.fcs"
    path.write_bytes(blob[:cut] if cut < 200 else blob[:-1])
    with pytest.raises(FCSError) as err:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_fcs(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "byte offset" in msg and "\n" not in msg


def test_not_fcs_and_missing(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n" * 20)
    with pytest.raises(FCSError, match="not an FCS file"):
        read_fcs(path)
    with pytest.raises(FCSError, match="not found"):
        read_fcs(tmp_path / "none.fcs")
    with pytest.raises(FCSError, match="directory"):
        read_fcs(tmp_path)
