"""The run directory: atomic writes (:mod:`immunomon.atomic`) and the table format
(``tables/NAME.parquet`` + ``.csv``)."""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

import pandas as pd

from immunomon.atomic import atomic_path, atomic_write, write_csv, write_error

__all__ = ["atomic_write", "atomic_path", "write_error", "remove_stale_temporaries",
           "write_table", "read_table", "TABLES", "FIGURES", "TEMPORARY"]

TABLES = "tables"
FIGURES = "figures"
#: Glob of the temporary files of :func:`atomic_path` (and of the report's figure writers).
TEMPORARY = ".*.tmp"


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = 0.0) -> int:
    """Remove the temporary files (:data:`TEMPORARY`) that killed writers left anywhere below
    ``folder``, if last written more than ``older_than`` seconds ago. With 0 (all of them)
    it is only safe while no one else writes there (the run lock is held). Returns how many
    were removed."""
    removed, now = 0, time.time()
    for tmp in Path(folder).rglob(TEMPORARY):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed += 1
    return removed


def write_table(run_dir: str | os.PathLike, name: str, table: pd.DataFrame) -> Path:
    """Write ``table`` as ``RUN_DIR/tables/NAME.parquet`` and ``NAME.csv``, atomically.

    The index is dropped (tables are tidy, keys are columns). Same frame -> same bytes.
    Returns the parquet path.
    """
    table = table.reset_index(drop=True)
    folder = Path(run_dir) / TABLES
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    parquet = atomic_write(folder / f"{name}.parquet", buffer.getvalue())
    write_csv(table, folder / f"{name}.csv")
    return parquet


def read_table(run_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    """Read ``RUN_DIR/tables/NAME.parquet``."""
    return pd.read_parquet(Path(run_dir) / TABLES / f"{name}.parquet")
