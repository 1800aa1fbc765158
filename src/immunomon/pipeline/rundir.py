"""The run directory: atomic writes and the table format (``tables/NAME.parquet`` + ``.csv``).

Every file the pipeline writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the same folder, which then replaces the target with
:func:`os.replace`. A reader (or a run killed with ``kill -9``) therefore sees either
the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

__all__ = ["atomic_write", "atomic_path", "write_table", "read_table", "TABLES", "FIGURES"]

TABLES = "tables"
FIGURES = "figures"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of written files: 0o666 minus the umask, as ``open()`` would give
#: (``mkstemp`` creates its files 0o600).
_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text written as UTF-8) to ``path`` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


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
    atomic_write(folder / f"{name}.csv", table.to_csv(index=False, lineterminator="\n"))
    return parquet


def read_table(run_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    """Read ``RUN_DIR/tables/NAME.parquet``."""
    return pd.read_parquet(Path(run_dir) / TABLES / f"{name}.parquet")
