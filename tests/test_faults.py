"""Fault injection, inputs: every bad file or setting of issue 15 ends in the exit-status
contract (status 2, one line per problem naming the file and the position, no traceback),
leaves the inputs unchanged and bounds memory.

The CLI runs in a child process (``tests/faults.py``): its real exit status, stderr and peak
resident memory are what is checked. Run-level faults (full disk, read-only folders, kill -9,
concurrent runs, unreadable samples during ``run``) are in ``test_faults_run.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults import (Result, assert_contract, cli, digests, edit_keyword, fcs_file,
                    float_keywords)
from immunomon.cli import one_line
from immunomon.io.fcs import FCSError, read_fcs, read_fcs_metadata
from immunomon.io.study import validate_study

G11 = Path(__file__).parent / "data" / "fcs" / "G11.fcs"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A small valid study (3 patients x 2 visits x 1,000 events); tests copy it."""
    from immunomon.simulate import simulate_study

    return simulate_study(tmp_path_factory.mktemp("faults") / "study", patients=3,
                          visits=("D1", "D8"), events=1_000, seed=5)


@pytest.fixture
def main(monkeypatch, capsys):
    """``immunomon ARGS`` in this process (for the cases that cannot hang or use memory):
    a :class:`faults.Result` without the peak memory."""
    from immunomon.cli import main as entry

    def call(*args) -> Result:
        monkeypatch.setattr(sys, "argv", ["immunomon", *map(str, args)])
        with pytest.raises(SystemExit) as done:
            entry()
        out = capsys.readouterr()
        return Result(done.value.code or 0, out.out, out.err, float("nan"))

    return call


@pytest.fixture
def copy(study, tmp_path) -> Path:
    """A private copy of the study (without its truth) that a test may break."""
    return Path(shutil.copytree(study, tmp_path / "study", ignore=shutil.ignore_patterns("truth")))


# -------------------------------------------------------------------------- study.yaml / CSV
def _billion_laughs(levels: int = 9, width: int = 9) -> str:
    """YAML whose aliases expand to ``width ** levels`` strings (10^9 for 9 x 9... levels)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("verb", ["validate", "run"])
def test_yaml_alias_bomb_is_refused_in_bounded_memory(copy, tmp_path, verb):
    bomb = _billion_laughs()
    text = (copy / "study.yaml").read_text()
    (copy / "study.yaml").write_text(text + "laughs:\n" + "".join(
        f"  {line}\n" for line in bomb.splitlines()) + "more: [*l9, *l9, *l9]\n")
    before = digests(copy)
    args = ["--out", tmp_path / "run", "--quiet"] if verb == "run" else []
    result = cli(verb, copy, *args, timeout=120, data_limit=4 * 2**30)
    assert_contract(result, 2, "study.yaml, line", lines=2)
    assert "laughs: unknown field" in result.err and "more: unknown field" in result.err
    assert result.peak_mb < 1024, result.peak_mb
    assert digests(copy) == before


@pytest.mark.parametrize("text", ["visits: &v [*v]\n", "visits: " + "[" * 3000 + "]" * 3000 + "\n"],
                         ids=["recursive alias", "deep nesting"])
def test_self_referencing_and_deep_yaml(copy, text):
    config = (copy / "study.yaml").read_text()
    (copy / "study.yaml").write_text(config.replace("visits:", "old_visits:", 1) + text)
    problems = validate_study(copy, check_files=False)
    assert problems and all(p.startswith(str(copy / "study.yaml")) for p in problems)


@pytest.mark.parametrize("column, value", [("dataset", "inf"), ("dataset", "1e300"),
                                           ("dataset", "-inf"), ("lymphocytes_per_ul", "inf"),
                                           ("lymphocytes_per_ul", "nan"),
                                           ("lymphocytes_per_ul", "-1")])
def test_non_finite_numbers_in_samples_csv(main, copy, column, value):
    samples = pd.read_csv(copy / "samples.csv", dtype=str, keep_default_na=False)
    samples.loc[1, column] = value
    samples.to_csv(copy / "samples.csv", index=False)
    result = main("validate", copy, "--no-files")
    assert_contract(result, 2, "samples.csv, line 3", f"column '{column}'", f"'{value}'", lines=1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dataset=st.text(max_size=12), lymphocytes=st.text(max_size=12))
def test_any_text_in_numeric_columns_is_a_located_problem(copy, dataset, lymphocytes):
    samples = pd.read_csv(copy / "samples.csv", dtype=str, keep_default_na=False)
    samples.loc[0, ["dataset", "lymphocytes_per_ul"]] = [dataset, lymphocytes]
    samples.to_csv(copy / "samples.csv", index=False)
    problems = validate_study(copy, check_files=False)  # never raises
    for line in problems:
        assert line.startswith(f"{copy / 'samples.csv'}, line ")
        assert "\n" not in one_line(line)


def test_a_newline_quoted_from_a_file_stays_on_its_line(main, copy):
    samples = pd.read_csv(copy / "samples.csv", dtype=str, keep_default_na=False)
    samples.loc[0, "lymphocytes_per_ul"] = "12\n34"
    samples.to_csv(copy / "samples.csv", index=False)
    result = main("validate", copy, "--no-files")
    assert_contract(result, 2, "samples.csv, line 2", "'12\\n34' is not a count", lines=1)


def test_header_only_samples_csv_is_no_samples(main, copy):
    header = (copy / "samples.csv").read_text().splitlines()[0]
    (copy / "samples.csv").write_text(header + "\n")
    result = main("validate", copy)
    assert_contract(result, 2, "samples.csv, line 2", "no samples", lines=1)


def test_huge_som_grid_is_refused_by_validate_and_run(main, copy, tmp_path):
    grid = "--set", "panels.treg.clustering.grid=[100000, 100000]"
    for verb, extra in (("validate", ()), ("run", ("--out", tmp_path / "run", "--quiet"))):
        result = main(verb, copy, *grid, *extra)
        assert_contract(result, 2, "study.yaml, line", "clustering.grid", lines=2)
    assert not (tmp_path / "run" / "tables").exists()


def test_metaclusters_beyond_the_grid_and_infinite_settings(main, copy):
    result = main("validate", copy, "--no-files", "--set", "panels.treg.transform.cofactor=.inf",
                 "--set", "seed=-4")
    assert_contract(result, 2, "study.yaml, line", lines=2)
    assert "cofactor: Input should be a finite number" in result.err and "seed" in result.err
    result = main("validate", copy, "--no-files", "--set", "panels.treg.clustering.grid=[3, 3]",
                 "--set", "panels.treg.clustering.metaclusters=20")
    assert_contract(result, 2, "study.yaml, line", "20 metaclusters", "the grid has 9", lines=1)


# ------------------------------------------------------------------------------------- FCS
def test_par_zero(main, copy):
    sample = copy / "fcs" / "P001_D1.fcs"
    edit_keyword(sample, sample, "$PAR", "0")
    result = main("fcs", "info", sample)
    assert_contract(result, 2, str(sample), "$PAR is 0", "byte offset", lines=1)
    result = main("validate", copy)
    assert_contract(result, 2, "samples.csv, line 2", "$PAR is 0", "byte offset", lines=1)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.fcs"
    os.mkfifo(fifo)
    result = cli("fcs", "info", fifo, timeout=60)
    assert_contract(result, 2, str(fifo), "named pipe (FIFO)", lines=1)


def test_symlink_to_a_device_and_broken_symlink(tmp_path):
    zero = tmp_path / "zero.fcs"
    zero.symlink_to("/dev/zero")
    broken = tmp_path / "broken.fcs"
    broken.symlink_to(tmp_path / "gone.fcs")
    for path, reason in ((zero, "character device"), (broken, "broken symbolic link")):
        result = cli("fcs", "info", path, timeout=60)
        assert_contract(result, 2, str(path), reason, lines=1)


def test_fifo_and_device_in_a_study_are_named(copy):
    target = copy / "fcs" / "P002_D1.fcs"
    target.unlink()
    os.mkfifo(target)
    other = copy / "fcs" / "P002_D8.fcs"
    other.unlink()
    other.symlink_to("/dev/zero")
    result = cli("validate", copy, timeout=60)
    assert_contract(result, 2, "samples.csv, line", lines=2)
    assert "named pipe (FIFO)" in result.lines[0] and "character device" in result.lines[1]
    assert "file not found" not in result.err


def test_a_non_fcs_file_is_never_echoed(main, tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:secret-token:/root:/bin/bash\n" * 3)
    result = main("fcs", "info", secret)
    assert_contract(result, 2, str(secret), "not an FCS file", "byte offset 0", lines=1)
    assert "root" not in result.err.replace(str(secret), "") and "secret" not in result.err \
        .replace(str(secret), "")


def test_stray_character_after_text_data_offsets_uses_the_consistent_header_pair(tmp_path):
    rng = np.random.default_rng(0)
    events = rng.normal(1000, 100, (500, 3)).astype(np.float32)
    names = ["FSC-A", "SSC-A", "CD3"]
    data = events.astype("<f4").tobytes()
    clean = fcs_file(tmp_path / "clean.fcs", float_keywords(names, 500), data)
    for n, stray in enumerate(["x", "\x00", ";", " 7"]):
        kw = {**float_keywords(names, 500), "$BEGINDATA": "{begin}" + stray,
              "$ENDDATA": "{end}" + stray}
        path = fcs_file(tmp_path / f"stray{n}.fcs", kw, data)
        assert read_fcs_metadata(path).keywords["$ENDDATA"].endswith(stray.strip())
        np.testing.assert_array_equal(read_fcs(path).events, read_fcs(clean).events)
    result = cli("fcs", "info", path, "--json")
    assert result.code == 0 and '"events": 500' in result.out and not result.err


def test_text_offsets_without_digits_and_no_header_pair_say_so(tmp_path):
    kw = {**float_keywords(["a"], 4), "$BEGINDATA": "x{begin}", "$ENDDATA": "x{end}"}
    path = fcs_file(tmp_path / "bad.fcs", kw, np.zeros(4, "<f4").tobytes(), header_data=(0, 0))
    with pytest.raises(FCSError, match=r"\$BEGINDATA 'x +\d+'.*byte offset") as err:
        read_fcs_metadata(path)
    assert str(path) in str(err.value)


def test_sizes_beyond_the_memory_left_are_refused_before_allocating(tmp_path):
    """A 2 GiB file of zeros with a plausible header (sparse: no disk used): ``fcs convert``
    under a 1 GiB data limit stops with one line instead of a MemoryError or the OOM killer."""
    names = [f"C{i}" for i in range(8)]
    events = 2**31 // (4 * len(names))
    path = fcs_file(tmp_path / "zeros.fcs", float_keywords(names, events), data_size=2**31)
    assert os.stat(path).st_blocks * 512 < 2**20  # sparse
    out = tmp_path / "out"
    out.mkdir()
    info = cli("fcs", "info", path)
    assert info.code == 0 and f"events {events}" in info.out
    result = cli("fcs", "convert", path, out / "zeros.csv", data_limit=2**30, timeout=120)
    assert_contract(result, 2, str(path), "of memory", "byte offset", lines=1)
    assert result.peak_mb < 512 and not list(out.iterdir())


def test_delimited_ascii_is_read_in_bounded_chunks(tmp_path, monkeypatch):
    import immunomon.io.fcs_data as fcs_data

    values = np.arange(3000, dtype=np.float64).reshape(1000, 3)
    text = "\n".join(",".join(f"{v:g}" for v in row) for row in values).encode()
    kw = {**float_keywords(["a", "b", "c"], 1000), "$DATATYPE": "A",
          "$P1B": "*", "$P2B": "*", "$P3B": "*"}
    path = fcs_file(tmp_path / "ascii.fcs", kw, text)
    monkeypatch.setattr(fcs_data, "CHUNK_BYTES", 37)  # values cut at every chunk boundary
    np.testing.assert_array_equal(read_fcs(path, dtype="float64").events, values)
    short = fcs_file(tmp_path / "short.fcs", kw, text[: len(text) // 2])
    with pytest.raises(FCSError, match=r"ASCII DATA .*\$TOT x \$PAR = 3000.*byte offset"):
        read_fcs(short)
    junk = fcs_file(tmp_path / "junk.fcs", kw, b"\x00" * 8000)
    with pytest.raises(FCSError, match="not a number"):
        read_fcs(junk)


# ---------------------------------------------------------------------------- fcs convert
def test_convert_into_a_missing_folder(main, tmp_path):
    out = tmp_path / "missing" / "g11.parquet"
    result = main("fcs", "convert", G11, out)
    assert_contract(result, 2, str(out), "does not exist", lines=1)
    assert not (tmp_path / "missing").exists()


# --------------------------------------------------------------------------------- warnings
def test_warnings_are_one_line(tmp_path):
    names = ["FSC-A", "FSC-A", "CD3"]  # duplicate channel names: a warning
    path = fcs_file(tmp_path / "dup.fcs", float_keywords(names, 10), np.zeros(30, "<f4").tobytes())
    result = cli("fcs", "info", path)
    assert result.code == 0
    assert result.lines == [f"warning: {path}: duplicate channel names made unique: "
                            "'FSC-A' -> 'FSC-A_2'"]


def test_internal_errors_are_one_line_without_traceback():
    """A bug (here: a summary function that divides by zero) ends in one line, status 1."""
    code = ("import immunomon.cli as c, immunomon.cli.fcs as f; "
            "f.fcs_summary = lambda *_: 1 / 0; c.main()")
    done = subprocess.run([sys.executable, "-c", code, "fcs", "info", str(G11)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == ["immunomon: internal error (ZeroDivisionError: division "
                                        "by zero); please report it; IMMUNOMON_DEBUG=1 prints the "
                                        "traceback"]
