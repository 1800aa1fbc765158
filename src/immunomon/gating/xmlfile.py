"""Reading a gating XML file (Gating-ML, FlowJo workspace) with a size limit."""

from __future__ import annotations

from pathlib import Path

from immunomon.errors import UserError


def read_xml_bytes(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path`` (only that file is read); a UserError above ``limit`` bytes
    or when it cannot be read. ``what`` names the kind of file in messages."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise UserError(f"{path}: {size} bytes is too large for a {what} (limit {limit})")
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err.strerror})") from None
