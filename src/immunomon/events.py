"""Events tables, the plain data type the stages share: helpers used by more than one stage."""

from __future__ import annotations

import numpy as np
import pandas as pd


def frame_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Column name → 1-D array of an events table ``(n_events, n_columns)``.

    A table of one dtype (the usual float32 events) gives column views of one array: no
    per-column pandas lookups and, for a Fortran-ordered table, contiguous columns without
    copies. Column names are taken as ``str``; a repeated name keeps its last column.
    """
    names = [str(c) for c in frame.columns]
    if len(set(frame.dtypes)) == 1:
        values = frame.to_numpy()
        return {c: values[:, j] for j, c in enumerate(names)}
    return {name: frame.iloc[:, j].to_numpy() for j, name in enumerate(names)}
