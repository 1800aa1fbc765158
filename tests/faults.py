"""Tools of the fault-injection tests (``test_faults*.py``): the CLI in a child process with
its exit status, stderr and peak memory; checks of the exit-status contract; broken FCS files;
size-limited and read-only mounts; the processes of a process group."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Result:
    code: int
    out: str
    err: str
    peak_mb: float  # the child's peak resident memory (MiB)

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()


# The CLI runs as the grandchild of a small launcher: the peak RSS the kernel reports for a
# process includes the resident size of the process it was forked from (kept across exec), and
# the test runner itself grows to hundreds of MiB over a session.
_LAUNCHER = """
import os, resource, signal, subprocess, sys
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
child = subprocess.Popen(sys.argv[3:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def cli(*args, timeout: float = 300, data_limit: int | None = None, cwd=None) -> Result:
    """``immunomon ARGS`` in a child process (own session): exit status, stdout, stderr and
    peak RSS (``wait4``, in a launcher forked from nothing larger than itself).
    ``data_limit`` caps the child's data segment (RLIMIT_DATA, bytes); past ``timeout``
    seconds the child's process group is killed (status -9)."""
    out_fd, err_fd = os.memfd_create("out"), os.memfd_create("err")
    peak_fd = os.memfd_create("peak")
    peak_path = f"/proc/{os.getpid()}/fd/{peak_fd}"
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, peak_path, str(data_limit or 0),
                             sys.executable, "-m", "immunomon", *map(str, args)],
                            stdout=out_fd, stderr=err_fd, start_new_session=True, cwd=cwd)
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()
    texts = []
    for fd in (out_fd, err_fd, peak_fd):
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb") as handle:
            texts.append(handle.read().decode("utf-8", "replace"))
    peak_kib = float(texts[2]) if texts[2].strip() else float("nan")
    return Result(proc.returncode, texts[0], texts[1], peak_kib / 1024)


def assert_contract(result: Result, code: int, *needles: str, lines: int | None = None) -> None:
    """Exit status ``code``, no traceback, ``lines`` lines on stderr (if given), each
    non-empty; every needle appears on every line (a file name, a position)."""
    assert result.code == code, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    assert not re.search(r"^\w*(Error|Exception)\b", result.err, re.MULTILINE), result.err
    if lines is not None:
        assert len(result.lines) == lines, result.err
    for line in result.lines:
        assert line.strip(), result.err
        for needle in needles:
            assert needle in line, (needle, line)


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder`` (inputs must never change)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    """Temporary files of atomic writers left below ``folder``."""
    return sorted(Path(folder).rglob(".*.tmp"))


# ---------------------------------------------------------------------------------- FCS bytes
def fcs_file(path: Path, keywords: dict[str, str], data: bytes = b"", *, data_size: int = 0,
             header_data: tuple[int, int] | None = None) -> Path:
    """An FCS 3.1 file: HEADER, TEXT with ``keywords``, then DATA (``data``, or ``data_size``
    sparse zero bytes). ``$BEGINDATA``/``$ENDDATA`` default to the DATA offsets; a value may
    use them as ``{begin}`` and ``{end}`` (e.g. ``"{begin}x"``, a stray character). HEADER
    holds the DATA offsets (blank above 99,999,999) unless ``header_data`` overrides them."""
    size = data_size or len(data)
    keywords = {"$BEGINDATA": "{begin}", "$ENDDATA": "{end}", **keywords}
    width = 12  # offsets are written right-aligned in a fixed width: TEXT's size is known
    text = b"/" + b"".join(f"{k}/{v}/".encode() for k, v in keywords.items())
    begin = 58 + len(text) + 2 * width
    end = begin + size - 1
    text = b"/" + b"".join(f"{k}/{v.format(begin=str(begin).rjust(width), end=str(end).rjust(width))}/"
                           .encode() for k, v in keywords.items())
    t0, t1 = 58, 58 + len(text) - 1
    assert t1 < begin
    d0, d1 = header_data if header_data is not None else (begin, end)
    fields = [t0, t1, d0, d1, 0, 0]
    header = b"FCS3.1    " + b"".join(str(f).rjust(8).encode() if f < 10**8 else b" " * 8
                                      for f in fields)
    with open(path, "wb") as handle:
        handle.write(header + text)
        handle.seek(begin)
        handle.write(data)
        handle.truncate(begin + size)
    return path


def float_keywords(names: list[str], events: int) -> dict[str, str]:
    """TEXT keywords of ``events`` float32 events of the channels ``names``."""
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "F", "$MODE": "L", "$NEXTDATA": "0",
          "$PAR": str(len(names)), "$TOT": str(events)}
    for i, name in enumerate(names, 1):
        kw |= {f"$P{i}N": name, f"$P{i}B": "32", f"$P{i}R": "262144", f"$P{i}E": "0,0"}
    return kw


def edit_keyword(src: Path, dst: Path, key: str, value: str) -> Path:
    """Copy of ``src`` whose TEXT keyword ``key`` reads ``value`` (right-aligned in the old
    value's width, so no offset moves; TEXT values are read stripped)."""
    raw = bytearray(src.read_bytes())
    t0, t1 = int(raw[10:18]), int(raw[18:26])
    delim = bytes(raw[t0:t0 + 1])
    pattern = re.escape(delim + key.encode() + delim) + rb"([^" + re.escape(delim) + rb"]*)"
    found = re.search(pattern, bytes(raw[t0:t1 + 1]))
    old = found.group(1)
    assert len(value) <= len(old), (key, old, value)
    start = t0 + found.start(1)
    raw[start:start + len(old)] = value.rjust(len(old)).encode()
    dst.write_bytes(bytes(raw))
    return dst


# ----------------------------------------------------------------------------------- mounts
@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A size-limited tmpfs at ``path`` (full-disk faults); skips where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` (a folder) bind-mounted read-only onto itself (root ignores chmod); skips
    where mounting is refused."""
    done = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# -------------------------------------------------------------------------------- processes
def group_processes(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from ``/proc``."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live
