"""Population statistics of one gated sample and the ``parameters`` table.

Inputs are the gating result of one sample — a mapping population → boolean membership
over the sample's events (each membership already includes its ancestors) and the
population → parent mapping — plus the events table (columns = marker names).

Units and scales
----------------
* ``freq_parent`` and ``freq_total`` (populations table) are fractions in [0, 1], as in the
  simulator's ``truth/populations.csv``; ``freq_total`` is relative to the events given (the
  QC-passed events of the file). Every ``% of`` and ``+ %`` parameter is a percentage (0–100).
* ``abs_per_ul`` = ``count / count(Lymphocytes) × lymphocytes_per_ul`` (cells per µL of
  blood), when the manifest gives the lymphocyte count; NaN otherwise.
* Marker intensities are reported on the **linear scale** (compensated fluorescence, the
  units of the FCS file), like FlowJo's MFI: ``median`` is the median of the transformed
  values mapped back through the inverse transform (the transform is monotone, so this is
  the median event's linear value); ``geo_mean`` is the *generalised geometric mean*
  ``T⁻¹(mean(T(x)))`` where ``T`` is the panel's transform. For arcsinh,
  ``geo_mean = c · sinh(mean(asinh(x / c)))``: defined for zero and negative values, and
  equal to the usual geometric mean for ``x ≫ c``. Markers without a transform (scatter)
  are reported as they are (``geo_mean`` is then the arithmetic mean).
* ``pct_positive`` is the percentage of the population's events above the marker's
  positivity threshold (on the transformed scale); NaN for markers without a threshold.
* The ``parameters`` table's ``value`` is linear; for intensity measures (``median``,
  ``gmfi``) ``value_transformed`` is the same statistic on the panel's transformed scale
  (the median of the transformed values; the mean of the transformed values for gMFI) and
  ``transform`` names that scale (``arcsinh(150)``): differences of these are the effects
  diffcyt reports. Other measures: NaN and "".

Parameter strings (docs/architecture.md): ``<pop> % of <denominator>``, ``<pop> count/uL``,
``<pop> <marker>+ %``, ``<marker> median in <pop>``, ``<marker> gMFI in <pop>``,
``<a>/<b> ratio``; the ``measure`` column says which (``percent``, ``count_per_ul``,
``pct_positive``, ``median``, ``gmfi``, ``ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

POPULATIONS_COLUMNS = ["sample_id", "population", "path", "parent", "count", "freq_parent", "freq_total", "abs_per_ul"]
MARKERS_COLUMNS = ["sample_id", "population", "marker", "median", "geo_mean", "pct_positive"]
PARAMETERS_COLUMNS = ["sample_id", "parameter", "population", "measure", "value", "value_transformed",
                      "transform"]


def transform_label(transform: Any) -> str:
    """A transform as text for tables and methods: ``arcsinh(150)``,
    ``logicle(T=262144, W=0.5, M=4.5, A=0)``; ``""`` for none (linear)."""
    if transform is None:
        return ""
    name = type(transform).__name__.removesuffix("Transform").lower()
    if name == "arcsinh":
        return f"arcsinh({transform.cofactor:g})"
    fields = getattr(transform, "__dataclass_fields__", {})
    args = ", ".join(f"{k}={getattr(transform, k):g}" for k in fields
                     if not k.startswith("_") and isinstance(getattr(transform, k), (int, float)))
    return f"{name}({args})"


def ancestors(population: str, parents: Mapping[str, str | None]) -> list[str]:
    """Ancestors of ``population``, root first, following ``parents`` (population → parent)."""
    chain = []
    p = parents.get(population)
    while p is not None:
        chain.append(p)
        p = parents.get(p)
    return chain[::-1]


def _fraction(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _percent(num: float, den: float) -> float:
    return 100.0 * _fraction(num, den)


def population_table(
    memberships: Mapping[str, np.ndarray],
    parents: Mapping[str, str | None],
    *,
    sample_id: str = "",
    lymphocytes_per_ul: float | None = None,
    reference: str = "Lymphocytes",
) -> pd.DataFrame:
    """One row per population: count, fraction of parent, fraction of total, count per µL.

    Parameters
    ----------
    memberships
        Population → bool array ``(n_events,)`` (including ancestors), in hierarchy order.
    parents
        Population → parent population (``None`` for a top-level gate).
    lymphocytes_per_ul
        Lymphocytes per µL of blood for this sample; NaN/None leaves ``abs_per_ul`` NaN.
    reference
        The population whose count corresponds to ``lymphocytes_per_ul``.

    Returns
    -------
    pd.DataFrame
        Columns :data:`POPULATIONS_COLUMNS`; frequencies are fractions in [0, 1].
    """
    counts = {p: int(np.count_nonzero(m)) for p, m in memberships.items()}
    total = len(next(iter(memberships.values()))) if memberships else 0
    per_ul = float("nan")
    if lymphocytes_per_ul is not None and np.isfinite(lymphocytes_per_ul) and counts.get(reference, 0) > 0:
        per_ul = float(lymphocytes_per_ul) / counts[reference]
    rows = []
    for pop, n in counts.items():
        parent = parents.get(pop)
        den = counts[parent] if parent is not None else total
        path = "/".join([*ancestors(pop, parents), pop])
        rows.append((sample_id, pop, path, parent or "", n, _fraction(n, den), _fraction(n, total), n * per_ul))
    df = pd.DataFrame(rows, columns=POPULATIONS_COLUMNS)
    return df.astype({"count": "int64", "freq_parent": "float64", "freq_total": "float64", "abs_per_ul": "float64"})


def ancestor_table(populations: pd.DataFrame) -> pd.DataFrame:
    """Percentage of every population in each of its named ancestors.

    Parameters
    ----------
    populations
        Output of :func:`population_table` (any number of samples).

    Returns
    -------
    pd.DataFrame
        Columns ``sample_id, population, ancestor, percent`` (0–100), one row per sample ×
        population × ancestor (parent included); ``<population> % of <ancestor>``.
    """
    rows = []
    for sid, block in populations.groupby("sample_id", sort=False):
        counts = dict(zip(block["population"], block["count"]))
        for pop, path in zip(block["population"], block["path"]):
            for anc in path.split("/")[:-1]:
                rows.append((sid, pop, anc, _percent(counts[pop], counts[anc])))
    return pd.DataFrame(rows, columns=["sample_id", "population", "ancestor", "percent"])


def _linear(values: np.ndarray, transform: Any) -> np.ndarray:
    return np.asarray(transform.inverse_transform(values), dtype=np.float64) if transform is not None else values


def marker_table(
    events: pd.DataFrame,
    memberships: Mapping[str, np.ndarray],
    markers: Sequence[str],
    *,
    transforms: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, float] | None = None,
    sample_id: str = "",
) -> pd.DataFrame:
    """Median, generalised geometric mean and % positive per population × marker.

    Parameters
    ----------
    events
        ``(n_events, ...)`` table, columns include ``markers``; fluorescence on the
        transformed scale.
    markers
        Markers to summarise.
    transforms
        Marker → transform object (with ``inverse_transform``) that produced the values; markers
        absent here are on a linear scale already.
    thresholds
        Marker → positivity threshold on the transformed scale.

    Returns
    -------
    pd.DataFrame
        Columns :data:`MARKERS_COLUMNS` (+ ``n``, the population's event count, and
        ``median_transformed``, ``mean_transformed``, ``transform``: the statistics on the
        transformed scale and its name, NaN / "" for untransformed markers); median and
        geo_mean on the linear scale, pct_positive in 0–100. Empty populations give NaN.
    """
    transforms = transforms or {}
    thresholds = thresholds or {}
    markers = list(markers)
    x = events[markers].to_numpy(dtype=np.float64)
    thr = np.array([thresholds.get(m, np.nan) for m in markers], dtype=np.float64)
    labels = [transform_label(transforms.get(m)) for m in markers]
    rows = []
    for pop, mask in memberships.items():
        sub = x[np.asarray(mask, dtype=bool)]
        n = sub.shape[0]
        if n:
            med = np.median(sub, axis=0)
            mean = sub.mean(axis=0)
            with np.errstate(invalid="ignore"):
                pos = np.where(np.isnan(thr), np.nan, 100.0 * (sub > thr).mean(axis=0))
        else:
            med = mean = pos = np.full(len(markers), np.nan)
        for j, marker in enumerate(markers):
            t = transforms.get(marker)
            rows.append((sample_id, pop, marker, float(_linear(med[j : j + 1], t)[0]),
                         float(_linear(mean[j : j + 1], t)[0]), float(pos[j]), n,
                         float(med[j]) if t is not None else np.nan,
                         float(mean[j]) if t is not None else np.nan, labels[j]))
    return pd.DataFrame(rows, columns=MARKERS_COLUMNS + ["n", "median_transformed", "mean_transformed",
                                                         "transform"]).astype({"n": "int64"})


@dataclass
class ParameterSpec:
    """Which parameters a template reports (besides ``<pop> % of <parent>``, always).

    Attributes
    ----------
    percent_of
        Population → extra denominators (named ancestors), e.g. ``{"Treg": ["Lymphocytes"]}``.
    count_per_ul
        Populations reported as ``<pop> count/uL`` (when the lymphocyte count is known).
    positive
        Population → markers reported as ``<pop> <marker>+ %``.
    median, gmfi
        Population → markers reported as ``<marker> median in <pop>`` / ``<marker> gMFI in
        <pop>`` (linear scale).
    ratios
        ``(a, b)`` pairs reported as ``<a>/<b> ratio`` (count of a / count of b).
    exclude
        Parameter strings left out (e.g. ``Singlets % of Cells``, ~100 % after QC).
    """

    percent_of: dict[str, list[str]] = field(default_factory=dict)
    count_per_ul: list[str] = field(default_factory=list)
    positive: dict[str, list[str]] = field(default_factory=dict)
    median: dict[str, list[str]] = field(default_factory=dict)
    gmfi: dict[str, list[str]] = field(default_factory=dict)
    ratios: list[tuple[str, str]] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ParameterSpec":
        """Build from the ``parameters:`` mapping of a template (missing keys = empty)."""
        d = dict(d or {})
        unknown = set(d) - {"percent_of", "count_per_ul", "positive", "median", "gmfi", "ratios", "exclude"}
        if unknown:
            raise ValueError(f"unknown parameter kinds {sorted(unknown)}")
        return cls(
            percent_of={k: list(v) for k, v in (d.get("percent_of") or {}).items()},
            count_per_ul=list(d.get("count_per_ul") or []),
            positive={k: list(v) for k, v in (d.get("positive") or {}).items()},
            median={k: list(v) for k, v in (d.get("median") or {}).items()},
            gmfi={k: list(v) for k, v in (d.get("gmfi") or {}).items()},
            ratios=[tuple(r) for r in (d.get("ratios") or [])],
            exclude=[str(p) for p in (d.get("exclude") or [])],
        )

    def restricted(self, populations: set[str], markers: Mapping[str, str]) -> "ParameterSpec":
        """The parameters a panel can report: entries naming a population not in
        ``populations`` or a marker not in ``markers`` (template name → column name) left
        out, marker names replaced by the panel's column names."""
        def names(ms):
            return [markers[m] for m in ms if m in markers]

        return ParameterSpec(
            percent_of={p: [d for d in ds if d in populations]
                        for p, ds in self.percent_of.items() if p in populations},
            count_per_ul=[p for p in self.count_per_ul if p in populations],
            positive={p: names(ms) for p, ms in self.positive.items() if p in populations},
            median={p: names(ms) for p, ms in self.median.items() if p in populations},
            gmfi={p: names(ms) for p, ms in self.gmfi.items() if p in populations},
            ratios=[(a, b) for a, b in self.ratios if a in populations and b in populations],
            exclude=list(self.exclude),
        )

    def populations(self) -> set[str]:
        """Every population named anywhere in the spec."""
        names = set(self.percent_of) | set(self.count_per_ul) | set(self.positive) | set(self.median) | set(self.gmfi)
        for dens in self.percent_of.values():
            names |= set(dens)
        for a, b in self.ratios:
            names |= {a, b}
        return names


def parameter_table(populations: pd.DataFrame, markers: pd.DataFrame, spec: ParameterSpec) -> pd.DataFrame:
    """The ``parameters`` rows of one sample from its population and marker tables.

    Parameters
    ----------
    populations
        Output of :func:`population_table` (one sample).
    markers
        Output of :func:`marker_table` (same sample).
    spec
        What to report besides ``<pop> % of <parent>`` for every population with a parent
        (minus ``spec.exclude``).

    Returns
    -------
    pd.DataFrame
        Columns :data:`PARAMETERS_COLUMNS`; ``value`` is NaN where a denominator is 0 or
        the lymphocyte count is unknown.
    """
    sid = populations["sample_id"].iloc[0] if len(populations) else ""
    counts = dict(zip(populations["population"], populations["count"]))
    per_ul = dict(zip(populations["population"], populations["abs_per_ul"]))
    parents = {p: (q or None) for p, q in zip(populations["population"], populations["parent"])}
    mk = markers.set_index(["population", "marker"])
    rows: list[tuple] = []

    def add(parameter: str, population: str, measure: str, value: float,
            transformed: float = float("nan"), transform: str = "") -> None:
        if parameter not in spec.exclude:
            rows.append((sid, parameter, population, measure, float(value), float(transformed), transform))

    def scaled(pop: str, m: str, column: str) -> tuple[float, str]:
        if "transform" not in mk.columns:
            return float("nan"), ""
        return float(mk.at[(pop, m), column]), str(mk.at[(pop, m), "transform"] or "")

    for pop in counts:
        dens = ([parents[pop]] if parents[pop] else []) + [d for d in spec.percent_of.get(pop, []) if d != parents[pop]]
        for den in dens:
            add(f"{pop} % of {den}", pop, "percent", _percent(counts[pop], counts[den]))
    for pop in spec.count_per_ul:
        add(f"{pop} count/uL", pop, "count_per_ul", per_ul[pop])
    for pop, names in spec.positive.items():
        for m in names:
            add(f"{pop} {m}+ %", pop, "pct_positive", mk.at[(pop, m), "pct_positive"])
    for pop, names in spec.median.items():
        for m in names:
            add(f"{m} median in {pop}", pop, "median", mk.at[(pop, m), "median"],
                *scaled(pop, m, "median_transformed"))
    for pop, names in spec.gmfi.items():
        for m in names:
            add(f"{m} gMFI in {pop}", pop, "gmfi", mk.at[(pop, m), "geo_mean"],
                *scaled(pop, m, "mean_transformed"))
    for a, b in spec.ratios:
        add(f"{a}/{b} ratio", a, "ratio", counts[a] / counts[b] if counts[b] > 0 else float("nan"))
    return pd.DataFrame(rows, columns=PARAMETERS_COLUMNS).astype({"value_transformed": "float64",
                                                                  "transform": "object"})
