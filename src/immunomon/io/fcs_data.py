"""Layout of an FCS DATA segment and its decoding into a native-endian array.

The DATA segment is read in chunks of whole events straight into the output array
(one copy, with byte swapping and integer masking done in that copy), so reading a
file needs the output array plus one chunk, never a second full-size buffer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .fcs_text import fcs_error, int_keyword

CHUNK_BYTES = 1 << 25  # at most 32 MiB of raw DATA per decoding step
_STD_WIDTHS = (1, 2, 4, 8)
_SLACK = 8  # spare bytes after each chunk: odd-width fields are read as wider words


@dataclass(frozen=True)
class Layout:
    """How one event is stored.

    ``kinds``: per channel ``"I"``, ``"F"``, ``"D"`` or ``"A"``; ``bits``: per channel
    field width in bits (characters × 8 for fixed-width ASCII); ``packed``: integer
    fields form one bit stream (widths not multiples of 8); ``order``: ``"<"``, ``">"``
    or a byte permutation (tuple) from ``$BYTEORD``; ``masks``: per channel
    ``$PnR`` bit mask for integers (``None`` = none); ``delimited``: ASCII with
    ``$PnB = *`` (values separated by delimiters, no fixed record size).
    """

    kinds: tuple[str, ...]
    bits: tuple[int, ...]
    packed: bool
    order: str | tuple[int, ...]
    masks: tuple[int | None, ...]
    delimited: bool = False

    @property
    def record_bits(self) -> int:
        return sum(self.bits)

    def nbytes(self, tot: int) -> int:
        """Bytes of DATA needed for ``tot`` events (0 when delimited)."""
        if self.delimited:
            return 0
        return (tot * self.record_bits + 7) // 8

    @property
    def uniform_dtype(self) -> np.dtype | None:
        """One numpy dtype for every field, when the layout allows a plain 2-D view."""
        if self.packed or self.delimited or len(set(self.kinds)) != 1 \
                or len(set(self.bits)) != 1 or not isinstance(self.order, str):
            return None
        kind, nb = self.kinds[0], self.bits[0] // 8
        if kind == "A":
            return np.dtype(f"S{nb}")
        if nb not in _STD_WIDTHS or (kind == "F" and nb != 4) or (kind == "D" and nb != 8):
            return None
        return np.dtype(f"{self.order}{'u' if kind == 'I' else 'f'}{nb}")


def parse_byteorder(value: str, path: str | Path, offset: int) -> str | tuple[int, ...]:
    """``$BYTEORD`` → ``"<"``, ``">"`` or a permutation (stored byte i → significance)."""
    try:
        order = tuple(int(x) for x in value.replace(" ", "").split(","))
    except ValueError:
        raise fcs_error(path, offset, f"$BYTEORD is not a list of numbers: {value!r}") from None
    if sorted(order) != list(range(1, len(order) + 1)):
        raise fcs_error(path, offset, f"$BYTEORD is not a byte permutation: {value!r}")
    if order == tuple(sorted(order)):
        return "<"
    if order == tuple(sorted(order, reverse=True)):
        return ">"
    return order


def build_layouts(kw: dict[str, str], par: int, path: str | Path,
                  offset: int) -> list[Layout]:
    """Candidate layouts of the DATA segment from TEXT keywords.

    Usually one; integer widths that are not multiples of 8 give two candidates (one
    bit stream, or each field padded to 8/16/32/64 bits), told apart by the size of
    the DATA segment.
    """
    dtype_all = kw.get("$DATATYPE", "").strip().upper()
    mode = kw.get("$MODE", "L").strip().upper() or "L"
    if mode != "L":
        raise fcs_error(path, offset, f"$MODE {mode} (histogram data) is not supported, only L")
    order = parse_byteorder(kw.get("$BYTEORD", "1,2,3,4"), path, offset)
    kinds, bits, masks = [], [], []
    delimited = False
    for n in range(1, par + 1):
        kind = (kw.get(f"$P{n}DATATYPE", "").strip().upper() or dtype_all)
        if kind not in ("I", "F", "D", "A"):
            raise fcs_error(path, offset, f"unknown data type {kind!r} for parameter {n}")
        braw = kw.get(f"$P{n}B", "").strip()
        if kind == "A" and braw == "*":
            delimited = True
            b = 0
        elif kind == "F":
            b = 64 if braw == "64" else 32
        elif kind == "D":
            b = 64
        else:
            b = int_keyword(kw, f"$P{n}B", path, offset)
            if b is None or b <= 0 or (kind == "I" and b > 64):
                raise fcs_error(path, offset, f"$P{n}B is missing or invalid: {braw!r}")
            if kind == "A":
                b *= 8
        if kind == "F" and b == 64:
            kind = "D"
        mask = None
        if kind == "I":
            rng = _float(kw.get(f"$P{n}R", ""))
            if rng is not None and 1 < rng < 2.0 ** b:
                mask = (1 << max(1, math.ceil(math.log2(rng)))) - 1
        kinds.append(kind)
        bits.append(b)
        masks.append(mask)
    if delimited:
        return [Layout(tuple(kinds), tuple(bits), False, order, tuple(masks), True)]
    base = Layout(tuple(kinds), tuple(bits), False, order, tuple(masks))
    if all(b % 8 == 0 for b in bits):
        return [base]
    padded = tuple(b if b % 8 == 0 else next(w for w in (8, 16, 32, 64) if w >= b) for b in bits)
    return [Layout(tuple(kinds), tuple(bits), True, order, tuple(masks)),
            Layout(tuple(kinds), padded, False, order, tuple(masks))]


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_events(fh: BinaryIO, begin: int, tot: int, layout: Layout, dtype: np.dtype,
                path: str | Path, span: int | None = None) -> np.ndarray:
    """Decode ``tot`` events starting at absolute offset ``begin`` into ``(tot, par)``.

    The caller has checked that the segment lies inside the file. Before allocating, the
    output array (``tot`` × ``par`` values of ``dtype``) is checked against the memory this
    process may still use (:func:`available_memory`): a file claiming more events than
    fit is refused with one line instead of failing midway (or being killed).
    """
    par = len(layout.kinds)
    need = tot * par * np.dtype(dtype).itemsize
    free = available_memory()
    if free is not None and need > free:
        raise fcs_error(path, begin, f"$TOT {tot} events x $PAR {par} parameters need "
                                     f"{_gib(need)} of memory as {np.dtype(dtype).name}; only "
                                     f"{_gib(free)} is available")
    if layout.delimited:
        return _read_delimited(fh, begin, span or 0, tot, par, dtype, path)
    if tot == 0 or par == 0:
        return np.empty((tot, par), dtype=dtype)
    fh.seek(begin)
    ud = layout.uniform_dtype
    if ud is not None and ud == dtype:  # stored exactly as the output: one read into it
        flat = np.fromfile(fh, dtype=dtype, count=tot * par)
        if flat.size != tot * par:
            raise fcs_error(path, begin + flat.nbytes, "file ends inside the DATA segment")
        return flat.reshape(tot, par)
    out = np.empty((tot, par), dtype=dtype)
    rec_bits = layout.record_bits
    # chunks of at most CHUNK_BYTES and about 1/16 of the segment: peak ~ output + 6 %
    chunk = min(CHUNK_BYTES, max(1 << 20, tot * rec_bits // 8 // 16))
    step = max(8, (chunk * 8 // max(rec_bits, 1)) // 8 * 8)
    if layout.packed:
        step = max(8, step // 8 // 8 * 8)
    buf = np.zeros((step * rec_bits + 7) // 8 + _SLACK, dtype=np.uint8)
    for r0 in range(0, tot, step):
        rows = min(step, tot - r0)
        nbytes = (rows * rec_bits + 7) // 8
        _readinto_exact(fh, memoryview(buf[:nbytes]), path, fh.tell())
        _decode_chunk(buf[:nbytes + _SLACK], rows, layout, out[r0:r0 + rows], path, begin)
    return out


def _readinto_exact(fh: BinaryIO, view: memoryview, path: str | Path, where: int) -> None:
    got = 0
    total = len(view)
    while got < total:
        n = fh.readinto(view[got:])
        if not n:
            raise fcs_error(path, where + got, "file ends inside the DATA segment")
        got += n


def _decode_chunk(padded: np.ndarray, rows: int, layout: Layout, out: np.ndarray,
                  path: str | Path, begin: int) -> None:
    """Decode ``rows`` events from ``padded`` (their bytes + ``_SLACK`` spare bytes)."""
    par = len(layout.kinds)
    raw = padded[:len(padded) - _SLACK]
    if layout.packed:
        _decode_packed(raw, rows, layout, out)
        return
    order = layout.order
    if not isinstance(order, str):  # unusual byte permutation: reorder to little-endian
        w = len(order)
        if any(b != 8 * w for b in layout.bits):
            raise fcs_error(path, begin, f"$BYTEORD {order} does not match field widths "
                                         f"{sorted(set(layout.bits))}")
        raw = raw.reshape(-1, w)[:, np.argsort(order)].reshape(-1)
        padded = np.concatenate([raw, np.zeros(_SLACK, dtype=np.uint8)])
        layout = Layout(layout.kinds, layout.bits, False, "<", layout.masks)
        order = "<"
    ud = layout.uniform_dtype
    if ud is not None:
        arr = raw.view(ud).reshape(rows, par)
        if ud.kind == "S":
            _ascii_into(arr, out, path, begin)
            return
        out[...] = _masked(arr, layout)
        return
    nb = layout.bits[0] // 8
    if set(layout.kinds) == {"I"} and len(set(layout.bits)) == 1 and nb * 8 == layout.bits[0]:
        # e.g. all 24-bit: every field as a wider word, in one pass
        out[...] = _masked(_odd_width(padded, rows, nb * par, 0, nb, order, stride=nb,
                                      count=par), layout)
        return
    rec = raw.reshape(rows, -1)
    offsets = np.concatenate([[0], np.cumsum(layout.bits) // 8])
    std = [j for j, (k, b) in enumerate(zip(layout.kinds, layout.bits))
           if k != "A" and b // 8 in _STD_WIDTHS]
    if std:  # one structured view for every 1/2/4/8-byte field
        fields = raw.view(np.dtype({
            "names": [f"f{j}" for j in std],
            "formats": [f"{order}{'u' if layout.kinds[j] == 'I' else 'f'}{layout.bits[j] // 8}"
                        for j in std],
            "offsets": [int(offsets[j]) for j in std], "itemsize": rec.shape[1]}))
    for j, (kind, b) in enumerate(zip(layout.kinds, layout.bits)):
        nb = b // 8
        field = rec[:, offsets[j]:offsets[j] + nb]
        if kind == "A":
            col = np.ascontiguousarray(field).view(f"S{nb}")[:, 0]
            _ascii_into(col[:, None], out[:, j:j + 1], path, begin)
            continue
        if nb in _STD_WIDTHS:
            col = fields[f"f{j}"]
        else:  # 3-, 5-, 6- or 7-byte integers
            col = _odd_width(padded, rows, rec.shape[1], int(offsets[j]), nb, order)
        if layout.masks[j] is not None:
            col = col & np.asarray(layout.masks[j], dtype=col.dtype.newbyteorder("="))
        out[:, j] = col


def _masked(arr: np.ndarray, layout: Layout) -> np.ndarray:
    """``arr`` (rows x channels integers) with each channel's ``$PnR`` bit mask applied."""
    if all(m is None for m in layout.masks):
        return arr
    full = np.array([np.iinfo(arr.dtype).max if m is None else m for m in layout.masks],
                    dtype=arr.dtype.newbyteorder("="))
    return arr & full


def _odd_width(padded: np.ndarray, rows: int, size: int, off: int, nb: int, order: str,
               stride: int = 0, count: int = 0) -> np.ndarray:
    """Unsigned integers of ``nb`` (3, 5, 6 or 7) bytes at byte ``off`` of each record of
    ``size`` bytes: read as 4- or 8-byte words that start at the field (the spare bytes
    after the chunk cover the last one), then the following bytes are shifted or masked
    away. With ``count``, ``count`` fields ``stride`` bytes apart: a (rows, count) array.
    """
    width = 4 if nb < 4 else 8
    shape, strides = ((rows, count), (size, stride)) if count else ((rows,), (size,))
    words = np.ndarray(shape, dtype=f"<u{width}", buffer=padded, offset=off, strides=strides)
    kind = np.dtype(f"u{width}").type
    vals = words & kind((1 << (8 * nb)) - 1)  # little-endian: the field's bytes are the low ones
    if order == ">":  # reverse the bytes of each word, then drop the zero low bytes
        vals.byteswap(inplace=True)
        vals >>= kind(8 * (width - nb))
    return vals


def _decode_packed(raw: np.ndarray, rows: int, layout: Layout, out: np.ndarray) -> None:
    """Integer fields packed as one big-endian bit stream (most significant bit first)."""
    rec_bits = layout.record_bits
    bits = np.unpackbits(raw)[: rows * rec_bits].reshape(rows, rec_bits)
    off = 0
    for j, b in enumerate(layout.bits):
        weights = np.left_shift(np.uint64(1), np.arange(b - 1, -1, -1, dtype=np.uint64))
        col = bits[:, off:off + b].astype(np.uint64) @ weights
        off += b
        if layout.masks[j] is not None:
            col &= np.uint64(layout.masks[j])
        out[:, j] = col


def _ascii_into(arr: np.ndarray, out: np.ndarray, path: str | Path, begin: int) -> None:
    try:
        out[...] = arr.astype(np.float64)
    except ValueError as err:
        raise fcs_error(path, begin, f"ASCII DATA value is not a number ({err})") from None


#: Separators of delimited ASCII DATA values (``$PnB = *``).
_ASCII_SEPARATORS = re.compile(rb"[\s,;/|\\]+")
#: Longest ASCII value accepted (a number never needs more characters).
_ASCII_VALUE_MAX = 64


def _read_delimited(fh: BinaryIO, begin: int, span: int, tot: int, par: int,
                    dtype: np.dtype, path: str | Path) -> np.ndarray:
    """Delimited ASCII DATA (``span`` bytes from ``begin``) read in chunks of at most
    :data:`CHUNK_BYTES`: memory is the output array plus one chunk, whatever the file holds."""
    need = tot * par
    if need > (span + 1) // 2:  # every value takes a character and a separator
        raise fcs_error(path, begin, f"ASCII DATA of {span} bytes cannot hold $TOT x $PAR = "
                                     f"{need} values")
    out = np.empty(need, dtype=dtype)
    fh.seek(begin)
    filled, carry, left, at = 0, b"", span, begin
    while filled < need and (left > 0 or carry):
        block = fh.read(min(CHUNK_BYTES, left)) if left > 0 else b""
        left -= len(block)
        if not block and left > 0:
            raise fcs_error(path, at, "file ends inside the DATA segment")
        fields = _ASCII_SEPARATORS.split(carry + block)
        carry = fields.pop() if left > 0 else b""  # the last value may go on in the next chunk
        if len(carry) > _ASCII_VALUE_MAX:
            raise fcs_error(path, at + len(block) - len(carry),
                            f"ASCII DATA value is not a number (longer than {_ASCII_VALUE_MAX} "
                            "characters)")
        values = [f for f in fields if f][:need - filled]
        if values:
            try:
                out[filled:filled + len(values)] = np.array(values).astype(np.float64)
            except ValueError as err:
                raise fcs_error(path, at, f"ASCII DATA value is not a number ({err})") from None
        filled += len(values)
        at += len(block)
    if filled < need:
        raise fcs_error(path, begin, f"ASCII DATA holds {filled} values, $TOT x $PAR = {need}")
    return out.reshape(tot, par)


def available_memory() -> int | None:
    """Bytes this process may still allocate (Linux): the least of the system's available
    memory (``MemAvailable``), the cgroup's limit minus its usage, and the address-space and
    data rlimits minus what the process holds. ``None`` where none of these is known."""
    import resource

    status = _proc_fields("/proc/self/status")
    limits = []
    if (free := _proc_fields("/proc/meminfo").get("MemAvailable")) is not None:
        limits.append(free)
    for kind, held in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft = resource.getrlimit(kind)[0]
        if soft != resource.RLIM_INFINITY and held in status:
            limits.append(max(0, soft - status[held]))
    limits += _cgroup_room()
    return min(limits) if limits else None


def _cgroup_room() -> list[int]:
    """Memory left under this process's cgroup limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), as a one-item list; empty when there is no limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":
            files = Path("/sys/fs/cgroup", group.lstrip("/")), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            files = (Path("/sys/fs/cgroup/memory", group.lstrip("/")), "memory.limit_in_bytes",
                     "memory.usage_in_bytes")
        else:
            continue
        try:
            cap = (files[0] / files[1]).read_text().strip()
            if cap.isdigit() and int(cap) < 2**60:
                return [max(0, int(cap) - int((files[0] / files[2]).read_text()))]
        except (OSError, ValueError):
            continue
    return []


def _proc_fields(path: str) -> dict[str, int]:
    """``Name: N kB`` lines of a /proc file as bytes (empty where it cannot be read)."""
    out = {}
    try:
        with open(path) as handle:
            for line in handle:
                name, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                    out[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
