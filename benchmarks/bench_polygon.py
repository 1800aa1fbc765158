"""Benchmark: point-in-polygon on 10^6 events, immunomon's kernel vs flowutils' C, one run.

Run by hand from the repository root::

    python benchmarks/bench_polygon.py [--events 1000000] [--rounds 15]

Both functions test the same events (scatter-like, seeded) against the same polygons (a
quadrilateral, the 8-vertex gate of ``bench_gating.py`` and a 32-vertex star); each round
times flowutils ``gating.points_in_polygon`` (C, winding number, float64 ``(n, 2)`` points)
and immunomon ``gating.gates.points_in_polygon`` in turn, on the float64 columns of the
same array and on float32 columns (what the pipeline holds). Printed: median milliseconds
over the rounds and the median of the per-round ratios flowutils / immunomon (> 1: immunomon
is faster). The memberships are compared (flowutils counts points on an edge as inside,
Gating-ML's rule leaves some outside: only such boundary points may differ).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

OCTAGON = np.array([[50000, 20000], [70000, 15000], [90000, 20000], [100000, 40000],
                    [90000, 60000], [70000, 65000], [50000, 60000], [40000, 40000]], dtype=float)
QUAD = np.array([[30000, 10000], [95000, 12000], [90000, 70000], [35000, 60000]], dtype=float)


def star(points: int = 16) -> np.ndarray:
    """A star polygon of ``2 * points`` vertices centred on the scatter cloud."""
    angle = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    radius = np.where(np.arange(2 * points) % 2 == 0, 35000.0, 15000.0)
    return np.column_stack([60000 + radius * np.cos(angle), 40000 + radius * np.sin(angle)])


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from flowutils.gating import points_in_polygon as flowutils_pip

    from immunomon.gating.gates import points_in_polygon

    rng = np.random.default_rng(args.seed)
    points = np.column_stack([rng.normal(60000, 20000, args.events),
                              rng.normal(40000, 15000, args.events)])
    x64, y64 = points[:, 0], points[:, 1]  # strided columns of the flowutils input
    x32, y32 = np.ascontiguousarray(x64, np.float32), np.ascontiguousarray(y64, np.float32)
    rows = []
    for name, poly in (("4-vertex", QUAD), ("8-vertex", OCTAGON), ("32-vertex star", star())):
        points_in_polygon(x64[:10], y64[:10], poly)  # compile or load the numba cache
        points_in_polygon(x32[:10], y32[:10], poly)
        peer, ours64, ours32 = [], [], []
        for _ in range(args.rounds):
            t_peer, ref = timed(lambda: flowutils_pip(poly, points))
            t64, got64 = timed(lambda: points_in_polygon(x64, y64, poly))
            t32, got32 = timed(lambda: points_in_polygon(x32, y32, poly))
            peer.append(t_peer)
            ours64.append(t64)
            ours32.append(t32)
        differ = int((got64 != ref).sum())
        for label, ours in (("float64", ours64), ("float32", ours32)):
            rows.append({"polygon": name, "immunomon input": label,
                         "flowutils ms": 1e3 * np.median(peer),
                         "immunomon ms": 1e3 * np.median(ours),
                         "ratio (flowutils / immunomon)": np.median(np.divide(peer, ours)),
                         "inside": int(got64.sum()), "boundary differences": differ})
    table = pd.DataFrame(rows)
    print(f"{args.events:,} events, {args.rounds} interleaved rounds (medians)")
    with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
