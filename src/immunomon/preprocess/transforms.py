"""Scale transforms for cytometry data (Gating-ML 2.0 definitions, plus FlowJo's).

Every transform is a small object with ``transform(x)`` and ``inverse_transform(x)`` on
numpy arrays of any shape (element-wise, float64 out). Input ``x`` is in linear
instrument units (after compensation); parameters are stated with their units:

============================  ==========================================================
:class:`LinearTransform`      Gating-ML ``flin``: ``(x + A) / (T + A)``
:class:`LogTransform`         Gating-ML ``flog``: ``log10(x / T) / M + 1``
:class:`AsinhTransform`       Gating-ML ``fasinh``
:class:`ArcsinhTransform`     ``asinh(x / cofactor)`` (the usual cytometry arcsinh)
:class:`LogicleTransform`     Gating-ML ``logicle`` (Moore & Parks 2012; flowutils C code)
:class:`HyperlogTransform`    Gating-ML ``hyperlog`` (Bagwell 2005; flowutils C code)
:class:`FlowJoBiexTransform`  FlowJo 10 ``biex`` (lookup table, FlowJo's algorithm)
:class:`FlowJoLogTransform`   FlowJo 10 ``log``: ``log10(max(x, offset) / offset) / decades``
============================  ==========================================================

:func:`from_spec` builds one from a ``{"type": ..., ...}`` mapping (study.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
from flowutils import transforms as _fu
from scipy.optimize import brentq

from immunomon.errors import UserError

__all__ = [
    "Transform",
    "LinearTransform",
    "LogTransform",
    "AsinhTransform",
    "ArcsinhTransform",
    "LogicleTransform",
    "HyperlogTransform",
    "FlowJoBiexTransform",
    "FlowJoLogTransform",
    "from_spec",
]

LN10 = np.log(10.0)


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


class Transform:
    """Base class: element-wise ``transform`` / ``inverse_transform`` (float64 out)."""

    def transform(self, x) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform_inplace(self, column: np.ndarray) -> None:
        """Overwrite a 1-D float ``column`` (e.g. one channel of a Fortran-ordered float32
        events array) with its transform, rounded to the column's dtype."""
        column[:] = self.transform(column)

    def inverse_transform(self, y) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


@dataclass(frozen=True)
class LinearTransform(Transform):
    """Gating-ML ``flin(x, T, A) = (x + A) / (T + A)``.

    ``T`` top of scale and ``A`` offset below zero, both in data units; maps ``[-A, T]`` to
    ``[0, 1]``.
    """

    T: float = 262144.0
    A: float = 0.0

    def __post_init__(self):
        _check(self.T > 0 and -self.A < self.T, f"linear transform: need T > 0 and -A < T (T={self.T}, A={self.A})")

    def transform(self, x):
        return (_arr(x) + self.A) / (self.T + self.A)

    def inverse_transform(self, y):
        return _arr(y) * (self.T + self.A) - self.A


@dataclass(frozen=True)
class LogTransform(Transform):
    """Gating-ML ``flog(x, T, M) = log10(x / T) / M + 1``.

    ``T`` top of scale (data units), ``M`` decades shown; ``x <= 0`` gives ``nan``/``-inf``.
    """

    T: float = 262144.0
    M: float = 4.5

    def __post_init__(self):
        _check(self.T > 0 and self.M > 0, f"log transform: need T > 0 and M > 0 (T={self.T}, M={self.M})")

    def transform(self, x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(_arr(x) / self.T) / self.M + 1.0

    def inverse_transform(self, y):
        return self.T * 10.0 ** ((_arr(y) - 1.0) * self.M)


@dataclass(frozen=True)
class AsinhTransform(Transform):
    """Gating-ML ``fasinh(x, T, M, A) = (asinh(x sinh(M ln10) / T) + A ln10) / ((M + A) ln10)``.

    ``T`` top of scale (data units), ``M`` positive decades, ``A`` extra negative decades.
    """

    T: float = 262144.0
    M: float = 4.5
    A: float = 0.0

    def __post_init__(self):
        _check(self.T > 0 and self.M > 0 and 0 <= self.A <= self.M,
               f"asinh transform: need T > 0, M > 0, 0 <= A <= M (T={self.T}, M={self.M}, A={self.A})")

    def transform(self, x):
        return (np.arcsinh(_arr(x) * np.sinh(self.M * LN10) / self.T) + self.A * LN10) / ((self.M + self.A) * LN10)

    def inverse_transform(self, y):
        return self.T * np.sinh(_arr(y) * (self.M + self.A) * LN10 - self.A * LN10) / np.sinh(self.M * LN10)


@dataclass(frozen=True)
class ArcsinhTransform(Transform):
    """``asinh(x / cofactor)``; ``cofactor`` in data units (e.g. 150 for conventional flow,
    5 for mass cytometry). Output in natural-log-like units (no upper bound)."""

    cofactor: float = 150.0

    def __post_init__(self):
        _check(self.cofactor > 0, f"arcsinh transform: cofactor must be > 0, got {self.cofactor}")

    def transform(self, x):
        return np.arcsinh(_arr(x) / self.cofactor)

    def transform_inplace(self, column: np.ndarray) -> None:
        """In place; a contiguous float32 column goes through :func:`_asinh_scaled` (about 6×
        numpy's float32 ``arcsinh`` on one core, within 4 float32 ulps of the exact value;
        numpy's: 2), anything else through :meth:`transform`."""
        if column.ndim != 1 or not column.flags.c_contiguous or column.dtype != np.float32:
            return super().transform_inplace(column)
        _asinh_scaled(column, np.float32(1.0 / self.cofactor))

    def inverse_transform(self, y):
        return np.sinh(_arr(y)) * self.cofactor


# Float32 asinh(y) = sign(y) · log(t), t = 1 + u, u = |y| + y² / (1 + sqrt(y² + 1)) (no
# cancellation for small y). log(t) = e · ln 2 + log(m) for t = 2^e · m, m in
# [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(s) with s = (m - 1) / (m + 1), or s = u / (2 + u)
# when e = 0 (exact for small y), |s| <= 0.172, by its series to s^9 (truncation < 3e-9).
# Exponent and mantissa are read from the float32 bits with integer operations, so every
# loop is SIMD-vectorised (numpy's and libm's asinhf/logf are scalar calls): the arcsinh of
# a 50,000-event file takes about 1.5 ms instead of 9 (benchmarks/bench_phenotype.py).
_F = np.float32
_MANTISSA = np.int32(0x007FFFFF)
_EXPONENT_ONE = np.int32(0x3F800000)  # bits of 1.0
_MAGIC = np.int32(0x4B000000)  # bits of 2^23: (bits | k) is the float 2^23 + k
_EXPONENT_OFFSET = _F(2.0**23 + 127)
_LN2, _SQRT2, _HUGE = _F(np.log(2.0)), _F(np.sqrt(2.0)), _F(1e18)  # |y| >= _HUGE: t = |y|, + ln 2


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _t_step(column, scale, t, u):  # pragma: no cover - compiled
    for r in range(column.size):
        a = abs(column[r] * scale)
        u[r] = a + a * a / (_F(1.0) + np.sqrt(a * a + _F(1.0)))
        t[r] = _F(1.0) + u[r] if a < _HUGE else a


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _split_step(t, mantissa, exponent):  # pragma: no cover - compiled
    tb, mb, eb = t.view(np.int32), mantissa.view(np.int32), exponent.view(np.int32)
    for r in range(t.size):
        mb[r] = (tb[r] & _MANTISSA) | _EXPONENT_ONE
        eb[r] = (tb[r] >> 23) | _MAGIC


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _log_step(column, scale, mantissa, exponent, u):  # pragma: no cover - compiled
    for r in range(column.size):
        y = column[r] * scale
        e = exponent[r] - _EXPONENT_OFFSET
        m = mantissa[r]
        big = m > _SQRT2
        m = m * _F(0.5) if big else m
        e = e + _F(1.0) if big else e
        s = u[r] / (_F(2.0) + u[r]) if e == _F(0.0) else (m - _F(1.0)) / (m + _F(1.0))
        s2 = s * s
        log_t = e * _LN2 + _F(2.0) * s * (_F(1.0) + s2 * (_F(1 / 3) + s2 * (_F(1 / 5) + s2 * (
            _F(1 / 7) + s2 * _F(1 / 9)))))
        log_t = log_t + _LN2 if abs(y) >= _HUGE else log_t
        value = log_t if y >= _F(0.0) else -log_t
        column[r] = value if abs(y) < _F(np.inf) else y  # inf and nan pass through


@numba.njit(cache=True, nogil=True)
def _asinh_scaled(column, scale):  # pragma: no cover - compiled
    """In place: ``column[:] = asinh(column * scale)`` for a float32 column, in blocks of
    2,048 values."""
    block = 2048
    t, u = np.empty(block, dtype=np.float32), np.empty(block, dtype=np.float32)
    mantissa, exponent = np.empty(block, dtype=np.float32), np.empty(block, dtype=np.float32)
    for r0 in range(0, column.size, block):
        part = column[r0 : min(r0 + block, column.size)]
        _t_step(part, scale, t, u)
        _split_step(t[: part.size], mantissa, exponent)
        _log_step(part, scale, mantissa, exponent, u)


@dataclass(frozen=True)
class LogicleTransform(Transform):
    """Gating-ML ``logicle(x, T, W, M, A)``, output ``[0, 1]`` for ``x`` in ``[-…, T]``.

    ``T`` top of scale (data units), ``W`` linearisation width (decades), ``M`` total
    decades, ``A`` extra negative decades.
    """

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0

    def __post_init__(self):
        _check(self.T > 0 and self.M > 0 and 0 <= self.W <= self.M / 2 and -self.W <= self.A <= self.M - 2 * self.W,
               f"logicle transform: parameters out of range (T={self.T}, W={self.W}, M={self.M}, A={self.A})")

    def transform(self, x):
        x = _arr(x)
        return _fu.logicle(x.ravel(), None, t=self.T, m=self.M, w=self.W, a=self.A).reshape(x.shape)

    def inverse_transform(self, y):
        y = _arr(y)
        return _fu.logicle_inverse(y.ravel(), None, t=self.T, m=self.M, w=self.W, a=self.A).reshape(y.shape)


@dataclass(frozen=True)
class HyperlogTransform(Transform):
    """Gating-ML ``hyperlog(x, T, W, M, A)``; parameters as :class:`LogicleTransform`."""

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0

    def __post_init__(self):
        _check(self.T > 0 and self.M > 0 and 0 < self.W <= self.M / 2 and -self.W <= self.A <= self.M - 2 * self.W,
               f"hyperlog transform: parameters out of range (T={self.T}, W={self.W}, M={self.M}, A={self.A})")

    def transform(self, x):
        x = _arr(x)
        return _fu.hyperlog(x.ravel(), None, t=self.T, m=self.M, w=self.W, a=self.A).reshape(x.shape)

    def inverse_transform(self, y):
        y = _arr(y)
        return _fu.hyperlog_inverse(y.ravel(), None, t=self.T, m=self.M, w=self.W, a=self.A).reshape(y.shape)


@dataclass(frozen=True)
class FlowJoLogTransform(Transform):
    """FlowJo 10 ``log``: ``log10(max(x, offset) / offset) / decades`` (``offset`` in data
    units, ``decades`` > 0); output 0 at ``offset``, 1 at ``offset * 10**decades``."""

    offset: float = 1.0
    decades: float = 4.5

    def __post_init__(self):
        _check(self.offset > 0 and self.decades > 0,
               f"FlowJo log transform: need offset > 0 and decades > 0 (offset={self.offset}, decades={self.decades})")

    def transform(self, x):
        return np.log10(np.maximum(_arr(x), self.offset) / self.offset) / self.decades

    def inverse_transform(self, y):
        return self.offset * 10.0 ** (_arr(y) * self.decades)


def _biex_negative_range(b: float, w: float) -> float:
    """Root ``d`` in ``(0, b]`` of ``2 ln(d / b) + w (d + b) = 0`` (``b`` if ``w == 0``)."""
    if w == 0:
        return b
    f = lambda d: 2.0 * np.log(d / b) + w * (d + b)  # noqa: E731
    return brentq(f, 1e-300, b, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)


@dataclass(frozen=True)
class FlowJoBiexTransform(Transform):
    """FlowJo 10 ``biex`` scale, from FlowJo's own lookup-table algorithm.

    Parameters
    ----------
    negative
        Extra negative decades (FlowJo "Negative", usually 0–1).
    width
        Width basis (FlowJo "Width", negative, e.g. -10 … -1000): more negative = wider
        linear region around zero.
    positive
        Positive decades (FlowJo "Positive", e.g. 4.42).
    max_value
        Top of scale in data units (FlowJo ``maxRange``, e.g. 262144).
    channels
        Output resolution: data are mapped to ``[0, channels]`` by linear interpolation in a
        table of ``channels + 1`` points (values beyond the table are clamped).
    """

    negative: float = 0.0
    width: float = -10.0
    positive: float = 4.418540
    max_value: float = 262144.000029
    channels: int = 4096
    _table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _check(self.width < 0 and self.positive > 0 and self.max_value > 0 and self.channels >= 2,
               f"FlowJo biex: need width < 0, positive > 0, max_value > 0 (got width={self.width}, "
               f"positive={self.positive}, max_value={self.max_value})")
        object.__setattr__(self, "_table", self._make_table())

    def _make_table(self) -> np.ndarray:
        n_ch = int(self.channels)
        w_dec = np.log10(-self.width)  # decades of the linear region
        decades = self.positive - w_dec / 2
        extra = max(self.negative, 0.0) + w_dec / 2
        zero = int(min(int(extra * n_ch / (extra + decades)), n_ch / 2))  # channel of data value 0
        if zero > 0:
            decades = extra * n_ch / zero
        w = w_dec / (2 * decades)
        pos_range = LN10 * decades
        neg_range = _biex_negative_range(pos_range, w)
        lowest = self.max_value / np.exp(pos_range)
        n = n_ch + 1
        frac = np.arange(n) / n
        up = np.exp(frac * pos_range)
        down = np.exp(-frac * neg_range) * np.exp((pos_range + neg_range) * (w + extra / decades))
        diff = up - down
        values = lowest * (diff - diff[zero])
        values[:zero] = -values[2 * zero - np.arange(zero)]  # mirror below zero
        return values

    def transform(self, x):
        return np.interp(_arr(x), self._table, np.arange(self._table.size, dtype=np.float64))

    def inverse_transform(self, y):
        return np.interp(_arr(y), np.arange(self._table.size, dtype=np.float64), self._table)


_SPECS = {
    "linear": (LinearTransform, {"T": "T", "t": "T", "A": "A", "a": "A"}),
    "log": (LogTransform, {"T": "T", "t": "T", "M": "M", "m": "M"}),
    "asinh": (AsinhTransform, {"T": "T", "t": "T", "M": "M", "m": "M", "A": "A", "a": "A"}),
    "arcsinh": (ArcsinhTransform, {"cofactor": "cofactor"}),
    "logicle": (LogicleTransform, {k: k.upper() for k in "TWMAtwma"}),
    "hyperlog": (HyperlogTransform, {k: k.upper() for k in "TWMAtwma"}),
    "biex": (FlowJoBiexTransform, {k: k for k in ("negative", "width", "positive", "max_value", "channels")}),
    "flowjo_log": (FlowJoLogTransform, {"offset": "offset", "decades": "decades"}),
}


def from_spec(spec: dict | None) -> Transform | None:
    """Build a transform from a mapping such as ``{"type": "arcsinh", "cofactor": 150}``.

    ``None`` or ``{"type": "none"}`` gives ``None``; unknown types/parameters raise
    :class:`~immunomon.errors.UserError`.
    """
    if spec is None:
        return None
    spec = dict(spec)
    kind = str(spec.pop("type", "")).lower()
    if kind in ("none", "identity"):
        return None
    if kind not in _SPECS:
        raise UserError(f"transform type {kind!r} is not one of {sorted(_SPECS)} or 'none'")
    cls, names = _SPECS[kind]
    unknown = [k for k in spec if k not in names]
    if unknown:
        raise UserError(f"transform {kind!r}: unknown parameter(s) {unknown}; allowed: {sorted(set(names.values()))}")
    try:
        return cls(**{names[k]: float(v) if names[k] != "channels" else int(v) for k, v in spec.items()})
    except (TypeError, ValueError) as err:
        raise UserError(f"transform {kind!r}: {err}") from None
