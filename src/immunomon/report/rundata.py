"""Read what a run directory holds (tables and provenance) for the report, never failing."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .privacy import scrub

log = logging.getLogger(__name__)

#: Tables the report draws, in the order the sections use them.
REPORT_TABLES = (
    "samples", "qc_steps", "populations", "parameters", "clusters", "cluster_counts",
    "embedding", "stats_supervised", "responders", "selectivity", "fold_changes", "pca",
    "stats_da", "stats_ds", "clinical_change", "clinical_immune", "adverse_events_summary",
    "pca_variance", "clinical_summary", "gate_thresholds",
)
#: The primary end point of the model trial (a parameter string of the architecture).
PRIMARY_PARAMETER = "Treg % of CD4 T"


@dataclass
class RunData:
    """The tables and provenance of one run directory.

    Attributes
    ----------
    run_dir
        The run directory.
    tables
        ``{name: DataFrame}`` for every ``tables/NAME.parquet`` that could be read.
    problems
        ``{name: why}`` for every report table that is missing or unreadable.
    provenance
        ``provenance.json`` with every FCS keyword mapping reduced by
        :func:`immunomon.report.privacy.safe_keywords` (``{}`` when absent).
    """

    run_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def get(self, name: str) -> pd.DataFrame | None:
        """The table ``name`` or ``None`` when it is missing, unreadable or empty."""
        df = self.tables.get(name)
        return None if df is None or df.empty else df

    def missing(self, *names: str) -> list[str]:
        """Those of ``names`` that :meth:`get` cannot give."""
        return [n for n in names if self.get(n) is None]

    @property
    def visits(self) -> list[str]:
        """Visit labels ordered by study day (from ``samples``), else as first seen."""
        s = self.get("samples")
        if s is not None and {"visit", "day"} <= set(s.columns):
            order = s.groupby("visit", sort=False)["day"].min().sort_values(kind="stable")
            return [str(v) for v in order.index]
        for name in ("stats_supervised", "fold_changes", "pca"):
            t = self.get(name)
            if t is not None and "visit" in t.columns:
                return [str(v) for v in pd.unique(t["visit"].astype(str))]
        return []

    @property
    def baseline(self) -> str | None:
        """The baseline visit: as recorded in provenance, else the earliest visit."""
        for key in ("baseline", "baseline_visit"):
            for where in (self.provenance, self.provenance.get("parameters") or {}):
                if isinstance(where, dict) and isinstance(where.get(key), str):
                    return where[key]
        return self.visits[0] if self.visits else None

    @property
    def primary_visit(self) -> str | None:
        """The visit of the primary end point: the first visit after baseline."""
        after = [v for v in self.visits if v != self.baseline]
        return after[0] if after else None

    @property
    def analysed_samples(self) -> pd.DataFrame | None:
        """Rows of ``samples`` that passed QC and are not excluded (those the statistics use)."""
        s = self.get("samples")
        if s is None:
            return None
        keep = pd.Series(True, index=s.index)
        if "qc_pass" in s.columns:
            keep &= s["qc_pass"].fillna(False).astype(bool)
        if "excluded_reason" in s.columns:
            keep &= s["excluded_reason"].fillna("").astype(str).str.len() == 0
        return s[keep]

    @property
    def diseases(self) -> list[str]:
        """Disease arms, sorted, from ``samples``."""
        s = self.get("samples")
        if s is None or "disease" not in s.columns:
            return []
        return sorted(s["disease"].dropna().astype(str).unique())


def load_run(run_dir: str | Path) -> RunData:
    """Read ``RUN_DIR/tables/*.parquet`` and ``RUN_DIR/provenance.json``.

    A missing or unreadable file is recorded in :attr:`RunData.problems` (for the report to
    say so) instead of raising.
    """
    run_dir = Path(run_dir)
    data = RunData(run_dir=run_dir)
    for name in REPORT_TABLES:
        path = run_dir / "tables" / f"{name}.parquet"
        if not path.is_file():
            data.problems[name] = f"tables/{name}.parquet is missing"
            continue
        try:
            data.tables[name] = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file becomes a report notice
            log.warning("cannot read %s: %s", path, exc)
            data.problems[name] = f"tables/{name}.parquet cannot be read ({type(exc).__name__})"
            continue
        if data.tables[name].empty:
            data.problems[name] = f"tables/{name}.parquet has no rows"
    prov = run_dir / "provenance.json"
    if prov.is_file():
        try:
            loaded = json.loads(prov.read_text(encoding="utf-8"))
            data.provenance = scrub(loaded) if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", prov, exc)
            data.problems["provenance"] = f"provenance.json cannot be read ({type(exc).__name__})"
    else:
        data.problems["provenance"] = "provenance.json is missing"
    return data
