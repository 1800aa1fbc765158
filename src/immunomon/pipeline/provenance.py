"""``provenance.json``: what an auditor needs to reproduce a run.

Versions of immunomon, Python and every analysis dependency; the run's parameters
and seed; the SHA-256 and size of every input file; start and end time (UTC); and
per-step counts (samples, events). FCS TEXT keywords that can identify a person
(``$SRC``, ``$OP``, ``$SMNO``, free-text comments ...) are never written: keywords
copied from a file go through the allow-list of
:func:`immunomon.report.privacy.safe_keywords`.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from immunomon.report.privacy import safe_keywords

from .rundir import atomic_write

__all__ = ["DEPENDENCIES", "versions", "safe_keywords", "utc_now", "write_provenance"]

DEPENDENCIES = (
    "numpy", "scipy", "pandas", "pyarrow", "anndata", "scikit-learn", "statsmodels", "numba",
    "umap-learn", "matplotlib", "plotly", "dask", "distributed", "flowutils", "inmoose",
    "pydantic", "pyyaml", "typer", "rich", "defusedxml",
)


def versions() -> dict[str, str]:
    """Installed versions of immunomon, Python, the platform and :data:`DEPENDENCIES`."""
    found = {"immunomon": _version("immunomon"), "python": sys.version.split()[0],
             "platform": platform.platform()}
    for name in DEPENDENCIES:
        found[name] = _version(name)
    return found


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def utc_now() -> str:
    """Current time as an ISO-8601 UTC string with seconds (``2026-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_provenance(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (plus ``versions``) as pretty, key-sorted JSON, atomically."""
    record = {"versions": versions(), **record}
    return atomic_write(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
