"""Fault injection, ``immunomon run``: full disk, read-only folders, ``kill -9``, two runs into
one run directory, a sample whose data turn out unreadable during the run; and what a re-run
then costs.

Each case checks the exit-status contract (0 / 3 / 2, one line per problem naming the file
and the position, never a traceback), that the inputs are unchanged, that no temporary file
or process is left behind, and that a re-run reuses what is done. The full-disk and
read-only cases mount a size-limited tmpfs or a read-only bind mount (root ignores chmod);
they are skipped only where mounting is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from faults import (assert_contract, cli, digests, fcs_file, group_processes, read_only,
                    temporaries, tmpfs)
from immunomon.io.fcs import read_fcs
from immunomon.pipeline.lock import run_lock

BAD = "P002_D8"  # its DATA turn out short only when the run decodes them


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """3 patients x 2 visits x 1,500 events; the DATA of one sample is delimited ASCII with
    half of its values missing (its TEXT is fine, so ``validate`` cannot know)."""
    from immunomon.simulate import simulate_study

    root = simulate_study(tmp_path_factory.mktemp("faults_run") / "study", patients=3,
                          visits=("D1", "D8"), events=1_500, seed=7)
    shutil.rmtree(root / "truth")
    path = root / "fcs" / f"{BAD}.fcs"
    f = read_fcs(path)
    text = "\n".join(",".join(f"{v:.6g}" for v in row) for row in f.events).encode()
    keywords = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "A", "$MODE": "L", "$NEXTDATA": "0",
                "$PAR": str(len(f.names)), "$TOT": str(len(f.events))}
    for i, name in enumerate(f.names, 1):
        keywords |= {f"$P{i}N": name, f"$P{i}S": f.labels[i - 1] or name, f"$P{i}B": "*",
                     f"$P{i}R": "262144", f"$P{i}E": "0,0"}
    fcs_file(path, keywords, text[: len(text) // 2])
    return root


def _steps(run_dir: Path) -> dict[str, dict]:
    record = json.loads((run_dir / "provenance.json").read_text())
    return {s["step"]: s for s in record["steps"]} | {"_record": record}


def test_kill_concurrent_run_unreadable_sample_and_reruns(study, tmp_path):
    """One run directory through the whole story: kill -9 mid-run (no process left), a second
    run while the first holds the directory (refused), the resumed run (status 3 naming the
    unreadable sample), a re-run (report not redrawn), the sample excluded (status 0), and a
    last re-run that is up to date."""
    before = digests(study)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "immunomon", "run", study, "--out", out,
                             "--workers", "2", "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(group_processes(proc.pid)) < 4:  # the run, its resource tracker, forkserver, workers
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.02)

    second = cli("run", study, "--out", out, "--quiet")
    assert_contract(second, 2, str(out), "another immunomon run is writing", f"pid {proc.pid}",
                    lines=1)

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while (left := group_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left after kill -9: {left}"

    resumed = cli("run", study, "--out", out, "--workers", "2", "--quiet")
    assert_contract(resumed, 3, f"sample {BAD} not analysed", f"{BAD}.fcs", "byte offset", lines=1)
    assert "ASCII DATA holds" in resumed.err
    assert not temporaries(out) and digests(study) == before
    report = (out / "report.html").stat().st_mtime_ns

    again = cli("run", study, "--out", out, "--quiet")
    assert_contract(again, 3, f"sample {BAD} not analysed", lines=1)
    steps = _steps(out)
    assert steps["prepare"]["cached"] == steps["prepare"]["samples"] - 1  # the bad one is retried
    assert steps["report"]["rendered"] == 0 and (out / "report.html").stat().st_mtime_ns == report

    config = yaml.safe_load((study / "study.yaml").read_text())
    config["exclusions"] = [{"sample_id": BAD, "reason": "DATA segment cut short"}]
    excluded = Path(shutil.copytree(study, tmp_path / "excluded"))
    (excluded / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = cli("run", excluded, "--out", out, "--quiet")
    assert done.code == 0 and not done.err.strip(), done.err
    assert _steps(out)["stats"]["cached"] == 1

    tables = digests(out / "tables")
    last = cli("run", excluded, "--out", out, "--quiet", "--workers", "2")
    assert last.code == 0 and not last.err.strip()
    record = _steps(out)["_record"]
    assert record["up_to_date"] is True and set(_steps(out)) == {"hash", "_record"}
    assert digests(out / "tables") == tables and not temporaries(out)

    (out / "tables" / "pca.csv").write_text("edited by hand\n")  # an output changed: redo
    report = (out / "report.html").stat().st_mtime_ns
    fixed = cli("run", excluded, "--out", out, "--quiet")
    assert fixed.code == 0 and _steps(out)["_record"]["up_to_date"] is False
    assert digests(out / "tables") == tables
    assert _steps(out)["report"]["rendered"] == 0 and (out / "report.html").stat().st_mtime_ns == report


def test_full_disk_during_run(study, tmp_path):
    before = digests(study)
    with tmpfs(tmp_path / "disk", "400k") as disk:
        result = cli("run", study, "--out", disk / "run", "--workers", "2", "--quiet")
        assert_contract(result, 2, str(disk / "run"), "cannot write (No space left on device)",
                        lines=1)
        assert not temporaries(disk)
    assert digests(study) == before


def test_read_only_run_directory(study, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        result = cli("run", study, "--out", folder / "run", "--quiet")
        assert_contract(result, 2, str(folder / "run"), "Read-only file system", lines=1)
        result = cli("fcs", "convert", study / "fcs" / "P001_D1.fcs", folder / "x.parquet")
        assert_contract(result, 2, str(folder / "x.parquet"), "Read-only file system", lines=1)


def test_fcs_convert_on_a_full_disk_leaves_no_partial_file(study, tmp_path):
    source = study / "fcs" / "P001_D1.fcs"
    with tmpfs(tmp_path / "disk", "64k") as disk:
        for name in ("x.csv", "x.parquet", "x.h5ad"):
            result = cli("fcs", "convert", source, disk / name)
            assert_contract(result, 2, str(disk / name), "No space left on device", lines=1)
            assert not list(disk.iterdir())


def test_run_directory_lock_is_released_and_refuses_a_second_holder(tmp_path):
    with run_lock(tmp_path) as path:
        result = cli("report", tmp_path)  # not a run directory: refused before the lock
        assert result.code == 2
        (tmp_path / "tables").mkdir()
        result = cli("report", tmp_path)
        assert_contract(result, 2, str(tmp_path), "another immunomon run is writing", lines=1)
        assert f"pid {os.getpid()}" in path.read_text()
    with run_lock(tmp_path):  # released when the holder leaves
        pass


def test_default_event_draws_are_those_of_the_clustering_branch():
    from immunomon.pipeline import run, unsupervised

    assert (run.TRAIN_CELLS, run.EMBED_CELLS) == (unsupervised.TRAIN_CELLS,
                                                  unsupervised.EMBED_CELLS)


def test_init_and_simulate_on_a_full_disk_leave_no_partial_file(study, tmp_path):
    """``init`` and ``simulate`` write through the same atomic writer as a run: a full disk
    is one line naming the file, and no truncated study.yaml or FCS file is left."""
    with tmpfs(tmp_path / "disk", "200k") as disk:
        (disk / "fill").write_bytes(b"\0" * (200 * 1024 - 2048))
        result = cli("init", study / "fcs", "--out", disk / "study")
        assert_contract(result, 2, str(disk / "study"), "No space left on device", lines=1)
        assert not temporaries(disk) and not (disk / "study" / "study.yaml").exists()
        (disk / "fill").unlink()
        result = cli("simulate", disk / "sim", "--patients", "2", "--visits", "D1",
                     "--events", "2000")
        assert_contract(result, 2, "No space left on device", lines=1)
        assert not temporaries(disk)
        for fcs in (disk / "sim" / "fcs").glob("*.fcs"):
            assert read_fcs(fcs).events.shape == (2000, 19)
