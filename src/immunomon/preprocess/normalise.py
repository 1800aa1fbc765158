"""Batch normalisation on bridge controls: CytoNorm (Van Gassen et al. 2020, Cytometry A).

Every acquisition batch holds an aliquot of the same control sample. For each batch and
marker, on the transformed scale:

1. the quantiles of the batch's control events at levels ``i / (n + 1)``, ``i = 1 … n``
   (R's ``quantile`` type 7, ``n = 99``), optionally per FlowSOM metacluster of the controls;
2. the goal quantiles: their mean over the batches;
3. a monotone cubic spline from the batch's quantiles to the goal quantiles, exactly R's
   ``stats::splinefun(method = "monoH.FC")`` (ties averaged, Fritsch–Carlson slopes,
   linear extrapolation with the end slopes), applied to every event of the batch.

R's ``monoH.FC`` is **not** scipy's ``PchipInterpolator``: R starts from the arithmetic mean of
the neighbouring secants and shrinks a pair of slopes only when it leaves the Fritsch–Carlson
monotonicity region (``alpha·(2α+β−3 + α+2β−3) < (2α+β−3)²``), while PCHIP starts from their
weighted harmonic mean (Fritsch–Butland) and sets slopes to 0 at local extrema; the two give
different curves between knots (``tests/test_normalise.py`` checks both facts against R).

:class:`CytoNorm` fits from in-memory control events (:meth:`CytoNorm.fit`) or from per-batch
summaries computed elsewhere (:func:`control_summary` + :meth:`CytoNorm.from_summaries`, as the
pipeline does one batch at a time). Values outside the range of a batch's control events are
extrapolated; :meth:`CytoNorm.transform_inplace` reports which.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

from .batch import marker_quantiles

__all__ = ["CytoNorm", "BatchNormalisation", "ControlSummary", "MonotoneSpline",
           "control_summary", "monotone_slopes", "quantile_levels", "MIN_CELLS"]

#: Fewest control events of a batch (or of a batch's cluster) for trustworthy quantiles (R's
#: ``minCells``); a cluster below it falls back to the batch's spline over all its events.
MIN_CELLS = 50
#: Cluster id of the spline fitted on all events of a batch (no clustering, or the fallback).
ALL = 0


def quantile_levels(n: int) -> np.ndarray:
    """The ``n`` quantile levels ``i / (n + 1)``, ``i = 1 … n`` (CytoNorm, 99 → every percent)."""
    return np.arange(1, n + 1) / (n + 1)


def monotone_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Knot slopes of R's ``splinefun(x, y, method = "monoH.FC")`` (x strictly increasing).

    Initial slopes are the secant at the ends and the mean of the two neighbouring secants
    inside; then, left to right, a pair ``(m_k, m_k+1)`` is set to 0 on a flat interval or
    rescaled onto the Fritsch–Carlson boundary when outside the monotonicity region (R's
    ``monoFC_mod``, in the same order, since each step sees the previous one's changes).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    secant = np.diff(y) / np.diff(x)
    m = np.concatenate([secant[:1], (secant[1:] + secant[:-1]) / 2, secant[-1:]])
    for k, s in enumerate(secant):
        if s == 0.0:
            m[k] = m[k + 1] = 0.0
            continue
        a, b = m[k] / s, m[k + 1] / s
        a2b3, ab23 = 2 * a + b - 3, a + 2 * b - 3
        if a2b3 > 0 and ab23 > 0 and a * (a2b3 + ab23) < a2b3 * a2b3:
            tau = 3 * s / np.sqrt(a * a + b * b)
            m[k], m[k + 1] = tau * a, tau * b
    return m


#: Buckets of the uniform grid that finds a value's knot interval in O(1) (a binary search
#: over 99 knots cost 10× more than the polynomial itself).
BUCKETS = 512


@dataclass(frozen=True)
class MonotoneSpline:
    """A cubic Hermite spline through ``(x, y)`` with slopes ``m``, extrapolated linearly.

    Attributes
    ----------
    x, y, m
        Knots (strictly increasing), values and slopes, shape ``(n_knots,)``; one knot
        means the identity function (not enough distinct quantiles).
    """

    x: np.ndarray
    y: np.ndarray
    m: np.ndarray

    @classmethod
    def fit(cls, x, y) -> MonotoneSpline:
        """R's ``splinefun(x, y, method = "monoH.FC")``: NaN pairs dropped, tied ``x`` merged
        with the mean of their ``y`` (``regularize.values``); fewer than two distinct ``x``
        give the identity (as CytoNorm does)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        ux, inverse = np.unique(x[ok], return_inverse=True)
        if ux.size < 2:
            return cls.identity()
        uy = np.bincount(inverse, weights=y[ok]) / np.bincount(inverse)
        return cls(ux, uy, monotone_slopes(ux, uy))

    @classmethod
    def identity(cls) -> MonotoneSpline:
        return cls(np.zeros(1), np.zeros(1), np.ones(1))

    @property
    def is_identity(self) -> bool:
        return self.x.size < 2

    def packed(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(coef, start, scale)`` for :func:`_apply`: per interval ``i`` the polynomial
        ``c0 + c1·s + c2·s² + c3·s³`` in ``s = (t − x_i)·c4`` (``c4 = 1 / h_i``), and the
        first interval of each of :data:`BUCKETS` equal buckets over ``[x_0, x_last]``."""
        x, y, m = self.x, self.y, self.m
        h, d = np.diff(x), np.diff(y)
        hm0, hm1 = h * m[:-1], h * m[1:]
        coef = np.column_stack([y[:-1], hm0, 3 * d - 2 * hm0 - hm1, hm0 + hm1 - 2 * d, 1 / h])
        scale = BUCKETS / (x[-1] - x[0])
        edges = x[0] + np.arange(BUCKETS) / scale
        start = np.clip(np.searchsorted(x, edges, side="right") - 1, 0, x.size - 2)
        return coef, start.astype(np.int32), float(scale)

    def __call__(self, values) -> np.ndarray:
        """Spline values (float64) at ``values``."""
        out = np.array(values, dtype=np.float64, copy=True)
        if not self.is_identity:
            flat = out.reshape(-1)
            _apply(flat, np.zeros(flat.size, np.int64), 0, self.x, self.y, self.m,
                   *self.packed(), -np.inf, np.inf, np.zeros(flat.size, bool))
        return out


@numba.njit(cache=True, nogil=True)
def _apply(column, which, s, x, y, m, coef, start, scale, lo, hi, outside):
    """Put the events ``e`` of ``column`` with ``which[e] == s`` through one spline, in place
    (R's ``splinefunH0``, linear extrapolation: ``i = findInterval(t, x)``; ``i = 0`` or
    ``i = n``, including ``t == x[n-1]``, use the end slope; inside, the interval comes from
    the value's bucket); flag in ``outside`` the values outside ``[lo, hi]``. NaN stays NaN.
    (One loop, no helper function: numba passes arrays to a non-inlined call by value, which
    cost 10× the arithmetic.)"""
    n = x.size
    x0 = x[0] if n else 0.0
    xn = x[n - 1] if n else 0.0
    last = start.size - 1
    for e in range(column.size):
        if which[e] != s:
            continue
        t = np.float64(column[e])
        if t < lo or t > hi:
            outside[e] = True
        if n < 2 or t != t:
            continue
        if t < x0:
            r = y[0] + m[0] * (t - x0)
        elif t >= xn:
            r = y[n - 1] + m[n - 1] * (t - xn)
        else:
            g = min(int((t - x0) * scale), last)
            i = start[g]
            while x[i + 1] <= t:
                i += 1
            u = (t - x[i]) * coef[i, 4]
            r = coef[i, 0] + u * (coef[i, 1] + u * (coef[i, 2] + u * coef[i, 3]))
        column[e] = r


@dataclass
class ControlSummary:
    """What one batch's control events tell CytoNorm, per cluster (index 0 = all events).

    Attributes
    ----------
    quantiles
        ``(n_clusters + 1, n_quantiles, n_markers)``; NaN where a cluster has fewer than
        ``min_cells`` events.
    counts
        ``(n_clusters + 1,)`` control events per cluster.
    low, high
        ``(n_clusters + 1, n_markers)`` smallest and largest control value (NaN if empty).
    """

    quantiles: np.ndarray
    counts: np.ndarray
    low: np.ndarray
    high: np.ndarray


def control_summary(X: np.ndarray, n_quantiles: int = 99, clusters: np.ndarray | None = None,
                    n_clusters: int = 0, min_cells: int = MIN_CELLS) -> ControlSummary:
    """Quantiles and range of a batch's pooled control events.

    Parameters
    ----------
    X
        ``(n_events, n_markers)`` control events on the transformed scale.
    n_quantiles
        Quantiles at :func:`quantile_levels` (R ``quantile`` type 7 = numpy ``linear``).
    clusters
        ``(n_events,)`` metacluster ``1 … n_clusters`` of every event, or None.
    """
    X = np.asarray(X, dtype=np.float64)
    levels = quantile_levels(n_quantiles)
    k = n_clusters + 1
    q = np.full((k, n_quantiles, X.shape[1]), np.nan)
    counts = np.zeros(k, dtype=np.int64)
    low = np.full((k, X.shape[1]), np.nan)
    high = np.full((k, X.shape[1]), np.nan)
    for c in range(k):
        sel = X if c == ALL else X[clusters == c]
        counts[c] = len(sel)
        if len(sel):
            low[c], high[c] = np.nanmin(sel, axis=0), np.nanmax(sel, axis=0)
        if len(sel) >= min_cells:  # = np.quantile(sel, levels, axis=0), by one sort
            q[c] = marker_quantiles(sel, levels, max_events=len(sel))
    return ControlSummary(q, counts, low, high)


class CytoNorm:
    """CytoNorm: quantile normalisation of batches on their bridge controls.

    Parameters
    ----------
    n_quantiles
        Quantiles per batch, marker (and cluster); 99 is CytoNorm's default.
    clustering
        ``None`` (one spline per batch and marker) or a fitted-or-not
        :class:`immunomon.clustering.FlowSOM` whose metaclusters, learnt on the pooled
        controls, get their own splines.
    clustering_markers
        Columns the clustering uses (default: every normalised marker).
    min_cells
        Fewest events of a batch's cluster for its own spline (else the batch's spline
        over all events is used for that cluster).
    max_train
        Events drawn (evenly over batches, seeded by the FlowSOM's ``random_state``) to
        train the clustering.

    Attributes
    ----------
    batches_, markers_
        Batch labels and markers, in the order of the arrays below.
    quantiles_
        ``(n_batches, n_clusters + 1, n_quantiles, n_markers)`` control quantiles.
    goal_
        ``(n_clusters + 1, n_quantiles, n_markers)`` mean of ``quantiles_`` over the batches.
    counts_, low_, high_
        Control events, smallest and largest control values per batch and cluster.
    """

    def __init__(self, n_quantiles: int = 99, clustering=None,
                 clustering_markers: Sequence[str] | None = None, min_cells: int = MIN_CELLS,
                 max_train: int = 100_000):
        self.n_quantiles = int(n_quantiles)
        self.clustering = clustering
        self.clustering_markers = list(clustering_markers) if clustering_markers else None
        self.min_cells = int(min_cells)
        self.max_train = int(max_train)

    # ------------------------------------------------------------------ fitting
    @property
    def n_clusters(self) -> int:
        """Metaclusters of the clustering (0 without)."""
        return 0 if self.clustering is None else int(self.clustering.n_metaclusters)

    def cluster_columns(self, markers: Sequence[str]) -> list[int]:
        """Indexes into ``markers`` of the clustering markers."""
        names = self.clustering_markers or list(markers)
        missing = [m for m in names if m not in markers]
        if missing:
            raise ValueError(f"CytoNorm: clustering markers {missing} are not normalised markers")
        return [list(markers).index(m) for m in names]

    def clusters_of(self, X: np.ndarray, markers: Sequence[str]) -> np.ndarray | None:
        """Metacluster (1 … k) of every event of ``X`` (None without clustering)."""
        if self.clustering is None:
            return None
        cols = self.cluster_columns(markers)
        return self.clustering.predict(np.asarray(X, dtype=np.float64)[:, cols])

    def fit(self, controls: Mapping[str, np.ndarray], markers: Sequence[str]) -> CytoNorm:
        """Fit on in-memory control events.

        Parameters
        ----------
        controls
            Batch label → ``(n_events, n_markers)`` control events of that batch (pooled
            over its control files), transformed scale, columns in ``markers`` order.
        markers
            Names of the columns (the normalised markers).
        """
        markers = list(markers)
        wrong = [b for b, X in controls.items() if np.shape(X)[1:] != (len(markers),)]
        if wrong:
            raise ValueError(f"CytoNorm.fit: the controls of batch(es) {wrong} do not have one "
                             f"column per marker ({len(markers)})")
        if self.clustering is not None:
            self.fit_clustering(controls, markers)
        summaries = {}
        for batch, X in controls.items():
            summaries[batch] = control_summary(X, self.n_quantiles, self.clusters_of(X, markers),
                                               self.n_clusters, self.min_cells)
        return self.from_summaries(summaries, markers)

    def fit_clustering(self, controls: Mapping[str, np.ndarray], markers: Sequence[str]) -> None:
        """Train the clustering on up to ``max_train`` control events, evenly over batches."""
        per = self.max_train // max(1, len(controls))
        self.clustering.fit(np.concatenate([
            self.training_events(X, markers, per, i) for i, (_, X) in
            enumerate(sorted(controls.items(), key=lambda kv: str(kv[0])))]))

    def training_events(self, X: np.ndarray, markers: Sequence[str], n: int,
                        index: int) -> np.ndarray:
        """Up to ``n`` events of one batch's controls ``X`` (the ``index``-th batch in label
        order), clustering columns only, drawn without replacement from a stream seeded by
        the clustering's ``random_state`` and ``index``."""
        seed = getattr(self.clustering, "random_state", 0) or 0
        rng = np.random.default_rng([int(seed), int(index)])
        idx = np.sort(rng.choice(len(X), min(max(n, 1), len(X)), replace=False))
        return np.asarray(X, dtype=np.float64)[np.ix_(idx, self.cluster_columns(markers))]

    def from_summaries(self, summaries: Mapping[str, ControlSummary],
                       markers: Sequence[str]) -> CytoNorm:
        """Fit from per-batch :func:`control_summary` results (clustering already trained)."""
        self.batches_ = [str(b) for b in summaries]
        self.markers_ = list(markers)
        s = list(summaries.values())
        self.quantiles_ = np.stack([x.quantiles for x in s])
        self.counts_ = np.stack([x.counts for x in s])
        self.low_ = np.stack([x.low for x in s])
        self.high_ = np.stack([x.high for x in s])
        with warnings.catch_warnings():  # a cluster absent from every batch: NaN goal
            warnings.simplefilter("ignore", RuntimeWarning)
            self.goal_ = np.nanmean(self.quantiles_, axis=0)
        self._build()
        return self

    def _build(self) -> None:
        """One spline per batch × cluster × marker, packed for :func:`_apply`; a cluster
        without its own quantiles (too few events, or no goal) uses the batch's spline."""
        nb, nc, nq, nm = self.quantiles_.shape
        shape = (nb, nm, nc)  # [b, j] slices are contiguous for _apply
        self._x, self._y, self._m = (np.zeros(shape + (nq,)) for _ in range(3))
        self._coef = np.zeros(shape + (max(nq - 1, 1), 5))
        self._start = np.zeros(shape + (BUCKETS,), dtype=np.int32)
        self._scale = np.zeros(shape)
        self._nk = np.zeros(shape, dtype=np.int64)
        self.fallback_ = np.zeros((nb, nc), dtype=bool)
        for b in range(nb):
            for c in range(nc):
                src = c
                if c != ALL and (np.isnan(self.quantiles_[b, c]).any()
                                 or np.isnan(self.goal_[c]).any()):
                    src, self.fallback_[b, c] = ALL, True
                for j in range(nm):
                    spl = MonotoneSpline.fit(self.quantiles_[b, src, :, j], self.goal_[src, :, j])
                    if spl.is_identity:
                        continue
                    k = spl.x.size
                    self._nk[b, j, c] = k
                    self._x[b, j, c, :k], self._y[b, j, c, :k] = spl.x, spl.y
                    self._m[b, j, c, :k] = spl.m
                    coef, start, scale = spl.packed()
                    self._coef[b, j, c, :k - 1], self._start[b, j, c] = coef, start
                    self._scale[b, j, c] = scale

    # ------------------------------------------------------------------ applying
    def batch_index(self, batch) -> int:
        """Position of ``batch`` in :attr:`batches_` (``KeyError`` naming the known ones)."""
        try:
            return self.batches_.index(str(batch))
        except ValueError:
            raise KeyError(f"batch {batch!r} has no fitted normalisation (batches with bridge "
                           f"controls: {', '.join(self.batches_)})") from None

    def spline(self, batch, marker: str, cluster: int = ALL) -> MonotoneSpline:
        """The fitted spline of one batch, marker and cluster."""
        b, j = self.batch_index(batch), self.markers_.index(marker)
        k = self._nk[b, j, cluster]
        if k == 0:
            return MonotoneSpline.identity()
        return MonotoneSpline(self._x[b, j, cluster, :k], self._y[b, j, cluster, :k],
                              self._m[b, j, cluster, :k])

    def transform_inplace(self, columns: Sequence[np.ndarray], batch,
                          clusters: np.ndarray | None = None) -> np.ndarray:
        """Normalise float32 columns in place (one per marker of :attr:`markers_`).

        Parameters
        ----------
        columns
            ``n_markers`` contiguous float32 (or float64) arrays of the same length
            ``n_events`` (e.g. the columns of a Fortran-ordered events array), transformed
            scale; computed in float64.
        batch
            The batch the events were acquired in.
        clusters
            Metacluster of every event (:meth:`clusters_of` on the *unnormalised* values);
            computed here when None and the model is clustered.

        Returns
        -------
        ``(n_events, n_markers)`` bool: the value lay outside the range of the batch's
        control events (of its cluster) and was extrapolated.
        """
        b = self.batch_index(batch)
        n = len(columns[0]) if len(columns) else 0
        if clusters is None and self.clustering is not None:
            clusters = self.clusters_of(np.column_stack(columns), self.markers_)
        which = (np.zeros(n, dtype=np.int64) if clusters is None
                 else np.asarray(clusters, dtype=np.int64))
        outside = np.zeros((n, len(columns)), dtype=bool, order="F")
        for j, col in enumerate(columns):
            for c in range(self._nk.shape[2]):
                src = ALL if self.fallback_[b, c] else c
                k = self._nk[b, j, c]
                _apply(col, which, c, self._x[b, j, c, :k], self._y[b, j, c, :k],
                       self._m[b, j, c, :k], self._coef[b, j, c], self._start[b, j, c],
                       self._scale[b, j, c], self.low_[b, src, j], self.high_[b, src, j],
                       outside[:, j])
        return outside

    def transform(self, X: np.ndarray, batch) -> np.ndarray:
        """Normalised copy (float64) of ``X`` ``(n_events, n_markers)`` from ``batch``."""
        out = np.array(X, dtype=np.float64, order="F", copy=True)
        self.transform_inplace([out[:, j] for j in range(out.shape[1])], batch)
        return out

    def for_batch(self, batch) -> BatchNormalisation:
        """This model bound to one batch, as the ``normalise`` step of
        :func:`immunomon.pipeline.prepare.prepare_events`."""
        self.batch_index(batch)
        return BatchNormalisation(self, str(batch))

    # ------------------------------------------------------------------ reporting
    def to_table(self) -> pd.DataFrame:
        """The fitted splines as the ``normalisation`` table: one row per batch × cluster ×
        marker × quantile level ``p`` with the batch's control quantile (``batch_quantile``),
        the goal quantile, the cluster's control events and range, and ``fallback`` (the
        cluster uses the batch's spline)."""
        nb, nc, nq, nm = self.quantiles_.shape
        b, c, q, j = np.meshgrid(np.arange(nb), np.arange(nc), np.arange(nq), np.arange(nm),
                                 indexing="ij")
        b, c, q, j = b.ravel(), c.ravel(), q.ravel(), j.ravel()
        return pd.DataFrame({
            "batch": np.array(self.batches_, dtype=object)[b],
            "cluster": c.astype(np.int64),
            "marker": np.array(self.markers_, dtype=object)[j],
            "p": quantile_levels(nq)[q],
            "batch_quantile": self.quantiles_[b, c, q, j],
            "goal_quantile": self.goal_[c, q, j],
            "control_events": self.counts_[b, c],
            "control_min": self.low_[b, c, j],
            "control_max": self.high_[b, c, j],
            "fallback": self.fallback_[b, c],
        })


class BatchNormalisation:
    """A fitted :class:`CytoNorm` applied to the files of one batch, keeping what the batch
    diagnostics need: the values before normalisation and the extrapolated events.

    ``norm(events, columns)`` normalises, in place, the columns of a Fortran-ordered float32
    ``(n_events, n_columns)`` array named ``columns`` that are markers of the model (others
    untouched); :meth:`kept` then gives, for the events kept by QC, ``before`` (DataFrame of
    the normalised markers' values before normalisation), ``outside`` (marker → share
    outside the batch's control range) and ``clusters`` (the metacluster 1 … k of every
    event with a clustered model, else None).
    """

    def __init__(self, model: CytoNorm, batch: str):
        self.model, self.batch = model, batch
        self.before = self.outside = self.clusters = None

    def __call__(self, events: np.ndarray, columns: Sequence[str]) -> None:
        markers = self.model.markers_
        idx = [list(columns).index(m) for m in markers]
        self.before = np.array(events[:, idx], order="F")
        self.clusters = self.model.clusters_of(self.before, markers)
        self.outside = self.model.transform_inplace([events[:, j] for j in idx], self.batch,
                                                    self.clusters)

    def kept(self, keep: np.ndarray) -> dict:
        markers = self.model.markers_
        outside = self.outside[keep]
        share = outside.mean(axis=0) if len(outside) else np.zeros(len(markers))
        return {"before": pd.DataFrame(self.before[keep], columns=markers),
                "outside": dict(zip(markers, share.tolist())),
                "clusters": None if self.clusters is None else self.clusters[keep]}

