"""FlowJo 10 workspace (``.wsp``) import.

A workspace holds, per sample, a spillover matrix (``transforms:spilloverMatrix`` with a
``prefix`` such as ``Comp-``; or a reference to a workspace-level matrix), one display
transform per channel (``biex``, ``logicle``, ``hyperlog``, ``linear``, ``log``, ``fasinh``)
and a tree of ``Population`` nodes (plus ``And``/``Or``/``NotNode`` boolean nodes), each
with one gate: Gating-ML rectangles and polygons, whose coordinates are in compensated,
*untransformed* data units (``eventsInside="0"`` = the complement); FlowJo ellipses, whose
foci and edge points are on FlowJo's 256-channel display of each axis; and curly quadrants
(``CurlyQuad``: a crosshair whose arms bend away from the double-positive quadrant, as
y = y0 + 0.001·(x − x0)² on the 256-channel display — CytoML's reading, FlowJo publishes no
formula). FlowJo draws and applies gates on the transformed (display) scale, so vertices and
bounds are mapped through the channel's transform and events are compared there. Each
sample carries its own gate tree (group gates copied in, sample-specific edits kept).

:func:`read_wsp` gives a :class:`FlowJoWorkspace`; ``ws.sample(name).gate(events)`` gates
a DataFrame of the file's raw (scaled, uncompensated) channels and
:meth:`FlowJoSample.counts` gives ``gate_path, count`` with FlowJo-style paths
(``Lymphocytes/Singlets/...``). Gate ids of the :class:`GatingStrategy` are these paths.
The XML is parsed with :mod:`defusedxml` (no DTD, entities or external references; only the
given file is read).
"""

from __future__ import annotations

import xml.etree.ElementTree as StdET
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as ET
import numpy as np
import pandas as pd
from defusedxml import DefusedXmlException

from immunomon.errors import UserError
from immunomon.preprocess import transforms as tr

from .xmlfile import read_xml_bytes
from .gates import (BooleanGate, Dimension, EllipsoidGate, Gate, GatingResult, GatingStrategy,
                    PolygonGate, RectangleGate)

__all__ = ["read_wsp", "parse_wsp", "FlowJoWorkspace", "FlowJoSample"]

_G = "{http://www.isac-net.org/std/Gating-ML/v2.0/gating}"
_T = "{http://www.isac-net.org/std/Gating-ML/v2.0/transformations}"
_D = "{http://www.isac-net.org/std/Gating-ML/v2.0/datatypes}"
MAX_BYTES = 256 * 1024 * 1024


@dataclass
class FlowJoSample:
    """One sample of a workspace.

    Attributes
    ----------
    sample_id, name
        FlowJo's sample id and the sample node's name (usually the FCS file name).
    spillover
        The sample's spillover matrix (index = columns = detector names) or ``None``.
    comp_prefix, comp_suffix
        How FlowJo names compensated channels (``Comp-PE-A``).
    transforms
        Channel name as written in the workspace (``PE-A``, ``Comp-PE-A``) → transform.
    strategy
        The gating hierarchy; gate ids are FlowJo paths.
    flowjo_counts
        Path → the ``count`` FlowJo recorded in the workspace (``-1`` if never computed).
    """

    sample_id: str
    name: str
    uri: str = ""
    spillover: pd.DataFrame | None = None
    comp_prefix: str = "Comp-"
    comp_suffix: str = ""
    transforms: dict = field(default_factory=dict)
    strategy: GatingStrategy = field(default_factory=GatingStrategy)
    flowjo_counts: dict = field(default_factory=dict)
    keywords: dict = field(default_factory=dict)

    def file_names(self) -> set[str]:
        """Names this sample's FCS file goes by: ``$FIL``, the node name, the data set URI's
        file name."""
        names = {self.keywords.get("$FIL", ""), self.name, Path(self.uri.replace("\\", "/")).name}
        return {n for n in names if n}

    @property
    def gate_paths(self) -> list[str]:
        """Every gate path, in workspace order."""
        return list(self.flowjo_counts)

    def gate(self, events: pd.DataFrame) -> GatingResult:
        """Gate raw events (DataFrame, columns = ``$PnN`` names, linear scaled values)."""
        return self.strategy.apply(events, spillover=self.spillover)

    def counts(self, result: GatingResult) -> pd.DataFrame:
        """``gate_path, count`` for every gate (``flowjo_count`` added as a third column)."""
        return pd.DataFrame({
            "gate_path": self.gate_paths,
            "count": [int(result.membership(p).sum()) for p in self.gate_paths],
            "flowjo_count": [self.flowjo_counts.get(p, -1) for p in self.gate_paths],
        })


@dataclass
class FlowJoWorkspace:
    """Samples (by sample id) and groups (group name → sample ids) of a workspace."""

    path: str
    samples: dict[str, FlowJoSample]
    groups: dict[str, list[str]]

    def match(self, file_name: str, fil: str | None = None, group: str | None = None) -> FlowJoSample:
        """The workspace sample of an FCS file, matched by its ``$FIL`` keyword or its file
        name (within ``group`` when given). A file the workspace lacks, or matches twice, is a
        :class:`UserError` naming both."""
        pool = self._pool(group)
        keys = {k for k in (fil, file_name) if k}
        hits = [s for s in pool if s.file_names() & keys]
        where = f"{self.path}" + (f" (group {group!r})" if group else "")
        if not hits:
            raise UserError(f"{where}: no sample matches {file_name}"
                            + (f" ($FIL {fil!r})" if fil and fil != file_name else "")
                            + f"; the workspace has {', '.join(sorted(s.name for s in pool)) or 'none'}")
        if len(hits) > 1:
            raise UserError(f"{where}: {file_name} matches {len(hits)} samples "
                            f"({', '.join(s.name + ' #' + s.sample_id for s in hits)}); keep one in "
                            f"the group or choose another group (wsp_group)")
        return hits[0]

    def _pool(self, group: str | None) -> list[FlowJoSample]:
        if group is None:
            return list(self.samples.values())
        if group not in self.groups:
            raise UserError(f"{self.path}: no sample group {group!r} (groups: {sorted(self.groups)})")
        return [self.samples[i] for i in self.groups[group] if i in self.samples]

    def sample(self, name: str | None = None, group: str | None = None) -> FlowJoSample:
        """Pick a sample by node name, file name or id; ``None`` if the workspace (or group)
        holds exactly one."""
        pool = self._pool(group)
        if name is None:
            if len(pool) != 1:
                raise UserError(f"{self.path}: {len(pool)} samples; choose one with --sample "
                                f"({', '.join(s.name for s in pool)})")
            return pool[0]
        for s in pool:
            if name in (s.name, s.sample_id, Path(s.uri).name, Path(s.name).stem):
                return s
        raise UserError(f"{self.path}: no sample {name!r} (samples: {', '.join(s.name for s in pool)})")


def read_wsp(path: str | Path) -> FlowJoWorkspace:
    """Read a FlowJo 10 workspace (only this file is read; FCS files are not opened)."""
    path = Path(path)
    return parse_wsp(read_xml_bytes(path, MAX_BYTES, "FlowJo workspace"), source=str(path))


def parse_wsp(data: bytes | str, source: str = "<workspace>") -> FlowJoWorkspace:
    """Parse workspace XML; see :func:`read_wsp`."""
    try:
        root = ET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as err:
        raise UserError(f"{source}: refused: the XML declares a DTD, entities or external references "
                        f"({type(err).__name__}); FlowJo workspaces need none") from None
    except StdET.ParseError as err:
        line, col = err.position
        raise UserError(f"{source}: line {line}, column {col}: not well-formed XML ({err})") from None
    if root.tag != "Workspace":
        raise UserError(f"{source}: root element is {root.tag!r}, not a FlowJo <Workspace>")
    shared = {}  # workspace-level matrices, which a sample may reference by id only
    for m in root.iterfind("Matrices/" + _T + "spilloverMatrix"):
        if m.get(_T + "id") and list(m.iter(_T + "spillover")):
            shared[m.get(_T + "id")] = m
    samples = {}
    for el in root.iter("Sample"):
        s = _parse_sample(el, source, shared)
        samples[s.sample_id] = s
    groups = {}
    for g in root.iter("GroupNode"):
        refs = [r.get("sampleID") for r in g.iter("SampleRef")]
        groups[g.get("name", "")] = [r for r in refs if r]
    if not samples:
        raise UserError(f"{source}: the workspace holds no samples")
    return FlowJoWorkspace(source, samples, groups)


def _float(v, source: str, what: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {what}: {v!r} is not a number") from None
    if not np.isfinite(x):
        raise UserError(f"{source}: {what}: {v!r} is not finite")
    return x


def _parse_matrix(el, source: str) -> pd.DataFrame:
    names = [p.get(_D + "name") for p in el.iter(_D + "parameter") if p.get(_D + "name")]
    rows = {}
    for sp in el.iter(_T + "spillover"):
        src = sp.get(_D + "parameter")
        rows[src] = {c.get(_D + "parameter"): _float(c.get(_T + "value"), source, f"spillover {src!r}")
                     for c in sp.iter(_T + "coefficient")}
    names = names or list(rows)
    missing = [n for n in names if n not in rows]
    if missing:
        raise UserError(f"{source}: spillover matrix has no row for {missing}")
    m = np.array([[rows[r].get(c, 1.0 if r == c else 0.0) for c in names] for r in names])
    return pd.DataFrame(m, index=names, columns=names)


def _parse_transform(el, source: str):
    kind = el.tag.rpartition("}")[2]
    a = lambda k, d=None: el.get(_T + k, el.get(k, d))  # noqa: E731
    what = f"{kind} transform"
    try:
        if kind == "linear":
            lo = _float(a("minRange", "0"), source, what)
            hi = _float(a("maxRange", "262144"), source, what)
            return tr.LinearTransform(T=hi, A=-lo) if hi > lo else None
        if kind == "log":
            return tr.FlowJoLogTransform(offset=_float(a("offset", "1"), source, what),
                                         decades=_float(a("decades", "4.5"), source, what))
        if kind == "biex":
            return tr.FlowJoBiexTransform(negative=_float(a("neg", "0"), source, what),
                                          width=_float(a("width", "-10"), source, what),
                                          positive=_float(a("pos", "4.41854"), source, what),
                                          max_value=_float(a("maxRange", "262144"), source, what))
        if kind == "logicle":
            return tr.LogicleTransform(*(_float(a(k), source, what) for k in ("T", "W", "M", "A")))
        if kind == "hyperlog":
            return tr.HyperlogTransform(*(_float(a(k), source, what) for k in ("T", "W", "M", "A")))
        if kind == "fasinh":
            return tr.AsinhTransform(*(_float(a(k), source, what) for k in ("T", "M", "A")))
    except UserError as err:
        raise UserError([f"{source}: {p}" for p in err.problems]) from None
    raise UserError(f"{source}: FlowJo transform <{kind}> is not supported "
                    "(linear, log, biex, logicle, hyperlog, fasinh)")


def _parse_sample(el, source: str, shared: dict) -> FlowJoSample:
    ds = el.find("DataSet")
    node = el.find("SampleNode")
    if node is None:
        raise UserError(f"{source}: a <Sample> has no <SampleNode>")
    sid = node.get("sampleID") or (ds.get("sampleID") if ds is not None else "")
    s = FlowJoSample(sample_id=sid, name=node.get("name", sid), uri=ds.get("uri", "") if ds is not None else "")
    s.keywords = {k.get("name", "").upper(): k.get("value", "") for k in el.iterfind("Keywords/Keyword")}
    mat = el.find(_T + "spilloverMatrix")
    matrix_id = None
    if mat is not None and not list(mat.iter(_T + "spillover")) and mat.get(_T + "id") in shared:
        ref = shared[mat.get(_T + "id")]
        mat = StdET.Element(ref.tag, {**ref.attrib, **mat.attrib})
        mat.extend(list(ref))
    if mat is not None and list(mat.iter(_T + "spillover")):
        s.spillover = _parse_matrix(mat, source)
        s.comp_prefix = mat.get("prefix", "Comp-")
        s.comp_suffix = mat.get("suffix", "")
        matrix_id = mat.get(_T + "id") or "FlowJo"
    xf = el.find("Transformations")
    if xf is not None:
        for t in xf:
            p = t.find(_D + "parameter")
            if p is not None and p.get(_D + "name"):
                s.transforms[p.get(_D + "name")] = _parse_transform(t, source)
    strategy = GatingStrategy(compensations={matrix_id: s.spillover} if matrix_id else None)
    subs = node.find("Subpopulations")
    if subs is not None:
        _walk(subs, None, s, strategy, matrix_id, source)
    s.strategy = strategy
    return s


def _dimension(name: str, s: FlowJoSample, matrix_id: str | None):
    """Gating dimension for a workspace channel name, and its transform (or None)."""
    t = s.transforms.get(name)
    base = name
    comp = None
    if matrix_id and s.comp_prefix and name.startswith(s.comp_prefix):
        base = name[len(s.comp_prefix):]
        if s.comp_suffix and base.endswith(s.comp_suffix):
            base = base[: -len(s.comp_suffix)]
        if base in s.spillover.columns:
            comp = matrix_id
        else:
            base = name
    return Dimension(base, compensation=comp, transform=t), t


def _fwd(t, v: float) -> float:
    return float(t.transform(np.array([v]))[0]) if t is not None else float(v)


def _walk(subs, parent: str | None, s: FlowJoSample, strategy: GatingStrategy, matrix_id, source: str) -> None:
    for node in subs:
        if node.tag not in ("Population", "AndNode", "OrNode", "NotNode"):
            continue
        name = node.get("name", "")
        path = name if parent is None else f"{parent}/{name}"
        where = f"{source}: gate {path!r}"
        if node.tag == "Population":
            gate_el = node.find("Gate")
            kids = list(gate_el) if gate_el is not None else []
            if len(kids) != 1:
                raise UserError(f"{where}: expected one gate element, found {len(kids)}")
            gates = _convert_gate(kids[0], path, parent, s, matrix_id, where)
        else:
            deps = [d.get("name", "") for d in node.iter("Dependent")]
            op = node.tag[:-4].lower()
            if not deps:
                raise UserError(f"{where}: boolean gate without dependents")
            gates = [BooleanGate(path, [], parent, operation=op, operands=deps)]
        for g in gates:
            strategy.add(g)
        try:
            s.flowjo_counts[path] = int(node.get("count", "-1"))
        except ValueError:
            s.flowjo_counts[path] = -1
        child = node.find("Subpopulations")
        if child is not None:
            _walk(child, path, s, strategy, matrix_id, source)


#: FlowJo's display resolution of every axis (ellipse and curly-quadrant coordinates).
DISPLAY_CHANNELS = 256.0
#: Curvature of a curly quadrant's arms on the 256-channel display (CytoML's value).
CURL = 0.001


def _display_range(t) -> float:
    """Width of a transform's output (FlowJo's display axis): 4096 for biex, 1 for the
    Gating-ML transforms, 262144 data units for an untransformed axis."""
    if t is None:
        return 262144.0
    if isinstance(t, tr.FlowJoBiexTransform):
        return float(t.channels)
    return 1.0


def _points(el, tag: str, n: int, where: str) -> np.ndarray:
    block = el.find(_G + tag)
    verts = [] if block is None else block.findall(_G + "vertex")
    out = []
    for v in verts:
        cs = [_float(c.get(_D + "value"), where, tag) for c in v.findall(_G + "coordinate")]
        if len(cs) != n:
            raise UserError(f"{where}: an ellipse {tag} vertex has {len(cs)} coordinates for {n} dimensions")
        out.append(cs)
    return np.array(out, dtype=np.float64).reshape(-1, n)


def _ellipse(el, gate_id, dims, parent, xforms, where) -> EllipsoidGate:
    """A FlowJo ellipse (two foci and four edge points on the 256-channel display) as an
    :class:`EllipsoidGate` on the transformed scale of its two axes."""
    if len(dims) != 2:
        raise UserError(f"{where}: an ellipse needs 2 dimensions, has {len(dims)}")
    foci, edges = _points(el, "foci", 2, where), _points(el, "edge", 2, where)
    if len(foci) != 2 or len(edges) < 3:
        raise UserError(f"{where}: a FlowJo ellipse needs 2 foci and 4 edge points "
                        f"(found {len(foci)} and {len(edges)})")
    centre = foci.mean(axis=0)
    half_focal = float(np.linalg.norm(foci[1] - foci[0]) / 2)
    if half_focal > 0:
        u = (foci[1] - foci[0]) / (2 * half_focal)
    else:  # a circle: any direction
        u = np.array([1.0, 0.0])
    along = np.abs((edges - centre) @ u)
    a = float(along.max()) if half_focal > 0 else float(np.linalg.norm(edges - centre, axis=1).max())
    if not a > half_focal:
        raise UserError(f"{where}: ellipse edge points lie inside its foci")
    b = float(np.sqrt(a * a - half_focal * half_focal))
    rot = np.column_stack([u, [-u[1], u[0]]])
    precision_display = rot @ np.diag([1 / a**2, 1 / b**2]) @ rot.T
    scale = np.diag([DISPLAY_CHANNELS / _display_range(t) for t in xforms])  # transformed → display
    precision = scale @ precision_display @ scale
    return EllipsoidGate(gate_id, dims, parent, mean=np.linalg.solve(scale, centre),
                         covariance=np.linalg.inv(precision), distance_square=1.0)


@dataclass
class CurlyQuadrantGate(Gate):
    """One quadrant of a FlowJo curly quadrant: crosshair ``(x0, y0)`` on the 256-channel
    display, arms bending away from the double-positive quadrant
    (``y = y0 + c·(x − x0)²`` right of ``x0``, ``x = x0 + c·(y − y0)²`` above ``y0``).
    ``right``/``top``: which side of each arm; ``scales``: transformed units → display."""

    x0: float = 0.0
    y0: float = 0.0
    right: bool = True
    top: bool = True
    scales: tuple[float, float] = (1.0, 1.0)
    curl: float = CURL

    def evaluate(self, data):
        x = self.dimensions[0].values(data) * self.scales[0]
        y = self.dimensions[1].values(data) * self.scales[1]
        arm_y = self.y0 + self.curl * np.maximum(x - self.x0, 0.0) ** 2  # the horizontal arm
        arm_x = self.x0 + self.curl * np.maximum(y - self.y0, 0.0) ** 2  # the vertical arm
        if self.right and self.top:
            return (x >= arm_x) & (y >= arm_y)
        if self.top:
            return (y >= self.y0) & (x < arm_x)
        if self.right:
            return (x >= self.x0) & (y < arm_y)
        return (x < self.x0) & (y < self.y0)


def _curly_quadrant(el, gate_id, dims, parent, xforms, where) -> CurlyQuadrantGate:
    """A ``CurlyQuad`` population: its crosshair from the dimensions' min/max (data units)."""
    if len(dims) != 2:
        raise UserError(f"{where}: a curly quadrant needs 2 dimensions, has {len(dims)}")
    centre, sides = [], []
    for (d, _), t in zip(dims, xforms):
        lo, hi = d.get(_G + "min"), d.get(_G + "max")
        if lo is None and hi is None:
            raise UserError(f"{where}: a curly-quadrant dimension has neither min nor max")
        value = _float(lo if lo is not None else hi, where, "curly quadrant")
        scale = DISPLAY_CHANNELS / _display_range(t)
        centre.append(_fwd(t, value) * scale)
        sides.append(lo is not None)
    scales = tuple(DISPLAY_CHANNELS / _display_range(t) for t in xforms)
    return CurlyQuadrantGate(gate_id, [dm for _, dm in dims], parent, x0=centre[0], y0=centre[1],
                             right=sides[0], top=sides[1], scales=scales)


def _convert_gate(el, path, parent, s, matrix_id, where):
    kind = el.tag.rpartition("}")[2]
    dims, xforms = [], []
    for d in el.findall(_G + "dimension"):
        f = d.find(_D + "fcs-dimension")
        if f is None or not f.get(_D + "name"):
            raise UserError(f"{where}: a gate dimension names no fcs-dimension")
        dim, t = _dimension(f.get(_D + "name"), s, matrix_id)
        dims.append((d, dim))
        xforms.append(t)
    inside = el.get("eventsInside", "1") != "0"
    if kind == "RectangleGate":
        bounds = []
        for (d, _), t in zip(dims, xforms):
            lo, hi = d.get(_G + "min"), d.get(_G + "max")
            bounds.append((None if lo is None else _fwd(t, _float(lo, where, "min")),
                           None if hi is None else _fwd(t, _float(hi, where, "max"))))
        gate = RectangleGate(path if inside else path + " (inside)", [dm for _, dm in dims], parent, bounds=bounds)
    elif kind == "PolygonGate":
        verts = []
        for v in el.findall(_G + "vertex"):
            cs = [_float(c.get(_D + "value"), where, "vertex") for c in v.findall(_G + "coordinate")]
            if len(cs) != len(dims):
                raise UserError(f"{where}: a vertex has {len(cs)} coordinates for {len(dims)} dimensions")
            verts.append([_fwd(t, c) for t, c in zip(xforms, cs)])
        gate = PolygonGate(path if inside else path + " (inside)", [dm for _, dm in dims], parent,
                           vertices=np.array(verts))
    elif kind == "EllipsoidGate":
        gate = _ellipse(el, path if inside else path + " (inside)", [dm for _, dm in dims], parent,
                        xforms, where)
    elif kind == "CurlyQuad":
        gate = _curly_quadrant(el, path if inside else path + " (inside)", dims, parent, xforms, where)
    else:
        raise UserError(f"{where}: FlowJo gate type {kind!r} is not supported (RectangleGate, PolygonGate, "
                        "EllipsoidGate, CurlyQuad, boolean And/Or/Not nodes)")
    if inside:
        return [gate]
    gate.parent = None  # the complement is taken within the parent by the boolean gate
    return [gate, BooleanGate(path, [], parent, operation="not", operands=[gate.gate_id])]
