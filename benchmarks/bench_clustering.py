"""Time and peak memory of immunomon's FlowSOM against the ``flowsom`` package.

Synthetic cytometry-like data: 20 populations (unequal sizes) in 15 markers, each
marker negative (~0.3) or positive (~4) per population on an arcsinh-like scale,
within-population SD 0.35-0.7; ``N`` = 10^5, 10^6, 10^7 events, float32. Both tools
run a 10×10 SOM (rlen 10) and 20 metaclusters and label every event. Each run is a
fresh subprocess: data generation is excluded, numba JIT compilation (or loading the
compiled cache) is timed apart on a tiny warm-up input, peak memory is the process's
maximum resident set size (data included: 10^7 × 15 float32 = 0.6 GB).

immunomon trains its SOM on at most ``--max-train`` events drawn at random (default
2·10^5; every event is still mapped); ``flowsom`` trains on all events. Quality is
the adjusted Rand index of the metaclusters against the 20 true populations.

Run from the repository root (takes minutes)::

    python benchmarks/bench_clustering.py                    # 10^5, 10^6, 10^7
    python benchmarks/bench_clustering.py --sizes 100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

N_MARKERS, N_POPULATIONS, GRID, K = 15, 20, (10, 10), 20


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 15)`` float32 events and their ``(n,)`` population labels."""
    rng = np.random.default_rng(seed)
    centres = np.where(rng.random((N_POPULATIONS, N_MARKERS)) < 0.35, 4.0, 0.3)
    sds = rng.uniform(0.35, 0.7, size=(N_POPULATIONS, N_MARKERS))
    weights = rng.dirichlet(np.full(N_POPULATIONS, 2.0))
    truth = rng.choice(N_POPULATIONS, size=n, p=weights)
    X = np.empty((n, N_MARKERS), dtype=np.float32)
    for start in range(0, n, 1_000_000):
        t = truth[start:start + 1_000_000]
        X[start:start + len(t)] = centres[t] + sds[t] * rng.standard_normal((len(t), N_MARKERS))
    return X, truth


def _immunomon(X: np.ndarray, seed: int, max_train: int | None) -> np.ndarray:
    from immunomon.clustering import FlowSOM

    return FlowSOM(grid=GRID, n_metaclusters=K, rlen=10, max_train=max_train, random_state=seed).fit_predict(X)


def _flowsom(X: np.ndarray, seed: int, max_train: int | None) -> np.ndarray:
    import anndata as ad
    import flowsom

    fsom = flowsom.FlowSOM(ad.AnnData(X), cols_to_use=list(range(N_MARKERS)), n_clusters=K,
                           xdim=GRID[0], ydim=GRID[1], rlen=10, seed=seed)
    return np.asarray(fsom.metacluster_labels)


def worker(tool: str, n: int, seed: int, max_train: int | None) -> dict:
    """One timed run in this (fresh) process."""
    import logging

    from loguru import logger

    logger.remove()
    logging.disable(logging.WARNING)
    from sklearn.metrics import adjusted_rand_score

    run = {"immunomon": _immunomon, "flowsom": _flowsom}[tool]
    small, _ = make_data(2_000, seed=1)
    t0 = time.perf_counter()
    run(small, seed, max_train)  # JIT compilation / compiled-cache load
    jit = time.perf_counter() - t0
    X, truth = make_data(n)
    t0, c0 = time.perf_counter(), time.process_time()
    labels = run(X, seed, max_train)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    sample = np.random.default_rng(0).choice(n, min(n, 200_000), replace=False)
    return {"tool": tool, "n": n, "seed": seed, "seconds": seconds, "cpu_seconds": cpu, "jit_seconds": jit,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "ari": adjusted_rand_score(truth[sample], np.asarray(labels)[sample]),
            "metaclusters_populated": int(len(np.unique(labels)))}


def run_subprocess(tool: str, n: int, seed: int, max_train: int | None, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", tool, str(n), str(seed), str(max_train or 0)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        print(f"  {tool} n={n}: timed out after {timeout:.0f} s", file=sys.stderr)
        return None
    except subprocess.CalledProcessError as err:
        print(f"  {tool} n={n}: failed\n{err.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (median), immunomon")
    parser.add_argument("--flowsom-repeats", type=int, default=1)
    parser.add_argument("--flowsom-max", type=int, default=10**6,
                        help="largest N run with flowsom (issue figure quoted above it)")
    parser.add_argument("--max-train", type=int, default=200_000)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per flowsom run")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tool, n, seed, max_train = args.worker
        print(json.dumps(worker(tool, int(n), int(seed), int(max_train) or None)))
        return
    # flowsom figures measured on 2 cores in the issue (time s, peak GB), quoted when not run here
    issue = {10**5: (3.8, 0.5), 10**6: (41.7, 1.5), 10**7: (427.0, 11.2)}
    rows = []
    for n in args.sizes:
        runs = [r for r in (run_subprocess("immunomon", n, s, args.max_train, 3600) for s in range(args.repeats)) if r]
        fs = ([r for r in (run_subprocess("flowsom", n, s, None, args.timeout)
                           for s in range(args.flowsom_repeats)) if r] if n <= args.flowsom_max else [])
        im = {k: float(np.median([r[k] for r in runs])) for k in ("seconds", "cpu_seconds", "jit_seconds",
                                                                  "peak_gb", "ari", "metaclusters_populated")}
        if fs:
            ref = {k: float(np.median([r[k] for r in fs])) for k in ("seconds", "cpu_seconds", "peak_gb", "ari",
                                                                     "metaclusters_populated")}
            source = "measured"
        else:
            ref = {"seconds": issue[n][0], "cpu_seconds": float("nan"), "peak_gb": issue[n][1], "ari": float("nan"),
                   "metaclusters_populated": float("nan")} if n in issue else None
            source = "issue figure"
        rows.append((n, im, ref, source, len(runs)))
        print(f"done n={n}", file=sys.stderr, flush=True)
    print(f"\nimmunomon: SOM trained on <= {args.max_train:,} events; every event mapped. "
          f"Median of {args.repeats} runs (flowsom: {args.flowsom_repeats}).")
    print("| events | immunomon s (CPU s) | JIT s | peak GB | ARI | MC | flowsom s (CPU s) | peak GB | ARI | MC | "
          "speed-up | flowsom source |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, im, ref, source, _ in rows:
        fs_cells = (f"{ref['seconds']:.1f} ({ref['cpu_seconds']:.1f}) | {ref['peak_gb']:.2f} | {ref['ari']:.3f} | "
                    f"{ref['metaclusters_populated']:.0f} | {ref['seconds'] / im['seconds']:.1f}x"
                    if ref else "- | - | - | - | -")
        print(f"| {n:,} | {im['seconds']:.2f} ({im['cpu_seconds']:.2f}) | {im['jit_seconds']:.2f} | {im['peak_gb']:.2f} | "
              f"{im['ari']:.3f} | {im['metaclusters_populated']:.0f} | {fs_cells} | {source} |")


if __name__ == "__main__":
    main()
