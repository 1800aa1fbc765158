"""One writer per run directory: ``RUN_DIR/.lock``, held with ``flock`` while a run writes.

A second ``immunomon run`` (or ``report``) into the same run directory stops at once with
one line naming the run that holds it, instead of both writing the same files. The lock
belongs to the open file, so the kernel releases it when the holder exits, even by
``kill -9``: a lock is never stale. The ``.lock`` file itself stays (it records the last
holder) and is harmless.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from immunomon.errors import UserError

from .provenance import utc_now
from .rundir import write_error

__all__ = ["LOCK_NAME", "run_lock"]

LOCK_NAME = ".lock"


@contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` (an existing folder) for the ``with`` block.

    Raises
    ------
    UserError
        Another process holds it (the message names it: pid, host, start time), or the
        folder cannot be written (read-only file system, permission).
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise UserError(f"{run_dir}: another immunomon run is writing this run directory "
                            f"({holder}); wait for it to finish or choose another --out") from None
        except OSError as err:  # e.g. a file system without locks
            raise UserError(f"{path}: cannot lock the run directory ({err.strerror})") from None
        try:  # who holds it, for the message of a second run (best effort: the disk may be full)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {utc_now()}\n"
                      .encode(), 0)
        except OSError:
            pass
        yield path
    finally:
        os.close(fd)
