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
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from .rundir import atomic_write

__all__ = ["Cache", "make_key", "sha256_file", "code_fingerprint"]

_CHUNK = 1 << 22  # 4 MiB


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read-only, streamed in 4 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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

    A package contributes every ``*.py`` file below it; a missing module contributes
    its name only, so the key still changes when it appears.
    """
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(name.encode())
        spec = find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
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
