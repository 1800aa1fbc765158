"""How a run reports itself: a progress bar per stage, each stage's wall and CPU seconds and
peak memory (``provenance.json`` steps, ``run.log``), and the run's log file."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from immunomon.atomic import write_error

__all__ = ["Stages", "measured", "peak_rss_mb", "open_log", "advance"]

log = logging.getLogger("immunomon.run")


def peak_rss_mb(reset: bool = False) -> float | None:
    """Peak resident memory of this process in MiB (Linux ``VmHWM``); ``reset`` restarts it."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measured(task):
    """Decorate a per-sample task: add its CPU seconds and process peak memory to the result."""
    @functools.wraps(task)
    def wrapper(job):
        t0 = time.process_time()
        result = task(job)
        return {**result, "cpu_s": time.process_time() - t0, "peak_mb": peak_rss_mb()}
    return wrapper


class Stages:
    """Rich progress bars (one per stage, with counts and ETA), the log and the step records.

    Each step records wall seconds, CPU seconds (this process, plus the worker tasks'
    own CPU time when they run elsewhere) and peak resident memory in MiB (this
    process since the stage started, and the largest worker's).
    """

    def __init__(self, quiet: bool, remote: bool):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=quiet, transient=False)
        self.remote = remote
        self.steps: list[dict] = []
        self._t0 = self._cpu0 = 0.0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def start(self, stage: str, total: int) -> tuple:
        """Open the bar of ``stage`` for ``total`` items; returns the ``progress`` pair."""
        log.info("%s: %d item(s)", stage, total)
        peak_rss_mb(reset=True)
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()
        task = self.progress.add_task(stage, total=total)
        if total == 0:  # nothing to do: finished now (else its clock runs through the run)
            self.progress.update(task, completed=0)
        return self.progress, task

    def done(self, stage: str, tasks: Sequence[dict] = (), **counts: Any) -> None:
        """Record the step: ``counts``, wall/CPU seconds and peak memory of the stage."""
        wall = time.perf_counter() - self._t0
        cpu = time.process_time() - self._cpu0
        peak = peak_rss_mb() or 0.0
        if self.remote and tasks:
            cpu += sum(t.get("cpu_s", 0.0) for t in tasks)
            peak = max([peak, *(t.get("peak_mb") or 0.0 for t in tasks)])
        step = {"step": stage, **counts, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "peak_mb": round(peak, 1)}
        self.steps.append(step)
        log.info("%s done in %.1f s (cpu %.1f s, peak %.0f MiB): %s", stage, wall, cpu, peak,
                 ", ".join(f"{k}={v}" for k, v in counts.items()))


class _LogFile(logging.FileHandler):
    """``run.log``: a record that cannot be written (disk full) is dropped without the
    traceback :mod:`logging` prints; the run's next write reports the full disk."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def open_log(path: Path) -> tuple[logging.Handler, int]:
    """Append this run's log records (``immunomon.*`` loggers, INFO and up) to ``run.log``;
    returns the handler and the logger's previous level."""
    try:
        handler = _LogFile(path, encoding="utf-8")
    except OSError as err:
        raise write_error(path, err) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("immunomon")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler, level


def advance(progress: tuple) -> None:
    bar, task = progress
    bar.advance(task)
