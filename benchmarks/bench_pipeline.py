"""Benchmark of ``immunomon run``: wall time, CPU time and peak memory per stage.

    python benchmarks/bench_pipeline.py                 # 1e5 and 1e6 events/file, workers 1 and 2
    python benchmarks/bench_pipeline.py --demo          # + the default demo (46 x 7 x 50,000)
    python benchmarks/bench_pipeline.py --events 100000 --repeats 1

For each size a small simulated study (``--patients`` x 2 visits, i.e. few files) is run
from an empty cache ``--repeats`` times per worker count; the table gives the median per
stage of wall seconds, CPU seconds (main process + worker tasks) and peak resident memory
(MiB; the largest of the main process and the workers). Stage timings come from the run's
own ``provenance.json`` (``steps``), so they are the numbers a user sees in ``run.log``.
UMAP's numba JIT compilation is paid once per process: it is done (and timed) before the
table, which shows warm stage costs; the demo row is a cold, fresh-process run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from immunomon.pipeline.run import STAGES, RunOptions, run_study
from immunomon.simulate import simulate_study


def steps_of(run_dir: Path) -> dict[str, dict]:
    """``{stage: step record}`` of a run's provenance."""
    record = json.loads((run_dir / "provenance.json").read_text())
    return {s["step"]: s for s in record["steps"]}


def bench_size(root: Path, events: int, patients: int, workers: list[int], repeats: int,
               report: bool) -> list[dict]:
    """Run a simulated study of ``patients x 2`` files of ``events`` events; one row per
    (workers, stage) with medians over ``repeats`` cold-cache runs."""
    study = simulate_study(root / f"study-{events}", patients=patients, visits=("D1", "D8"),
                           events=events, seed=1, workers=2)
    rows = []
    for n in workers:
        runs = []
        for r in range(repeats):
            out = root / f"run-{events}-{n}-{r}"
            run_study(study, out, workers=n, quiet=True, report=report,
                      options=RunOptions(embed_cells=5_000))
            runs.append(steps_of(out))
            shutil.rmtree(out)
        for stage in STAGES:
            got = [run[stage] for run in runs if stage in run]
            if got:
                rows.append({"events": events, "files": 2 * patients, "workers": n,
                             "stage": stage, **{k: statistics.median(g[k] for g in got)
                                                for k in ("wall_s", "cpu_s", "peak_mb")}})
    return rows


def bench_demo(root: Path, workers: int) -> tuple[float, float, dict]:
    """``immunomon demo`` in a fresh process: (simulation s, analysis s, steps)."""
    out = root / "demo"
    t0 = time.perf_counter()
    simulate_study(out / "study", seed=1, workers=workers)
    t1 = time.perf_counter()
    code = ("import sys; from immunomon.pipeline.run import run_study; "
            "run_study(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]), quiet=True)")
    subprocess.run([sys.executable, "-c", code, str(out / "study"), str(out / "run"),
                    str(workers)], check=True)
    return t1 - t0, time.perf_counter() - t1, steps_of(out / "run")


def warm_up() -> None:
    """Compile UMAP's numba functions once, so that the table shows warm stage costs."""
    import numpy as np

    from immunomon.clustering.embedding import umap_embedding

    t0 = time.process_time()
    umap_embedding(np.random.default_rng(0).normal(size=(300, 5)), random_state=0)
    print(f"UMAP JIT warm-up: {time.process_time() - t0:.0f} s CPU (paid once per process)\n")


def print_table(rows: list[dict]) -> None:
    print(f"{'events/file':>11} {'files':>5} {'workers':>7} {'stage':<8} {'wall s':>8} "
          f"{'cpu s':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['events']:>11,} {r['files']:>5} {r['workers']:>7} {r['stage']:<8} "
              f"{r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['peak_mb']:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--patients", type=int, default=2, help="patients (x 2 visits = files)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="also time the report stage")
    parser.add_argument("--demo", action="store_true", help="also time the default demo")
    args = parser.parse_args()
    warm_up()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        rows = []
        for events in args.events:
            rows += bench_size(root, events, args.patients, args.workers, args.repeats,
                               args.report)
        print_table(rows)
        if args.demo:
            sim_s, run_s, steps = bench_demo(root, max(args.workers))
            print(f"\ndemo (46 patients x 7 visits x 50,000 events, workers={max(args.workers)}): "
                  f"simulate {sim_s:.0f} s + run {run_s:.0f} s = {sim_s + run_s:.0f} s")
            for stage, s in steps.items():
                print(f"  {stage:<8} wall {s['wall_s']:>7.1f} s  cpu {s['cpu_s']:>7.1f} s  "
                      f"peak {s['peak_mb']:>6.0f} MiB")


if __name__ == "__main__":
    main()
