"""Benchmark: read + compensate + transform + gate a simulated study, immunomon vs FlowKit.

immunomon: ``prepare_sample`` (read FCS, compensate with the file's spillover, arcsinh on the
fluorescence channels, QC) + the built-in ``treg`` template (data-driven positions resolved
per sample, 16 populations). FlowKit: ``Sample(path)`` + ``GatingStrategy.gate_sample`` on
the *same* gates (immunomon's positions for that sample, converted to FlowKit rectangle /
polygon / boolean gates on compensated, Gating-ML-asinh-transformed channels). FlowKit does
no QC and resolves no positions, so immunomon does strictly more work per file.

Gate equivalence is checked on every timed FlowKit file: FlowKit gates the QC-passed
events and its counts are compared with immunomon's (max |Δ| is printed; differences come
from float32 vs float64 compensation at gate boundaries).

Usage (from the repository root)::

    python benchmarks/bench_phenotype.py                      # default study, simulated once
    python benchmarks/bench_phenotype.py --study DIR --flowkit-files 46 --repeats 3

Prints a table: files, events, median wall and CPU time, events/s; the ratios to FlowKit are
medians over ``--repeats`` interleaved rounds (FlowKit, immunomon full, immunomon fixed gates in
each round), robust to the machine speeding up or slowing down during the run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _ensure_study(path: Path, patients: int, events: int) -> Path:
    from immunomon.simulate import simulate_study

    if (path / "study.yaml").is_file():
        return path
    t = time.perf_counter()
    simulate_study(path, patients=patients, events=events, seed=1, workers=2)
    print(f"simulated {path} in {time.perf_counter() - t:.0f} s")
    return path


def _ours(study, template, sample_ids):
    from immunomon.pipeline.prepare import prepare_sample

    out = {}
    for sid in sample_ids:
        prepared = prepare_sample(study, sid)
        out[sid] = (prepared, template.apply(prepared.events, sid))
    return out


def _ours_fixed(study, strategies, sample_ids):
    """Like FlowKit's work: read, compensate, transform, then apply fixed gates (this
    sample's resolved positions as a :class:`immunomon.gating.gates.GatingStrategy`) — no
    QC, no position finding."""
    from immunomon.pipeline.prepare import prepare_sample
    from immunomon.preprocess.qc import QualityControl

    no_qc = QualityControl(steps=())
    for sid in sample_ids:
        strategies[sid].apply(prepare_sample(study, sid, qc=no_qc).events)


def flowkit_strategy(gating, panel, spill: pd.DataFrame, cofactor: float, m: float = 4.5):
    """A FlowKit GatingStrategy equivalent to one sample's resolved immunomon gates.

    Fluorescence dimensions use the ``spill`` matrix and Gating-ML ``fasinh`` with
    ``T = cofactor · sinh(M ln 10)``, ``A = 0``, which equals ``asinh(x / cofactor) / (M ln 10)``:
    immunomon's positions are divided by ``M ln 10``.
    """
    import flowkit as fk

    from immunomon.gating.gates import BooleanGate, PolygonGate

    scale = m * np.log(10.0)
    channel = {c.marker: name for name, c in panel.channels.items()}
    fluor = set(spill.columns)
    gs = fk.GatingStrategy()
    gs.add_transform("asinh", fk.transforms.AsinhTransform(cofactor * np.sinh(scale), m, 0.0))
    gs.add_comp_matrix("spill", fk.Matrix(spill.to_numpy(), list(spill.columns)))

    def dim(marker, lo=None, hi=None):
        ch = channel[marker]
        if ch in fluor:
            return fk.Dimension(ch, "spill", "asinh", None if lo is None else lo / scale,
                                None if hi is None else hi / scale)
        return fk.Dimension(ch, "uncompensated", None, lo, hi)

    def path(pop):
        chain = []
        p = gating.parents[pop]
        while p is not None:
            chain.append(p)
            p = gating.parents[p]
        return tuple(["root", *chain[::-1]])

    for pop, gate in gating.gates.items():
        if isinstance(gate, BooleanGate):
            ref = gate.operands[0]
            g = fk.gates.BooleanGate(pop, "not", [{"ref": ref, "path": path(ref), "complement": False}])
        elif isinstance(gate, PolygonGate):
            g = fk.gates.PolygonGate(pop, [dim(d.name) for d in gate.dimensions], [tuple(v) for v in gate.vertices])
        else:
            g = fk.gates.RectangleGate(pop, [dim(d.name, lo, hi) for d, (lo, hi) in zip(gate.dimensions, gate.bounds)])
        gs.add_gate(g, path(pop))
    return gs


def _flowkit(study, strategies, sample_ids):
    import flowkit as fk

    for sid in sample_ids:
        strategies[sid].gate_sample(fk.Sample(str(study.path_of(sid)), sample_id=sid))


def _equivalence(study, ours, strategies, sample_ids) -> int:
    """Max |count difference| between FlowKit and immunomon over populations and files, on
    the QC-passed events."""
    import flowkit as fk

    from immunomon.io.fcs import read_fcs

    worst = 0
    for sid in sample_ids:
        prepared, gating = ours[sid]
        f = read_fcs(study.path_of(sid))
        kept = pd.DataFrame(f.events[prepared.keep].astype(np.float64), columns=f.names)
        res = strategies[sid].gate_sample(fk.Sample(kept, sample_id=sid))
        for pop, mask in gating.memberships.items():
            worst = max(worst, abs(int(res.get_gate_membership(pop).sum()) - int(mask.sum())))
    return worst


def _steps(study, template, sample_ids) -> dict[str, float]:
    """Seconds per step summed over the files (one pass), immunomon's steps and, on the same
    columns, the library calls they replace: numpy's float32 ``arcsinh`` and flowutils'
    ``compensate`` (what FlowKit uses)."""
    from flowutils import compensate as fu_compensate

    from immunomon.io.fcs import read_fcs
    from immunomon.pipeline.prepare import is_fluorescence, marker_names, select_events, transform_spec
    from immunomon.preprocess.compensation import compensate
    from immunomon.preprocess.qc import QualityControl
    from immunomon.preprocess.transforms import from_spec

    panel = study.config.panels["treg"]
    transform = from_spec(transform_spec(panel.transform))
    channels = {k: v.model_dump() for k, v in panel.channels.items()}
    t = dict.fromkeys(["read", "compensate", "transform", "QC", "positions + gating",
                       "numpy arcsinh (reference)", "flowutils compensate (reference)"], 0.0)
    for sid in sample_ids:
        t0 = time.perf_counter()
        f = read_fcs(study.path_of(sid))
        t1 = time.perf_counter()
        events = compensate(f.events, list(f.names), f.spillover, order="F")
        t2 = time.perf_counter()
        fluor = [j for j, name in enumerate(f.names) if is_fluorescence(name)]
        for j in fluor:
            transform.transform_inplace(events[:, j])
        t3 = time.perf_counter()
        columns = marker_names(list(f.names), list(f.labels), channels)
        frame = pd.DataFrame(events, columns=columns, copy=False)
        qc = QualityControl().apply(frame, raw=pd.DataFrame(f.events, columns=columns, copy=False),
                                    ranges=dict(zip(columns, f.channels["range"].astype(float))))
        kept = select_events(events, qc.keep, columns)
        t4 = time.perf_counter()
        template.apply(kept, sid)
        t5 = time.perf_counter()
        for name, dt in zip(list(t)[:5], (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            t[name] += dt
        comp = np.asfortranarray(f.events[:, fluor])
        t6 = time.perf_counter()
        for j in range(comp.shape[1]):
            np.arcsinh(comp[:, j] * np.float32(1.0 / transform.cofactor))
        t7 = time.perf_counter()
        spill = f.spillover
        fu_compensate.compensate(f.events.astype(np.float64), spill.to_numpy(),
                                 [list(f.names).index(c) for c in spill.columns])
        t8 = time.perf_counter()
        t["numpy arcsinh (reference)"] += t7 - t6
        t["flowutils compensate (reference)"] += t8 - t7
    return t


def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU (this process) seconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Run every function once per round, ``repeats`` rounds; return the median (wall, cpu)
    seconds of each and, per function, the median over rounds of FlowKit's wall time divided
    by its own (``fns["flowkit"]`` is the reference). Interleaving makes the ratios robust to
    the machine's speed drifting during the run (a shared machine)."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t, time.process_time() - c))
    medians = {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
               for name, ts in times.items()}
    ratios = {name: statistics.median(f[0] / t[0] for f, t in zip(times["flowkit"], ts))
              for name, ts in times.items()}
    return medians, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", type=Path, default=Path("/tmp/immunomon_bench/default_study"),
                    help="study folder (simulated with the defaults if absent)")
    ap.add_argument("--patients", type=int, default=46)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--flowkit-files", type=int, default=46, help="files timed with FlowKit (first N)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds over FlowKit's files (median)")
    ap.add_argument("--repeats-all", type=int, default=1, help="passes over the whole study")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from immunomon.pipeline.executor import tune_allocator

    tune_allocator()  # as the CLI and its workers do (FlowKit runs in the same process)

    from immunomon.gating.template import GatingTemplate
    from immunomon.io.fcs import read_fcs, read_fcs_metadata
    from immunomon.io.study import load_study

    study = load_study(_ensure_study(args.study, args.patients, args.events))
    template = GatingTemplate.load("treg")
    ids = study.samples["sample_id"].tolist()
    fk_ids = ids[: args.flowkit_files]
    panel = study.config.panels["treg"]
    n_events = {sid: int(read_fcs_metadata(study.path_of(sid)).keywords["$TOT"]) for sid in ids}

    with threadpool_limits(limits=1):  # single core for both tools
        ours = _ours(study, template, fk_ids)  # warm-up + the gates FlowKit gets
        t_ours_all = _timed(lambda: _ours(study, template, ids), args.repeats_all)
        spill = read_fcs(study.path_of(fk_ids[0])).spillover
        strategies = {sid: flowkit_strategy(ours[sid][1], panel, spill, panel.transform.cofactor) for sid in fk_ids}
        _flowkit(study, strategies, fk_ids[:2])  # warm-up
        fixed = {sid: ours[sid][1].strategy() for sid in fk_ids}
        medians, ratios = _interleaved({
            "flowkit": lambda: _flowkit(study, strategies, fk_ids),
            "full": lambda: _ours(study, template, fk_ids),
            "fixed": lambda: _ours_fixed(study, fixed, fk_ids),
        }, args.repeats)
        t_fk, t_ours_sub, t_fixed = medians["flowkit"], medians["full"], medians["fixed"]
        worst = _equivalence(study, ours, strategies, fk_ids)
        steps = [_steps(study, template, fk_ids) for _ in range(args.repeats)]

    ev_all = sum(n_events.values())
    ev_sub = sum(n_events[s] for s in fk_ids)
    rows = [
        ("immunomon (read+comp+transform+QC+gate)", len(ids), ev_all, t_ours_all),
        ("immunomon, FlowKit's files", len(fk_ids), ev_sub, t_ours_sub),
        ("immunomon, fixed gates, no QC", len(fk_ids), ev_sub, t_fixed),
        ("FlowKit Sample + gate_sample", len(fk_ids), ev_sub, t_fk),
    ]
    print(f"\nstudy {args.study}: {len(ids)} files, {ev_all:,} events; 1 thread; median of {args.repeats_all} "
          f"pass(es) over the study, of {args.repeats} interleaved rounds over FlowKit's files")
    print(f"{'pipeline':45s} {'files':>6s} {'events':>12s} {'wall s':>8s} {'cpu s':>8s} {'events/s wall':>14s} "
          f"{'events/s cpu':>13s}")
    for name, nf, ne, (w, c) in rows:
        print(f"{name:45s} {nf:6d} {ne:12,d} {w:8.2f} {c:8.2f} {ne / w:14,.0f} {ne / c:13,.0f}")
    full, same = ratios["full"], ratios["fixed"]
    print(f"speed-up vs FlowKit on the same files (median of the {args.repeats} rounds' ratios, wall): "
          f"{full:.1f}x (goal >= 10x: {'met' if full >= 10 else 'NOT met'})")
    print(f"same work as FlowKit (fixed gates, no QC): {same:.1f}x (goal >= 10x: "
          f"{'met' if same >= 10 else 'NOT met'})")
    print(f"\nimmunomon per step, ms per file (median of {args.repeats} passes over FlowKit's files):")
    for name in steps[0]:
        print(f"  {name:36s} {statistics.median(p[name] for p in steps) / len(fk_ids) * 1e3:7.2f}")
    print(f"  {'FlowKit, everything':36s} {t_fk[0] / len(fk_ids) * 1e3:7.2f}")
    print(f"gate equivalence: max |count difference| FlowKit vs immunomon = {worst} events "
          f"(16 populations x {len(fk_ids)} files)")


if __name__ == "__main__":
    main()
