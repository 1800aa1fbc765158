"""Atomic file writes: the bytes land in a temporary file ``.NAME.XXXXXXXX.tmp`` in the same
folder, which then replaces the target with :func:`os.replace`. A reader (or a process killed
with ``kill -9``) sees either the old file or the new one, never a half-written one. A failed
write (full disk, read-only file system, missing folder, permission) removes the temporary
file, leaves the target untouched and raises a :class:`~immunomon.errors.UserError` that names
the path and the reason. Used by every writer: run directories, ``init``, FCS files, exports.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from immunomon.errors import UserError

__all__ = ["atomic_path", "atomic_write", "write_csv", "write_error"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Permissions of written files: 0o666 minus the umask, as ``open()`` would give
#: (``mkstemp`` creates its files 0o600).
_FILE_MODE = 0o666 & ~_umask()


def write_error(path: str | os.PathLike, err: OSError) -> UserError:
    """The one-line :class:`UserError` of a failed write of ``path`` (``err``'s reason)."""
    code = err.errno
    if not code:  # libraries' own OSErrors (h5py) carry the errno inside a long text
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else " ".join(str(err).split())[:200]
    return UserError(f"{path}: cannot write ({reason})")


@contextmanager
def atomic_path(path: str | os.PathLike, *, parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    ``parents`` creates missing folders; without it a missing folder is an error. On any
    exception the temporary file is removed and ``path`` is left untouched; an
    :class:`OSError` (disk full, read-only file system, permission ...) becomes a
    :class:`~immunomon.errors.UserError` naming ``path``.
    """
    path = Path(path)
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise UserError(f"{path}: cannot write (folder {path.parent} does not exist)")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise write_error(path, err) from None
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


def write_csv(table, path: str | os.PathLike, **kwargs) -> Path:
    """``table.to_csv(index=False, lineterminator="\\n", **kwargs)`` written atomically."""
    return atomic_write(path, table.to_csv(index=False, lineterminator="\n", **kwargs))
