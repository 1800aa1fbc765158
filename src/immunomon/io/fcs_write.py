"""Writing FCS 3.1 files (and FCS 3.2 test files) with deterministic bytes.

No timestamps or other varying values are added: the same inputs always give the
same bytes. Offsets in TEXT are zero-padded to a fixed width so that the TEXT length
does not depend on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from immunomon.atomic import atomic_path

_OFFSET_WIDTH = 20
_HEADER_MAX = 99_999_999
_DELIMITERS = (b"/", b"|", b"\\", b"!", b"~", b"^", b"#", b"\x0c", b"\x1e")
_STRUCTURAL = {"$BEGINANALYSIS", "$ENDANALYSIS", "$BEGINDATA", "$ENDDATA", "$BEGINSTEXT",
               "$ENDSTEXT", "$BYTEORD", "$DATATYPE", "$MODE", "$NEXTDATA", "$PAR", "$TOT"}
_SPILL_KEYS = {"$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER"}
_PN_RE = re.compile(r"^\$P(\d+)([A-Z]+)$")
_WRITTEN_PN = {"B", "E", "N", "R", "S", "DATATYPE"}


def write_fcs(path: str | Path, events, names: Sequence[str], labels: Sequence[str] | None = None,
              *, datatype: str = "F", bits: Sequence[int] | None = None,
              ranges: Sequence[float] | None = None, spillover: pd.DataFrame | None = None,
              keywords: Mapping[str, str] | None = None, byteorder: str = "little") -> Path:
    """Write one data set as an FCS 3.1 file.

    Parameters
    ----------
    path
        Output file (overwritten).
    events
        Array-like ``(n_events, n_channels)`` of values in the file's units.
    names, labels
        ``$PnN`` (must be unique) and ``$PnS`` per channel (``""``/None = no ``$PnS``).
    datatype
        ``"F"`` (float32, the default for derived data), ``"D"`` (float64) or ``"I"``
        (unsigned integers; values are rounded and must fit in ``bits``).
    bits
        ``$PnB`` per channel; default 32 (F, I) or 64 (D). Integer widths may be any of
        1–64; widths that are not multiples of 8 are written as one bit stream.
    ranges
        ``$PnR`` per channel; default ``2**bits`` for I, the channel maximum (≥ 1,
        rounded up) for F/D.
    spillover
        Square DataFrame (index = columns = channel names) written as ``$SPILLOVER``.
    keywords
        Further TEXT keywords. Offsets, ``$PAR``, ``$TOT`` and the ``$PnB/N/R/S`` that
        this function writes are taken from the arguments instead; ``$PnE`` and
        ``$PnG`` of integer channels are kept.
    byteorder
        ``"little"`` (``$BYTEORD 1,2,3,4``) or ``"big"`` (``4,3,2,1``).

    Returns
    -------
    The path written.
    """
    blob = encode_dataset(events, names, labels, datatypes=datatype, bits=bits, ranges=ranges,
                          spillover=spillover, keywords=keywords, byteorder=byteorder)
    return _write(path, blob)


def write_datasets(path: str | Path, datasets: Sequence[Mapping]) -> Path:
    """Write several data sets chained by ``$NEXTDATA`` (each a dict of
    :func:`encode_dataset` keyword arguments)."""
    blobs = []
    for i, ds in enumerate(datasets):
        blobs.append(encode_dataset(**ds, last=i == len(datasets) - 1))
    return _write(path, b"".join(blobs))


def _write(path: str | Path, blob: bytes) -> Path:
    """``blob`` to ``path`` atomically (a killed writer leaves no half-written FCS file)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return Path(path)


def encode_dataset(events, names: Sequence[str], labels: Sequence[str] | None = None, *,
                   datatypes: str | Sequence[str] = "F", bits: Sequence[int] | None = None,
                   ranges: Sequence[float] | None = None, spillover: pd.DataFrame | None = None,
                   keywords: Mapping[str, str] | None = None, byteorder: str = "little",
                   version: str = "3.1", last: bool = True) -> bytes:
    """Bytes of one data set (HEADER, TEXT, DATA); offsets are relative to its start.

    ``datatypes`` may give one type per channel when ``version="3.2"`` (written as
    ``$PnDATATYPE`` where a channel differs from ``$DATATYPE``). With ``last=False``
    ``$NEXTDATA`` points just past this data set.
    """
    ev = np.asarray(events)
    if ev.ndim != 2:
        raise ValueError(f"events must be 2-D (events x channels), got shape {ev.shape}")
    n, par = ev.shape
    names = [str(x) for x in names]
    if len(names) != par:
        raise ValueError(f"{len(names)} names for {par} channels")
    if len(set(names)) != par:
        raise ValueError("channel names must be unique")
    labels = [""] * par if labels is None else ["" if x is None else str(x) for x in labels]
    kinds = [datatypes.upper()] * par if isinstance(datatypes, str) else [d.upper() for d in datatypes]
    if len(set(kinds)) > 1 and version != "3.2":
        raise ValueError("per-channel data types need FCS 3.2")
    if any(k not in ("I", "F", "D") for k in kinds):
        raise ValueError(f"data types must be I, F or D, got {kinds}")
    if bits is None:
        bits = [64 if k == "D" else 32 for k in kinds]
    bits = [int(b) for b in bits]
    for k, b in zip(kinds, bits):
        if (k == "F" and b != 32) or (k == "D" and b != 64) or (k == "I" and not 1 <= b <= 64):
            raise ValueError(f"$PnB {b} is not valid for data type {k}")
    if byteorder not in ("little", "big"):
        raise ValueError("byteorder must be 'little' or 'big'")
    order = "<" if byteorder == "little" else ">"
    data = _encode_data(ev, kinds, bits, order)
    if ranges is None:
        ranges = [_default_range(ev[:, j], k, b) for j, (k, b) in enumerate(zip(kinds, bits))]
    user = dict(keywords or {})
    main_kind = sorted(set(kinds), key=lambda k: (-kinds.count(k), k))[0] if kinds else "F"

    fixed: list[tuple[str, str]] = [
        ("$BEGINANALYSIS", "0"), ("$ENDANALYSIS", "0"),
        ("$BEGINDATA", "{BEGINDATA}"), ("$ENDDATA", "{ENDDATA}"),
        ("$BEGINSTEXT", "0"), ("$ENDSTEXT", "0"),
        ("$BYTEORD", "1,2,3,4" if order == "<" else "4,3,2,1"),
        ("$DATATYPE", main_kind), ("$MODE", "L"), ("$NEXTDATA", "{NEXTDATA}"),
        ("$PAR", str(par)), ("$TOT", str(n)),
    ]
    for j in range(par):
        p = f"$P{j + 1}"
        fixed += [(p + "B", str(bits[j])), (p + "N", names[j]), (p + "R", _num(ranges[j]))]
        pe = user.get(p + "E", "0,0") if kinds[j] == "I" else "0,0"
        fixed.append((p + "E", pe))
        if labels[j]:
            fixed.append((p + "S", labels[j]))
        if version == "3.2" and kinds[j] != main_kind:
            fixed.append((p + "DATATYPE", kinds[j]))
    if spillover is not None:
        fixed.append(("$SPILLOVER", _spill_value(spillover)))
    if version == "3.2" and "$CYT" not in user:
        fixed.append(("$CYT", "immunomon"))
    for key, val in user.items():
        key = str(key).strip().upper()
        val = str(val)
        m = _PN_RE.match(key)
        if key in _STRUCTURAL or (spillover is not None and key in _SPILL_KEYS) or not val.strip():
            continue
        if m and (int(m.group(1)) > par or int(m.group(1)) < 1 or m.group(2) in _WRITTEN_PN):
            continue
        fixed.append((key, val))

    text_tmpl = _encode_text(fixed)
    pad = "0" * _OFFSET_WIDTH
    text_len = len(text_tmpl.replace(b"{BEGINDATA}", pad.encode()).replace(
        b"{ENDDATA}", pad.encode()).replace(b"{NEXTDATA}", pad.encode()))
    text_begin, text_end = 58, 58 + text_len - 1
    data_begin = text_end + 1
    data_end = data_begin + len(data) - 1 if data else 0
    total = data_begin + len(data)
    data_begin_kw = data_begin if data else 0
    text = (text_tmpl.replace(b"{BEGINDATA}", f"{data_begin_kw:0{_OFFSET_WIDTH}d}".encode())
            .replace(b"{ENDDATA}", f"{data_end:0{_OFFSET_WIDTH}d}".encode())
            .replace(b"{NEXTDATA}", f"{0 if last else total:0{_OFFSET_WIDTH}d}".encode()))
    big = data_end > _HEADER_MAX
    hdr_data = (0, 0) if big or not data else (data_begin, data_end)
    header = (f"FCS{version}    " + "".join(f"{x:>8d}" for x in
              (text_begin, text_end, hdr_data[0], hdr_data[1], 0, 0))).encode("ascii")
    assert len(header) == 58 and len(text) == text_len
    return header + text + data


def _num(x) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _default_range(col: np.ndarray, kind: str, b: int) -> int:
    if kind == "I":
        return 2 ** b
    finite = col[np.isfinite(col)] if col.size else col
    top = float(finite.max()) if finite.size else 1.0
    return max(1, int(np.ceil(top)))


def _spill_value(spill: pd.DataFrame) -> str:
    chans = [str(c) for c in spill.columns]
    vals = np.asarray(spill, dtype=np.float64)
    if vals.shape != (len(chans), len(chans)):
        raise ValueError("spillover must be a square DataFrame")
    return ",".join([str(len(chans)), *chans, *(repr(float(v)) for v in vals.ravel())])


def _encode_text(pairs: list[tuple[str, str]]) -> bytes:
    enc = [(k.encode("utf-8"), v.encode("utf-8")) for k, v in pairs]
    delim = next((d for d in _DELIMITERS
                  if not any(d in k or d in v for k, v in enc)), b"/")
    parts = [delim]
    for k, v in enc:
        parts += [k.replace(delim, delim * 2), delim, v.replace(delim, delim * 2), delim]
    return b"".join(parts)


def _as_uint(col: np.ndarray, b: int, j: int) -> np.ndarray:
    vals = np.rint(np.asarray(col, dtype=np.float64)) if col.dtype.kind == "f" else col
    if vals.size and (not np.all(np.isfinite(vals)) if vals.dtype.kind == "f" else False):
        raise ValueError(f"channel {j + 1}: non-finite values cannot be written as integers")
    if vals.size and (vals.min() < 0 or vals.max() > 2.0 ** b - 1):
        raise ValueError(f"channel {j + 1}: values outside 0..2**{b}-1 for $PnB {b}")
    return vals.astype(np.uint64)


def _encode_data(ev: np.ndarray, kinds: list[str], bits: list[int], order: str) -> bytes:
    n, par = ev.shape
    if n == 0 or par == 0:
        return b""
    if any(b % 8 for b in bits):
        if any(k != "I" for k in kinds):
            raise ValueError("bit widths that are not multiples of 8 need DATATYPE I throughout")
        cols = []
        for j, b in enumerate(bits):
            u = _as_uint(ev[:, j], b, j)
            shifts = np.arange(b - 1, -1, -1, dtype=np.uint64)
            cols.append(((u[:, None] >> shifts) & np.uint64(1)).astype(np.uint8))
        return np.packbits(np.concatenate(cols, axis=1).ravel()).tobytes()
    if len(set(kinds)) == 1 and len(set(bits)) == 1 and bits[0] // 8 in (1, 2, 4, 8):
        nb = bits[0] // 8
        if kinds[0] == "I":
            u = np.column_stack([_as_uint(ev[:, j], bits[0], j) for j in range(par)])
            return u.astype(f"{order}u{nb}").tobytes()
        return np.ascontiguousarray(ev, dtype=f"{order}f{nb}").tobytes()
    rec = np.empty((n, sum(bits) // 8), dtype=np.uint8)
    off = 0
    for j, (k, b) in enumerate(zip(kinds, bits)):
        nb = b // 8
        if k == "I":
            raw = _as_uint(ev[:, j], b, j).astype("<u8").view(np.uint8).reshape(n, 8)[:, :nb]
        else:
            raw = np.ascontiguousarray(ev[:, j], dtype=f"<f{nb}").view(np.uint8).reshape(n, nb)
        rec[:, off:off + nb] = raw if order == "<" else raw[:, ::-1]
        off += nb
    return rec.tobytes()
