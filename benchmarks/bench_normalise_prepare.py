"""What batch normalisation adds to the prepare stage of the default demo study.

    python benchmarks/bench_normalise_prepare.py            # simulates the study once (~2 min)
    python benchmarks/bench_normalise_prepare.py --files 60 # a quicker sample of the files

The default demo (46 patients × 7 visits × 50,000 events, seed 1) simulated with
``--batches 14`` (its ~24 samples per batch) and one bridge control per batch (336 files;
``benchmarks/_work/demo_batches``, kept for later runs). CytoNorm (99 quantiles, the 15
fluorescence markers) is fitted once on the 14 controls; then every file goes through the
run's per-sample prepare task (``immunomon.pipeline.run._prepare_task``: read, compensate,
transform, [normalise], QC, gating and population statistics, training subsample, batch
summary; no cache) without and with the normalisation, the two alternating file by file in
this one process (one core, BLAS/numba threads 1). Times are CPU seconds of the process
(``time.process_time``: on a shared, loaded machine wall time mostly measures the other
jobs; wall seconds are shown too). Reported: total and median seconds per file, the overhead
of normalisation (ratio of totals, and median of the per-file ratios; the issue's bound is
20 %), and the time of the fit and of the batch summary (the diagnostics every study with
batches now computes) for reference.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from immunomon.pipeline.checks import load_checked  # noqa: E402
from immunomon.pipeline.normalise import batch_summary, fit_panel  # noqa: E402
from immunomon.pipeline.prepare import prepare_sample  # noqa: E402
from immunomon.pipeline.run import _prepare_task, _SampleJob  # noqa: E402
from immunomon.simulate import simulate_study  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "demo_batches"
SETTING = {"panels.treg.normalisation": "{method: cytonorm, quantiles: 99}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=0, help="time only every k-th file (0: all)")
    ap.add_argument("--workers", type=int, default=2, help="for the simulation only")
    a = ap.parse_args()
    if not (WORK / "samples.csv").is_file():
        simulate_study(WORK, batches=14, workers=a.workers, overwrite=True)
    study = load_checked(WORK, overrides=SETTING)
    t0 = time.perf_counter()
    model = fit_panel(study, "treg", seed=1)
    fit_s = time.perf_counter() - t0
    ids = list(study.samples["sample_id"])
    if a.files:
        ids = ids[:: max(1, len(ids) // a.files)]
    n_train = -(-500_000 // len(study.samples))
    times = {k: [] for k in ("plain", "normalised", "summary", "plain_wall", "normalised_wall")}
    for variant in (None, model):  # warm up: first-call compilation and caches, untimed
        _prepare_task(_SampleJob(study, ids[0], "treg", "", None, 1, n_train, normaliser=variant))
    for i, sid in enumerate(ids):
        order = ("plain", "normalised") if i % 2 == 0 else ("normalised", "plain")
        for variant in order:
            job = _SampleJob(study, sid, "treg", "", None, 1, n_train,
                             normaliser=model if variant == "normalised" else None)
            t, w = time.process_time(), time.perf_counter()
            result = _prepare_task(job)
            times[variant].append(time.process_time() - t)
            times[f"{variant}_wall"].append(time.perf_counter() - w)
            assert not result["error"], result["error"]
        prepared = prepare_sample(study, sid)
        t = time.process_time()
        batch_summary(prepared)
        times["summary"].append(time.process_time() - t)
    plain, norm = np.array(times["plain"]), np.array(times["normalised"])
    print(f"{len(ids)} files of {WORK} (50,000 events each), one core; CytoNorm fit on 14 "
          f"controls: {fit_s:.1f} s wall\n")
    print("| prepare task | CPU s, total | CPU ms per file, median | wall s, total |")
    print("|---|---:|---:|---:|")
    for name, key in (("without normalisation", "plain"), ("with normalisation", "normalised")):
        v = np.array(times[key])
        print(f"| {name} | {v.sum():.1f} | {1000 * np.median(v):.1f} | "
              f"{np.sum(times[key + '_wall']):.1f} |")
    print(f"| batch summary (in both) | {np.sum(times['summary']):.1f} | "
          f"{1000 * np.median(times['summary']):.1f} | |")
    total = norm.sum() / plain.sum() - 1
    median = float(np.median(norm / plain)) - 1
    print(f"\nNormalisation adds {total:+.1%} to the prepare stage (ratio of totals; median of "
          f"per-file ratios {median:+.1%}): {'PASS' if total <= 0.20 else 'FAIL'} (bound 20 %)")


if __name__ == "__main__":
    main()
