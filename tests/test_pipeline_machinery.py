"""Run-directory machinery: atomic writes, tables, content-hash cache, provenance."""

import json

import numpy as np
import pandas as pd
import pytest

from immunomon.pipeline.cache import Cache, code_fingerprint, make_key, sha256_file
from immunomon.pipeline.provenance import safe_keywords, write_provenance
from immunomon.pipeline.rundir import atomic_path, atomic_write, read_table, write_table


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_write_table_round_trip_and_bytes_stable(tmp_path):
    table = pd.DataFrame({"sample_id": ["s2", "s1"], "value": [0.1, np.nan],
                          "qc_pass": [True, False]}, index=[5, 3])
    write_table(tmp_path / "r1", "demo", table)
    write_table(tmp_path / "r2", "demo", table)
    back = read_table(tmp_path / "r1", "demo")
    pd.testing.assert_frame_equal(back, table.reset_index(drop=True))
    for ext in ("parquet", "csv"):
        a = (tmp_path / "r1" / "tables" / f"demo.{ext}").read_bytes()
        assert a == (tmp_path / "r2" / "tables" / f"demo.{ext}").read_bytes()
    assert (tmp_path / "r1/tables/demo.csv").read_text().splitlines()[0] == "sample_id,value,qc_pass"


def test_cache_hit_miss_and_corrupt_entry(tmp_path):
    cache = Cache(tmp_path / ".cache")
    key = make_key("sha", {"b": 1, "a": [1.0, 2]}, 7)
    assert key == make_key("sha", {"a": [1.0, 2], "b": 1}, 7)  # dict order is irrelevant
    assert key != make_key("sha", {"a": [1.0, 2], "b": 2}, 7)
    assert cache.get("prepare", key) is None
    value = {"table": pd.DataFrame({"x": [1, 2]}), "array": np.arange(3)}
    cache.put("prepare", key, value)
    got = cache.get("prepare", key)
    pd.testing.assert_frame_equal(got["table"], value["table"])
    np.testing.assert_array_equal(got["array"], value["array"])
    cache.path("prepare", key).write_bytes(b"\x80truncated")
    assert cache.get("prepare", key) is None
    assert Cache(None).get("prepare", key) is None


def test_sha256_and_code_fingerprint(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert code_fingerprint("immunomon.pipeline") != code_fingerprint("immunomon.errors")
    assert len(code_fingerprint("immunomon.no_such_module")) == 64


def test_provenance_has_versions_and_drops_identifying_keywords(tmp_path):
    keywords = {"$CYT": "FACSCanto", "$DATE": "01-JAN-2025", "$SRC": "Jane Doe",
                "$OP": "operator", "$SMNO": "123", "COMMENT": "patient note"}
    assert set(safe_keywords(keywords)) == {"$CYT", "$DATE"}
    path = write_provenance(tmp_path / "provenance.json", {"seed": 3})
    record = json.loads(path.read_text())
    assert record["seed"] == 3
    assert {"immunomon", "numpy", "pandas", "python"} <= set(record["versions"])
