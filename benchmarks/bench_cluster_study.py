"""Wall time and memory of ``immunomon cluster STUDY`` on a large simulated study.

Issue 5's bound: a 10^8-event study is mapped with the memory of one file, under 3 GB
for the whole run. The study (``--patients`` × 7 visits × ``--events``; the defaults,
286 × 7 × 50,000, give 100.1 M events, 7.2 GB of FCS) is simulated once into
``--study`` if absent. The command runs as a subprocess; every 0.25 s the benchmark sums,
over the process tree (the CLI, its worker processes and the forkserver; processes only,
not their threads), the proportional set size (PSS: shared pages divided among the
processes that share them, the memory the run really holds) and the resident set size
(RSS, which counts shared library pages once per process). It prints the peak of both
sums, the per-process peak RSS and whether the PSS peak is within ``--limit-gb``.

Run from the repository root (the default study takes ~5 min to simulate and ~6 min to
cluster with 2 workers)::

    python benchmarks/bench_cluster_study.py
    python benchmarks/bench_cluster_study.py --patients 10 --events 20000   # a quick check
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _ensure_study(path: Path, patients: int, events: int, workers: int) -> Path:
    from immunomon.simulate import simulate_study

    if not (path / "study.yaml").is_file():
        t = time.perf_counter()
        simulate_study(path, patients=patients, events=events, seed=1, workers=workers)
        print(f"simulated {path} in {time.perf_counter() - t:.0f} s")
    return path


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def watch(cmd: list[str], interval: float = 0.25) -> dict:
    """Run ``cmd``; return its exit code, wall seconds, peak tree PSS/RSS (bytes) and the
    per-process peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0
    per_process: dict[int, tuple[str, int]] = {}
    while proc.poll() is None:
        pss = rss = 0
        for p in _tree(root):
            try:
                info = p.memory_full_info()
                name = " ".join(p.cmdline()[:3])[:60]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss, rss = pss + info.pss, rss + info.rss
            if info.rss > per_process.get(p.pid, ("", 0))[1]:
                per_process[p.pid] = (name, info.rss)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(interval)
    return {"rc": proc.returncode, "wall": time.perf_counter() - t0, "pss": peak_pss, "rss": peak_rss,
            "per_process": per_process}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", type=Path, default=Path("/tmp/immunomon_bench/study_1e8"))
    ap.add_argument("--patients", type=int, default=286)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/immunomon_bench/cluster_1e8"))
    ap.add_argument("--limit-gb", type=float, default=3.0)
    args = ap.parse_args()

    study = _ensure_study(args.study, args.patients, args.events, args.workers)
    shutil.rmtree(args.out, ignore_errors=True)
    exe = [sys.executable, "-m", "immunomon", "cluster", str(study), "--out", str(args.out),
           "--workers", str(args.workers)]
    r = watch(exe)
    if r["rc"] != 0:
        sys.exit(f"immunomon cluster failed (exit {r['rc']})")

    import pandas as pd

    counts = pd.read_parquet(args.out / "tables" / "cluster_counts.parquet")
    gib = 1024 ** 3
    print(f"\nstudy {study}: {counts['sample_id'].nunique()} samples, {int(counts['count'].sum()):,} events "
          f"mapped (after QC); {args.workers} workers")
    print(f"wall {r['wall']:.0f} s")
    print(f"peak process-tree PSS {r['pss'] / gib:.2f} GiB   (limit {args.limit_gb} GB: "
          f"{'within' if r['pss'] <= args.limit_gb * 1e9 else 'EXCEEDED'})")
    print(f"peak process-tree RSS {r['rss'] / gib:.2f} GiB   (shared pages counted once per process)")
    for pid, (name, rss) in sorted(r["per_process"].items(), key=lambda kv: -kv[1][1]):
        print(f"  pid {pid:>7d} peak RSS {rss / 2**20:7.0f} MiB  {name}")
    if r["pss"] > args.limit_gb * 1e9:
        sys.exit(1)


if __name__ == "__main__":
    main()
