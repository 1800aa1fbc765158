"""Gating-ML 2.0 import and export.

:func:`read_gatingml` turns a Gating-ML 2.0 file into a
:class:`~immunomon.gating.gates.GatingStrategy` (gates, ``parent_id`` hierarchy,
transformations ``flin``/``flog``/``fasinh``/``logicle``/``hyperlog``/``fratio`` and
``spectrumMatrix`` compensations); :func:`write_gatingml` writes one back.

Parsing is done with :mod:`defusedxml` and DTDs are refused outright, so entity expansion
("billion laughs") and external entities/references can neither exhaust memory nor read
any file: only the bytes of the given file are ever read. Problems raise
:class:`~immunomon.errors.UserError` naming the file and the gate.
"""

from __future__ import annotations

import xml.etree.ElementTree as StdET
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as ET
import numpy as np
import pandas as pd
from defusedxml import DefusedXmlException

from immunomon.atomic import atomic_write
from immunomon.errors import UserError
from immunomon.preprocess import transforms as tr

from .xmlfile import read_xml_bytes
from .gates import (
    BooleanGate,
    Dimension,
    Divider,
    EllipsoidGate,
    GatingStrategy,
    PolygonGate,
    Quadrant,
    QuadrantGate,
    RatioDimension,
    RectangleGate,
)

__all__ = ["read_gatingml", "parse_gatingml", "write_gatingml", "to_gatingml"]

GATING = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
TRANSFORMS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
DATATYPE = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
_G, _T, _D = "{%s}" % GATING, "{%s}" % TRANSFORMS, "{%s}" % DATATYPE
MAX_BYTES = 64 * 1024 * 1024

_GML_TRANSFORMS = {
    "flin": (tr.LinearTransform, ("T", "A")),
    "flog": (tr.LogTransform, ("T", "M")),
    "fasinh": (tr.AsinhTransform, ("T", "M", "A")),
    "logicle": (tr.LogicleTransform, ("T", "W", "M", "A")),
    "hyperlog": (tr.HyperlogTransform, ("T", "W", "M", "A")),
}


class _Ctx:
    """Source name for error messages."""

    def __init__(self, source: str):
        self.source = source

    def err(self, msg: str) -> UserError:
        return UserError(f"{self.source}: {msg}")


def _attr(el, name: str, *namespaces: str, default: Any = None) -> Any:
    for ns in namespaces or (_G, _T, _D, ""):
        v = el.get(ns + name)
        if v is not None:
            return v
    return default


def _num(ctx: _Ctx, el, name: str, what: str, *namespaces: str, required: bool = True) -> float | None:
    v = _attr(el, name, *namespaces)
    if v is None:
        if required:
            raise ctx.err(f"{what}: attribute {name!r} is missing")
        return None
    try:
        x = float(v)
    except ValueError:
        raise ctx.err(f"{what}: attribute {name}={v!r} is not a number") from None
    if not np.isfinite(x):
        raise ctx.err(f"{what}: attribute {name}={v!r} is not finite")
    return x


def read_gatingml(path: str | Path) -> GatingStrategy:
    """Read a Gating-ML 2.0 file (only that file is ever read)."""
    path = Path(path)
    return parse_gatingml(read_xml_bytes(path, MAX_BYTES, "Gating-ML file"), source=str(path))


def parse_gatingml(data: bytes | str, source: str = "<Gating-ML>") -> GatingStrategy:
    """Parse Gating-ML 2.0 text; see :func:`read_gatingml`."""
    ctx = _Ctx(source)
    try:
        root = ET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as err:
        raise ctx.err(f"refused: the XML declares a DTD, entities or external references ({type(err).__name__}); "
                      "Gating-ML needs none") from None
    except StdET.ParseError as err:
        line, col = err.position
        raise ctx.err(f"line {line}, column {col}: not well-formed XML ({err})") from None
    if root.tag != _G + "Gating-ML":
        raise ctx.err(f"root element is {root.tag!r}, expected Gating-ML 2.0 <gating:Gating-ML> ({GATING})")
    transforms: dict[str, Any] = {}
    ratios: dict[str, RatioDimension] = {}
    matrices: dict[str, pd.DataFrame] = {}
    for el in root:
        if el.tag == _T + "transformation":
            _parse_transformation(ctx, el, transforms, ratios)
        elif el.tag == _T + "spectrumMatrix":
            mid, m = _parse_matrix(ctx, el)
            matrices[mid] = m
    gates = [_parse_gate(ctx, el, ratios) for el in root if el.tag.startswith(_G) and el.tag.endswith("Gate")]
    for g in gates:
        for d in g.dimensions:
            if isinstance(d.transform, str) and d.transform not in transforms:
                raise ctx.err(f"gate {g.gate_id!r}: transformation-ref {d.transform!r} is not defined")
            if d.compensation not in (None, "uncompensated", "FCS") and d.compensation not in matrices:
                raise ctx.err(f"gate {g.gate_id!r}: compensation-ref {d.compensation!r} is not defined")
    try:
        strategy = GatingStrategy(gates, transforms=transforms, compensations=matrices)
        for pid in strategy.population_ids:
            strategy.ancestors(pid)
    except UserError as err:
        raise UserError([f"{source}: {p}" for p in err.problems]) from None
    return strategy


def _parse_transformation(ctx: _Ctx, el, transforms: dict, ratios: dict) -> None:
    tid = _attr(el, "id", _T)
    if not tid:
        raise ctx.err("a <transforms:transformation> has no transforms:id")
    kids = list(el)
    if len(kids) != 1:
        raise ctx.err(f"transformation {tid!r}: expected exactly one function element, found {len(kids)}")
    f = kids[0]
    kind = f.tag.rpartition("}")[2]
    what = f"transformation {tid!r} ({kind})"
    if kind == "fratio":
        names = [_attr(d, "name", _D) for d in f if d.tag == _D + "fcs-dimension"]
        if len(names) != 2 or not all(names):
            raise ctx.err(f"{what}: needs two named <data-type:fcs-dimension> elements")
        ratios[tid] = RatioDimension(tid, numerator=names[0], denominator=names[1],
                                     A=_num(ctx, f, "A", what, _T), B=_num(ctx, f, "B", what, _T),
                                     C=_num(ctx, f, "C", what, _T))
        return
    if kind not in _GML_TRANSFORMS:
        raise ctx.err(f"{what}: unsupported transformation (known: {sorted(_GML_TRANSFORMS) + ['fratio']})")
    cls, params = _GML_TRANSFORMS[kind]
    kwargs = {p: _num(ctx, f, p, what, _T) for p in params}
    try:
        transforms[tid] = cls(**kwargs)
    except UserError as err:
        raise ctx.err(f"{what}: {err.problems[0]}") from None


def _parse_matrix(ctx: _Ctx, el) -> tuple[str, pd.DataFrame]:
    mid = _attr(el, "id", _T)
    if not mid:
        raise ctx.err("a <transforms:spectrumMatrix> has no transforms:id")
    what = f"spectrumMatrix {mid!r}"

    def names(tag):
        sec = el.find(_T + tag)
        if sec is None:
            raise ctx.err(f"{what}: <transforms:{tag}> is missing")
        out = [_attr(d, "name", _D) for d in sec if d.tag == _D + "fcs-dimension"]
        if not out or not all(out):
            raise ctx.err(f"{what}: <transforms:{tag}> lists no named fcs-dimension")
        return out

    fluor, det = names("fluorochromes"), names("detectors")
    rows = [[_num(ctx, c, "value", what, _T) for c in s if c.tag == _T + "coefficient"]
            for s in el if s.tag == _T + "spectrum"]
    if len(rows) != len(fluor) or any(len(r) != len(det) for r in rows):
        raise ctx.err(f"{what}: expected {len(fluor)} spectra of {len(det)} coefficients")
    if len(fluor) > len(det):
        raise ctx.err(f"{what}: {len(fluor)} fluorochromes but only {len(det)} detectors")
    m = np.array(rows, dtype=np.float64)
    if str(_attr(el, "matrix-inverted-already", _T, default="false")).lower() == "true":
        if len(fluor) != len(det):
            raise ctx.err(f"{what}: an inverted matrix must be square")
        try:
            m = np.linalg.inv(m)
        except np.linalg.LinAlgError:
            raise ctx.err(f"{what}: the (inverted) matrix is singular") from None
    return mid, pd.DataFrame(m, index=fluor, columns=det)


def _parse_dimension(ctx: _Ctx, el, gate_id: str, ratios: dict) -> Dimension:
    """A ``gating:dimension`` (or quadrant ``gating:divider``) element → :class:`Dimension`."""
    comp = _attr(el, "compensation-ref", _G)
    if comp is None:
        raise ctx.err(f"gate {gate_id!r}: a dimension has no gating:compensation-ref")
    tref = _attr(el, "transformation-ref", _G)
    fcs = el.find(_D + "fcs-dimension")
    new = el.find(_D + "new-dimension")
    if fcs is not None:
        name = _attr(fcs, "name", _D)
        if not name:
            raise ctx.err(f"gate {gate_id!r}: an fcs-dimension has no data-type:name")
        return Dimension(name, compensation=comp, transform=tref)
    if new is not None:
        rid = _attr(new, "transformation-ref", _D)
        if rid not in ratios:
            raise ctx.err(f"gate {gate_id!r}: new-dimension refers to undefined ratio transformation {rid!r}")
        r = ratios[rid]
        return RatioDimension(rid, compensation=comp, transform=tref, numerator=r.numerator,
                              denominator=r.denominator, A=r.A, B=r.B, C=r.C)
    raise ctx.err(f"gate {gate_id!r}: a dimension names no fcs-dimension or new-dimension")


def _coords(ctx, el, gate_id, n: int, tag: str = "coordinate") -> list[float]:
    out = [_num(ctx, c, "value", f"gate {gate_id!r}", _D) for c in el if c.tag == _G + tag]
    if len(out) != n:
        raise ctx.err(f"gate {gate_id!r}: expected {n} {tag} values, found {len(out)}")
    return out


def _parse_gate(ctx: _Ctx, el, ratios: dict):
    kind = el.tag[len(_G):]
    gid = _attr(el, "id", _G)
    if not gid:
        raise ctx.err(f"a <gating:{kind}> has no gating:id")
    parent = _attr(el, "parent_id", _G)
    dims_el = [d for d in el if d.tag == _G + "dimension"]
    try:
        if kind == "RectangleGate":
            dims = [_parse_dimension(ctx, d, gid, ratios) for d in dims_el]
            if not dims:
                raise ctx.err(f"gate {gid!r}: no dimension")
            bounds = [(_num(ctx, d, "min", f"gate {gid!r}", _G, required=False),
                       _num(ctx, d, "max", f"gate {gid!r}", _G, required=False)) for d in dims_el]
            return RectangleGate(gid, dims, parent, bounds=bounds)
        if kind == "PolygonGate":
            dims = [_parse_dimension(ctx, d, gid, ratios) for d in dims_el]
            verts = [_coords(ctx, v, gid, len(dims)) for v in el if v.tag == _G + "vertex"]
            return PolygonGate(gid, dims, parent, vertices=np.array(verts, dtype=np.float64))
        if kind == "EllipsoidGate":
            dims = [_parse_dimension(ctx, d, gid, ratios) for d in dims_el]
            mean_el, cov_el, d2_el = el.find(_G + "mean"), el.find(_G + "covarianceMatrix"), el.find(_G + "distanceSquare")
            if mean_el is None or cov_el is None or d2_el is None:
                raise ctx.err(f"gate {gid!r}: needs gating:mean, gating:covarianceMatrix and gating:distanceSquare")
            cov = [_coords(ctx, r, gid, len(dims), "entry") for r in cov_el if r.tag == _G + "row"]
            return EllipsoidGate(gid, dims, parent, mean=_coords(ctx, mean_el, gid, len(dims)), covariance=cov,
                                 distance_square=_num(ctx, d2_el, "value", f"gate {gid!r}", _D))
        if kind == "QuadrantGate":
            dividers = []
            for d in el.findall(_G + "divider"):
                did = _attr(d, "id", _G)
                if not did:
                    raise ctx.err(f"gate {gid!r}: a divider has no gating:id")
                values = []
                for v in d.findall(_G + "value"):
                    try:
                        values.append(float(v.text))
                    except (TypeError, ValueError):
                        raise ctx.err(f"gate {gid!r}: divider {did!r} value {v.text!r} is not a number") from None
                dividers.append(Divider(did, _parse_dimension(ctx, d, gid, ratios), tuple(sorted(values))))
            quads = []
            for q in el.findall(_G + "Quadrant"):
                qid = _attr(q, "id", _G)
                pos = {_attr(p, "divider_ref", _G): _num(ctx, p, "location", f"quadrant {qid!r}", _G)
                       for p in q.findall(_G + "position")}
                quads.append(Quadrant(qid, pos))
            return QuadrantGate(gid, [], parent, dividers=dividers, quadrants=quads)
        if kind == "BooleanGate":
            ops = [c for c in el if c.tag in (_G + "and", _G + "or", _G + "not")]
            if len(ops) != 1:
                raise ctx.err(f"gate {gid!r}: needs exactly one of gating:and / or / not")
            refs = [r for r in ops[0] if r.tag == _G + "gateReference"]
            return BooleanGate(gid, [], parent, operation=ops[0].tag[len(_G):],
                               operands=[_attr(r, "ref", _G) for r in refs],
                               complement=[str(_attr(r, "use-as-complement", _G, default="false")).lower() == "true"
                                           for r in refs])
    except UserError as err:
        if all(p.startswith(ctx.source) for p in err.problems):
            raise
        raise UserError([f"{ctx.source}: {p}" for p in err.problems]) from None
    raise ctx.err(f"gate {gid!r}: unsupported gate type <gating:{kind}>")


# ----------------------------------------------------------------------------- export
def _fmt(x: float) -> str:
    return repr(float(x))


def _transform_element(t, tid: str):
    """``(element, scale)``: Gating-ML element for ``t``; exported coordinates = scale × ours."""
    el = StdET.Element(_T + "transformation", {_T + "id": tid})
    if isinstance(t, tr.ArcsinhTransform):  # asinh(x/c) = (M ln10) · fasinh(x; T=c·sinh(M ln10), M, A=0)
        M = 1.0
        StdET.SubElement(el, _T + "fasinh", {_T + "T": _fmt(t.cofactor * np.sinh(M * tr.LN10)),
                                              _T + "M": _fmt(M), _T + "A": "0.0"})
        return el, 1.0 / (M * tr.LN10)
    for kind, (cls, params) in _GML_TRANSFORMS.items():
        if type(t) is cls:
            StdET.SubElement(el, _T + kind, {_T + p: _fmt(getattr(t, p)) for p in params})
            return el, 1.0
    raise UserError(f"transform {t!r} has no Gating-ML 2.0 equivalent and cannot be exported")


def to_gatingml(strategy: GatingStrategy) -> str:
    """Gating-ML 2.0 text for a :class:`GatingStrategy` (round-trips through
    :func:`parse_gatingml` with identical memberships)."""
    StdET.register_namespace("gating", GATING)
    StdET.register_namespace("transforms", TRANSFORMS)
    StdET.register_namespace("data-type", DATATYPE)
    root = StdET.Element(_G + "Gating-ML")
    t_ids: dict[int, tuple[str, float]] = {}
    ratio_done: set[str] = set()
    body: list = []

    def transform_ref(t) -> tuple[str | None, float]:
        if t is None:
            return None, 1.0
        obj = strategy._transform(t)
        if id(obj) not in t_ids:
            tid = t if isinstance(t, str) else f"T{len(t_ids) + 1}"
            el, scale = _transform_element(obj, tid)
            root.append(el)
            t_ids[id(obj)] = (tid, scale)
        return t_ids[id(obj)]

    def dim_el(tag, d: Dimension, extra=None) -> tuple[Any, float]:
        tid, scale = transform_ref(d.transform)
        attrs = {_G + "compensation-ref": d.compensation or "uncompensated"}
        if tid:
            attrs[_G + "transformation-ref"] = tid
        attrs.update(extra or {})
        el = StdET.Element(tag, attrs)
        if isinstance(d, RatioDimension):
            if d.name not in ratio_done:
                r = StdET.Element(_T + "transformation", {_T + "id": d.name})
                f = StdET.SubElement(r, _T + "fratio", {_T + "A": _fmt(d.A), _T + "B": _fmt(d.B), _T + "C": _fmt(d.C)})
                for n in (d.numerator, d.denominator):
                    StdET.SubElement(f, _D + "fcs-dimension", {_D + "name": n})
                root.append(r)
                ratio_done.add(d.name)
            StdET.SubElement(el, _D + "new-dimension", {_D + "transformation-ref": d.name})
        else:
            StdET.SubElement(el, _D + "fcs-dimension", {_D + "name": d.name})
        return el, scale

    for mid, m in strategy.compensations.items():
        el = StdET.SubElement(root, _T + "spectrumMatrix", {_T + "id": mid})
        for tag, names in (("fluorochromes", m.index), ("detectors", m.columns)):
            sec = StdET.SubElement(el, _T + tag)
            for n in names:
                StdET.SubElement(sec, _D + "fcs-dimension", {_D + "name": str(n)})
        for row in m.to_numpy(dtype=np.float64):
            sp = StdET.SubElement(el, _T + "spectrum")
            for v in row:
                StdET.SubElement(sp, _T + "coefficient", {_T + "value": _fmt(v)})

    for g in strategy.gates.values():
        attrs = {_G + "id": g.gate_id}
        if g.parent is not None:
            attrs[_G + "parent_id"] = g.parent
        kind = "EllipsoidGate" if isinstance(g, EllipsoidGate) else type(g).__name__
        gel = StdET.Element(_G + kind, attrs)
        body.append(gel)
        if isinstance(g, RectangleGate):
            for d, (lo, hi) in zip(g.dimensions, g.bounds):
                el, s = dim_el(_G + "dimension", d)
                if lo is not None:
                    el.set(_G + "min", _fmt(lo * s))
                if hi is not None:
                    el.set(_G + "max", _fmt(hi * s))
                gel.append(el)
        elif isinstance(g, PolygonGate):
            scales = []
            for d in g.dimensions:
                el, s = dim_el(_G + "dimension", d)
                gel.append(el)
                scales.append(s)
            for v in g.vertices:
                ve = StdET.SubElement(gel, _G + "vertex")
                for c, s in zip(v, scales):
                    StdET.SubElement(ve, _G + "coordinate", {_D + "value": _fmt(c * s)})
        elif isinstance(g, EllipsoidGate):
            scales = []
            for d in g.dimensions:
                el, s = dim_el(_G + "dimension", d)
                gel.append(el)
                scales.append(s)
            s = np.array(scales)
            me = StdET.SubElement(gel, _G + "mean")
            for c in g.mean * s:
                StdET.SubElement(me, _G + "coordinate", {_D + "value": _fmt(c)})
            ce = StdET.SubElement(gel, _G + "covarianceMatrix")
            for row in g.covariance * np.outer(s, s):
                re_ = StdET.SubElement(ce, _G + "row")
                for v in row:
                    StdET.SubElement(re_, _G + "entry", {_D + "value": _fmt(v)})
            StdET.SubElement(gel, _G + "distanceSquare", {_D + "value": _fmt(g.distance_square)})
        elif isinstance(g, QuadrantGate):
            scale_of = {}
            for dv in g.dividers:
                el, s = dim_el(_G + "divider", dv.dimension, {_G + "id": dv.divider_id})
                for v in dv.values:
                    StdET.SubElement(el, _G + "value").text = _fmt(v * s)
                gel.append(el)
                scale_of[dv.divider_id] = s
            for q in g.quadrants:
                qe = StdET.SubElement(gel, _G + "Quadrant", {_G + "id": q.quadrant_id})
                for did, loc in q.positions.items():
                    StdET.SubElement(qe, _G + "position", {_G + "divider_ref": did,
                                                           _G + "location": _fmt(loc * scale_of[did])})
        elif isinstance(g, BooleanGate):
            op = StdET.SubElement(gel, _G + g.operation)
            for ref, neg in zip(g.operands, g.complement):
                a = {_G + "ref": ref}
                if neg:
                    a[_G + "use-as-complement"] = "true"
                StdET.SubElement(op, _G + "gateReference", a)
        else:
            raise UserError(f"gate {g.gate_id!r}: type {type(g).__name__} cannot be exported to Gating-ML")
    root.extend(body)
    StdET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + StdET.tostring(root, encoding="unicode") + "\n"


def write_gatingml(strategy: GatingStrategy, path: str | Path) -> Path:
    """Write ``strategy`` as a Gating-ML 2.0 file; returns the path."""
    return atomic_write(path, to_gatingml(strategy))
