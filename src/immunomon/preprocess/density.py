"""Robust statistics and density valleys shared by quality control and data-driven gates.

:func:`median` and :func:`robust_z` (MAD-scaled), :func:`density_valley` (the deepest valley
between the two highest peaks of a smoothed histogram, in the spirit of flowDensity),
:func:`separating_valley` (Otsu's threshold as the fallback where no valley is found),
:func:`upper_valley` and :func:`at_bound`. All work on 1-D arrays of one channel, on the
scale they are given (scatter linear, fluorescence transformed).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["median", "robust_z", "density_valley", "separating_valley", "upper_valley",
           "at_bound", "MAD_SCALE", "PROBE_EVENTS", "VALLEY_EVENTS"]

MAD_SCALE = 1.4826  # MAD of a standard normal distribution is 1 / 1.4826
#: Robust statistics that only set a threshold (median, MAD, quantiles of a range) are taken
#: on an evenly strided subset of at most about this many events (deterministic, and cheap
#: on files of 10^6 events).
PROBE_EVENTS = 10_000
#: :func:`density_valley` estimates a density from at most this many events (evenly strided).
VALLEY_EVENTS = 20_000


def median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``np.median(x, axis, keepdims=True)`` (float64) by one ``np.partition``: numpy's median
    partitions around two indices at once, several times slower on the arrays of QC and gating;
    NaN anywhere along ``axis`` gives NaN, like np.median."""
    x = np.asarray(x)
    n = x.shape[axis]
    if n == 0:
        return np.median(x, axis=axis, keepdims=True)
    half = n // 2
    part = np.partition(x, half, axis=axis)  # one kth: several times faster than two
    middle = np.take(part, [half], axis=axis).astype(np.float64)
    if n % 2 == 0:  # the other middle value is the largest of the lower half
        lower = np.take(part, np.arange(half), axis=axis).max(axis=axis, keepdims=True)
        middle = (middle + lower.astype(np.float64)) / 2.0
    nan = np.isnan(np.take(part, [n - 1], axis=axis))  # partition puts NaN last
    return np.where(nan, np.nan, middle)


def robust_z(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Robust z-scores ``(x - median) / (1.4826 · MAD)`` along ``axis``.

    A zero MAD (constant input) gives z = 0 where ``x`` equals the median and ±inf
    elsewhere.
    """
    x = np.asarray(x, dtype=np.float64)
    med = median(x, axis=axis)
    mad = MAD_SCALE * median(np.abs(x - med), axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x - med) / mad
    return np.where(x == med, 0.0, z)


def density_valley(
    x: np.ndarray,
    bounds: tuple[float, float],
    *,
    grid: int = 512,
    adjust: float = 0.5,
    min_prominence: float = 0.02,
    max_events: int = VALLEY_EVENTS,
) -> float:
    """Position of the deepest density minimum of ``x`` between two peaks, within ``bounds``.

    The density is a Gaussian-smoothed histogram (a binned KDE) on ``grid`` bins over the
    0.1–99.9 % range of the data widened to include ``bounds``; the bandwidth is
    ``adjust`` × Silverman's rule. Peaks are local maxima whose prominence is at least
    ``min_prominence`` × the highest density; the valley between two neighbouring peaks
    is the lowest point between them (the middle of a flat run, e.g. an empty gap). Of
    the valleys inside ``bounds`` the lowest is returned; when there is none (one
    population only, or the bounds hold one flank of a peak), the bound where the density
    is lowest is returned, so that a sample missing the positive (or negative)
    population is still gated consistently.

    Parameters
    ----------
    x
        1-D values (any unit; typically arcsinh-transformed fluorescence).
    bounds
        ``(low, high)`` interval, in the units of ``x``, where the valley must lie.
    grid, adjust, min_prominence
        Number of histogram bins, bandwidth multiplier, peak prominence threshold.
    max_events
        At most this many values are used (an evenly strided subset; deterministic).

    Returns
    -------
    float
        The threshold, in the units of ``x``; the midpoint of ``bounds`` when ``x`` has
        fewer than 10 finite values.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise ValueError(f"density_valley: bounds must be increasing, got {bounds}")
    x = np.asarray(x).ravel()
    if x.size > max_events:
        x = x[:: int(np.ceil(x.size / max_events))]
    finite = np.isfinite(x)
    if not finite.all():
        x = x[finite]
    if x.size < 10:
        return 0.5 * (lo + hi)
    probe = x[:: max(1, x.size // 4000)]  # range and spread from a strided subset
    at = (np.array([0.001, 0.25, 0.75, 0.999]) * (probe.size - 1)).astype(np.int64)
    quantiles = np.sort(probe)[at].astype(np.float64)  # numpy's SIMD sort beats a 4-index partition
    return float(_valley(x, probe, lo, hi, int(grid), float(adjust), float(min_prominence), quantiles))


@numba.njit(cache=True, nogil=True)
def _valley(v, probe, lo, hi, grid, adjust, min_prominence, quantiles):  # pragma: no cover - compiled
    """:func:`density_valley` of the finite values ``v`` given the ``probe`` subset and its
    0.1, 25, 75 and 99.9 % ``quantiles``, in one compiled pass: the probe's standard
    deviation, the histogram, ``gaussian_filter1d``'s kernel (truncate 4, zero padding),
    ``find_peaks``' local maxima and prominences, and the valley between neighbouring peaks."""
    n = v.size
    q_lo, q25, q75, q_hi = quantiles[0], quantiles[1], quantiles[2], quantiles[3]
    mean = 0.0
    for i in range(probe.size):
        mean += probe[i]
    mean /= probe.size
    sd = 0.0
    for i in range(probe.size):
        sd += (probe[i] - mean) ** 2
    sd = np.sqrt(sd / probe.size)
    start, stop = min(q_lo, lo), max(q_hi, hi)
    width = (stop - start) / grid
    inv_width = 1.0 / width
    counts = np.zeros(grid, dtype=np.float64)
    for i in range(n):  # values outside [start, stop] fall in no bin
        b = np.floor((v[i] - start) * inv_width)
        if v[i] == stop:
            b = grid - 1
        if 0 <= b < grid:
            counts[int(b)] += 1.0
    iqr = q75 - q25
    spread = min(sd, iqr / 1.34) if iqr > 0 else sd
    sigma = max(adjust * 0.9 * spread * n ** -0.2 / width, 1.0)
    radius = int(4.0 * sigma + 0.5)
    kernel = np.exp(-0.5 / (sigma * sigma) * np.arange(-radius, radius + 1).astype(np.float64) ** 2)
    kernel /= kernel.sum()
    padded_counts = np.zeros(grid + 2 * radius, dtype=np.float64)
    padded_counts[radius : radius + grid] = counts
    density = np.empty(grid, dtype=np.float64)
    for i in range(grid):  # scipy's symmetric-kernel order: centre, then pairs from the outside in
        c = i + radius
        acc = padded_counts[c] * kernel[radius]
        for k in range(radius, 0, -1):
            acc += (padded_counts[c - k] + padded_counts[c + k]) * kernel[radius + k]
        density[i] = acc
    top = density.max()
    # local maxima of the density padded with a zero at both ends (plateaus: their middle),
    # kept when their prominence is at least min_prominence * top
    padded = np.zeros(grid + 2, dtype=np.float64)
    padded[1:-1] = density
    peaks = np.empty(grid, dtype=np.int64)
    n_peaks = 0
    i = 1
    while i < grid + 1:
        if padded[i - 1] < padded[i]:
            ahead = i + 1
            while ahead < grid + 1 and padded[ahead] == padded[i]:
                ahead += 1
            if padded[ahead] < padded[i]:
                peak = (i + ahead - 1) // 2
                left_min = padded[peak]
                j = peak
                while j >= 0 and padded[j] <= padded[peak]:
                    left_min = min(left_min, padded[j])
                    j -= 1
                right_min = padded[peak]
                j = peak
                while j < grid + 2 and padded[j] <= padded[peak]:
                    right_min = min(right_min, padded[j])
                    j += 1
                if padded[peak] - max(left_min, right_min) >= min_prominence * top:
                    peaks[n_peaks] = peak - 1
                    n_peaks += 1
                i = ahead
        i += 1
    best, best_d = -1, np.inf
    tol = 1e-3 * top
    for p in range(n_peaks - 1):
        a, b = peaks[p], peaks[p + 1]
        floor = density[a : b + 1].min() + tol
        first = a
        while density[first] > floor:
            first += 1
        last_low = first
        while last_low + 1 <= b and density[last_low + 1] <= floor:
            last_low += 1
        valley = first + (last_low - first + 1) // 2  # the middle of the first run of minima
        centre = start + width * (valley + 0.5)
        if lo <= centre <= hi and density[valley] < best_d:
            best, best_d = valley, density[valley]
    if best >= 0:
        return start + width * (best + 0.5)
    first_in, last_in = -1, -1
    for i in range(grid):
        centre = start + width * (i + 0.5)
        if lo <= centre <= hi:
            if first_in < 0:
                first_in = i
            last_in = i
    if first_in < 0:
        return 0.5 * (lo + hi)
    return lo if density[first_in] <= density[last_in] else hi


def separating_valley(
    x: np.ndarray,
    bounds: tuple[float, float],
    *,
    grid: int = 512,
    adjust: float = 0.5,
    min_prominence: float = 0.02,
    min_fraction: float = 0.01,
    max_depth: float = 0.8,
    max_events: int = VALLEY_EVENTS,
) -> tuple[float, bool]:
    """The density valley that best separates two populations of ``x``, within ``bounds``.

    Candidates are the valleys between neighbouring density peaks (prominence at least
    ``min_prominence`` × the highest density; the density as in :func:`density_valley`)
    that are at most ``max_depth`` × the lower of the two peaks (a shallow dip is noise on
    one population) and leave at least ``min_fraction`` of the events on each side; of those,
    the one whose
    split has the largest between-class variance (Otsu's criterion) wins. Unlike the deepest
    valley, this ignores the small dips of zero-inflated data (mass cytometry's spike at 0)
    and of a dim shoulder, and splits negative from positive. Returns ``(threshold, found)``;
    no candidate: the bound where the density is lower, and ``found = False``.
    """
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    lo, hi = float(bounds[0]), float(bounds[1])
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size > max_events:
        x = x[:: int(np.ceil(x.size / max_events))]
    x = x[np.isfinite(x)]
    if x.size < 10 or not lo < hi:
        return 0.5 * (lo + hi), False
    q = np.quantile(x, [0.001, 0.25, 0.75, 0.999])
    start, stop = min(q[0], lo), max(q[3], hi)
    width = (stop - start) / grid
    counts = np.histogram(x, bins=grid, range=(start, stop))[0].astype(np.float64)
    iqr = q[2] - q[1]
    sd = float(np.std(x))
    spread = min(sd, iqr / 1.34) if iqr > 0 else sd
    sigma = max(adjust * 0.9 * spread * x.size ** -0.2 / width, 1.0)
    density = gaussian_filter1d(counts, sigma, mode="constant")
    peaks, _ = find_peaks(np.concatenate([[0.0], density, [0.0]]),
                          prominence=min_prominence * density.max())
    peaks = peaks - 1
    centres = start + width * (np.arange(grid) + 0.5)
    xs = np.sort(x)
    best, best_score = None, -1.0
    for a, b in zip(peaks[:-1], peaks[1:]):
        v = a + int(np.argmin(density[a : b + 1]))
        t = float(centres[v])
        if not lo <= t <= hi or density[v] > max_depth * min(density[a], density[b]):
            continue  # outside the bounds, or a shallow dip (noise on one population)
        k = int(np.searchsorted(xs, t))
        if min(k, xs.size - k) < min_fraction * xs.size:
            continue
        left, right = xs[:k], xs[k:]
        score = k * (xs.size - k) * (right.mean() - left.mean()) ** 2
        if score > best_score:
            best, best_score = t, score
    if best is not None:
        return best, True
    inside = (centres >= lo) & (centres <= hi)
    if not inside.any():
        return 0.5 * (lo + hi), False
    first, last = np.flatnonzero(inside)[[0, -1]]
    return (lo if density[first] <= density[last] else hi), False


def at_bound(value: float, bounds: tuple[float, float]) -> bool:
    """True when a :func:`density_valley` result is one of its search bounds, i.e. no valley
    was found between two peaks inside them."""
    return bool(value == float(bounds[0]) or value == float(bounds[1]))


def upper_valley(x: np.ndarray, k: float = 3.0) -> tuple[float, bool]:
    """The density valley above the main peak of ``x`` — between median + ``k`` robust SDs
    (1.4826 MAD) and the 99.9th percentile —: the threshold of a small bright population
    (dead cells, beads) whatever the scale. Returns ``(threshold, found)``."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 10:
        return float("nan"), False
    probe = np.sort(x[:: max(1, x.size // PROBE_EVENTS)])
    med = float(probe[probe.size // 2])
    lo = med + k * MAD_SCALE * float(median(np.abs(probe - med))[0])
    hi = float(probe[int(0.999 * (probe.size - 1))])
    if not lo < hi:
        return hi, False
    value = density_valley(x, (lo, hi))
    return value, not at_bound(value, (lo, hi))
