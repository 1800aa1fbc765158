"""Quality control: unit tests on synthetic arrays, then on the simulated study's truth."""

import numpy as np
import pandas as pd
import pytest

from immunomon.preprocess.density import density_valley, robust_z
from immunomon.preprocess.qc import (
    QC_STEPS_COLUMNS,
    QualityControl,
    doublet_events,
    margin_events,
    time_anomalies,
)


def test_density_valley_between_two_peaks():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.5, 0.4, 7000), rng.normal(3.5, 0.5, 3000)])
    v = density_valley(x, (1.0, 3.0))
    # the valley of this mixture lies where the two weighted densities cross (about 2.0)
    assert 1.6 < v < 2.4


def test_density_valley_without_valley_returns_low_density_bound():
    rng = np.random.default_rng(1)
    neg_only = rng.normal(0.5, 0.4, 5000)
    assert density_valley(neg_only, (1.5, 3.0)) > 2.5
    pos_only = rng.normal(3.5, 0.4, 5000)
    assert density_valley(pos_only, (1.0, 2.5)) < 1.5


def test_density_valley_rejects_bad_bounds():
    with pytest.raises(ValueError):
        density_valley(np.arange(100.0), (3.0, 1.0))


def test_robust_z_ignores_outliers():
    z = robust_z(np.array([10.0, 11, 9, 10, 10.5, 9.5, 100]))
    assert abs(z[0]) < 1 and z[-1] > 20


def test_margin_events_at_range():
    values = np.array([[10.0, 1023], [1023, 5], [1022, 0]])
    assert margin_events(values.T, [1024, 1024]).tolist() == [True, True, False]
    assert margin_events(list(values.T), [1024, 1024]).tolist() == [True, True, False]  # column by column
    assert margin_events(values.T, [np.nan, 1024]).tolist() == [True, False, False]  # NaN: not checked


def test_margins_step_same_on_one_array_and_mixed_dtypes():
    rng = np.random.default_rng(8)
    raw = pd.DataFrame((rng.random((4000, 3)) * 1024).astype(np.float32), columns=["A", "B", "Time"])
    raw.iloc[::97, 0] = 1023.5
    raw.iloc[::89, 2] = 1023.5  # time is never a margin
    ranges = {"A": 1024.0, "B": 1024.0, "Time": 1024.0}
    qc = QualityControl(steps=("margins",))
    one_block = qc.apply(raw, raw=raw, ranges=ranges)
    mixed = raw.astype({"B": np.float64})  # two dtypes: the column-by-column path
    assert np.array_equal(one_block.keep, qc.apply(mixed, raw=mixed, ranges=ranges).keep)
    assert np.array_equal(~one_block.keep, ((raw["A"] >= 1023) | (raw["B"] >= 1023)).to_numpy())
    assert (~one_block.keep).sum() >= len(range(0, 4000, 97))


def test_doublets_by_area_height_ratio():
    rng = np.random.default_rng(2)
    h = rng.normal(60_000, 15_000, 5000).clip(5_000)
    a = h * rng.normal(1.05, 0.03, 5000)
    a[:200] *= 1.8  # doublets: area grows more than height
    remove, thr = doublet_events(a, h)
    assert remove[:200].mean() > 0.95 and remove[200:].mean() < 0.01
    assert 1.1 < thr < 1.3


def test_time_anomalies_flags_signal_shift_and_rate_burst():
    rng = np.random.default_rng(3)
    n = 10_000
    time = np.sort(rng.uniform(0, 100, n))
    signal = rng.normal(0, 1, (n, 3))
    shifted = (time > 40) & (time < 45)
    signal[shifted, 1] += 2.0
    remove, info = time_anomalies(time, signal.T, segment_events=100, rate_bin_events=50)
    assert remove[shifted].mean() > 0.8
    assert remove[~shifted].mean() < 0.05
    assert info["signal_anomalous"] >= 1

    burst = np.sort(np.concatenate([rng.uniform(0, 100, n), rng.uniform(70, 72, 1500)]))
    remove, info = time_anomalies(burst, rng.normal(0, 1, (2, burst.size)), segment_events=100, rate_bin_events=50)
    in_burst = (burst >= 70) & (burst < 72)
    assert info["rate_anomalous"] >= 1 and remove[in_burst].mean() > 0.8
    assert remove[~in_burst].mean() < 0.05


def test_quality_control_reports_every_step_and_flags_heavy_loss():
    rng = np.random.default_rng(4)
    n = 4000
    h = rng.normal(60_000, 10_000, n)
    events = pd.DataFrame({
        "Time": np.arange(n, dtype=float),
        "FSC-A": h * 1.05, "FSC-H": h, "SSC-A": rng.normal(30_000, 5_000, n),
        "Viability": np.where(rng.random(n) < 0.6, 4.0, 0.5) + rng.normal(0, 0.2, n),
    })
    qc = QualityControl(dead_bounds=(1.0, 3.5), debris_fsc_bounds=(5_000, 20_000), max_loss=0.5)
    res = qc.apply(events, sample_id="S1", ranges={"FSC-A": 262144, "FSC-H": 262144, "SSC-A": 262144})
    assert list(res.steps.columns[:6]) == QC_STEPS_COLUMNS
    assert res.steps["step"].tolist() == ["margins", "time", "doublets", "debris", "dead"]
    # each step's events_in is what the previous steps left
    left = res.steps["events_in"] - res.steps["events_removed"]
    assert (res.steps["events_in"].iloc[1:].to_numpy() == left.iloc[:-1].to_numpy()).all()
    assert res.events_after_qc == left.iloc[-1] == res.keep.sum()
    assert not res.qc_pass  # > 50 % dead
    no_ranges = QualityControl(max_loss=0.9).apply(events)
    assert no_ranges.qc_pass and no_ranges.steps["status"].iloc[0] == "skipped"
    assert no_ranges.steps["reason"].iloc[0] == "no channel ranges"
    assert (res.steps["status"] == "ran").all()
    skipped = QualityControl().apply(events.drop(columns=["Viability"]))
    assert skipped.steps.set_index("step").loc["dead", "status"] == "skipped"
    assert skipped.steps.set_index("step").loc["dead", "reason"] == "no column Viability"


def test_quality_control_rejects_unknown_step():
    with pytest.raises(ValueError):
        QualityControl(steps=("margins", "bogus"))


def test_qc_on_simulated_study_removes_artefacts_keeps_cells(prepared_small_study, truth_events):
    removed, total = {}, {}
    for sid, (prepared, _) in prepared_small_study.items():
        art = truth_events(sid)["artefact"].to_numpy()
        assert art.size == prepared.events_total
        for a in np.unique(art):
            sel = art == a
            removed[a] = removed.get(a, 0) + int((~prepared.keep[sel]).sum())
            total[a] = total.get(a, 0) + int(sel.sum())
        steps = prepared.qc_steps
        assert steps["events_removed"].sum() == prepared.events_total - prepared.events_after_qc
        by = prepared.removed_by
        assert np.bincount(by[by >= 0], minlength=len(steps)).tolist() == steps["events_removed"].tolist()
        assert prepared.qc_pass
    frac = {a: removed[a] / total[a] for a in total}
    print("\nfraction removed by QC per truth artefact:", {a: round(f, 4) for a, f in frac.items()}, total)
    for artefact in ("doublet", "debris", "dead"):
        assert frac[artefact] >= 0.90
    assert frac["none"] <= 0.05


def _valley_with_scipy(x, bounds, grid=512, adjust=0.5, min_prominence=0.02):
    """The definition of :func:`density_valley` written with scipy's ``gaussian_filter1d``
    and ``find_peaks`` (float64 input, at most 20,000 values): the compiled kernel must agree."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    lo, hi = bounds
    x = x[np.isfinite(x)]
    probe = np.sort(x[:: max(1, x.size // 4000)])
    q_lo, q25, q75, q_hi = probe[(np.array([0.001, 0.25, 0.75, 0.999]) * (probe.size - 1)).astype(np.int64)]
    start, stop = min(q_lo, lo), max(q_hi, hi)
    width = (stop - start) / grid
    bins = np.clip(np.floor((x - start) * (1.0 / width)), -1, grid).astype(np.int64) + 1
    bins[x == stop] = grid
    counts = np.bincount(bins, minlength=grid + 2)[1:-1].astype(np.float64)
    iqr = q75 - q25
    spread = min(np.std(probe), iqr / 1.34) if iqr > 0 else np.std(probe)
    density = gaussian_filter1d(counts, max(adjust * 0.9 * spread * x.size ** -0.2 / width, 1.0), mode="constant")
    centres = start + width * (np.arange(grid) + 0.5)
    peaks = find_peaks(np.concatenate(([0.0], density, [0.0])), prominence=min_prominence * density.max())[0] - 1
    best, best_d = None, np.inf
    for a, b in zip(peaks[:-1], peaks[1:]):
        seg = density[a : b + 1]
        low = np.flatnonzero(seg <= seg.min() + 1e-3 * density.max())
        run = low[low - low[0] == np.arange(low.size)]
        v = a + run[run.size // 2]
        if lo <= centres[v] <= hi and density[v] < best_d:
            best, best_d = v, density[v]
    if best is not None:
        return float(centres[best])
    inside = np.flatnonzero((centres >= lo) & (centres <= hi))
    return lo if density[inside[0]] <= density[inside[-1]] else hi


def test_density_valley_equals_its_scipy_definition():
    rng = np.random.default_rng(7)
    for case in range(120):
        k = rng.integers(1, 4)
        centres, sds = np.sort(rng.uniform(-1, 6, k)), rng.uniform(0.1, 1.0, k)
        label = rng.choice(k, int(rng.integers(50, 20_000)), p=rng.dirichlet(np.ones(k)))
        x = centres[label] + sds[label] * rng.standard_normal(label.size)
        if case % 5 == 0:
            x = np.round(x, 1)  # ties and plateaus
        lo = float(rng.uniform(-1, 3))
        bounds = (lo, lo + float(rng.uniform(0.2, 4)))
        adjust = float(rng.choice([0.3, 0.5, 1.0]))
        assert density_valley(x, bounds, adjust=adjust) == pytest.approx(
            _valley_with_scipy(x, bounds, adjust=adjust), abs=1e-9), case


def test_median_equals_numpy():
    from immunomon.preprocess.density import median

    rng = np.random.default_rng(9)
    for shape, axis in (((7,), 0), ((8,), 0), ((5, 6), 1), ((5, 6), 0), ((3, 1), 1)):
        x = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(median(x, axis=axis), np.median(x.astype(np.float64), axis=axis, keepdims=True))
    x = rng.normal(size=(4, 9))
    x[2, 3] = np.nan
    np.testing.assert_array_equal(median(x, axis=1), np.median(x, axis=1, keepdims=True))


# ------------------------------------------------------------ instrument limits, mass cytometry
def test_margin_limits_are_real_instrument_limits_only():
    from immunomon.pipeline.prepare import margin_limits

    channels = pd.DataFrame({
        "name": ["FSC-H", "FL1-H", "CD3", "CD20(Sm147)Dd", "Time"],
        "range": [1024.0, 1024.0, 262144.0, 770.0, 262144.0],
        "datatype": ["I", "I", "F", "F", "F"],
        "log_decades": [0.0, 4.0, 0.0, 0.0, 0.0], "log_offset": [0.0, 1.0, 0.0, 0.0, 0.0],
        "gain": [1.0, 1.0, 1.0, 1.0, 1.0]})
    limits = margin_limits(channels, ["scatter", "marker", "marker", "marker", "time"])
    assert limits[0] == 1023                                   # integer data: $PnR - 1
    assert limits[1] == pytest.approx(10 ** (4 * 1023 / 1024))  # log channel: its linear top
    assert limits[2] == 262143                                 # float, a digitiser's range
    assert np.isnan(limits[3]) and np.isnan(limits[4])         # flowCore's observed maximum; time


def test_float_file_maximum_is_never_a_margin():
    rng = np.random.default_rng(2)
    x = rng.gamma(2.0, 50.0, 5000).astype(np.float32)
    events = pd.DataFrame({"pS6": np.arcsinh(x / 5)})
    res = QualityControl(steps=("margins",)).apply(events, raw=x[:, None], limits={"pS6": np.nan})
    assert res.steps["status"].iloc[0] == "skipped" and res.events_after_qc == 5000
    old = QualityControl(steps=("margins",)).apply(events, raw=x[:, None], ranges={"pS6": float(x.max())})
    assert old.steps["events_removed"].iloc[0] >= 1  # what $PnR - 1 of such a file removes


def test_mass_cytometry_cleanup_removes_beads_debris_and_doublets():
    rng = np.random.default_rng(5)
    n = 8000
    kind = rng.choice(["cell", "bead", "debris", "doublet", "dead"], n, p=[0.8, 0.06, 0.06, 0.04, 0.04])
    dna = np.where(kind == "debris", rng.normal(1.0, 0.4, n),
                   np.where(kind == "doublet", rng.normal(5.6, 0.15, n), rng.normal(4.6, 0.15, n)))
    events = pd.DataFrame({
        "DNA1": dna, "DNA2": dna + rng.normal(0, 0.05, n),
        "Ce140Di": np.where(kind == "bead", rng.normal(7.0, 0.3, n), rng.normal(0.3, 0.3, n)),
        "Event_length": np.where(kind == "doublet", rng.normal(40, 2, n), rng.normal(22, 2, n)),
        "Viability": np.where(kind == "dead", rng.normal(5.0, 0.3, n), rng.normal(1.0, 0.4, n)),
    })
    events.loc[kind == "bead", ["DNA1", "DNA2"]] = rng.normal(0.2, 0.2, ((kind == "bead").sum(), 2))
    qc = QualityControl.for_instrument("mass", dna=("DNA1", "DNA2"), beads=("Ce140Di",),
                                       gaussian=("Event_length",))
    assert qc.steps == ("margins", "time", "beads", "dna", "gaussian", "dead")
    res = qc.apply(events)
    steps = res.steps.set_index("step")
    assert steps.loc["margins", "status"] == "skipped" and steps.loc["time", "status"] == "skipped"
    assert (steps.loc[["beads", "dna", "gaussian", "dead"], "status"] == "ran").all()
    removed = pd.Series(~res.keep).groupby(kind).mean()
    assert removed[["bead", "debris", "doublet", "dead"]].min() >= 0.95
    assert removed["cell"] <= 0.02


def test_mass_panel_defaults_to_arcsinh_cofactor_5():
    from immunomon.io.study import Panel

    mass = Panel.model_validate({"instrument": "mass", "channels": {"Yb172Di": {"marker": "pS6"}}})
    flow = Panel.model_validate({"instrument": "flow", "channels": {"FITC-A": {"marker": "CD4"}}})
    assert mass.transform.cofactor == 5 and flow.transform.cofactor == 150
