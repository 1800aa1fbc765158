"""Benchmark: compensation, polygon test and read + gate, immunomon vs peers, 10^6 events.

Run by hand from the repository root::

    python benchmarks/bench_gating.py [--events 1000000] [--repeats 5]

Prints one table (median seconds over ``--repeats`` runs, ratio = peer / immunomon). Peers:
flowutils ``compensate`` (float64 solve), matplotlib ``Path.contains_points``, and FlowKit
``Sample`` + ``GatingStrategy.gate_sample`` on a rect → 8-vertex polygon → range hierarchy
(the same gates in immunomon: ``read_fcs`` + ``GatingStrategy.apply``). Inputs are synthetic
and seeded (``--seed``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def make_events(n: int, seed: int) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    names = ["FSC-A", "SSC-A", "FL1-A", "FL2-A", "FL3-A", "FL4-A", "FL5-A", "FL6-A"]
    fl = [n_ for n_ in names if n_.startswith("FL")]
    spill = np.eye(len(fl)) + np.triu(rng.uniform(0, 0.2, (len(fl), len(fl))), 1)
    true = np.column_stack([rng.normal(60000, 20000, n), rng.normal(40000, 15000, n),
                            rng.lognormal(6, 1.5, (n, len(fl)))])
    ev = true.copy()
    ev[:, 2:] = true[:, 2:] @ spill
    return ev.astype(np.float32), names, pd.DataFrame(spill, index=fl, columns=fl)


OCTAGON = np.array([[50000, 20000], [70000, 15000], [90000, 20000], [100000, 40000],
                    [90000, 60000], [70000, 65000], [50000, 60000], [40000, 40000]], dtype=float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from flowutils.compensate import compensate as fu_compensate
    from matplotlib.path import Path as MplPath

    from immunomon.gating.gates import GatingStrategy, PolygonGate, RangeGate, RectangleGate, points_in_polygon
    from immunomon.io.fcs import read_fcs, write_fcs
    from immunomon.preprocess.compensation import compensate

    ev, names, spill = make_events(args.events, args.seed)
    rows = []

    idx = [names.index(c) for c in spill.columns]
    t_ours, a = median_time(lambda: compensate(ev, names, spill), args.repeats)
    t_ours64, _ = median_time(lambda: compensate(ev, names, spill, dtype=np.float64), args.repeats)
    ev64 = ev.astype(np.float64)
    t_fu, b = median_time(lambda: fu_compensate(ev64, spill.to_numpy(), fluoro_indices=idx), args.repeats)
    assert np.allclose(a, b, rtol=1e-3, atol=1e-2)
    inv32 = np.linalg.inv(spill.to_numpy()).astype(np.float32)

    def numpy_matmul():
        out = ev.copy()
        out[:, idx] = out[:, idx] @ inv32
        return out

    t_np, _ = median_time(numpy_matmul, args.repeats)
    rows += [("compensation float32", t_ours, "flowutils.compensate", t_fu),
             ("compensation float64", t_ours64, "flowutils.compensate", t_fu),
             ("compensation float32", t_ours, "numpy float32 matmul", t_np)]

    x, y = ev[:, 0], ev[:, 1]
    pts = np.column_stack([x, y])
    t_poly, a = median_time(lambda: points_in_polygon(x, y, OCTAGON), args.repeats)
    t_mpl, b = median_time(lambda: MplPath(OCTAGON).contains_points(pts), args.repeats)
    mismatch = int((a != b).sum())
    rows.append((f"8-vertex polygon ({mismatch} boundary mismatches)", t_poly, "matplotlib Path", t_mpl))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.fcs"
        write_fcs(path, ev, names)
        gs = GatingStrategy([
            RectangleGate("rect", ["FSC-A", "SSC-A"], bounds=[(20000, 120000), (5000, 80000)]),
            PolygonGate("poly", ["FSC-A", "SSC-A"], "rect", vertices=OCTAGON),
            RangeGate("range", "FL1-A", min=500.0, parent="poly"),
        ])

        def ours():
            f = read_fcs(path, scale=True)
            return gs.apply(pd.DataFrame(f.events, columns=list(f.names)))

        t_read, _ = median_time(lambda: read_fcs(path, scale=True), args.repeats)
        t_all, res = median_time(ours, args.repeats)

        import flowkit as fk

        fgs = fk.GatingStrategy()
        fgs.add_gate(fk.gates.RectangleGate("rect", [fk.Dimension("FSC-A", range_min=20000, range_max=120000),
                                                     fk.Dimension("SSC-A", range_min=5000, range_max=80000)]),
                     ("root",))
        fgs.add_gate(fk.gates.PolygonGate("poly", [fk.Dimension("FSC-A"), fk.Dimension("SSC-A")], OCTAGON.tolist()),
                     ("root", "rect"))
        fgs.add_gate(fk.gates.RectangleGate("range", [fk.Dimension("FL1-A", range_min=500.0)]),
                     ("root", "rect", "poly"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_fk_read, sample = median_time(lambda: fk.Sample(str(path)), args.repeats)
            t_fk_gate, fres = median_time(lambda: fgs.gate_sample(sample), args.repeats)
        n_fk = fres.get_gate_membership("range").sum()
        n_ours = res.membership("range").sum()
        rows += [("read FCS", t_read, "FlowKit Sample", t_fk_read),
                 ("gate rect>polygon>range", t_all - t_read, "FlowKit gate_sample", t_fk_gate),
                 (f"read + gate (range: {n_ours} vs FlowKit {n_fk})", t_all, "FlowKit Sample+gate_sample",
                  t_fk_read + t_fk_gate)]

    table = pd.DataFrame(rows, columns=["task", "immunomon_s", "peer", "peer_s"])
    table["ratio"] = table["peer_s"] / table["immunomon_s"]
    print(f"{args.events:,} events, median of {args.repeats} runs")
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
