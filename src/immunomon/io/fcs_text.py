"""Low-level parsing of FCS HEADER and TEXT segments (FCS 2.0 – 3.2).

Every offset in this module is a byte offset counted from the start of the file.
Problems with the input raise :class:`FCSError`, whose message names the file, the
problem and the byte offset where it was found.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from immunomon.errors import UserError

HEADER_SIZE = 58
_VERSION_RE = re.compile(rb"FCS(\d)\.(\d)")


class FCSError(UserError):
    """An FCS file that cannot be read: truncated, corrupted or not an FCS file."""


def fcs_error(path: str | Path, offset: int | None, problem: str) -> FCSError:
    """Build an :class:`FCSError` whose one line names file, problem and byte offset."""
    where = f" (byte offset {offset})" if offset is not None else ""
    return FCSError(f"{path}: {problem}{where}")


@dataclass(frozen=True)
class Header:
    """The 58-byte HEADER of one data set; offsets are absolute (from file start).

    ``data_begin``/``data_end`` are ``None`` when the HEADER field is blank or 0.
    """

    start: int
    version: str
    text_begin: int
    text_end: int
    data_begin: int | None
    data_end: int | None


def parse_header(raw: bytes, start: int, path: str | Path) -> Header:
    """Parse the HEADER found at absolute offset ``start``.

    ``raw`` holds at least the 58 HEADER bytes (fewer means a truncated file).
    """
    if len(raw) < HEADER_SIZE:
        raise fcs_error(path, start + len(raw),
                        f"truncated HEADER: {len(raw)} of {HEADER_SIZE} bytes")
    m = _VERSION_RE.fullmatch(raw[:6])
    if m is None:
        # the bytes are not echoed: the file may be anything (a password file, a key)
        raise fcs_error(path, start, "not an FCS file: it does not start with an FCS version "
                                     "('FCS<major>.<minor>', e.g. FCS3.1)")
    fields: list[int | None] = []
    for k in range(4):
        pos = 10 + 8 * k
        text = raw[pos:pos + 8].strip()
        if not text:
            fields.append(None)
            continue
        if not text.isdigit():
            raise fcs_error(path, start + pos,
                            f"HEADER offset field {k + 1} is not a number: {raw[pos:pos + 8]!r}")
        fields.append(int(text))
    t0, t1, d0, d1 = fields
    if t0 is None or t1 is None or t0 == 0:
        raise fcs_error(path, start + 10, "HEADER gives no TEXT segment offsets")
    if t1 < t0 or t0 < HEADER_SIZE:
        raise fcs_error(path, start + 10,
                        f"HEADER TEXT segment offsets are invalid: {t0}..{t1}")
    if not d0 and not d1:
        d0 = d1 = None
    version = f"{m.group(1).decode()}.{m.group(2).decode()}"
    return Header(start, version, start + t0, start + t1,
                  None if d0 is None else start + d0, None if d1 is None else start + d1)


def parse_text(raw: bytes, offset: int, path: str | Path) -> dict[str, str]:
    """Parse one TEXT segment into ``{KEYWORD: value}``.

    The first byte is the delimiter. A doubled delimiter inside a value is an escaped
    delimiter; a doubled delimiter right after a keyword is read as an empty value
    (keywords never contain the delimiter). Keywords are stripped of padding and
    upper-cased; values are stripped of surrounding white space. The first occurrence
    of a repeated keyword wins.
    """
    if len(raw) < 2:
        raise fcs_error(path, offset, "TEXT segment is empty")
    delim = raw[:1]
    if delim.isalnum() and delim.isascii():
        raise fcs_error(path, offset, f"TEXT delimiter {delim!r} is a letter or digit")
    body = raw[1:]
    if body.endswith(delim):
        body = body[:-1]
    if delim * 2 not in body and delim[0] < 0x80:
        try:  # no escaped delimiters, valid UTF-8: split once (the usual file)
            return _keywords(body.decode("utf-8").split(delim.decode("ascii")))
        except UnicodeDecodeError:
            pass
    segs = body.split(delim)
    tokens: list[bytes] = []
    cur: list[bytes] = [segs[0]]
    j = 1
    while j < len(segs):
        k = j
        while k < len(segs) and segs[k] == b"":
            k += 1
        run = k - j + (k < len(segs))  # delimiters after segs[j-1] (up to segs[k])
        building_key = len(tokens) % 2 == 0
        if building_key and run % 2 == 0:
            # "KEY//NEXT": an empty value, not an escaped delimiter inside a keyword.
            tokens.append(b"".join(cur))
            tokens.append(b"")
            cur = [delim * ((run - 2) // 2)]
        else:
            cur.append(delim * (run // 2))
            if run % 2:
                tokens.append(b"".join(cur))
                cur = []
        if k < len(segs):
            cur.append(segs[k])
        j = k + 1
    last = b"".join(cur)
    if last or len(tokens) % 2:
        tokens.append(last)
    if len(tokens) % 2:
        tokens.append(b"")
    return _keywords([_decode(t) for t in tokens])


def _keywords(tokens: list[str]) -> dict[str, str]:
    """``{KEYWORD: value}`` from alternating keyword and value tokens (a missing last value
    is empty): keywords stripped of padding and upper-cased, values stripped, the first
    occurrence of a repeated keyword kept, empty keywords dropped."""
    if len(tokens) % 2:
        tokens = [*tokens, ""]
    out: dict[str, str] = {}
    for key, value in zip(tokens[::2], tokens[1::2]):
        key = key.strip(" \t\r\n\x00").upper()
        if key and key not in out:
            out[key] = value.strip()
    return out


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("latin-1")


def int_keyword(kw: dict[str, str], key: str, path: str | Path, offset: int,
                default: int | None = None) -> int | None:
    """Integer value of ``key`` (``default`` when absent or blank), else FCSError."""
    val = kw.get(key, "").strip()
    if not val:
        return default
    try:
        return int(val)
    except ValueError:
        try:
            f = float(val)
        except ValueError:
            f = float("nan")
        if f == f and f.is_integer():
            return int(f)
    raise fcs_error(path, offset, f"keyword {key} is not an integer: {val!r}")


def unique_names(names: list[str], path: str | Path) -> list[str]:
    """Make channel names unique by appending ``_2``, ``_3``… (with a warning)."""
    seen: dict[str, int] = {}
    out = []
    dups = []
    for name in names:
        if name in seen:
            seen[name] += 1
            new = f"{name}_{seen[name]}"
            while new in seen:
                seen[name] += 1
                new = f"{name}_{seen[name]}"
            dups.append(f"{name!r} -> {new!r}")
            seen[new] = 1
            out.append(new)
        else:
            seen[name] = 1
            out.append(name)
    if dups:
        warnings.warn(f"{path}: duplicate channel names made unique: {', '.join(dups)}",
                      stacklevel=3)
    return out
