"""Gating templates: one human-editable YAML hierarchy, data-driven gate positions per sample.

A template lists populations in hierarchy order; each names its ``parent`` and a ``gate``
on marker names. Gate positions are numbers or *threshold specs* resolved on every
sample's own events, so one template serves every file of a trial:

``1.8``
    a fixed position (transformed units for fluorescence, linear for scatter);
``{valley: [lo, hi]}``
    the deepest density minimum of the dimension within ``[lo, hi]``
    (:func:`immunomon.preprocess.density.density_valley`), computed on the parent's events, or
    on the events of ``within: <population>``; ``adjust`` scales the KDE bandwidth;
    ``log: true`` looks for it on a log10 scale (scatter). A position that sits on its
    search bound (no valley between two peaks inside it) is flagged ``at_bound``;
``{valley: auto}``
    searched between the 1st and 99th percentiles of the events (scale-free: the built-in
    ``lineage`` and ``mass`` templates use it, whatever the transform), the valley that best
    separates two populations (:func:`immunomon.preprocess.density.separating_valley`: Otsu's
    criterion among the valleys between density peaks, so that the dips of zero-inflated
    mass-cytometry data or of a dim shoulder are passed over);
``{mad: k}`` / ``{mad: -k}``
    ``median ± k · MAD`` of the dimension in the parent (or ``within``) population.

Gate types (``gate: {type: ...}``):

``rectangle``
    one key per dimension, ``{min: spec, max: spec}`` (a missing bound is open);
    ``min <= x < max``; a single dimension is a range gate; with ``sequential: true``
    each dimension's data-driven positions are resolved on the parent's events already
    inside the bounds of the dimensions listed before it (hierarchical gating in one gate);
``polygon``
    ``x``, ``y``, ``vertices: [[x, y], ...]`` (fixed);
``singlets``
    ``x`` (FSC-A), ``y`` (FSC-H), ``mad: k``: the wedge of events whose ratio ``x / y`` lies
    within ``median ± k · MAD`` of the parent (``ratio_min``/``ratio_max`` fix it);
``not``
    ``of: <population>``: the parent's events outside that population;
``all``
    every event of the parent (a root population after QC).

A population may list alternative gates (``gate: [{...}, {...}]``: the first whose markers the
panel has, e.g. B cells by CD19 or by CD20) and be ``optional: true`` (left out, with its
descendants, when the panel lacks its markers). Marker names match whatever the spelling
(``HLADR`` = ``HLA-DR``, ``CD8a`` = ``CD8``, :func:`immunomon.markernames.find_marker`).

Every manual decision is written in the same file under ``overrides``::

    overrides:
      P07_D8:                       # sample_id
        Treg: {CD127: {max: 3.0}}  # deep-merged into the Treg gate
        positivity: {Ki67: 2.2}     # marker positivity threshold

A template is applied with :meth:`GatingTemplate.apply`, which returns the memberships,
the resolved gates (:mod:`immunomon.gating.gates` objects) and a table of every position
used with its source (``fixed``, ``valley``, ``mad``, ``override``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml

from immunomon.errors import UserError
from immunomon.events import frame_columns
from immunomon.gating.gates import BooleanGate, Gate, GatingStrategy, PolygonGate, RectangleGate
from immunomon.gating.statistics import ParameterSpec
from immunomon.markernames import find_marker
from immunomon.preprocess.density import (MAD_SCALE, PROBE_EVENTS, VALLEY_EVENTS, at_bound,
                                          density_valley, median, separating_valley)

THRESHOLD_COLUMNS = ["sample_id", "population", "dimension", "bound", "value", "source", "at_bound"]
GATE_TYPES = ("rectangle", "polygon", "singlets", "not", "all")
#: Percentiles of the events between which ``{valley: auto}`` searches.
AUTO_BOUNDS = (1.0, 99.0)


def builtin_template_path(name: str) -> Path:
    """Path of a built-in template (``"treg"`` → ``gating/templates/treg.yaml``)."""
    return Path(str(resources.files("immunomon.gating").joinpath("templates", f"{name}.yaml")))


class AllEvents(Gate):
    """Every event (the ``all`` gate type: a root population of QC-passed events)."""

    def evaluate(self, data: Mapping[str, Any]) -> np.ndarray:
        n = len(next(iter(data.values()))) if len(data) else 0
        return np.ones(n, dtype=bool)


def _gate_markers(g: Mapping) -> list[str]:
    """Markers a gate spec uses."""
    kind = g.get("type")
    if kind in ("polygon", "singlets"):
        return [g["x"], g["y"]]
    if kind in ("not", "all"):
        return []
    return [k for k in g if k not in ("type", "sequential")]


def _rename_gate(g: Mapping, names: Mapping[str, str]) -> dict:
    """A gate spec with its markers renamed to the panel's column names."""
    out = dict(g)
    if g.get("type") in ("polygon", "singlets"):
        out["x"], out["y"] = names.get(g["x"], g["x"]), names.get(g["y"], g["y"])
    elif g.get("type") == "rectangle":
        out = {names.get(k, k): v for k, v in g.items()}
    return out


@dataclass
class PopulationSpec:
    """One population of a template: name, parent, gate spec (as in the YAML; a list =
    alternatives, the first whose markers exist), plot axes, and whether it is optional."""

    name: str
    parent: str | None
    gate: dict | list
    plot: tuple[str, str] | None = None
    optional: bool = False

    @property
    def gates(self) -> list[dict]:
        return list(self.gate) if isinstance(self.gate, list) else [self.gate]


@dataclass
class TemplateGating:
    """A template applied to one sample.

    Attributes
    ----------
    memberships
        Population → bool array ``(n_events,)`` including its ancestors, hierarchy order.
    gates
        Population → the resolved :class:`~immunomon.gating.gates.Gate` (positions are this
        sample's).
    parents
        Population → parent population (``None`` at the top).
    plots
        Population → ``(x, y)`` marker names of its bivariate plot (None: not drawn).
    positivity
        Marker → positivity threshold (transformed scale).
    thresholds
        Every resolved position: :data:`THRESHOLD_COLUMNS`.
    parameters
        What the ``parameters`` table reports for this sample: the template's list without
        the populations and markers this panel lacks.
    """

    memberships: dict[str, np.ndarray]
    gates: dict[str, Gate]
    parents: dict[str, str | None]
    plots: dict[str, tuple[str, str]]
    positivity: dict[str, float]
    thresholds: pd.DataFrame
    parameters: ParameterSpec = field(default_factory=ParameterSpec)

    def strategy(self) -> GatingStrategy:
        """The resolved gates as a :class:`~immunomon.gating.gates.GatingStrategy` (on the
        already compensated/transformed marker columns), e.g. for Gating-ML export."""
        return GatingStrategy(list(self.gates.values()))


def _deep_merge(base: Mapping, update: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


@dataclass
class GatingTemplate:
    """A gating hierarchy with data-driven positions (see the module docstring).

    Parameters
    ----------
    name
        Template name (e.g. ``treg``).
    populations
        Populations in hierarchy order (parents first).
    positivity
        Marker → threshold spec for ``<pop> <marker>+ %`` and ``pct_positive``
        (``within`` names the population the spec is resolved on; default the root).
    parameters
        What the ``parameters`` table reports.
    overrides
        ``sample_id`` → population (or ``positivity``) → partial spec, deep-merged.
    source
        Where the template was read from (for messages).
    """

    name: str
    populations: list[PopulationSpec]
    positivity: dict[str, Any] = field(default_factory=dict)
    parameters: ParameterSpec = field(default_factory=ParameterSpec)
    overrides: dict[str, dict] = field(default_factory=dict)
    source: str = "<template>"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, template: str | Path) -> "GatingTemplate":
        """Read a template: a built-in name (``"treg"``) or a YAML file path."""
        path = Path(template)
        if not path.suffix and not path.exists():
            path = builtin_template_path(str(template))
        if not path.is_file():
            raise UserError(f"{template}: gating template not found (built-in names: treg)")
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({err})") from None
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: Any, source: str = "<template>") -> "GatingTemplate":
        """Build and validate a template from its YAML mapping; every problem is listed."""
        if not isinstance(doc, Mapping):
            raise UserError(f"{source}: a template is a mapping with 'populations'")
        problems: list[str] = []
        pops: list[PopulationSpec] = []
        seen: set[str] = set()
        for i, p in enumerate(doc.get("populations") or []):
            where = f"{source}: populations[{i}]"
            if not isinstance(p, Mapping) or "name" not in p or "gate" not in p:
                problems.append(f"{where}: needs 'name' and 'gate'")
                continue
            name, parent, gate = str(p["name"]), p.get("parent"), p["gate"]
            if parent is not None and parent not in seen:
                problems.append(f"{where} ({name}): parent {parent!r} is not defined above it")
            if name in seen:
                problems.append(f"{where}: population {name!r} defined twice")
            alternatives = gate if isinstance(gate, list) and gate else [gate]
            for g in alternatives:
                if not isinstance(g, Mapping) or g.get("type") not in GATE_TYPES:
                    problems.append(f"{where} ({name}): gate type must be one of {list(GATE_TYPES)}")
                elif g["type"] == "not" and g.get("of") not in seen:
                    problems.append(f"{where} ({name}): 'of' must name a population defined above")
            plot = p.get("plot")
            if plot is not None and (not isinstance(plot, list) or len(plot) != 2):
                problems.append(f"{where} ({name}): plot must be [x, y]")
            seen.add(name)
            gates = [dict(g) if isinstance(g, Mapping) else {} for g in alternatives]
            pops.append(PopulationSpec(name, parent, gates if len(gates) > 1 else gates[0],
                                       tuple(plot) if plot else None, bool(p.get("optional", False))))
        if not pops:
            problems.append(f"{source}: no populations")
        try:
            params = ParameterSpec.from_dict(doc.get("parameters"))
            missing = sorted(params.populations() - seen)
            if missing:
                problems.append(f"{source}: parameters name undefined populations {missing}")
        except (ValueError, TypeError) as err:
            problems.append(f"{source}: parameters: {err}")
            params = ParameterSpec()
        overrides = doc.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            problems.append(f"{source}: overrides must map sample_id to gate changes")
            overrides = {}
        for sid, changes in overrides.items():
            if not isinstance(changes, Mapping):
                problems.append(f"{source}: overrides.{sid}: must map population names to changes")
                continue
            for key in changes:
                if key != "positivity" and key not in seen:
                    problems.append(f"{source}: overrides.{sid}: unknown population {key!r}")
        for marker, spec in (doc.get("positivity") or {}).items():
            if isinstance(spec, Mapping) and spec.get("within", next(iter(seen), None)) not in seen:
                problems.append(f"{source}: positivity.{marker}: 'within' names an undefined population")
        for where, key in _non_string_keys(doc):
            problems.append(f"{source}: {where}: key {key!r} is not text (YAML reads on/off/yes/no as "
                            "booleans; quote it)")
        if problems:
            raise UserError(problems)
        return cls(str(doc.get("name", Path(source).stem)), pops, dict(doc.get("positivity") or {}), params,
                   {str(k): dict(v) for k, v in overrides.items()}, source)

    # ------------------------------------------------------------------ applying
    @property
    def population_names(self) -> list[str]:
        return [p.name for p in self.populations]

    def markers(self) -> list[str]:
        """Every marker a gate (any alternative), plot or positivity threshold of the template
        uses."""
        names: list[str] = []
        for p in self.populations:
            for m in [*(m for g in p.gates for m in _gate_markers(g)), *(p.plot or ())]:
                if m not in names:
                    names.append(m)
        return names + [m for m in self.positivity if m not in names]

    def resolve(self, columns: list[str], sample_id: str = "") -> tuple[list[PopulationSpec], dict[str, str]]:
        """The populations this panel can gate — each with the first gate alternative whose
        markers it has, optional populations (and their descendants) without one left out —
        and the template marker → column name mapping. A required population the panel
        cannot gate is a :class:`UserError` naming the missing markers."""
        names = {m: find_marker(m, columns) for m in self.markers()}
        kept: list[PopulationSpec] = []
        present: set[str] = set()
        missing_required: list[str] = []
        for p in self.populations:
            if p.parent is not None and p.parent not in present:
                continue
            gate = next((g for g in p.gates if all(names.get(m) for m in _gate_markers(g))), None)
            if gate is not None and gate.get("type") == "not" and gate.get("of") not in present:
                gate = None
            if gate is None:
                if not p.optional:
                    lacking = sorted({m for g in p.gates for m in _gate_markers(g) if not names.get(m)})
                    missing_required.append(f"{p.name} ({', '.join(lacking) or 'its reference population'})")
                continue
            plot = tuple(names.get(m) or m for m in p.plot) if p.plot else None
            if plot and not all(m in columns for m in plot):
                plot = None
            kept.append(PopulationSpec(p.name, p.parent, _rename_gate(gate, names), plot, p.optional))
            present.add(p.name)
        if missing_required:
            raise UserError(f"{self.source}: marker(s) used by the template are not in sample "
                            f"{sample_id!r}: populations {'; '.join(missing_required)} "
                            f"(columns: {list(columns)})")
        return kept, {m: c for m, c in names.items() if c}

    def apply(self, events: pd.DataFrame, sample_id: str = "") -> TemplateGating:
        """Resolve the template's positions on one sample's events and gate them.

        Parameters
        ----------
        events
            ``(n_events, n_markers)`` QC-passed events, columns = marker names
            (fluorescence transformed, scatter linear).
        sample_id
            Selects the sample's ``overrides``; written in the thresholds table.
        """
        populations, names = self.resolve(list(events.columns), sample_id)
        columns = frame_columns(events)
        used = {m for p in populations for g in p.gates for m in _gate_markers(g)}
        cols = {m: columns[m] for m in used | {names[m] for m in self.positivity if m in names}}
        n = len(events)
        override = self.overrides.get(sample_id, {})
        memberships: dict[str, np.ndarray] = {}
        indices: dict[str | None, np.ndarray] = {None: np.arange(n)}
        gates: dict[str, Gate] = {}
        rows: list[tuple] = []
        resolver = _Resolver(cols, indices, sample_id, rows)
        for pop in populations:
            changes = {names.get(k, k): v for k, v in override.get(pop.name, {}).items()}
            spec = _deep_merge(pop.gate, changes) if changes else pop.gate
            resolver.override = changes
            gate = resolver.gate(pop.name, pop.parent, spec)
            parent = memberships.get(pop.parent)  # None: the root population
            if isinstance(gate, AllEvents):
                mask = parent.copy() if parent is not None else np.ones(n, dtype=bool)
                indices[pop.name] = np.flatnonzero(mask)
            elif isinstance(gate, (BooleanGate, RectangleGate)):  # cheap per event: on every event
                mask = gate.evaluate(memberships if isinstance(gate, BooleanGate) else cols)
                mask = mask & parent if parent is not None else mask
                indices[pop.name] = np.flatnonzero(mask)
            else:  # polygons: on the parent's events only
                idx = indices[pop.parent]
                indices[pop.name] = idx[gate.evaluate({d.name: cols[d.name][idx] for d in gate.dimensions})]
                mask = np.zeros(n, dtype=bool)
                mask[indices[pop.name]] = True
            memberships[pop.name] = mask
            gates[pop.name] = gate
        positivity = {}
        root = populations[0].name
        for marker, spec in self.positivity.items():
            column = names.get(marker)
            on = spec.get("within", root) if isinstance(spec, Mapping) else root
            if column is None or on not in memberships:
                continue  # the panel lacks the marker or the population it is resolved on
            changed = marker in override.get("positivity", {})
            spec = override["positivity"][marker] if changed else spec
            positivity[column] = resolver.value(spec, column, on, "positivity", "min", overridden=changed)
        parents = {p.name: p.parent for p in populations}
        plots = {p.name: p.plot or _default_plot(gates[p.name], list(events.columns)) for p in populations}
        return TemplateGating(memberships, gates, parents, plots, positivity,
                              pd.DataFrame(rows, columns=THRESHOLD_COLUMNS),
                              self.parameters.restricted(set(memberships), names))


def _non_string_keys(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """(location, key) of every mapping key that is not a string, recursively."""
    out = []
    if isinstance(node, Mapping):
        for k, v in node.items():
            if not isinstance(k, str):
                out.append((where or "top level", k))
            out += _non_string_keys(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _non_string_keys(v, f"{where}[{i}]")
    return out


def _default_plot(gate: Gate, columns: list[str]) -> tuple[str, str] | None:
    """The axes a gate is drawn on: its two dimensions, or its one against SSC-A (None when
    the panel has no such column, e.g. mass cytometry, or the gate has no dimension)."""
    names = [d.name for d in gate.dimensions]
    if len(names) >= 2:
        return names[0], names[1]
    return (names[0], "SSC-A") if names and "SSC-A" in columns else None


class _Resolver:
    """Turns template gate specs into gate objects for one sample, logging each position."""

    def __init__(self, cols: dict[str, np.ndarray], indices: dict, sample_id: str, rows: list):
        self.cols, self.indices, self.sample_id, self.rows = cols, indices, sample_id, rows
        self.override: Mapping = {}  # the current population's overrides
        self.cache: dict[tuple, float] = {}

    def value(self, spec: Any, dim: str, on: str | None, population: str, bound: str,
              idx: np.ndarray | None = None, overridden: bool = False) -> float | None:
        """Resolve one position; data-driven specs use the events of ``spec["within"]``, else
        ``idx`` (row indices), else the events of population ``on``. ``overridden`` marks
        a position set by the sample's overrides (source ``override``)."""
        if spec is None:
            return None
        source = "override" if overridden else None
        bounded = False
        if isinstance(spec, (int, float)):
            value, source = float(spec), source or "fixed"
        elif isinstance(spec, Mapping) and ("valley" in spec or "mad" in spec):
            key = None
            if "within" in spec or idx is None:
                on = spec.get("within", on)
                if on not in self.indices:
                    raise UserError(f"{population}: threshold on unknown or later population {on!r}")
                idx = self.indices[on]
                key = (dim, on, repr(sorted(spec.items())))  # e.g. the CD3 valley of T, B and NK
            kind = "valley" if "valley" in spec else "mad"
            source = source or kind
            if key in self.cache:
                value, bounded = self.cache[key]
                self.rows.append((self.sample_id, population, dim, bound, value, source, bounded))
                return value
            if "valley" in spec and not spec.get("log") and idx.size > VALLEY_EVENTS:  # gather only what
                # density_valley uses (the same evenly strided subset)
                idx = idx[:: int(np.ceil(idx.size / VALLEY_EVENTS))]
            x = self.cols[dim][idx]
            if "valley" in spec:
                adjust = float(spec.get("adjust", 0.5))
                if spec["valley"] == "auto":
                    value, bounded = _auto_valley(x, adjust)
                else:
                    lo, hi = (float(b) for b in spec["valley"])
                    if spec.get("log"):
                        x = np.log10(x[x > 0])
                        found = density_valley(x, (np.log10(lo), np.log10(hi)), adjust=adjust)
                        bounded = at_bound(found, (np.log10(lo), np.log10(hi)))
                        value = 10.0 ** found
                    else:
                        value = density_valley(x, (lo, hi), adjust=adjust)
                        bounded = at_bound(value, (lo, hi))
            else:
                med = float(median(x)[0]) if x.size else float("nan")
                mad = MAD_SCALE * float(median(np.abs(x - med))[0]) if x.size else float("nan")
                value = med + float(spec["mad"]) * mad
            if key is not None:
                self.cache[key] = (value, bounded)
        else:
            raise UserError(f"{population}: {dim} {bound}: {spec!r} is not a number, valley or mad spec")
        self.rows.append((self.sample_id, population, dim, bound, value, source, bounded))
        return value

    def gate(self, name: str, parent: str | None, spec: Mapping) -> Gate:
        kind = spec["type"]
        if kind == "rectangle":
            dims = [k for k in spec if k not in ("type", "sequential")]
            idx = None  # None: the parent's events
            bounds = []
            for d in dims:
                changed = self.override.get(d) or {}
                lo = self.value(spec[d].get("min"), d, parent, name, "min", idx, "min" in changed)
                hi = self.value(spec[d].get("max"), d, parent, name, "max", idx, "max" in changed)
                bounds.append((lo, hi))
                if spec.get("sequential"):  # the next dimension is resolved inside this one's bounds
                    idx = self.indices[parent] if idx is None else idx
                    x = self.cols[d][idx]
                    idx = idx[((x >= lo) if lo is not None else True) & ((x < hi) if hi is not None else True)]
            return RectangleGate(name, dims, parent, bounds=bounds)
        if kind == "polygon":
            return PolygonGate(name, [spec["x"], spec["y"]], parent, vertices=spec["vertices"])
        if kind == "all":
            return AllEvents(name, [], parent)
        if kind == "singlets":
            return self._singlets(name, parent, spec)
        return BooleanGate(name, [], parent, operation="not", operands=[spec["of"]])

    def _singlets(self, name: str, parent: str | None, spec: Mapping) -> PolygonGate:
        x, y = spec["x"], spec["y"]
        idx = self.indices[parent]
        a, h = self.cols[x][idx].astype(np.float64), self.cols[y][idx].astype(np.float64)
        ok = h > 0
        ratio = a[ok] / h[ok]
        ratio = ratio[:: max(1, ratio.size // PROBE_EVENTS)]
        k = float(spec.get("mad", 4.0))
        med = float(median(ratio)[0]) if ratio.size else 1.0
        mad = MAD_SCALE * float(median(np.abs(ratio - med))[0]) if ratio.size else 0.0
        lo = float(spec["ratio_min"]) if "ratio_min" in spec else max(med - k * mad, 1e-3)
        hi = float(spec["ratio_max"]) if "ratio_max" in spec else med + k * mad
        for bound, value in (("min", lo), ("max", hi)):
            key = f"ratio_{bound}"
            source = "override" if key in self.override or "mad" in self.override else (
                "fixed" if key in spec else "mad")
            self.rows.append((self.sample_id, name, f"{x}/{y}", bound, value, source, False))
        top = float(spec.get("extent", 1e7))
        vertices = [(0.0, 0.0), (top, top / hi), (top, top / lo)]
        return PolygonGate(name, [x, y], parent, vertices=vertices)


def _auto_valley(x: np.ndarray, adjust: float) -> tuple[float, bool]:
    """``{valley: auto}``: the deepest valley between the :data:`AUTO_BOUNDS` percentiles of
    ``x``; returns ``(value, at_bound)``."""
    x = x[np.isfinite(x)]
    if x.size < 10:
        return float("nan"), True
    lo, hi = (float(v) for v in np.percentile(x, AUTO_BOUNDS))
    if not lo < hi:
        return lo, True
    value, found = separating_valley(x, (lo, hi), adjust=adjust)
    return value, not found


def load_template(template: str | Path) -> GatingTemplate:
    """Shorthand for :meth:`GatingTemplate.load`."""
    return GatingTemplate.load(template)
