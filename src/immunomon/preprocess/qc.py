"""Per-file quality control of cytometry events.

Steps, each a small function returning a boolean mask of events to remove, run in order by
:class:`QualityControl` on the events left by the previous step. Flow cytometry (the
default steps): ``margins``, ``time``, ``doublets``, ``debris``, ``dead``; mass cytometry
(:meth:`QualityControl.for_instrument`): ``margins``, ``time``, ``beads``, ``dna``,
``gaussian``, ``dead``.

``margins``
    events at a channel's real instrument limit (saturated detectors): the limits are given
    per channel by the caller (:func:`immunomon.pipeline.prepare.margin_limits`: integer data
    at ``$PnR``, never a float file's own maximum);
``time``
    acquisition anomalies, in the spirit of PeacoQC/flowAI: the file is cut into time
    segments; a segment is anomalous when its flow rate (events per unit time) or its
    signal (per-channel mean) is a robust outlier among all segments (more than
    ``k`` MADs from their median);
``doublets``
    events whose FSC-A/FSC-H ratio lies above ``median + k·MAD`` of the file;
``debris``
    events below the density valley of FSC-A (or below a floor) and at the very low
    end of SSC-A;
``dead``
    events above the density valley between the negative (live) and positive (dead)
    peaks of the viability dye (cisplatin in mass cytometry);
``beads``
    mass cytometry: normalisation beads, events above the density valley of every bead
    channel (beads are bright in all of them);
``dna``
    mass cytometry: debris and doublets by the DNA intercalator (mean of the DNA channels):
    events below the valley between debris and nucleated cells (else below median − k·MAD)
    or above median + k·MAD (``doublet_mad``);
``gaussian``
    mass cytometry (CyTOF 2 / Helios): doublets by the Gaussian-discrimination parameters,
    events above median + k·MAD in any of ``Event_length``, ``Width``, ``Residual``.

Every step writes one row of the ``qc_steps`` table (``sample_id, step, status,
events_in, events_removed, reason``): ``status`` is ``ran``, or ``skipped`` when the step
cannot apply to the file (its channels are missing, no channel has an instrument limit, too
few events), ``reason`` states the data-driven threshold or why it was skipped. A file that
loses more than ``max_loss`` of its events is flagged ``qc_pass = False`` (its events
are still returned, so that a person can look at them).

The module knows nothing about studies: it works on an events table whose columns are
marker names (scatter in linear units, fluorescence transformed, e.g. arcsinh).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numba
import numpy as np
import pandas as pd

from immunomon.events import frame_columns

from .density import (MAD_SCALE, PROBE_EVENTS, at_bound, density_valley, median, robust_z,
                      upper_valley)

QC_STEP_NAMES = ("margins", "time", "doublets", "debris", "dead", "beads", "dna", "gaussian")
#: Default steps per instrument kind (``flow`` also for spectral).
DEFAULT_STEPS = {"flow": ("margins", "time", "doublets", "debris", "dead"),
                 "spectral": ("margins", "time", "doublets", "debris", "dead"),
                 "mass": ("margins", "time", "beads", "dna", "gaussian", "dead")}
QC_STEPS_COLUMNS = ["sample_id", "step", "status", "events_in", "events_removed", "reason"]
RAN, SKIPPED = "ran", "skipped"
#: The time step's per-channel robust SD (a guard, see :func:`time_anomalies`) uses at most about
#: this many events.
SPREAD_EVENTS = 2_000
#: The time step needs at least this many segments (of ``segment_events``) to judge one.
MIN_SEGMENTS = 30


# --------------------------------------------------------------------------- steps


def margin_events(columns: Sequence[np.ndarray], ranges: Sequence[float]) -> np.ndarray:
    """Events at or above ``range - 1`` in any channel (saturated detectors).

    Parameters
    ----------
    columns
        One ``(n_events,)`` array of raw (uncompensated, untransformed) values per channel
        (e.g. the columns of a table, or ``values.T`` of an ``(n_events, n_channels)`` array).
    ranges
        ``$PnR`` of each channel, same order as ``columns``; NaN leaves a channel out.

    Returns
    -------
    np.ndarray
        Boolean mask, ``(n_events,)``, True for events to remove.
    """
    if isinstance(columns, np.ndarray) and columns.ndim == 2:  # values.T: one pass over the rows
        return _margin_rows(columns.T, np.asarray(ranges, dtype=np.float64) - 1.0)
    remove = None
    for col, rng in zip(columns, ranges):
        hit = np.asarray(col) >= float(rng) - 1.0
        remove = hit if remove is None else remove | hit
    return remove if remove is not None else np.zeros(0, dtype=bool)


@numba.njit(cache=True, nogil=True)
def _margin_rows(values, limits):  # pragma: no cover - compiled
    """Rows of ``values`` with a value >= its column's limit (NaN limits never match)."""
    n, p = values.shape
    hit = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        for j in range(p):
            if values[i, j] >= limits[j]:
                hit[i] = True
                break
    return hit


def _segments(n: int, per_segment: int, max_segments: int) -> np.ndarray:
    """Segment index of each of ``n`` events cut into equal consecutive segments."""
    k = int(np.clip(n // max(per_segment, 1), 1, max_segments))
    return np.minimum(np.arange(n) * k // max(n, 1), k - 1)


def time_anomalies(
    time: np.ndarray,
    signals: Sequence[np.ndarray],
    *,
    rate_bin_events: int = 50,
    segment_events: int = 100,
    max_segments: int = 2000,
    rate_mad: float = 5.0,
    signal_mad: float = 6.0,
    min_shift: float = 0.1,
) -> tuple[np.ndarray, dict]:
    """Events acquired during an anomalous flow rate or with an anomalous signal.

    Flow rate: the acquisition time is cut into bins of equal duration holding
    ``rate_bin_events`` events on average (at most ``max_segments`` bins); a bin whose
    count lies more than ``rate_mad`` MADs from the median count is anomalous, and so is
    a neighbour of an anomalous bin lying more than ``rate_mad / 2`` MADs away (a burst
    straddling two bins). Signal: the events are cut, in acquisition order, into segments
    of ``segment_events`` events (at most ``max_segments``); a segment whose mean in any
    channel lies more than ``signal_mad`` MADs from the median of the segment means,
    and more than ``min_shift`` × the channel's robust SD of events (median and MAD of an
    evenly strided subset of about :data:`SPREAD_EVENTS` events), is anomalous.

    Parameters
    ----------
    time
        ``(n_events,)`` acquisition time (any unit), in file order.
    signals
        One ``(n_events,)`` array per monitored channel (transformed fluorescence,
        scatter), e.g. ``values.T`` of an ``(n_events, n_channels)`` array.

    Returns
    -------
    mask, info
        Boolean mask ``(n_events,)`` of events to remove; ``info`` holds ``rate_bins``,
        ``rate_anomalous``, ``segments`` and ``signal_anomalous`` (counts).
    """
    time = np.asarray(time, dtype=np.float64)
    n = time.size
    remove = np.zeros(n, dtype=bool)
    info = {"rate_bins": 0, "rate_anomalous": 0, "segments": 0, "signal_anomalous": 0}
    if n < 10 * max(segment_events, rate_bin_events):
        return remove, info

    n_bins = int(np.clip(n // max(rate_bin_events, 1), 1, max_segments))
    t0, t1 = float(np.min(time)), float(np.max(time))
    if t1 > t0:
        time_bin = np.minimum(((time - t0) * (n_bins / (t1 - t0))).astype(np.int64), n_bins - 1)
        z = np.abs(robust_z(np.bincount(time_bin, minlength=n_bins)))
        bad = z > rate_mad
        near = np.zeros_like(bad)
        near[1:] |= bad[:-1]
        near[:-1] |= bad[1:]
        bad |= near & (z > rate_mad / 2)
        remove |= bad[time_bin]
        info.update(rate_bins=n_bins, rate_anomalous=int(bad.sum()))

    seg = _segments(n, segment_events, max_segments)
    k = int(seg[-1]) + 1
    starts = np.searchsorted(seg, np.arange(k))
    sizes = np.diff(np.append(starts, n))
    # mean of every segment: unlike the median, it moves smoothly with the mix of
    # populations in a segment, so bimodal markers do not make false alarms
    # (channels, segments) and (channels, probe events): rows are contiguous for the medians
    means = np.stack([np.add.reduceat(c, starts, dtype=np.float64) / sizes for c in signals])
    centre = median(means, axis=1)
    # robust SD of events per channel: only scales the min_shift guard, a 2,000-event strided subset will do
    probe = np.stack([c[:: max(1, n // SPREAD_EVENTS)] for c in signals])
    spread = MAD_SCALE * median(np.abs(probe - median(probe, axis=1)), axis=1)
    shifted = np.abs(means - centre) > min_shift * spread
    bad_signal = ((np.abs(robust_z(means, axis=1)) > signal_mad) & shifted).any(axis=0)
    remove |= bad_signal[seg]
    info.update(segments=k, signal_anomalous=int(bad_signal.sum()))
    return remove, info


def doublet_events(fsc_a: np.ndarray, fsc_h: np.ndarray, *, k: float = 4.0) -> tuple[np.ndarray, float]:
    """Events whose ``FSC-A / FSC-H`` ratio exceeds ``median + k · 1.4826 · MAD``.

    Returns the mask of events to remove and the ratio threshold. Events with
    ``FSC-H <= 0`` are doublet-free by definition here (ratio undefined) unless FSC-A is
    also positive, in which case they are removed.
    """
    fsc_a = np.asarray(fsc_a, dtype=np.float64)
    fsc_h = np.asarray(fsc_h, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(fsc_h > 0, fsc_a / fsc_h, np.where(fsc_a > 0, np.inf, 1.0))
    finite = ratio[np.isfinite(ratio)]
    finite = finite[:: max(1, finite.size // PROBE_EVENTS)]  # median and MAD from a strided subset
    if finite.size == 0:
        return np.zeros(ratio.size, dtype=bool), float("nan")
    med = float(median(finite)[0])
    mad = MAD_SCALE * float(median(np.abs(finite - med))[0])
    threshold = float(med + k * mad)
    return ratio > threshold, threshold


def debris_events(
    fsc_a: np.ndarray,
    ssc_a: np.ndarray,
    *,
    fsc_bounds: tuple[float, float],
    ssc_floor: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Events below the FSC-A density valley within ``fsc_bounds``, or with SSC-A below
    ``ssc_floor`` (linear units). Returns the mask and the FSC-A threshold."""
    fsc_a = np.asarray(fsc_a, dtype=np.float64)
    threshold = density_valley(fsc_a, fsc_bounds)
    return (fsc_a < threshold) | (np.asarray(ssc_a) < ssc_floor), threshold


def dead_events(viability: np.ndarray, *, bounds: tuple[float, float] | str = "auto"
                ) -> tuple[np.ndarray, float]:
    """Events above the viability-dye density valley within ``bounds`` (transformed
    units; ``"auto"``: the valley above the main, live peak, see :func:`upper_valley` — no
    valley, no dead cells removed). Returns the mask and the threshold (NaN: none removed)."""
    viability = np.asarray(viability, dtype=np.float64)
    if isinstance(bounds, str):
        threshold, found = upper_valley(viability)
        if not found:
            return np.zeros(viability.size, dtype=bool), float("nan")
    else:
        threshold = density_valley(viability, bounds)
    return viability > threshold, threshold


def bead_events(beads: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Mass cytometry: events bright in every bead channel (above each channel's
    :func:`upper_valley`); no valley in a channel: no beads. Returns the mask and the
    smallest threshold (NaN when no bead population was found)."""
    n = len(beads[0]) if beads else 0
    remove = np.ones(n, dtype=bool)
    thresholds = []
    for x in beads:
        thr, found = upper_valley(x)
        if not found:
            return np.zeros(n, dtype=bool), float("nan")
        remove &= np.asarray(x) > thr
        thresholds.append(thr)
    return remove, float(min(thresholds)) if thresholds else float("nan")


def dna_events(dna: Sequence[np.ndarray], *, k: float = 4.0) -> tuple[np.ndarray, float, float]:
    """Mass cytometry: debris and doublets by DNA content (transformed units, mean of the DNA
    channels). Low cut: the density valley below the main peak (between the 0.1st percentile
    and the median), else median − k·MAD; high cut: median + k·MAD. Returns the mask and the
    two cuts."""
    x = np.mean(np.column_stack([np.asarray(c, dtype=np.float64) for c in dna]), axis=1)
    probe = x[:: max(1, x.size // PROBE_EVENTS)]
    med = float(median(probe)[0])
    mad = MAD_SCALE * float(median(np.abs(probe - med))[0])
    low = med - k * mad
    q = float(np.sort(probe)[int(0.001 * (probe.size - 1))])
    if q < med:
        valley = density_valley(x, (q, med))
        if not at_bound(valley, (q, med)):
            low = max(low, valley)
    high = med + k * mad
    return (x < low) | (x > high), low, high


def gaussian_events(params: Sequence[np.ndarray], *, k: float = 4.0) -> tuple[np.ndarray, str]:
    """Mass cytometry doublets: events above median + k·MAD in any Gaussian-discrimination
    parameter given (``Event_length``, ``Width``, ``Residual``). Returns the mask and the
    cuts as text."""
    n = len(params[0]) if params else 0
    remove = np.zeros(n, dtype=bool)
    cuts = []
    for x in params:
        x = np.asarray(x, dtype=np.float64)
        probe = x[:: max(1, x.size // PROBE_EVENTS)]
        med = float(median(probe)[0])
        mad = MAD_SCALE * float(median(np.abs(probe - med))[0])
        cut = med + k * mad if mad > 0 else np.inf
        remove |= x > cut
        cuts.append(cut)
    return remove, ", ".join(f"{c:.4g}" for c in cuts)


# --------------------------------------------------------------------------- estimator


@dataclass
class QCResult:
    """Outcome of :meth:`QualityControl.apply` on one file.

    Attributes
    ----------
    keep
        ``(n_events,)`` boolean mask over the input events, True for events passing QC.
    steps
        The ``qc_steps`` rows of this file (columns :data:`QC_STEPS_COLUMNS` plus
        ``threshold``, the data-driven threshold of the step, NaN where none).
    qc_pass
        False when the fraction removed exceeds ``max_loss``.
    removed_by
        ``(n_events,)`` int8: the row of ``steps`` that removed each event, -1 if kept.
    """

    keep: np.ndarray
    steps: pd.DataFrame
    qc_pass: bool
    removed_by: np.ndarray

    @property
    def events_total(self) -> int:
        return int(self.keep.size)

    @property
    def events_after_qc(self) -> int:
        return int(self.keep.sum())


@dataclass
class QualityControl:
    """Quality control of one file's events, with explicit parameters.

    Parameters
    ----------
    steps
        Steps to run, in order (:data:`QC_STEP_NAMES`); default the flow steps
        (:data:`DEFAULT_STEPS`; :meth:`for_instrument` gives mass cytometry's). A step whose
        channels are missing is reported as skipped.
    time, fsc_a, fsc_h, ssc_a, viability
        Column names (marker names) of the events table.
    rate_bin_events, segment_events, max_segments, rate_mad, signal_mad, min_shift
        Time-anomaly parameters (see :func:`time_anomalies`).
    signal_channels
        Columns monitored for signal stability; default: every column except time.
    doublet_mad
        ``k`` of :func:`doublet_events` (and of the DNA and Gaussian-parameter cuts).
    debris_fsc_bounds, debris_ssc_floor
        Search interval of the FSC-A valley and SSC-A floor (linear units). ``None``:
        4–23 % of FSC-A's ``$PnR`` when ranges are given (10,000–60,000 on a 262,144
        scale), else 10,000–60,000. No valley inside: the lower bound is the cut.
    dead_bounds
        Search interval of the viability valley (transformed units), or ``"auto"``: the
        valley above the live peak (:func:`upper_valley`).
    dna, beads, gaussian
        Mass cytometry: the DNA-intercalator, bead and Gaussian-parameter columns.
    limits
        Marker → the value at which its detector saturates (raw units), overriding the
        limits the caller gives (declared limits of a float-data instrument).
    max_loss
        A file losing more than this fraction of its events fails QC.
    """

    steps: tuple[str, ...] = DEFAULT_STEPS["flow"]
    time: str = "Time"
    fsc_a: str = "FSC-A"
    fsc_h: str = "FSC-H"
    ssc_a: str = "SSC-A"
    viability: str = "Viability"
    rate_bin_events: int = 50
    segment_events: int = 100
    max_segments: int = 2000
    rate_mad: float = 5.0
    signal_mad: float = 6.0
    min_shift: float = 0.1
    signal_channels: tuple[str, ...] | None = None
    doublet_mad: float = 4.0
    debris_fsc_bounds: tuple[float, float] | None = None
    debris_ssc_floor: float = 0.0
    dead_bounds: tuple[float, float] | str = "auto"
    dna: tuple[str, ...] = ()
    beads: tuple[str, ...] = ()
    gaussian: tuple[str, ...] = ()
    limits: Mapping[str, float] | None = None
    max_loss: float = 0.5

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in QC_STEP_NAMES]
        if unknown:
            raise ValueError(f"QualityControl: unknown steps {unknown}; known: {list(QC_STEP_NAMES)}")
        if not 0.0 <= self.max_loss <= 1.0:
            raise ValueError(f"QualityControl: max_loss must be in [0, 1], got {self.max_loss}")
        if isinstance(self.dead_bounds, str) and self.dead_bounds != "auto":
            raise ValueError(f"QualityControl: dead_bounds must be (low, high) or 'auto', got {self.dead_bounds!r}")

    @classmethod
    def for_instrument(cls, instrument: str | None, **settings) -> "QualityControl":
        """Settings for an instrument kind (``flow``, ``spectral``, ``mass``): its default
        steps, and for mass cytometry a data-driven cisplatin cut; ``settings`` win."""
        kind = instrument if instrument in DEFAULT_STEPS else "flow"
        base: dict = {"steps": DEFAULT_STEPS[kind]}
        if kind == "mass":
            base["dead_bounds"] = "auto"
        return cls(**{**base, **settings})

    def apply(
        self,
        events: pd.DataFrame,
        *,
        sample_id: str = "",
        raw: pd.DataFrame | np.ndarray | None = None,
        ranges: Mapping[str, float] | None = None,
        limits: Mapping[str, float] | None = None,
    ) -> QCResult:
        """Run the steps on ``events`` (rows in acquisition order).

        Parameters
        ----------
        events
            ``(n_events, n_markers)`` table, columns = marker names.
        sample_id
            Written in the ``sample_id`` column of the steps table.
        raw
            Untransformed values (a table with marker-named columns, or an
            ``(n_events, n_markers)`` array in the columns of ``events``; default ``events``)
            for the ``margins`` step.
        ranges
            ``$PnR`` per column: the scale of the debris bounds, and, without ``limits``,
            the margins step's limits (``$PnR - 1``).
        limits
            Per column, the raw value at and above which an event is saturated (NaN: the
            channel has no real instrument limit); the margins step uses these.
        """
        n = len(events)
        keep = np.ones(n, dtype=bool)
        removed_by = np.full(n, -1, dtype=np.int8)
        rows = []
        cols = _Columns(events) if self.steps else None
        if raw is not None and "margins" in self.steps:
            raw_cols = _Columns(raw if isinstance(raw, pd.DataFrame)
                                else pd.DataFrame(raw, columns=events.columns, copy=False))
        else:
            raw_cols = cols
        if limits is None and ranges:
            limits = {c: float(r) - 1.0 for c, r in ranges.items()}
        if self.limits:
            limits = {**(limits or {}), **{c: float(v) for c, v in self.limits.items()}}
        for step in self.steps:
            idx = np.flatnonzero(keep)
            cols.idx = raw_cols.idx = idx if idx.size < n else None
            out = getattr(self, f"_{step}")(cols, raw_cols, ranges if step != "margins" else limits)
            remove, threshold, reason = out[:3]
            status = out[3] if len(out) > 3 else RAN
            keep[idx[remove]] = False
            removed_by[idx[remove]] = len(rows)
            rows.append((sample_id, step, status, idx.size, int(remove.sum()), reason, threshold))
        columns = list(zip(*rows)) if rows else [()] * 7
        steps = pd.DataFrame({
            "sample_id": np.array(columns[0], dtype=object), "step": np.array(columns[1], dtype=object),
            "status": np.array(columns[2], dtype=object),
            "events_in": np.array(columns[3], dtype=np.int64), "events_removed": np.array(columns[4], dtype=np.int64),
            "reason": np.array(columns[5], dtype=object), "threshold": np.array(columns[6], dtype=np.float64),
        }, copy=False)
        lost = 1.0 - keep.sum() / n if n else 1.0
        return QCResult(keep=keep, steps=steps, qc_pass=bool(lost <= self.max_loss), removed_by=removed_by)

    # Each step: (columns, raw columns, ranges or limits) -> (mask over the current events,
    # threshold, reason[, status])

    def _skipped(self, n: int, why: str) -> tuple[np.ndarray, float, str, str]:
        return np.zeros(n, dtype=bool), float("nan"), why, SKIPPED

    def _missing(self, n: int, missing: list[str]) -> tuple[np.ndarray, float, str, str]:
        return self._skipped(n, f"no column {', '.join(missing)}")

    def _margins(self, ev: "_Columns", raw: "_Columns", limits):
        names = [c for c, v in (limits or {}).items()
                 if c in raw and c != self.time and np.isfinite(v)]
        if not names:
            why = ("no channel ranges" if not limits else
                   "no channel has an instrument limit (float data whose $PnR is not a "
                   "digitiser range, e.g. each channel's observed maximum)")
            return self._skipped(len(ev), why)
        values = raw.values()
        if values is not None:  # one row-major pass, channels not checked get a NaN limit
            bounds = [float(limits[c]) if c in names else np.nan for c in raw.names]
            remove = _margin_rows(values, np.asarray(bounds, dtype=np.float64))
        else:
            remove = margin_events([raw[c] for c in names], [limits[c] + 1.0 for c in names])
        left = len([c for c in raw.names if c != self.time]) - len(names)
        reason = f"value at the instrument limit ($PnR - 1) in any of {len(names)} channels"
        if left:
            reason += f" ({left} channel(s) without an instrument limit not checked)"
        return remove, float("nan"), reason

    def _time(self, ev: "_Columns", raw, ranges):
        if self.time not in ev:
            return self._missing(len(ev), [self.time])
        need = MIN_SEGMENTS * max(self.segment_events, self.rate_bin_events)
        if len(ev) < need:  # too few segments for a robust spread: every outlier test is noise
            return self._skipped(len(ev), f"{len(ev)} events, fewer than the {need} that "
                                          f"{MIN_SEGMENTS} time segments need")
        names = list(self.signal_channels or [c for c in ev.names if c != self.time])
        remove, info = time_anomalies(
            ev[self.time], [ev[c] for c in names],
            rate_bin_events=self.rate_bin_events, segment_events=self.segment_events,
            max_segments=self.max_segments, rate_mad=self.rate_mad, signal_mad=self.signal_mad,
            min_shift=self.min_shift,
        )
        reason = (
            f"{info['rate_anomalous']} of {info['rate_bins']} time bins with a flow rate > {self.rate_mad:g} MAD "
            f"from the median; {info['signal_anomalous']} of {info['segments']} segments with a channel mean > "
            f"{self.signal_mad:g} MAD from the median"
        )
        return remove, float("nan"), reason

    def _doublets(self, ev: "_Columns", raw, ranges):
        missing = [c for c in (self.fsc_a, self.fsc_h) if c not in ev]
        if missing:
            return self._missing(len(ev), missing)
        if self.fsc_a == self.fsc_h:
            return self._skipped(len(ev), f"needs distinct area and height channels "
                                          f"(only {self.fsc_a})")
        remove, thr = doublet_events(ev[self.fsc_a], ev[self.fsc_h], k=self.doublet_mad)
        return remove, thr, f"{self.fsc_a}/{self.fsc_h} > {thr:.4g} (median + {self.doublet_mad:g} MAD)"

    def _debris(self, ev: "_Columns", raw, ranges):
        missing = [c for c in (self.fsc_a, self.ssc_a) if c not in ev]
        if missing:
            return self._missing(len(ev), missing)
        bounds = self.debris_fsc_bounds
        if bounds is None:
            top = float(ranges[self.fsc_a]) if ranges and self.fsc_a in ranges else 262_144.0
            bounds = (0.04 * top, 0.23 * top)
        remove, thr = debris_events(ev[self.fsc_a], ev[self.ssc_a], fsc_bounds=bounds,
                                    ssc_floor=self.debris_ssc_floor)
        found = not at_bound(thr, bounds)
        if not found and thr != bounds[0]:  # no valley: cut only at the lower bound
            thr = float(bounds[0])
            remove = (np.asarray(ev[self.fsc_a]) < thr) | (np.asarray(ev[self.ssc_a]) < self.debris_ssc_floor)
        where = (f"density valley in [{bounds[0]:.4g}, {bounds[1]:.4g}]" if found else
                 f"no valley in [{bounds[0]:.4g}, {bounds[1]:.4g}]: its lower bound")
        return remove, thr, f"{self.fsc_a} < {thr:.4g} ({where}) or {self.ssc_a} < {self.debris_ssc_floor:g}"

    def _dead(self, ev: "_Columns", raw, ranges):
        if self.viability not in ev:
            return self._missing(len(ev), [self.viability])
        remove, thr = dead_events(ev[self.viability], bounds=self.dead_bounds)
        if isinstance(self.dead_bounds, str):
            where = "density valley above the live peak"
            if not np.isfinite(thr):
                return remove, thr, f"{self.viability}: one population, no dead-cell peak: none removed"
        else:
            where = f"density valley in [{self.dead_bounds[0]:g}, {self.dead_bounds[1]:g}]"
        return remove, thr, f"{self.viability} > {thr:.4g} ({where})"

    def _beads(self, ev: "_Columns", raw, ranges):
        names = [c for c in self.beads if c in ev]
        if not names:
            return self._skipped(len(ev), "no bead channel")
        remove, thr = bead_events([ev[c] for c in names])
        if not np.isfinite(thr):
            return remove, thr, f"no bead population in {', '.join(names)}: none removed"
        return remove, thr, f"bright (> density valley) in every bead channel: {', '.join(names)}"

    def _dna(self, ev: "_Columns", raw, ranges):
        names = [c for c in self.dna if c in ev]
        if not names:
            return self._skipped(len(ev), "no DNA-intercalator channel")
        remove, low, high = dna_events([ev[c] for c in names], k=self.doublet_mad)
        return remove, low, (f"mean of {', '.join(names)} < {low:.4g} (debris) or > {high:.4g} "
                             f"(median + {self.doublet_mad:g} MAD: doublets)")

    def _gaussian(self, ev: "_Columns", raw, ranges):
        names = [c for c in self.gaussian if c in ev and c.lower() not in ("center", "offset")]
        if not names:
            return self._skipped(len(ev), "no Gaussian-discrimination parameter (Event_length, "
                                          "Width, Residual)")
        remove, cuts = gaussian_events([ev[c] for c in names], k=self.doublet_mad)
        return remove, float("nan"), (f"above median + {self.doublet_mad:g} MAD in "
                                      f"{', '.join(names)} (cuts {cuts})")


class _Columns:
    """Column access to an events table restricted to the rows ``idx`` (None = all rows)."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame
        self._data = frame_columns(frame)
        self.names = list(self._data)
        self._n = len(frame)
        self.idx: np.ndarray | None = None

    def values(self) -> np.ndarray | None:
        """The ``(rows, columns)`` array of a one-dtype table with unique column names
        (columns in ``names`` order), None otherwise; taken only when asked (margins)."""
        frame = self._frame
        if len(self.names) != frame.shape[1] or len(set(frame.dtypes)) != 1:
            return None
        values = frame.to_numpy()
        return values if self.idx is None else values[self.idx]

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def __getitem__(self, name: str) -> np.ndarray:
        x = self._data[name]
        return x if self.idx is None else x[self.idx]

    def __len__(self) -> int:
        return self._n if self.idx is None else int(self.idx.size)
