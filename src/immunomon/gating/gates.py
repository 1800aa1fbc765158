"""Gate types and gating hierarchies (the Gating-ML 2.0 model, vectorised over events).

A gate works on *dimensions*: named 1-D arrays of event values. Each :class:`Dimension`
names a data column and may carry a compensation reference (``"uncompensated"``, ``"FCS"``
or the id of a matrix) and a transform (any object with ``transform(x)``, see
:mod:`immunomon.preprocess.transforms`). A :class:`RatioDimension` is Gating-ML's
``fratio``: ``A * (x - B) / (y - C)`` of two columns.

Two levels of API:

* ``gate.evaluate(data) -> bool ndarray`` — ``data`` maps dimension name to a 1-D float
  array (a pandas DataFrame or a dict) *already* compensated/transformed as the gate needs;
  the parent is ignored. For a :class:`BooleanGate` ``data`` maps the referenced gate ids to
  their bool memberships; a :class:`QuadrantGate` returns one mask per quadrant
  (:meth:`QuadrantGate.evaluate_all`), its :meth:`~QuadrantGate.evaluate` takes a quadrant id.
* :class:`GatingStrategy` holds gates with parents, transforms and compensation matrices,
  prepares every dimension from raw events (compensate → ratio → transform) and returns a
  :class:`GatingResult` with the membership of every gate including its ancestors.

Interval conventions follow Gating-ML 2.0: ranges are ``min <= x < max``; polygons use the
even-odd rule; ellipsoids include ``d² <= distance_square``; quadrant dividers are
half-open ``[v_i, v_{i+1})``. ``compensation-ref="FCS"`` uses the spillover passed to
:meth:`GatingStrategy.apply`; a file without one is used uncompensated (as the ISAC
compliance cases expect). Values are compared in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numba
import numpy as np
import pandas as pd

from immunomon.errors import UserError
from immunomon.events import frame_columns

__all__ = [
    "Dimension",
    "RatioDimension",
    "Gate",
    "RangeGate",
    "RectangleGate",
    "PolygonGate",
    "EllipseGate",
    "EllipsoidGate",
    "Divider",
    "Quadrant",
    "QuadrantGate",
    "BooleanGate",
    "GatingStrategy",
    "GatingResult",
    "points_in_polygon",
]


# ----------------------------------------------------------------------------- dimensions
@dataclass(frozen=True)
class Dimension:
    """One gate axis.

    Parameters
    ----------
    name
        Column name in the event data (FCS ``$PnN`` or marker name).
    compensation
        ``None``/``"uncompensated"`` for raw values, ``"FCS"`` for the file's own spillover,
        or the id of a matrix registered in the :class:`GatingStrategy`.
    transform
        ``None`` or an object with ``transform(x)``; a ``str`` is resolved by id in the
        :class:`GatingStrategy`.
    """

    name: str
    compensation: str | None = None
    transform: Any = None

    @property
    def key(self) -> str:
        """Name under which :meth:`Gate.evaluate` looks up this dimension's values."""
        return self.name

    def raw_names(self) -> list[str]:
        """Data columns this dimension reads."""
        return [self.name]

    def values(self, data: Mapping[str, Any]) -> np.ndarray:
        """Values of this dimension from a prepared mapping, shape ``(n_events,)``."""
        try:
            return np.asarray(data[self.key])
        except KeyError:
            raise UserError(f"gate dimension {self.key!r} is not in the data") from None


@dataclass(frozen=True)
class RatioDimension(Dimension):
    """Gating-ML ``fratio``: ``A * (numerator - B) / (denominator - C)``.

    ``name`` is the ratio's id (the key in prepared data); if the ratio itself is absent
    from ``data``, :meth:`values` computes it from the two columns.
    """

    numerator: str = ""
    denominator: str = ""
    A: float = 1.0
    B: float = 0.0
    C: float = 0.0

    def raw_names(self) -> list[str]:
        return [self.numerator, self.denominator]

    def ratio(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The ratio of two arrays (``inf``/``nan`` where the denominator is ``C``)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.A * (np.asarray(x, dtype=np.float64) - self.B) / (
                np.asarray(y, dtype=np.float64) - self.C
            )

    def values(self, data: Mapping[str, Any]) -> np.ndarray:
        if self.name in data:
            return np.asarray(data[self.name])
        try:
            return self.ratio(data[self.numerator], data[self.denominator])
        except KeyError as err:
            raise UserError(f"ratio {self.name!r}: column {err.args[0]!r} is not in the data") from None


def _dim(d: Dimension | str) -> Dimension:
    return d if isinstance(d, Dimension) else Dimension(str(d))


# ----------------------------------------------------------------------------- gates
@dataclass
class Gate:
    """Base class: an id, an optional parent gate id and dimensions."""

    gate_id: str
    dimensions: list[Dimension] = field(default_factory=list)
    parent: str | None = None

    def __post_init__(self) -> None:
        self.dimensions = [_dim(d) for d in self.dimensions]

    def evaluate(self, data: Mapping[str, Any]) -> np.ndarray:  # pragma: no cover - abstract
        """Bool membership, shape ``(n_events,)``, ignoring the parent."""
        raise NotImplementedError

    @property
    def population_ids(self) -> list[str]:
        """Ids of the populations this gate defines (one, except for quadrant gates)."""
        return [self.gate_id]


@dataclass
class RectangleGate(Gate):
    """Hyper-rectangle: ``min_i <= x_i < max_i`` on every dimension; ``None`` = unbounded.

    Parameters
    ----------
    gate_id, dimensions, parent
        See :class:`Gate`.
    bounds
        One ``(min, max)`` per dimension, in the (transformed) units of that dimension.
    """

    bounds: list[tuple[float | None, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.bounds) != len(self.dimensions):
            raise UserError(f"gate {self.gate_id!r}: {len(self.dimensions)} dimensions but {len(self.bounds)} bounds")
        for dim, (lo, hi) in zip(self.dimensions, self.bounds):
            if lo is None and hi is None:
                raise UserError(f"gate {self.gate_id!r}: dimension {dim.name!r} has neither min nor max")

    def evaluate(self, data: Mapping[str, Any]) -> np.ndarray:
        mask = None
        for dim, (lo, hi) in zip(self.dimensions, self.bounds):
            x = dim.values(data)
            m = np.ones(x.shape, dtype=bool) if mask is None else mask
            if lo is not None:  # np.float64 bounds: compared in float64 even for float32 data
                m = m & (x >= np.float64(lo))
            if hi is not None:
                m = m & (x < np.float64(hi))
            mask = m
        return mask


def RangeGate(gate_id: str, dimension: Dimension | str, min: float | None = None,
              max: float | None = None, parent: str | None = None) -> RectangleGate:
    """A one-dimensional :class:`RectangleGate`: ``min <= x < max``."""
    return RectangleGate(gate_id, [dimension], parent, bounds=[(min, max)])


def points_in_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test (ray casting towards +x, Gating-ML 2.0), compiled
    with numba; coordinates are compared in float64.

    Parameters
    ----------
    x, y
        Event coordinates, shape ``(n_events,)`` (float32 or float64, strided or not).
    vertices
        Polygon vertices, shape ``(n_vertices, 2)``; the polygon is closed implicitly.

    Returns
    -------
    Bool array, shape ``(n_events,)``.
    """
    x = np.asarray(x)  # strided columns (DataFrame blocks) are read in place
    y = np.asarray(y)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if y.dtype not in (np.float32, np.float64):
        y = y.astype(np.float64)
    v = np.asarray(vertices, dtype=np.float64)
    return _points_in_polygon(x, y, np.ascontiguousarray(v[:, 0]), np.ascontiguousarray(v[:, 1]))


#: Events per block of the polygon kernel: their coordinates and crossing counts stay in L1.
_POLYGON_BLOCK = 512


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _points_in_polygon(x, y, vx, vy):  # pragma: no cover - compiled
    """Blocks of events; for each edge, one branch-free (SIMD) pass over the block flips the
    parity of the events whose ray crosses it. The crossing test is flowutils' and
    Gating-ML's expression, evaluated in the same order (same rounding at the edges); a
    horizontal edge never counts, so its division by zero (inf/nan) is masked."""
    n, m = x.size, vx.size
    inside = np.empty(n, dtype=np.bool_)
    px = np.empty(_POLYGON_BLOCK)
    py = np.empty(_POLYGON_BLOCK)
    odd = np.empty(_POLYGON_BLOCK, dtype=np.uint8)
    for start in range(0, n, _POLYGON_BLOCK):
        size = min(n - start, _POLYGON_BLOCK)
        for i in range(size):
            px[i] = x[start + i]
            py[i] = y[start + i]
            odd[i] = 0
        xj, yj = vx[m - 1], vy[m - 1]
        for k in range(m):
            xk, yk = vx[k], vy[k]
            for i in range(size):
                crosses = (yk > py[i]) != (yj > py[i])
                left = px[i] < (xj - xk) * (py[i] - yk) / (yj - yk) + xk
                odd[i] ^= np.uint8(crosses & left)
            xj, yj = xk, yk
        for i in range(size):
            inside[start + i] = odd[i] != 0
    return inside


@dataclass
class PolygonGate(Gate):
    """Two-dimensional polygon, even-odd rule (Gating-ML 2.0).

    ``vertices`` has shape ``(n_vertices, 2)`` in the units of the two dimensions.
    """

    vertices: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 2)
        if len(self.dimensions) != 2:
            raise UserError(f"polygon gate {self.gate_id!r} needs 2 dimensions, has {len(self.dimensions)}")
        if len(self.vertices) < 3:
            raise UserError(f"polygon gate {self.gate_id!r} needs at least 3 vertices, has {len(self.vertices)}")

    def evaluate(self, data: Mapping[str, Any]) -> np.ndarray:
        return points_in_polygon(self.dimensions[0].values(data), self.dimensions[1].values(data), self.vertices)


@dataclass
class EllipsoidGate(Gate):
    """Ellipsoid: ``(x - mean)ᵀ covariance⁻¹ (x - mean) <= distance_square``.

    ``mean`` has shape ``(n_dims,)``, ``covariance`` ``(n_dims, n_dims)``, both in the units
    of the dimensions.
    """

    mean: np.ndarray = field(default_factory=lambda: np.zeros(2))
    covariance: np.ndarray = field(default_factory=lambda: np.eye(2))
    distance_square: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        k = len(self.dimensions)
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.covariance = np.asarray(self.covariance, dtype=np.float64)
        if self.mean.shape != (k,) or self.covariance.shape != (k, k):
            raise UserError(f"ellipsoid gate {self.gate_id!r}: mean/covariance do not match {k} dimensions")
        try:
            self._precision = np.linalg.inv(self.covariance)
        except np.linalg.LinAlgError:
            raise UserError(f"ellipsoid gate {self.gate_id!r}: covariance matrix is singular") from None

    def evaluate(self, data: Mapping[str, Any]) -> np.ndarray:
        d = np.column_stack([dim.values(data).astype(np.float64) for dim in self.dimensions]) - self.mean
        dist = np.einsum("ij,jk,ik->i", d, self._precision, d)
        return dist <= self.distance_square


EllipseGate = EllipsoidGate


@dataclass(frozen=True)
class Divider:
    """A quadrant-gate divider: cut points ``values`` (ascending) on one dimension."""

    divider_id: str
    dimension: Dimension
    values: tuple[float, ...]


@dataclass(frozen=True)
class Quadrant:
    """One quadrant: for each divider id a location inside the wanted interval."""

    quadrant_id: str
    positions: Mapping[str, float]


@dataclass
class QuadrantGate(Gate):
    """Gating-ML quadrant gate: dividers split space into intervals, each quadrant picks one
    interval per divider. Defines one population per quadrant id (the gate id itself is not a
    population). Use :meth:`cross` for the usual 2-D four-quadrant case.
    """

    dividers: list[Divider] = field(default_factory=list)
    quadrants: list[Quadrant] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dimensions = [d.dimension for d in self.dividers]
        super().__post_init__()
        ids = {d.divider_id for d in self.dividers}
        for q in self.quadrants:
            unknown = set(q.positions) - ids
            if unknown:
                raise UserError(f"quadrant {q.quadrant_id!r} refers to unknown divider(s) {sorted(unknown)}")

    @classmethod
    def cross(cls, gate_id: str, x: Dimension | str, y: Dimension | str, x_cut: float, y_cut: float,
              parent: str | None = None, ids: Sequence[str] | None = None) -> "QuadrantGate":
        """Four quadrants around ``(x_cut, y_cut)``; ids default to ``"<x>+<y>+"`` style names
        in the order ``(+,+), (+,-), (-,+), (-,-)``."""
        xd, yd = _dim(x), _dim(y)
        signs = [("+", "+"), ("+", "-"), ("-", "+"), ("-", "-")]
        ids = list(ids) if ids is not None else [f"{xd.name}{sx}{yd.name}{sy}" for sx, sy in signs]
        dividers = [Divider("x", xd, (float(x_cut),)), Divider("y", yd, (float(y_cut),))]
        quads = [
            Quadrant(qid, {"x": x_cut + (1 if sx == "+" else -1), "y": y_cut + (1 if sy == "+" else -1)})
            for qid, (sx, sy) in zip(ids, signs)
        ]
        return cls(gate_id, [], parent, dividers=dividers, quadrants=quads)

    @property
    def population_ids(self) -> list[str]:
        return [q.quadrant_id for q in self.quadrants]

    def evaluate_all(self, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One bool mask per quadrant id, each shape ``(n_events,)``, parent ignored."""
        bins = {}
        for d in self.dividers:
            x = d.dimension.values(data)
            bins[d.divider_id] = np.searchsorted(np.asarray(d.values, dtype=np.float64), x, side="right")
        out = {}
        for q in self.quadrants:
            mask = None
            for div_id, loc in q.positions.items():
                values = next(d.values for d in self.dividers if d.divider_id == div_id)
                want = int(np.searchsorted(np.asarray(values, dtype=np.float64), loc, side="right"))
                m = bins[div_id] == want
                mask = m if mask is None else mask & m
            out[q.quadrant_id] = mask if mask is not None else np.ones(len(next(iter(bins.values()))), bool)
        return out

    def evaluate(self, data: Mapping[str, Any], quadrant: str | None = None) -> np.ndarray:
        """Mask of one quadrant (``quadrant`` id; required unless there is exactly one)."""
        masks = self.evaluate_all(data)
        if quadrant is None:
            if len(masks) != 1:
                raise ValueError(f"quadrant gate {self.gate_id!r}: name a quadrant of {list(masks)}")
            quadrant = next(iter(masks))
        return masks[quadrant]


@dataclass
class BooleanGate(Gate):
    """``and``/``or``/``not`` of other gates' memberships.

    ``operands`` are gate (or quadrant) ids; ``complement[i]`` negates operand ``i``
    (Gating-ML ``use-as-complement``). :meth:`evaluate` reads the operand memberships from
    ``data`` by id; :class:`GatingStrategy` passes each operand's full membership
    (including its ancestors).
    """

    operation: str = "and"
    operands: list[str] = field(default_factory=list)
    complement: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.operation = self.operation.lower()
        if not self.complement:
            self.complement = [False] * len(self.operands)
        if self.operation not in ("and", "or", "not"):
            raise UserError(f"boolean gate {self.gate_id!r}: unknown operation {self.operation!r}")
        n = len(self.operands)
        if (self.operation == "not" and n != 1) or (self.operation != "not" and n < 2):
            raise UserError(f"boolean gate {self.gate_id!r}: '{self.operation}' cannot take {n} operand(s)")

    def evaluate(self, data: Mapping[str, Any]) -> np.ndarray:
        masks = []
        for ref, neg in zip(self.operands, self.complement):
            if ref not in data:
                raise UserError(f"boolean gate {self.gate_id!r}: operand {ref!r} is not available")
            m = np.asarray(data[ref], dtype=bool)
            masks.append(~m if neg else m)
        if self.operation == "not":
            return ~masks[0]
        return np.logical_and.reduce(masks) if self.operation == "and" else np.logical_or.reduce(masks)


# ----------------------------------------------------------------------------- hierarchy
class GatingResult:
    """Memberships of every population of a :class:`GatingStrategy` on one event set."""

    def __init__(self, strategy: "GatingStrategy", memberships: dict[str, np.ndarray], n_events: int):
        self.strategy = strategy
        self.memberships = memberships
        self.n_events = n_events

    def membership(self, population_id: str) -> np.ndarray:
        """Bool array ``(n_events,)``: events in the population and all its ancestors."""
        if population_id not in self.memberships:
            raise KeyError(population_id)
        return self.memberships[population_id]

    def membership_frame(self, ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One 0/1 ``uint8`` column per population id, one row per event."""
        ids = list(ids) if ids is not None else list(self.memberships)
        return pd.DataFrame({i: self.memberships[i].astype(np.uint8) for i in ids})

    def counts(self) -> pd.DataFrame:
        """One row per population: ``population_id, path, parent, count``."""
        rows = [
            (pid, self.strategy.path_of(pid), self.strategy.parent_of(pid) or "", int(m.sum()))
            for pid, m in self.memberships.items()
        ]
        return pd.DataFrame(rows, columns=["population_id", "path", "parent", "count"])


class GatingStrategy:
    """A gating hierarchy with its transforms and compensation matrices.

    Parameters
    ----------
    gates
        Gates in any order; parents are resolved by id (a quadrant id is a valid parent).
    transforms
        Transform objects by id, for dimensions whose ``transform`` is a ``str``.
    compensations
        Spillover matrices (DataFrame, index = columns = channel names) by id.
    """

    def __init__(self, gates: Sequence[Gate] = (), transforms: Mapping[str, Any] | None = None,
                 compensations: Mapping[str, pd.DataFrame] | None = None):
        self.gates: dict[str, Gate] = {}
        self.transforms: dict[str, Any] = dict(transforms or {})
        self.compensations: dict[str, pd.DataFrame] = dict(compensations or {})
        self._owner: dict[str, str] = {}
        for g in gates:
            self.add(g)

    def add(self, gate: Gate) -> None:
        """Register a gate (ids must be unique across gates and quadrants)."""
        for pid in [gate.gate_id, *gate.population_ids]:
            if pid in self._owner or pid in self.gates:
                raise UserError(f"gate id {pid!r} is defined more than once")
        self.gates[gate.gate_id] = gate
        for pid in gate.population_ids:
            self._owner[pid] = gate.gate_id

    @property
    def population_ids(self) -> list[str]:
        """Every population id in insertion order (quadrant ids instead of their gate)."""
        return list(self._owner)

    def gate_of(self, population_id: str) -> Gate:
        """The gate that defines a population."""
        return self.gates[self._owner[population_id]]

    def parent_of(self, population_id: str) -> str | None:
        return self.gate_of(population_id).parent

    def ancestors(self, population_id: str) -> list[str]:
        """Ancestor population ids, root first."""
        chain, seen = [], {population_id}
        p = self.parent_of(population_id)
        while p is not None:
            if p not in self._owner:
                raise UserError(f"gate {population_id!r}: parent {p!r} is not defined")
            if p in seen:
                raise UserError(f"gate {population_id!r}: its parents form a cycle")
            seen.add(p)
            chain.append(p)
            p = self.parent_of(p)
        return chain[::-1]

    def path_of(self, population_id: str, sep: str = "/") -> str:
        """``"Root/.../population"`` from the top-level gate down. An id that already
        extends its parent's id by ``sep + name`` (FlowJo-style path ids) is not repeated."""
        parent = self.parent_of(population_id)
        if parent is None:
            return population_id
        self.ancestors(population_id)  # validates: defined parents, no cycle
        head = self.path_of(parent, sep)
        if population_id.startswith(parent + sep):
            return head + population_id[len(parent):]
        return head + sep + population_id

    def children(self, population_id: str | None) -> list[str]:
        """Populations whose parent is ``population_id`` (``None``: top level)."""
        return [p for p in self._owner if self.parent_of(p) == population_id]

    # -- data preparation
    def _matrix(self, ref: str, spillover: pd.DataFrame | None) -> pd.DataFrame:
        if ref == "FCS":
            return spillover
        if ref not in self.compensations:
            raise UserError(f"compensation matrix {ref!r} is not defined")
        return self.compensations[ref]

    def _transform(self, t: Any) -> Any:
        if isinstance(t, str):
            if t not in self.transforms:
                raise UserError(f"transformation {t!r} is not defined")
            return self.transforms[t]
        return t

    def prepare(self, dim: Dimension, data: Mapping[str, Any], spillover: pd.DataFrame | None = None,
                cache: dict | None = None) -> np.ndarray:
        """Values of one dimension from raw events: compensate, then ratio, then transform."""
        tkey = dim.transform if isinstance(dim.transform, str) else id(dim.transform)
        key = (type(dim).__name__, dim.name, dim.compensation, tkey, *dim.raw_names())
        if cache is not None and key in cache:
            return cache[key]
        comp = dim.compensation if dim.compensation not in (None, "uncompensated") else None
        cols = []
        for name in dim.raw_names():
            if comp is None:
                if name not in data:
                    raise UserError(f"dimension {name!r} is not a channel of the data")
                col = np.asarray(data[name])
                cols.append(col if col.dtype in (np.float32, np.float64) else col.astype(np.float64))
            else:
                cols.append(self._compensated(name, comp, data, spillover, cache))
        x = dim.ratio(*cols) if isinstance(dim, RatioDimension) else cols[0]
        t = self._transform(dim.transform)
        if t is not None:
            x = np.asarray(t.transform(x), dtype=np.float64)
        if cache is not None:
            cache[key] = x
        return x

    def _compensated(self, name: str, ref: str, data: Mapping[str, Any], spillover, cache) -> np.ndarray:
        """Column ``name`` compensated with matrix ``ref`` (rows = fluorochromes, columns =
        detectors; a non-square matrix is unmixed by least squares); channels outside the matrix, and everything when ``ref == "FCS"`` but the
        file has no spillover, are returned uncompensated."""
        from immunomon.preprocess.compensation import compensate

        ckey = ("__comp__", ref)
        if cache is not None and ckey in cache:
            comp = cache[ckey]
        elif ref == "FCS" and spillover is None:
            comp = {}
        else:
            m = self._matrix(ref, spillover)
            detectors = [str(c) for c in m.columns]
            missing = [c for c in detectors if c not in data]
            if missing:
                raise UserError(f"compensation matrix {ref!r}: detector(s) {missing} are not channels of the data")
            block = np.column_stack([np.asarray(data[c], dtype=np.float64) for c in detectors])
            if m.shape[0] == m.shape[1]:
                unmixed = compensate(block, detectors, m, dtype=np.float64)
            else:  # more detectors than fluorochromes: least-squares unmixing
                unmixed = block @ np.linalg.pinv(m.to_numpy(dtype=np.float64))
            comp = dict(zip(map(str, m.index), unmixed.T))
            if cache is not None:
                cache[ckey] = comp
        if name in comp:
            return comp[name]
        if name not in data:
            raise UserError(f"dimension {name!r} is neither a channel of the data nor a fluorochrome of matrix {ref!r}")
        return np.asarray(data[name], dtype=np.float64)

    def apply(self, data: Mapping[str, Any], spillover: pd.DataFrame | None = None) -> GatingResult:
        """Gate raw events.

        Parameters
        ----------
        data
            Column name → 1-D array of raw (uncompensated, untransformed) values, e.g. a
            DataFrame with FCS channel names. Dimensions without compensation/transform
            read the columns as they are.
        spillover
            The file's own spillover matrix, used by ``compensation-ref="FCS"``.
        """
        if isinstance(data, pd.DataFrame):
            n = len(data)
            data = frame_columns(data)
        else:
            n = len(next(iter(data.values())))
        cache: dict = {}
        memberships: dict[str, np.ndarray] = {}
        done: set[str] = set()

        def run(gate_id: str, stack: tuple[str, ...]) -> None:
            if gate_id in done:
                return
            if gate_id in stack:
                raise UserError(f"gate {gate_id!r}: its parents/operands form a cycle")
            gate = self.gates[gate_id]
            deps = [gate.parent] if gate.parent is not None else []
            if isinstance(gate, BooleanGate):
                deps += gate.operands
            for dep in deps:
                if dep not in self._owner:
                    raise UserError(f"gate {gate_id!r} refers to undefined gate {dep!r}")
                run(self._owner[dep], stack + (gate_id,))
            parent = memberships[gate.parent] if gate.parent is not None else None
            if isinstance(gate, BooleanGate):
                own = {gate_id: gate.evaluate({r: memberships[r] for r in gate.operands})}
            else:
                try:
                    prepared = {d.key: self.prepare(d, data, spillover, cache) for d in gate.dimensions}
                except UserError as err:
                    raise UserError([f"gate {gate_id!r}: {p}" for p in err.problems]) from None
                rows = None
                # a polygon or ellipse costs more per event than gathering: evaluate it on the
                # parent's events only; a rectangle is two comparisons, cheaper on every event
                if parent is not None and not isinstance(gate, RectangleGate) and parent.mean() < 0.5:
                    rows = np.flatnonzero(parent)
                    prepared = {k: v[rows] for k, v in prepared.items()}
                own = gate.evaluate_all(prepared) if isinstance(gate, QuadrantGate) else {gate_id: gate.evaluate(prepared)}
                if rows is not None:
                    for pid, sub in own.items():
                        full = np.zeros(n, dtype=bool)
                        full[rows] = sub
                        own[pid] = full
            for pid, m in own.items():
                memberships[pid] = m & parent if parent is not None else m
            done.add(gate_id)

        for gid in self.gates:
            run(gid, ())
        ordered = {pid: memberships[pid] for pid in self._owner}
        return GatingResult(self, ordered, n)
