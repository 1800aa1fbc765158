"""HTML escaping, number formatting and sortable tables for the report."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

#: Columns formatted as p- or q-values.
PVALUE_COLUMNS = frozenset({"p", "q", "p_value", "q_value", "padj", "fdr"})


def esc(value: object) -> str:
    """HTML-escape any value's ``str`` (quotes included)."""
    return html.escape(str(value), quote=True)


def fmt_p(x: object) -> str:
    """A p- or q-value: ``0.032``, ``4.1e-05``; ``—`` when missing."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(v):
        return "—"
    return f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}"


def fmt_num(x: object, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (integers as integers); ``—`` when missing."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "—"
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def _cell(col: str, value: object) -> str:
    """One ``<td>``, with a ``data-v`` sort key for numbers."""
    if isinstance(value, bool | np.bool_):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | float | np.integer | np.floating):
        v = float(value)
        text = fmt_p(v) if col in PVALUE_COLUMNS else fmt_num(v)
        key = repr(v) if math.isfinite(v) else ""
        return f'<td class="n" data-v="{key}">{esc(text)}</td>'
    if value is None or value is pd.NA or value is pd.NaT:
        return "<td>—</td>"
    return f"<td>{esc(value)}</td>"


def table_html(df: pd.DataFrame, *, columns: Sequence[str] | None = None,
               labels: Mapping[str, str] | None = None, max_rows: int = 400,
               source: str | None = None, row_class: Sequence[str] | None = None) -> str:
    """A sortable (click a header), filterable HTML table of ``df``; every cell escaped.

    Parameters
    ----------
    df
        The rows to show, already in display order.
    columns
        Columns to show (those present; default all).
    labels
        Header text per column (default the column name).
    max_rows
        At most this many rows; a note then names ``source`` for the rest.
    source
        Where the full table is (e.g. ``tables/stats_ds.csv``), named when rows are cut.
    row_class
        Optional CSS class per row (aligned with ``df``'s rows).
    """
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    labels = labels or {}
    shown = df.iloc[:max_rows]
    head = "".join(f"<th>{esc(labels.get(c, c))}</th>" for c in cols)
    rows = []
    for i, rec in enumerate(shown[cols].itertuples(index=False, name=None)):
        cls = f' class="{esc(row_class[i])}"' if row_class is not None and row_class[i] else ""
        rows.append(f"<tr{cls}>" + "".join(_cell(c, v) for c, v in zip(cols, rec)) + "</tr>")
    note = ""
    if len(df) > max_rows:
        where = f" — all rows in <code>{esc(source)}</code>" if source else ""
        note = f'<p class="note">Showing {max_rows:,} of {len(df):,} rows{where}.</p>'
    filt = ('<input class="tfilter" type="search" placeholder="Filter rows…" '
            'aria-label="Filter rows">') if len(shown) > 12 else ""
    return (f'<div class="tablewrap">{filt}<table class="sortable"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>{note}')
