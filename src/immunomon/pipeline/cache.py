"""Content-addressed cache of intermediate results (``RUN_DIR/.cache`` by default).

A result is stored under a key that hashes everything it depends on: the SHA-256 of
the input file(s), the stage's parameters, the seed and the source code of the
modules that compute it (:func:`code_fingerprint`). Same key -> same result, so a run
that was interrupted (even by ``kill -9``) resumes where it stopped and a changed
option recomputes only the stages whose key it enters.

Entries are pickles written atomically (one file per entry); an unreadable entry is a
miss. The cache is local and trusted: only immunomon writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from immunomon.errors import UserError

from .rundir import atomic_write

__all__ = ["Cache", "make_key", "sha256_file", "sha256_files", "code_fingerprint"]

_CHUNK = 1 << 22  # 4 MiB
#: Files of the package whose content enters :func:`code_fingerprint`: code and package
#: data (built-in gating templates, marker tables, the report's scripts).
_CODE_SUFFIXES = (".py", ".yaml", ".js")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read-only, streamed in 4 MiB chunks).

    Only a regular file (or block device) is read: a FIFO or a character device would never
    end, and is a :class:`~immunomon.errors.UserError`, as is a file that cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    with open(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise UserError(f"{path}: not a regular file: it cannot be an input of a study")
        os.set_blocking(fd, True)
        digest = hashlib.sha256()
        try:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        except OSError as err:
            raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    return digest.hexdigest()


def sha256_files(paths: list, progress=None, threads: int = 4) -> list[str]:
    """:func:`sha256_file` of every path, in input order, on up to ``threads`` threads
    (hashlib releases the GIL: the files are hashed in parallel); ``progress`` is called
    once per file done."""
    from concurrent.futures import ThreadPoolExecutor

    if len(paths) <= 1 or threads <= 1:
        return [_done(sha256_file(p), progress) for p in paths]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda p: _done(sha256_file(p), progress), paths))


def _done(value, progress):
    if progress is not None:
        progress()
    return value


def _canonical(value: Any) -> Any:
    """JSON-able, order-stable form of keys' parts (paths, sets, numpy scalars, models)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "model_dump"):  # pydantic models
        return _canonical(value.model_dump(mode="json"))
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, float) and value != value:
        return "NaN"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def make_key(*parts: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``parts``."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def code_fingerprint(*modules: str) -> str:
    """SHA-256 over the source files of the named modules/packages (``"immunomon.stats"``).

    A package contributes every file below it that is code or package data (``*.py``,
    ``*.yaml``, ``*.js``); a missing module contributes its name only, so the key still
    changes when it appears.
    """
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(name.encode())
        spec = find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        files = sorted(f for f in origin.parent.rglob("*") if f.suffix in _CODE_SUFFIXES) \
            if origin.name == "__init__.py" else [origin]
        for file in files:
            digest.update(file.relative_to(origin.parent).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


class Cache:
    """Pickled results under ``root/STAGE/KK/KEY.pkl``.

    Parameters
    ----------
    root
        Cache folder (created on first write). ``None`` disables caching: every
        :meth:`get` misses and :meth:`put` does nothing.
    """

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def path(self, stage: str, key: str) -> Path:
        """Where the entry of ``stage``/``key`` lives."""
        if self.root is None:
            raise ValueError("caching is disabled")
        return self.root / stage / key[:2] / f"{key}.pkl"

    def has(self, stage: str, key: str) -> bool:
        """Whether an entry of ``stage``/``key`` is stored (it may still be unreadable)."""
        return self.root is not None and self.path(stage, key).is_file()

    def get(self, stage: str, key: str) -> Any | None:
        """The stored result, or ``None`` on a miss (absent or unreadable entry)."""
        if self.root is None:
            return None
        try:
            with open(self.path(stage, key), "rb") as handle:
                return pickle.load(handle)
        except Exception:  # absent, truncated or stale (class moved): recompute
            return None

    def put(self, stage: str, key: str, value: Any) -> Any:
        """Store ``value`` atomically and return it."""
        if self.root is not None:
            atomic_write(self.path(stage, key), pickle.dumps(value, protocol=5))
        return value

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"
