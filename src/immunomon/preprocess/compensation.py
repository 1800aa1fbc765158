"""Fluorescence compensation with a spillover matrix.

A spillover matrix ``S`` is a square DataFrame, index = columns = channel names
(``$PnN``), where ``S.loc[a, b]`` is the fraction of fluorochrome ``a``'s signal seen in
detector ``b`` (the FCS ``$SPILLOVER`` convention, unit diagonal). Observed events are
``true @ S``, so compensated events are ``observed @ inv(S)`` on the matrix's channels
(one BLAS product, in the requested precision, on one BLAS thread); every other channel
is left untouched.

Matrices come from the FCS file (:attr:`immunomon.io.fcs.FCSFile.spillover`) or from a
file read by :func:`read_spillover`: CSV/TSV (with or without row labels), the FlowJo /
flowCore text export (``name``, ``<`` ``>``, header, rows; any line endings), a FlowJo
XML matrix (``transforms:spilloverMatrix``) or an FCS ``$SPILLOVER`` string.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from immunomon.errors import UserError

__all__ = ["read_spillover", "parse_spill_string", "compensate"]


def _float(tok: str, where: str) -> float:
    try:
        return float(tok)
    except ValueError:
        raise UserError(f"{where}: {tok!r} is not a number") from None


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def parse_spill_string(text: str, source: str = "$SPILLOVER") -> pd.DataFrame:
    """Parse the FCS ``$SPILLOVER`` form ``n,name_1,...,name_n,v_11,...,v_nn``."""
    toks = [t.strip() for t in text.strip().split(",")]
    try:
        n = int(toks[0])
    except ValueError:
        raise UserError(f"{source}: first value {toks[0]!r} is not the channel count") from None
    if n < 1 or len(toks) != 1 + n + n * n:
        raise UserError(f"{source}: expected {1 + n + n * n} comma-separated values for {n} channels, found {len(toks)}")
    names = toks[1 : n + 1]
    values = np.array([_float(t, source) for t in toks[n + 1 :]]).reshape(n, n)
    return _frame(values, names, source)


def _frame(values: np.ndarray, names: list[str], source: str) -> pd.DataFrame:
    if len(set(names)) != len(names):
        raise UserError(f"{source}: channel names are not unique: {names}")
    if values.shape != (len(names), len(names)):
        raise UserError(f"{source}: matrix is {values.shape[0]}x{values.shape[1]} but names {len(names)} channels")
    if not np.all(np.isfinite(values)):
        raise UserError(f"{source}: matrix holds non-finite values")
    return pd.DataFrame(values, index=list(names), columns=list(names))


def _read_xml(text: str, source: str) -> pd.DataFrame:
    import defusedxml.ElementTree as ET
    from defusedxml import DefusedXmlException

    try:
        root = ET.fromstring(text, forbid_dtd=True)
    except (DefusedXmlException, ET.ParseError) as err:
        raise UserError(f"{source}: not a safe, well-formed XML matrix ({err})") from None
    mat = next((e for e in root.iter() if e.tag.endswith("spilloverMatrix")), None)
    if mat is None:
        raise UserError(f"{source}: no spilloverMatrix element")
    rows = {}
    for sp in (e for e in mat.iter() if e.tag.endswith("}spillover")):
        src = next(v for k, v in sp.attrib.items() if k.endswith("parameter"))
        rows[src] = {
            next(v for k, v in c.attrib.items() if k.endswith("parameter")): _float(
                next(v for k, v in c.attrib.items() if k.endswith("value")), source)
            for c in sp if c.tag.endswith("coefficient")
        }
    names = list(rows)
    values = np.array([[rows[r].get(c, 0.0) for c in names] for r in names])
    return _frame(values, names, source)


def read_spillover(path: str | Path) -> pd.DataFrame:
    """Read a spillover matrix file.

    Parameters
    ----------
    path
        CSV/TSV (header row of channel names, optional first column of row names), the
        FlowJo/flowCore text matrix (e.g. flowCore's ``compmatrix``, CR line endings),
        a FlowJo XML matrix, or a one-line ``$SPILLOVER`` string.

    Returns
    -------
    DataFrame, index = columns = channel names (rows follow the column order).
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{source}: cannot read spillover matrix ({err})") from None
    if text.lstrip().startswith("<?xml") or "spilloverMatrix" in text[:2000]:
        return _read_xml(text, source)
    lines = [ln for ln in re.split(r"\r\n|\r|\n", text) if ln.strip()]
    if not lines:
        raise UserError(f"{source}: empty spillover matrix file")
    if len(lines) == 1 and re.match(r"^\s*\d+\s*,", lines[0]):
        return parse_spill_string(lines[0], source)
    # FlowJo / flowCore text export: a name line, then a "<  >" line
    skip = 0
    if len(lines) > 2 and re.fullmatch(r"\s*<\s*>\s*", lines[1]):
        lines, skip = lines[2:], 2
    delim = "\t" if "\t" in lines[0] else ","
    rows = [[t.strip() for t in r] for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=delim)]
    header, body = rows[0], rows[1:]
    if not body:
        raise UserError(f"{source}: the matrix has a header but no rows")
    labelled = not _is_number(body[0][0])  # first column holds row names
    if labelled and len(header) == len(body[0]):
        header = header[1:]  # a corner cell ("" or a title) above the row names
    names = header
    values = []
    for i, r in enumerate(body, start=2 + skip):
        cells = r[1:] if labelled else r
        if len(cells) != len(names):
            raise UserError(f"{source}: line {i} has {len(cells)} values, expected {len(names)}")
        values.append([_float(c, f"{source}: line {i}") for c in cells])
    if labelled:
        row_names = [r[0] for r in body]
        if sorted(row_names) != sorted(names):
            raise UserError(f"{source}: row names {row_names} differ from column names {names}")
        frame = _frame(np.array(values), names, source)
        frame.index = row_names
        return frame.loc[names, names]
    return _frame(np.array(values, dtype=np.float64).reshape(len(values), -1), names, source)


def compensate(events: np.ndarray, names: list[str], spillover: pd.DataFrame,
               dtype: type = np.float32, order: str = "C") -> np.ndarray:
    """Compensate events with a spillover matrix.

    Parameters
    ----------
    events
        Raw events, shape ``(n_events, n_channels)``, linear units.
    names
        Channel name of each column of ``events`` (length ``n_channels``).
    spillover
        Square matrix over a subset of ``names`` (index = columns = channel names).
    dtype
        ``np.float32`` (default, fast) or ``np.float64``.
    order
        Memory layout of the result: ``"C"`` (rows contiguous) or ``"F"`` (one contiguous
        column per channel, pandas' layout); the values are the same.

    Returns
    -------
    New array, shape ``(n_events, n_channels)``, of ``dtype``: the spillover's channels
    replaced by ``events[:, ch] @ inv(S)`` (computed in ``dtype``), the others copied
    unchanged.
    """
    names = list(names)
    cols = [str(c) for c in spillover.columns]
    missing = [c for c in cols if c not in names]
    if missing:
        raise UserError(f"spillover matrix channel(s) {missing} are not in the data ({names})")
    s = spillover.to_numpy(dtype=np.float64)
    row_names = [str(r) for r in spillover.index]
    if row_names != cols and sorted(row_names) == sorted(cols):  # same channels, rows in another order
        s = s[[row_names.index(c) for c in cols]]
    # else: rows named by fluorochrome rather than detector: taken in order
    try:
        inv = np.linalg.inv(s)
    except np.linalg.LinAlgError:
        raise UserError(f"spillover matrix over {cols} is singular and cannot be inverted") from None
    events = np.asarray(events)
    if events.ndim != 2 or events.shape[1] != len(names):
        raise ValueError(f"events must have shape (n_events, {len(names)}), got {events.shape}")
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    idx = [names.index(c) for c in cols]
    kept = sorted(set(range(len(names))) - set(idx))
    out = np.empty(events.shape, dtype=dtype, order=order)
    inv = inv.astype(dtype)
    channels = out.T  # (n_channels, n_events) view: contiguous rows when order="F"
    span = slice(idx[0], idx[0] + len(idx))
    with _blas_controller().limit(limits=1, user_api="blas"):  # results independent of threads
        if idx == list(range(span.start, span.stop)):  # adjacent channels: no gather, no temporary
            np.matmul(inv.T, events[:, span].T.astype(dtype, copy=False), out=channels[span])
        else:
            channels[idx] = inv.T @ events[:, idx].T.astype(dtype, copy=False)
    channels[kept] = events[:, kept].T
    return out


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """A threadpoolctl controller, created once (finding the libraries takes ~20 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
