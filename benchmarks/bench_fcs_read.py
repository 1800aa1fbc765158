"""Benchmark: reading FCS 3.1 float32 files with immunomon and its peers.

Generates 1,000,000- and 10,000,000-event x 20-channel FCS 3.1 float32 files in
``benchmarks/_work/`` (git-ignored; reused when present) and reads each with
immunomon, flowio, fcsparser, FlowKit and ``numpy.fromfile`` of the raw DATA segment,
each to a materialised native-endian array whose every value is touched (summed).

Every read runs in its own subprocess. Times are medians of runs done round robin over
the readers (so that the noise of a shared machine hits all alike). Peak memory comes
from one more run per reader, in which the parent samples the child's anonymous
resident memory (``RssAnon`` in ``/proc/<pid>/status``) every millisecond (independent
of the child's GIL; sampling slows the child, so these runs are not timed). "peak" is
the highest RssAnon during the read minus the child's RssAnon just before it (after
imports), i.e. what the read itself needs. The file is read once beforehand so that
every reader sees it page-cached.

Usage::

    python benchmarks/bench_fcs_read.py [--repeats 5] [--slow-repeats 3] [--sizes 1e6,1e7]
"""

from __future__ import annotations

import argparse
import json
import selectors
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

WORK = Path(__file__).parent / "_work"
CHANNELS = 20

CHILD = r"""
import json, sys, time
import numpy as np
reader, path, begin, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if reader == "immunomon":
    from immunomon.io.fcs import read_fcs
    def read():
        return read_fcs(path).events
elif reader == "numpy.fromfile":
    def read():
        return np.fromfile(path, dtype="<f4", count=n * 20, offset=begin).reshape(n, 20)
elif reader == "flowio":
    import flowio
    def read():
        return flowio.FlowData(path).as_array(preprocess=False)
elif reader == "fcsparser":
    import fcsparser
    def read():
        return fcsparser.parse(path, reformat_meta=True)[1].to_numpy()
elif reader == "FlowKit":
    import flowkit
    def read():
        return flowkit.Sample(path).get_events(source="raw")
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
arr = read()
total = float(arr.sum(dtype=np.float64))
dt = time.perf_counter() - t0
assert arr.shape == (n, 20) and arr.dtype.isnative, (arr.shape, arr.dtype)
print(json.dumps({"seconds": dt, "sum": total, "dtype": str(arr.dtype),
                  "nbytes": int(arr.nbytes)}), flush=True)
"""


def rss_anon(pid: int) -> int:
    """Anonymous resident memory of a process, bytes (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_once(reader: str, path: Path, begin: int, n: int, sample: bool) -> dict:
    """One read in a fresh process: its time, or (``sample``) its peak anonymous memory.

    Sampling /proc every millisecond slows the child down, so timed runs do not sample.
    """
    proc = subprocess.Popen([sys.executable, "-c", CHILD, reader, str(path), str(begin), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    base = rss_anon(proc.pid)
    peak = base
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if sample:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not sel.select(timeout=0.001):
            peak = max(peak, rss_anon(proc.pid))
    line = proc.stdout.readline()
    proc.wait()
    if not line:
        raise RuntimeError(f"{reader} exited with status {proc.returncode}")
    out = json.loads(line)
    out["peak_bytes"] = peak - base
    return out


def make_file(n: int) -> tuple[Path, int]:
    """A deterministic n x 20 float32 FCS 3.1 file and the offset of its DATA."""
    from immunomon.io.fcs import read_fcs_metadata, write_fcs

    WORK.mkdir(exist_ok=True)
    path = WORK / f"bench_{n}.fcs"
    if not path.exists():
        rng = np.random.default_rng(0)
        events = rng.random((n, CHANNELS), dtype=np.float32) * 1000
        write_fcs(path, events, [f"FL{j + 1}-A" for j in range(CHANNELS)],
                  ranges=[1000] * CHANNELS)
        del events
    begin = read_fcs_metadata(path).data_offsets[0]
    return path, begin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-repeats", type=int, default=5,
                    help="repeats for flowio, fcsparser and FlowKit on the largest file")
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--readers", default="numpy.fromfile,immunomon,fcsparser,flowio,FlowKit")
    args = ap.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    readers = args.readers.split(",")
    print("| events | reader | runs | median s | MB/s | vs numpy.fromfile | peak anon MB "
          "| peak / array | dtype |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for n in sizes:
        path, begin = make_file(n)
        with open(path, "rb") as fh:  # page-cache the file
            while fh.read(1 << 26):
                pass
        size_mb = n * CHANNELS * 4 / 1e6
        slow = {"flowio", "fcsparser", "FlowKit"}
        wanted = {r: args.slow_repeats if r in slow and n == max(sizes) else args.repeats
                  for r in readers}
        runs: dict[str, list[dict]] = {r: [] for r in readers}
        failed: dict[str, str] = {}
        # round robin, so that the noise of a shared machine hits every reader alike
        for rep in range(max(wanted.values())):
            for reader in readers:
                if rep < wanted[reader] and reader not in failed:
                    try:
                        runs[reader].append(run_once(reader, path, begin, n, sample=False))
                    except Exception as err:  # a peer that cannot read the file
                        failed[reader] = repr(err)
        peaks = {r: run_once(r, path, begin, n, sample=True)["peak_bytes"]
                 for r in readers if r not in failed}
        ref = None
        for reader in readers:
            if reader in failed:
                print(f"| {n:,} | {reader} | failed: {failed[reader]} |||||||")
                continue
            sec = statistics.median(r["seconds"] for r in runs[reader])
            peak = peaks[reader]
            if reader == "numpy.fromfile":
                ref = sec
            ratio = f"{sec / ref:.2f}x" if ref else "-"
            print(f"| {n:,} | {reader} | {len(runs[reader])} | {sec:.3f} | {size_mb / sec:,.0f} "
                  f"| {ratio} | {peak / 1e6:,.0f} | {peak / (n * CHANNELS * 4):.2f} "
                  f"| {runs[reader][0]['dtype']} |", flush=True)

if __name__ == "__main__":
    main()
