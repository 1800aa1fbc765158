"""Property tests: random valid files read back exactly; fuzzed bytes only raise FCSError."""

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from immunomon.io.fcs import FCSError, read_fcs
from immunomon.io.fcs_write import encode_dataset

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def datasets(draw):
    """Keyword arguments of one data set and the float64 values it must read back as."""
    version = draw(st.sampled_from(["3.1", "3.2"]))
    par = draw(st.integers(1, 6))
    n = draw(st.integers(0, 40))
    if version == "3.2":
        kinds = draw(st.lists(st.sampled_from("IFD"), min_size=par, max_size=par))
    else:
        kinds = [draw(st.sampled_from("IFD"))] * par
    if "I" in kinds and version == "3.1" and draw(st.booleans()):
        widths = [draw(st.integers(1, 64)) for _ in range(par)]  # any $PnB, packed if odd
    else:
        widths = [draw(st.sampled_from([8, 16, 24, 32, 40, 48, 56, 64])) if k == "I" else
                  (32 if k == "F" else 64) for k in kinds]
    if any(w % 8 for w in widths) and set(kinds) != {"I"}:
        widths = [32 if k == "F" else 64 if k == "D" else 32 for k in kinds]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cols = []
    for k, w in zip(kinds, widths):
        if k == "I":
            top = 2 ** min(w, 53)
            cols.append(rng.integers(0, top, size=n, dtype=np.uint64).astype(np.float64))
        elif k == "F":
            cols.append((rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30)).astype(np.float32)
                        .astype(np.float64))
        else:
            cols.append(rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300))
    events = np.column_stack(cols) if cols else np.empty((n, 0))
    kwargs = dict(events=events, names=[f"ch{j}" for j in range(par)],
                  labels=[draw(st.sampled_from(["", "CD3", "a/b", "ü"])) for _ in range(par)],
                  datatypes=kinds if version == "3.2" else kinds[0], bits=widths,
                  byteorder=draw(st.sampled_from(["little", "big"])), version=version)
    return kwargs


@SETTINGS
@given(st.lists(datasets(), min_size=1, max_size=3))
def test_random_files_read_back_exactly(tmp_path, sets):
    blobs = [encode_dataset(**kw, last=i == len(sets) - 1) for i, kw in enumerate(sets)]
    path = tmp_path / "random.fcs"
    path.write_bytes(b"".join(blobs))
    for i, kw in enumerate(sets, start=1):
        f = read_fcs(path, dataset=i, dtype="float64")
        assert f.n_datasets == len(sets)
        assert f.version == kw["version"]
        np.testing.assert_array_equal(f.events, kw["events"])
        assert f.names == kw["names"] and f.labels == kw["labels"]
        assert list(f.channels["bits"]) == kw["bits"]


def _seed_file() -> bytes:
    ev = np.arange(24, dtype=np.float64).reshape(6, 4)
    first = encode_dataset(ev, list("abcd"), ["x", "", "y", ""], datatypes="I",
                           bits=[8, 16, 24, 32], last=False,
                           keywords={"$SPILLOVER": "2,a,b,1,0.1,0.2,1"})
    second = encode_dataset(ev[:3, :2], ["p", "q"], byteorder="big")
    return first + second


SEED = _seed_file()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(SEED)), st.booleans())
def test_fuzzed_bytes_raise_only_fcserror(tmp_path, edits, cut, use_cut):
    blob = bytearray(SEED)
    for pos, val in edits:
        blob[pos] = val
    if use_cut:
        blob = blob[:cut]
    path = tmp_path / "fuzz.fcs"
    path.write_bytes(bytes(blob))
    for dataset in (1, 2):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = read_fcs(path, dataset=dataset, scale=dataset == 2)
        except FCSError as err:
            line = str(err)
            assert line.startswith(str(path)) and "\n" not in line
        else:
            assert f.events.ndim == 2 and f.events.shape[1] == len(f.names)
