"""Reading and writing FCS files (Flow Cytometry Standard 2.0, 3.0, 3.1 and 3.2).

>>> from immunomon.io.fcs import read_fcs, write_fcs
>>> f = read_fcs("tests/data/fcs/G11.fcs")          # doctest: +SKIP
>>> f.events.shape, f.names[:3]                      # doctest: +SKIP
((5785, 12), ['Time', 'FSC-A', 'SSC-A'])

The reader is a numpy reader: HEADER and TEXT are parsed in Python, the DATA segment
is read in chunks straight into the output array (byte swapping, integer masks and
the conversion to float done in that single copy). Files with several data sets
(``$NEXTDATA``), disagreeing HEADER/TEXT offsets, any integer width, per-channel
FCS 3.2 data types and ASCII data are handled; see ``docs/sections/20-fcs.md``.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .fcs_data import Layout, build_layouts, read_events
from .fcs_text import (HEADER_SIZE, FCSError, Header, fcs_error, int_keyword, parse_header,
                       parse_text, unique_names)
from .fcs_write import write_fcs

__all__ = ["FCSError", "FCSFile", "read_fcs", "read_fcs_metadata", "write_fcs", "fcs_datasets"]

_SPILL_KEYS = ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER")
_DFC_RE = re.compile(r"^\$DFC(\d+)TO(\d+)$")


@dataclass
class DataSet:
    """HEADER and TEXT of one data set. Offsets are absolute byte offsets."""

    index: int
    header: Header
    keywords: dict[str, str]
    text_ranges: list[tuple[int, int]]

    @property
    def start(self) -> int:
        return self.header.start


@dataclass
class FCSFile:
    """One data set of an FCS file.

    Attributes
    ----------
    events
        ``(n_events, n_channels)`` native-endian float32 (or float64) array, raw values
        unless read with ``scale=True``.
    channels
        One row per channel in file order: ``name`` (``$PnN``, made unique), ``label``
        (``$PnS`` or ""), ``bits`` (``$PnB``; 0 for delimited ASCII), ``range``
        (``$PnR``), ``log_decades`` and ``log_offset`` (``$PnE``), ``gain`` (``$PnG``,
        1 when absent), ``datatype`` (I/F/D/A).
    keywords
        Every TEXT keyword of the data set, keys upper-cased.
    spillover
        Spillover matrix (index = columns = channel names) or None.
    version
        FCS version of the data set ("2.0", "3.0", "3.1", "3.2").
    n_datasets, dataset
        Number of data sets in the file and the 1-based index of this one.
    data_offsets, n_events
        Absolute first and last byte of the DATA segment that was read; ``$TOT``.
    """

    path: Path
    events: np.ndarray
    channels: pd.DataFrame
    keywords: dict[str, str]
    spillover: pd.DataFrame | None
    version: str
    n_datasets: int
    dataset: int = 1
    data_offsets: tuple[int, int] = field(default=(0, 0))
    n_events: int = 0

    @property
    def names(self) -> list[str]:
        """Channel names (``$PnN``, unique)."""
        return list(self.channels["name"])

    @property
    def labels(self) -> list[str]:
        """Channel labels (``$PnS``; "" where absent)."""
        return list(self.channels["label"])

    def to_anndata(self):
        """AnnData with ``X`` = events, ``var`` = channels (index = names),
        ``uns["fcs"]`` = keywords."""
        import anndata

        var = self.channels.set_index("name", drop=False)
        var.index = var.index.astype(str)
        var.index.name = None
        return anndata.AnnData(X=self.events, var=var,
                               uns={"fcs": dict(self.keywords)})


def fcs_datasets(path: str | Path) -> list[DataSet]:
    """HEADER and TEXT of every data set of an FCS file, following ``$NEXTDATA``."""
    path = Path(path)
    with _open(path) as fh:
        return _scan(fh, _size(fh), path)


def read_fcs(path: str | Path, dataset: int = 1, dtype: str = "float32",
             scale: bool = False) -> FCSFile:
    """Read one data set of an FCS file.

    Parameters
    ----------
    path
        The FCS file (never modified).
    dataset
        1-based index of the data set (files may hold several, chained by ``$NEXTDATA``).
    dtype
        ``"float32"`` or ``"float64"``: type of :attr:`FCSFile.events`.
    scale
        Convert to linear values: log-amplified integer channels (``$PnE`` f1,f2 with
        f1 > 0) become ``f2 * 10**(f1 * x / $PnR)`` (f2 = 0 read as 1); linear channels
        are divided by their gain ``$PnG``. Gain is never applied to log channels.

    Raises
    ------
    FCSError
        The file is truncated, corrupted or not an FCS file; the message names the
        file, the problem and the byte offset.
    """
    return _read(Path(path), dataset, np.dtype(dtype), scale, with_events=True)


def read_fcs_metadata(path: str | Path, dataset: int = 1) -> FCSFile:
    """Like :func:`read_fcs` but without decoding DATA: ``events`` is an empty
    ``(0, n_channels)`` array. The DATA offsets are still checked against the file."""
    return _read(Path(path), dataset, np.dtype("float32"), False, with_events=False)


def _read(path: Path, dataset: int, out_dtype: np.dtype, scale: bool,
          with_events: bool) -> FCSFile:
    if out_dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {out_dtype}")
    with _open(path) as fh:
        size = _size(fh)
        sets = _scan(fh, size, path)
        if not isinstance(dataset, (int, np.integer)) or not 1 <= dataset <= len(sets):
            raise FCSError(f"{path}: data set {dataset} does not exist; the file holds "
                           f"{len(sets)} data set(s), numbered from 1")
        ds = sets[dataset - 1]
        kw = ds.keywords
        par = int_keyword(kw, "$PAR", path, ds.header.text_begin)
        if par is None or par < 0:
            raise fcs_error(path, ds.header.text_begin, "TEXT has no valid $PAR keyword")
        if par == 0:
            raise fcs_error(path, ds.header.text_begin, "$PAR is 0: the data set has no "
                                                        "parameters (channels)")
        if par > len(kw):  # every parameter needs its own $PnB keyword
            raise fcs_error(path, ds.header.text_begin, f"$PAR claims {par} parameters but "
                                                        f"TEXT holds only {len(kw)} keywords")
        layouts = build_layouts(kw, par, path, ds.header.text_begin)
        tot = int_keyword(kw, "$TOT", path, ds.header.text_begin)
        begin, layout, span, tot = _locate_data(ds, layouts, tot, size, path)
        if with_events:
            events = read_events(fh, begin, tot, layout, out_dtype, path, span)
        else:
            events = np.empty((0, par), dtype=out_dtype)
    channels = _channels(kw, layout, path)
    if scale:
        _scale(events, channels)
    spill = _spillover(kw, list(channels["name"]), list(channels["label"]), path)
    return FCSFile(path=path, events=events, channels=channels, keywords=kw, spillover=spill,
                   version=ds.header.version, n_datasets=len(sets), dataset=dataset,
                   data_offsets=(begin, begin + span - 1 if span else begin), n_events=tot)


def _open(path: Path):
    """Open an FCS file for reading, without blocking: a regular file or a block device.

    A FIFO (which would block until a writer appears), a character device (``/dev/zero``,
    also behind a symbolic link), a socket or a directory is refused with one line.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if path.is_symlink():
            raise FCSError(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
        raise FCSError(f"{path}: file not found") from None
    except PermissionError:
        raise FCSError(f"{path}: permission denied") from None
    except OSError as err:  # e.g. a socket (ENXIO), a name too long, an I/O error
        raise FCSError(f"{path}: cannot be opened ({err.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        kind = next((name for test, name in _NOT_FILES if test(mode)), "not a regular file")
        raise FCSError(f"{path}: is {kind}, not an FCS file (a regular file or a block device)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


#: File types that are never read as FCS, and how the error names them.
_NOT_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISSOCK, "a socket"))


def _size(fh) -> int:
    """Size in bytes of an open file or block device (``st_size`` is 0 for devices)."""
    return os.lseek(fh.fileno(), 0, os.SEEK_END)


def _read_at(fh, offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)


def _scan(fh, size: int, path: Path) -> list[DataSet]:
    sets: list[DataSet] = []
    start = 0
    seen = set()
    while True:
        header = parse_header(_read_at(fh, start, HEADER_SIZE), start, path)
        if header.text_end >= size:
            if header.text_begin >= size:
                raise fcs_error(path, header.text_begin,
                                f"file is truncated: TEXT segment starts past the end "
                                f"of the file ({size} bytes)")
            header = Header(header.start, header.version, header.text_begin, size - 1,
                            header.data_begin, header.data_end)
        text_raw = _read_at(fh, header.text_begin, header.text_end - header.text_begin + 1)
        kw = parse_text(text_raw, header.text_begin, path)
        ranges = [(header.text_begin, header.text_end)]
        _add_supplemental(fh, size, start, kw, ranges, path)
        sets.append(DataSet(len(sets) + 1, header, kw, ranges))
        seen.add(start)
        nxt = int_keyword(kw, "$NEXTDATA", path, header.text_begin, default=0) or 0
        if nxt <= 0:
            break
        nstart = _next_start(fh, size, start, nxt)
        if nstart is None or nstart in seen:
            warnings.warn(f"{path}: $NEXTDATA {nxt} of data set {len(sets)} does not point "
                          f"to another data set; ignored (byte offset {header.text_begin})",
                          stacklevel=3)
            break
        start = nstart
    return sets


def _next_start(fh, size: int, start: int, nxt: int) -> int | None:
    """Absolute start of the next data set: ``$NEXTDATA`` is relative to the current
    one; some writers store it absolute."""
    for cand in (start + nxt, nxt):
        if cand > start and cand + HEADER_SIZE <= size and \
                re.fullmatch(rb"FCS\d\.\d", _read_at(fh, cand, 6)):
            return cand
    return None


def _add_supplemental(fh, size: int, start: int, kw: dict[str, str],
                      ranges: list[tuple[int, int]], path: Path) -> None:
    b = kw.get("$BEGINSTEXT", "0").strip() or "0"
    e = kw.get("$ENDSTEXT", "0").strip() or "0"
    if not (b.isdigit() and e.isdigit()) or int(b) == 0:
        return
    b0, e0 = start + int(b), start + int(e)
    if (b0, e0) == ranges[0] or e0 < b0 or e0 >= size:
        return
    try:
        extra = parse_text(_read_at(fh, b0, e0 - b0 + 1), b0, path)
    except FCSError as err:
        warnings.warn(f"supplemental TEXT ignored: {err}", stacklevel=4)
        return
    ranges.append((b0, e0))
    for k, v in extra.items():
        kw.setdefault(k, v)


def _locate_data(ds: DataSet, layouts: list[Layout], tot: int | None, size: int,
                 path: Path) -> tuple[int, Layout, int, int]:
    """Choose the DATA offsets: the HEADER or TEXT pair that lies outside HEADER and
    TEXT and spans ``$TOT`` × record size (end offset may overshoot by one byte).

    Returns ``(begin, layout, nbytes, tot)``.
    """
    kw, start, where = ds.keywords, ds.start, ds.header.text_begin
    cands: list[tuple[str, int, int]] = []
    (tb, clean_b), (te, clean_e) = _offset(kw, "$BEGINDATA"), _offset(kw, "$ENDDATA")
    text_pair = [("TEXT", start + tb, start + te)] if tb and te is not None else []
    if clean_b and clean_e:
        cands += text_pair
    if ds.header.data_begin is not None:
        cands.append(("HEADER", ds.header.data_begin, ds.header.data_end or 0))
    if not (clean_b and clean_e):  # a stray character: a candidate only if it is consistent
        cands += text_pair
    if tot == 0:
        return (cands[0][1] if cands else 0), layouts[0], 0, 0
    if not cands:
        bad = [f"{k} {kw[k]!r}" for k in ("$BEGINDATA", "$ENDDATA") if k in kw]
        raise fcs_error(path, start + 26, "neither HEADER nor TEXT ($BEGINDATA) gives the "
                                          "DATA segment offsets"
                        + (f" (TEXT has {', '.join(bad)})" if bad else ""))

    def clear(b: int, n: int) -> bool:
        if b < start + HEADER_SIZE:
            return False
        return all(b + n <= lo or b > hi for lo, hi in ds.text_ranges)

    if layouts[0].delimited:
        for _, b, e in cands:
            if clear(b, e - b + 1) and b <= e < size:
                return b, layouts[0], e - b + 1, tot or 0
        raise fcs_error(path, cands[0][1], "DATA segment offsets are invalid")
    if tot is None:  # FCS 2.0 may omit $TOT: derive it from the segment size
        src, b, e = cands[0]
        rec = layouts[0].record_bits
        tot = max(0, (min(e, size - 1) - b + 1) * 8 // rec) if rec else 0
    if tot < 0:
        raise fcs_error(path, where, f"$TOT is negative: {tot}")
    if tot == 0:
        return cands[0][1], layouts[0], 0, 0
    for lay in layouts:
        n = lay.nbytes(tot)
        for _, b, e in cands:
            if e - b + 1 in (n, n + 1) and clear(b, n) and b + n <= size:
                return b, lay, n, tot
    for lay in layouts:
        n = lay.nbytes(tot)
        for src, b, e in cands:
            if clear(b, n) and b + n <= size:
                warnings.warn(f"{path}: {src} DATA offsets {b}..{e} span {e - b + 1} bytes "
                              f"but $TOT x event size is {n}; reading {n} bytes from {b}",
                              stacklevel=3)
                return b, lay, n, tot
    n = layouts[0].nbytes(tot)
    for _, b, _e in cands:
        if b >= start + HEADER_SIZE and b + n > size:
            raise fcs_error(path, size, f"file is truncated or $TOT is wrong: the DATA "
                                        f"segment of $TOT {tot} events needs bytes "
                                        f"{b}..{b + n - 1} but the file has {size} bytes")
    srcs = ", ".join(f"{s} {b}..{e}" for s, b, e in cands)
    raise fcs_error(path, cands[0][1], f"no consistent DATA segment offsets ({srcs}): they "
                                       "overlap HEADER or TEXT")


def _offset(kw: dict[str, str], key: str) -> tuple[int | None, bool]:
    """A TEXT DATA offset (``$BEGINDATA``/``$ENDDATA``) and whether it is a clean integer.

    A value with stray characters after its digits (``"8192 x"``, ``"8192\\x00"``) gives its
    leading digits, flagged unclean: such a pair is only used when it passes the
    consistent-pair rule of :func:`_locate_data`. Absent or blank: ``(0, True)``; no
    leading digits: ``(None, False)``.
    """
    value = kw.get(key, "").strip()
    if not value:
        return 0, True
    if value.isdigit():
        return int(value), True
    digits = re.match(r"\+?(\d+)", value)
    return (int(digits.group(1)) if digits else None), False


def _pe(value: str) -> tuple[float, float]:
    parts = [p.strip() for p in value.split(",")]
    try:
        f1 = float(parts[0]) if parts[0] else 0.0
        f2 = float(parts[1]) if len(parts) > 1 and parts[1] else 0.0
    except ValueError:
        return 0.0, 0.0
    return f1, f2


def _channels(kw: dict[str, str], layout: Layout, path: Path) -> pd.DataFrame:
    par = len(layout.kinds)
    names, labels, rng, dec, off, gain = [], [], [], [], [], []
    for n in range(1, par + 1):
        name = kw.get(f"$P{n}N", "").strip()
        names.append(name or f"P{n}")
        labels.append(kw.get(f"$P{n}S", "").strip())
        try:
            rng.append(float(kw.get(f"$P{n}R", "nan")))
        except ValueError:
            rng.append(float("nan"))
        f1, f2 = _pe(kw.get(f"$P{n}E", "0,0"))
        dec.append(f1)
        off.append(f2)
        try:
            g = float(kw.get(f"$P{n}G", "1") or 1)
        except ValueError:
            g = 1.0
        gain.append(g)
    bits = [b // 8 if k == "A" else b for k, b in zip(layout.kinds, layout.bits)]
    columns = {"name": unique_names(names, path), "label": labels, "bits": bits, "range": rng,
               "log_decades": dec, "log_offset": off, "gain": gain, "datatype": list(layout.kinds)}
    dtypes = {"name": object, "label": object, "bits": np.int64, "datatype": object}
    return pd.DataFrame({k: np.array(v, dtype=dtypes.get(k, np.float64)) for k, v in columns.items()},
                        copy=False)


def _scale(events: np.ndarray, channels: pd.DataFrame) -> None:
    """Linear values in place (see :func:`read_fcs`)."""
    for j, ch in enumerate(channels.itertuples(index=False)):
        col = events[:, j]
        if ch.log_decades > 0 and ch.datatype in ("I", "A"):
            rng = ch.range if np.isfinite(ch.range) and ch.range > 0 else 2.0 ** ch.bits
            f2 = ch.log_offset if ch.log_offset > 0 else 1.0
            col[...] = f2 * np.power(10.0, ch.log_decades * col.astype(np.float64) / rng)
        elif ch.log_decades == 0 and np.isfinite(ch.gain) and ch.gain not in (0.0, 1.0):
            col /= ch.gain


def _spillover(kw: dict[str, str], names: list[str], labels: list[str],
               path: Path) -> pd.DataFrame | None:
    for key in _SPILL_KEYS:
        if kw.get(key, "").strip():
            try:
                return _parse_spill(kw[key], names, labels)
            except ValueError as err:
                warnings.warn(f"{path}: keyword {key} ignored: {err}", stacklevel=3)
    return _dfc_spill(kw, names)


def _parse_spill(value: str, names: list[str], labels: list[str]) -> pd.DataFrame:
    parts = [p.strip() for p in value.split(",")]
    try:
        n = int(float(parts[0]))
    except ValueError:
        raise ValueError(f"does not start with the channel count: {value[:40]!r}") from None
    if n <= 0 or len(parts) != 1 + n + n * n:
        raise ValueError(f"holds {len(parts)} fields, expected 1 + {n} + {n}x{n}")
    chans = parts[1:1 + n]
    try:
        mat = np.array([float(x) for x in parts[1 + n:]]).reshape(n, n)
    except ValueError:
        raise ValueError("matrix values are not numbers") from None
    resolved = []
    for c in chans:
        if c in names:
            resolved.append(c)
        elif c in labels:
            resolved.append(names[labels.index(c)])
        elif c.isdigit() and 1 <= int(c) <= len(names):  # parameter numbers (Accuri)
            resolved.append(names[int(c) - 1])
        else:
            resolved.append(c)
    return pd.DataFrame(mat, index=resolved, columns=resolved)


def _dfc_spill(kw: dict[str, str], names: list[str]) -> pd.DataFrame | None:
    """Beckman ``$DFCiTOj``: percent of detector FLi's signal seen in FLj."""
    pairs = {}
    for key, val in kw.items():
        m = _DFC_RE.match(key)
        if m:
            try:
                pairs[int(m.group(1)), int(m.group(2))] = float(val)
            except ValueError:
                continue
    if not pairs:
        return None
    dets = sorted({i for ij in pairs for i in ij})
    chan = {}
    for d in dets:
        hit = next((nm for nm in names if re.match(rf"^FL{d}(?!\d)", nm)), None)
        if hit is not None:
            chan[d] = hit
    if not chan:
        return None
    used = sorted(chan)
    mat = np.eye(len(used))
    for a, i in enumerate(used):
        for b, j in enumerate(used):
            if i != j:
                mat[a, b] = pairs.get((i, j), 0.0) / 100.0
    cols = [chan[d] for d in used]
    return pd.DataFrame(mat, index=cols, columns=cols)
