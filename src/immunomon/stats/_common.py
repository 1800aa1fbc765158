"""Shared pieces of :mod:`immunomon.stats`: options, input cleaning, scales, row ordering.

Every stats table row carries ``status`` (:data:`OK` or :data:`NOT_ESTIMABLE`) and a
``reason`` (empty when ok, unless a note applies), never a silent NA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError

OK = "ok"
NOT_ESTIMABLE = "not estimable"
ALL = "all"

#: ``measure`` values (see :mod:`immunomon.gating.statistics`) analysed on the logit scale.
LOGIT_MEASURES = frozenset({"percent", "pct_positive", "fraction", "proportion"})


@dataclass(frozen=True)
class StatsOptions:
    """Options of :func:`immunomon.stats.analyze`.

    Attributes
    ----------
    alpha
        Significance level for q values (selectivity, summaries).
    min_patients
        Strata with fewer patients (complete pairs for paired tests) are reported with
        n, effect and CI but ``status = not estimable`` and no p.
    per_disease
        Also analyse each disease stratum (pooled ``all`` is always analysed).
    supervised_methods
        Subset of ``("paired_t", "wilcoxon", "lmm")``.
    da_methods
        Subset of ``("edger_ql", "edger_lrt", "gee_binomial")``.
    min_cells, min_sample_fraction
        DA/DS: a cluster is tested in a stratum when it has >= ``min_cells`` cells in at
        least ``min_sample_fraction`` of the stratum's samples.
    immune_visit
        Visit of the immune response (log2 fold change vs baseline) in ``clinical_immune``.
    immune_parameters
        Parameters correlated with clinical change; ``None`` = the Treg parameters.
    selectivity_method
        ``stats_supervised`` method whose q values ``selectivity`` uses.
    """

    alpha: float = 0.05
    min_patients: int = 6
    per_disease: bool = True
    supervised_methods: tuple[str, ...] = ("paired_t", "wilcoxon", "lmm")
    da_methods: tuple[str, ...] = ("edger_ql", "edger_lrt", "gee_binomial")
    min_cells: int = 3
    min_sample_fraction: float = 0.5
    immune_visit: str = "D8"
    immune_parameters: tuple[str, ...] | None = None
    selectivity_method: str = "paired_t"


def is_logit(parameter: str, measure: str | None) -> bool:
    """Whether a parameter is a percentage/fraction (logit scale) rather than positive (log)."""
    if isinstance(measure, str) and measure:
        return measure.lower() in LOGIT_MEASURES
    return "%" in parameter


def to_fraction(values: np.ndarray, measure: str | None, parameter: str) -> np.ndarray:
    """Percentages (``percent``, ``pct_positive`` or a ``%`` in the name) -> fractions."""
    if (isinstance(measure, str) and measure.lower() in {"fraction", "proportion"}):
        return values
    return values / 100.0


def positive_floor(values: np.ndarray, upper: float | None = None) -> tuple[np.ndarray, str]:
    """Replace values <= 0 (and >= ``upper``) by half the smallest positive value (or half
    the gap to ``upper``), so logs/logits are finite; returns the values and a note."""
    v = np.asarray(values, dtype=float).copy()
    notes = []
    ok = np.isfinite(v)
    low = ok & (v <= 0)
    if low.any():
        pos = v[ok & (v > 0)]
        v[low] = pos.min() / 2 if pos.size else np.nan
        notes.append(f"{int(low.sum())} values <= 0 set to half the smallest positive value")
    if upper is not None:
        high = ok & (v >= upper)
        if high.any():
            below = v[ok & (v < upper)]
            v[high] = upper - (upper - below.max()) / 2 if below.size else np.nan
            notes.append(f"{int(high.sum())} values at 100 % set halfway to the largest other value")
    return v, "; ".join(notes)


def truthy(x) -> bool:
    """``qc_pass``-style flags given as bool, number or text."""
    if isinstance(x, str):
        return x.strip().lower() in {"true", "t", "yes", "y", "1", "pass", "passed"}
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return False
    return bool(x)


def kept_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """Samples with ``qc_pass`` true and an empty ``excluded_reason`` (others are left out)."""
    need = ["sample_id", "patient_id", "disease", "visit"]
    missing = [c for c in need if c not in samples.columns]
    if missing:
        raise UserError(f"samples table: missing column(s) {', '.join(missing)}")
    keep = np.ones(len(samples), bool)
    if "qc_pass" in samples:
        keep &= samples["qc_pass"].map(truthy).to_numpy()
    if "excluded_reason" in samples:
        r = samples["excluded_reason"].fillna("").astype(str).str.strip()
        keep &= (r == "").to_numpy()
    out = samples.loc[keep].copy()
    for c in ["sample_id", "patient_id", "disease", "visit"]:
        out[c] = out[c].astype(str)
    return out.reset_index(drop=True)


def visit_order(samples: pd.DataFrame, baseline: str, visits) -> list[str]:
    """Visit names in study order: ``visits`` if given (plus unseen visits by day), the
    baseline first."""
    seen = samples["visit"].astype(str)
    if "day" in samples:
        by_day = samples.groupby(seen)["day"].min().sort_values(kind="stable")
        derived = list(by_day.index)
    else:
        derived = sorted(seen.unique())
    order = [str(v) for v in visits] if visits is not None else []
    order += [v for v in derived if v not in order]
    if baseline not in order:
        raise UserError(f"samples table: baseline visit {baseline!r} has no sample")
    return [baseline] + [v for v in order if v != baseline]


def strata(diseases, per_disease: bool) -> list[str]:
    """``all`` first, then each disease (sorted) when ``per_disease``."""
    ds = sorted({str(d) for d in diseases}) if per_disease else []
    return [ALL] + [d for d in ds if d != ALL]


def sort_rows(df: pd.DataFrame, keys: list[str], visits: list[str] | None = None) -> pd.DataFrame:
    """Sort rows by ``keys`` with visits in study order and ``all`` before diseases."""
    if df.empty:
        return df.reset_index(drop=True)
    sk = {}
    for k in keys:
        col = df[k]
        if k == "visit" and visits is not None:
            rank = {v: i for i, v in enumerate(visits)}
            sk[k] = col.map(lambda v: rank.get(v, len(rank)))
        elif k == "disease":
            sk[k] = col.map(lambda d: (0, "") if d == ALL else (1, str(d))).map(str)
        else:
            sk[k] = col
    tmp = pd.DataFrame(sk)
    order = tmp.sort_values(keys, kind="mergesort").index
    return df.loc[order].reset_index(drop=True)


def patients_table(samples: pd.DataFrame, patients: pd.DataFrame | None) -> pd.DataFrame:
    """patient_id -> disease from ``patients`` (if given) completed by ``samples``."""
    frames = []
    if patients is not None and len(patients):
        frames.append(patients[["patient_id", "disease"]].astype(str))
    frames.append(samples[["patient_id", "disease"]].astype(str))
    out = pd.concat(frames).drop_duplicates("patient_id", keep="first")
    return out.sort_values("patient_id", kind="mergesort").reset_index(drop=True)
