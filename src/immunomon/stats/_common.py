"""Shared pieces of :mod:`immunomon.stats`: options, input cleaning, scales, row ordering.

Every stats table row carries ``status`` (:data:`OK` or :data:`NOT_ESTIMABLE`) and a
``reason`` (empty when ok, unless a note applies), never a silent NA.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..errors import UserError

OK = "ok"
NOT_ESTIMABLE = "not estimable"
#: A row below ``min_patients``: estimate and CI, never a p.
DESCRIPTIVE = "descriptive"
ALL = "all"

#: ``measure`` values (see :mod:`immunomon.gating.statistics`) analysed on the logit scale.
LOGIT_MEASURES = frozenset({"percent", "pct_positive", "fraction", "proportion"})


@dataclass(frozen=True)
class StatsOptions:
    """Options of :func:`immunomon.stats.analyze`.

    Attributes
    ----------
    alpha
        Significance level (multiplicity procedures, selectivity, summaries); ``None`` =
        the analysis plan's, else 0.05.
    min_patients
        Inferential threshold: rows with fewer patients (complete pairs for paired tests,
        the smaller group for two-group comparisons) keep n, the estimate and its CI but
        get ``status = descriptive`` and no p. ``None`` = the plan's, else 6.
    per_disease
        Also analyse each disease stratum (pooled ``all`` is always analysed; a study whose
        ``disease`` column is empty has no disease strata).
    supervised_methods
        Subset of ``("mmrm", "paired_t", "wilcoxon", "welch_t", "rank_sum")``; each is
        used where it applies (paired tests within arms, two-group tests between arms or
        groups).
    df_method
        Denominator df of the MMRM: ``kr`` (Kenward–Roger) or ``satterthwaite``.
    da_methods
        Subset of ``("edger_ql", "edger_lrt", "gee_binomial")``.
    min_cells, min_sample_fraction
        DA/DS: a cluster is tested in a stratum when it has >= ``min_cells`` cells in at
        least ``min_sample_fraction`` of the stratum's samples.
    immune_visit
        Visit of the immune response (log2 fold change vs baseline) in ``clinical_immune``;
        ``None`` = the first primary visit of the plan, else the first visit after
        baseline.
    immune_parameters
        Parameters correlated with clinical change; ``None`` = the plan's end points and
        selectivity targets, or every parameter when there is no plan.
    tables
        Names of the tables to compute (e.g. ``("stats_supervised",)`` to re-run the plan's
        analyses alone); ``None`` = every table the inputs allow.
    """

    alpha: float | None = None
    min_patients: int | None = None
    per_disease: bool = True
    supervised_methods: tuple[str, ...] = ("mmrm", "paired_t", "wilcoxon", "welch_t",
                                           "rank_sum")
    df_method: str = "kr"
    da_methods: tuple[str, ...] = ("edger_ql", "gee_binomial")
    min_cells: int = 3
    min_sample_fraction: float = 0.5
    immune_visit: str | None = None
    immune_parameters: tuple[str, ...] | None = None
    tables: tuple[str, ...] | None = None

    def wants(self, *names: str) -> bool:
        """Whether any of the tables ``names`` is to be computed."""
        return self.tables is None or any(n in self.tables for n in names)

    def resolved(self, alpha: float | None = None, min_patients: int | None = None
                 ) -> "StatsOptions":
        """A copy with ``alpha``/``min_patients`` filled from the plan (when not set here)
        or the defaults 0.05 and 6."""
        a = self.alpha if self.alpha is not None else (alpha if alpha is not None else 0.05)
        m = (self.min_patients if self.min_patients is not None
             else (min_patients if min_patients is not None else 6))
        return replace(self, alpha=float(a), min_patients=int(m))


def too_few(n: int, options: StatsOptions, what: str = "patients") -> str:
    """The ``reason`` of a descriptive row."""
    return f"{n} {what} < min_patients {options.min_patients}: descriptive, no test"


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
    need = ["sample_id", "patient_id", "visit"]
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
    for c in ("disease", "arm"):
        if c not in out:
            out[c] = ""
    for c in ["sample_id", "patient_id", "disease", "arm", "visit"]:
        out[c] = out[c].fillna("").astype(str)
    return out.reset_index(drop=True)


def visit_order(samples: pd.DataFrame, baseline: str | None, visits) -> list[str]:
    """Visit names in study order: ``visits`` if given (plus unseen visits by day), the
    baseline first (``baseline=None``: a cross-sectional study, study order only)."""
    seen = samples["visit"].astype(str)
    if "day" in samples:
        by_day = samples.groupby(seen)["day"].min().sort_values(kind="stable")
        derived = list(by_day.index)
    else:
        derived = sorted(seen.unique())
    order = [str(v) for v in visits] if visits is not None else []
    order += [v for v in derived if v not in order]
    if baseline is None:
        return order
    if baseline not in order:
        raise UserError(f"samples table: baseline visit {baseline!r} has no sample")
    return [baseline] + [v for v in order if v != baseline]


def strata(diseases, per_disease: bool) -> list[str]:
    """``all`` first, then each disease (sorted) when ``per_disease``; empty disease values
    (a study without a disease column) make no stratum."""
    ds = sorted({str(d) for d in diseases} - {"", "nan", "None"}) if per_disease else []
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
