"""Name metaclusters from a marker table (YAML, user-editable).

The default table, :file:`markers.yaml` next to this module, covers the common lineages of
human blood (T cells and their subsets, Tregs, γδ T, B cells by CD19 or CD20, plasmablasts,
NK subsets, monocyte subsets, pDC, mDC, basophils, neutrophils), e.g.
``Treg: CD3+ CD4+ CD25+ CD127- FOXP3+``; ``A | B`` gives alternative rule sets (``B cells:
CD3- CD19+ | CD3- CD20+``). Marker names match the panel's whatever the spelling
(:func:`immunomon.markernames.find_marker`). Each marker gets a threshold (from the table,
or Otsu's split of the cluster medians), each rule a signed margin ``(median − threshold) /
sd`` in pooled within-cluster SDs, and each cluster the most specific population whose rules
it satisfies, with a confidence in ``[0, 1]``. Several clusters may carry the same population;
``label_rank`` orders them by confidence (1 = best match).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from immunomon.errors import UserError
from immunomon.markernames import find_marker

__all__ = ["MarkerTable", "load_marker_table", "otsu_threshold", "annotate_clusters", "UNASSIGNED"]

UNASSIGNED = "unassigned"
_RULE = re.compile(r"^(?P<marker>.+?)(?P<level>\+|-|hi|lo)$")
_SIGN = {"+": 1, "hi": 1, "-": -1, "lo": -1}


@dataclass
class MarkerTable:
    """Parsed marker table: population → alternative rule sets ({marker: +1 / −1} each),
    thresholds and settings."""

    populations: dict[str, list[dict[str, int]]]
    thresholds: dict[str, float] = field(default_factory=dict)
    min_margin: float = 0.5
    full_margin: float = 2.0
    min_fraction: float = 0.8
    min_confidence: float = 0.2


def load_marker_table(path: str | Path | None = None) -> MarkerTable:
    """Read a marker table YAML (default: the built-in Treg-panel table).

    Raises :class:`UserError` naming the file and the population of every bad rule.
    """
    if path is None:
        text = resources.files("immunomon.clustering").joinpath("markers.yaml").read_text()
        where = "markers.yaml (built-in)"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise UserError(f"{path}: cannot read marker table ({err.strerror})") from err
        where = str(path)
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({err})") from err
    problems, populations = [], {}
    for name, rules in (doc.get("populations") or {}).items():
        text = rules if isinstance(rules, str) else " ".join(map(str, rules or []))
        alternatives = []
        for part in text.split("|"):
            parsed = {}
            for token in part.split():
                m = _RULE.match(str(token))
                if not m:
                    problems.append(f"{where}: population {name!r}: rule {token!r} is not "
                                    f"<marker>+|-|hi|lo")
                    continue
                parsed[m["marker"]] = _SIGN[m["level"]]
            if parsed:
                alternatives.append(parsed)
        if not alternatives:
            problems.append(f"{where}: population {name!r} has no rules")
        populations[str(name)] = alternatives
    if not populations:
        problems.append(f"{where}: no populations")
    if problems:
        raise UserError(problems)
    settings = {k: float(doc[k]) for k in ("min_margin", "full_margin", "min_fraction", "min_confidence") if k in doc}
    thresholds = {str(k): float(v) for k, v in (doc.get("thresholds") or {}).items()}
    return MarkerTable(populations=populations, thresholds=thresholds, **settings)


def otsu_threshold(values: np.ndarray) -> float:
    """Split point maximising the between-group variance of ``values`` (midpoint of the gap)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size < 2 or v[0] == v[-1]:
        return float(v[0]) if v.size else 0.0
    n = v.size
    csum = np.cumsum(v)
    k = np.arange(1, n)
    mean_lo = csum[:-1] / k
    mean_hi = (csum[-1] - csum[:-1]) / (n - k)
    between = k * (n - k) * (mean_hi - mean_lo) ** 2
    between[v[1:] == v[:-1]] = -1.0  # never split between equal values
    i = int(np.argmax(between))
    return float((v[i] + v[i + 1]) / 2)


def _usable(table: MarkerTable, columns: list[str]) -> list[tuple[str, dict[str, int]]]:
    """(population, rules on the panel's column names) of every rule set whose markers the
    panel has."""
    out = []
    for name, alternatives in table.populations.items():
        for rules in alternatives:
            named = {find_marker(m, columns): sign for m, sign in rules.items()}
            if None not in named:
                out.append((name, named))
    return out


def annotate_clusters(
    medians: pd.DataFrame, spread: pd.Series, table: MarkerTable | None = None
) -> pd.DataFrame:
    """Label each cluster with the most specific population of ``table`` it satisfies.

    Parameters
    ----------
    medians
        Cluster × marker median expression (index = cluster ids, transformed units).
    spread
        Marker → pooled within-cluster robust SD (same units).
    table
        Marker table; default the built-in one.

    Returns
    -------
    DataFrame indexed like ``medians`` with ``label`` (population or ``unassigned``),
    ``confidence`` (0–1) and ``label_rank`` (1 = the most confident cluster of that
    label).
    """
    table = table or load_marker_table()
    thresholds = {m: table.thresholds.get(m, otsu_threshold(medians[m].to_numpy())) for m in medians.columns}
    sd = spread.reindex(medians.columns).to_numpy(dtype=np.float64)
    sd = np.where(sd > 0, sd, 1.0)
    margin = (medians - pd.Series(thresholds)) / sd  # clusters × markers, in SDs
    best = []
    for cluster in medians.index:
        choice = (0, 0.0, UNASSIGNED)
        for name, rules in _usable(table, list(margin.columns)):
            signed = np.array([sign * margin.at[cluster, m] for m, sign in rules.items()])
            satisfied = int((signed >= table.min_margin).sum())
            if satisfied < table.min_fraction * len(rules):
                continue
            conf = float(np.mean(np.clip(np.where(signed >= table.min_margin, signed, 0.0)
                                         / table.full_margin, 0.0, 1.0)))
            if conf >= table.min_confidence and (satisfied, conf) > choice[:2]:
                choice = (satisfied, conf, name)
        best.append((choice[2], round(choice[1], 6)))
    out = pd.DataFrame(best, index=medians.index, columns=["label", "confidence"])
    out["label_rank"] = (out.groupby("label")["confidence"].rank(method="first", ascending=False)
                         .astype(np.int64))
    return out
