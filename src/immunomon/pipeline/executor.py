"""Run one function over many samples: in-process, local processes or a Dask cluster.

:func:`map_samples` is the only parallel primitive of the pipeline. Whatever the
backend, results come back in input order and are the same objects a plain
``[fn(x) for x in items]`` would give, so a run is deterministic regardless of the
number of workers.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from immunomon.errors import UserError

__all__ = ["map_samples", "worker_pool", "tune_allocator", "die_with_parent",
           "one_line_warnings", "Progress"]

#: A progress sink: a callable invoked once per finished item (with no argument), or a
#: ``(rich.progress.Progress, task_id)`` pair whose task is advanced by one per item.
Progress = Callable[[], Any] | tuple[Any, Any] | None

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

#: Pools kept open by :func:`worker_pool`, by number of workers (``None``: not started yet).
_POOLS: dict[int, ProcessPoolExecutor | None] = {}


@contextmanager
def worker_pool(workers: int) -> Iterator[None]:
    """Keep one pool of ``workers`` local processes for every :func:`map_samples` call with
    that many workers inside the block (worker start-up and imports are paid once).

    The pool starts with the first call that needs it: a block whose work is all cached
    starts no process. ``workers <= 1`` does nothing. Nested blocks with the same count
    share the pool.
    """
    if workers <= 1 or workers in _POOLS:
        yield
        return
    _POOLS[workers] = None
    try:
        yield
    finally:
        pool = _POOLS.pop(workers)
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def map_samples(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int = 1,
    scheduler: str | Any | None = None,
    progress: Progress = None,
) -> list:
    """Apply ``fn`` to every item and return the results in input order.

    Parameters
    ----------
    fn
        Function of one argument. For ``workers > 1`` or a scheduler it must be
        picklable: a top-level function of an importable module (or a
        :func:`functools.partial` of one), with picklable arguments and results.
    items
        The inputs, typically sample ids or small tuples; consumed once.
    workers
        ``1`` runs in this process (a plain loop); ``n > 1`` runs ``n`` local worker
        processes (``forkserver`` start method on POSIX, ``spawn`` elsewhere).
        Ignored when ``scheduler`` is given.
    scheduler
        Address of a running ``dask.distributed`` scheduler (``"tcp://host:8786"``)
        or a ``distributed.Client``; items are submitted with ``Client.map`` and
        gathered. The workers must be able to import ``immunomon``.
    progress
        Called (or its rich task advanced) once per finished item, in completion order.

    Returns
    -------
    list
        ``[fn(item) for item in items]``, same length and order as ``items``.

    Raises
    ------
    Exception
        The exception of the first failing item (in input order among those that failed
        before the remaining work was cancelled); pending items are cancelled.
    """
    items = list(items)
    if workers < 1:
        raise UserError(f"workers: must be at least 1, got {workers}")
    advance = _progress_callback(progress)
    if scheduler is not None:
        return _map_dask(fn, items, scheduler, advance)
    if workers == 1 or len(items) <= 1:
        results = []
        for item in items:
            results.append(fn(item))
            advance()
        return results
    return _map_processes(fn, items, min(workers, len(items)), advance)


def _progress_callback(progress: Progress) -> Callable[[], Any]:
    """Normalise the ``progress`` argument to a no-argument callable."""
    if progress is None:
        return lambda: None
    if isinstance(progress, tuple):
        bar, task = progress
        return lambda: bar.advance(task)
    return progress


#: glibc ``mallopt`` settings (parameter, value): M_MMAP_THRESHOLD = 32 MiB, so that an events
#: array of up to ~400,000 events × 20 channels comes from the heap and is reused after it is
#: freed instead of being mapped and zero-filled page by page for every file; M_TRIM_THRESHOLD
#: = 64 MiB of free heap kept at most. Preparing a 50,000-event file: 14.1 → 11.1 ms.
_MALLOC_SETTINGS = ((-3, 32 * 2**20), (-1, 64 * 2**20))


def tune_allocator() -> bool:
    """Apply :data:`_MALLOC_SETTINGS` to this process (the CLI and every local worker do);
    True if glibc took them, False elsewhere (e.g. macOS: nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(parameter, value) == 1 for parameter, value in _MALLOC_SETTINGS)
    except (OSError, AttributeError):
        return False


#: Linux ``prctl`` option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


#: Environment variable naming the process that started the worker pool (for its forkserver).
POOL_OWNER = "IMMUNOMON_POOL_OWNER"


def die_with_parent(parent: int | None = None) -> bool:
    """Have Linux send SIGKILL to this process when its parent dies (``PR_SET_PDEATHSIG``).

    The pool's forkserver calls it (its preload module, :mod:`._forkserver`) and so does
    every worker: a ``kill -9`` of the run kills the forkserver, which kills the workers;
    the resource tracker then sees its pipe close and exits. With ``parent`` (the pid the
    parent must have), a parent that died before the call ends this process at once.
    True if Linux took it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # not Linux
        return False
    if parent is not None and os.getppid() != parent:  # too late: no one will signal
        os._exit(1)
    return True


def one_line_warnings() -> None:
    """Print Python warnings as one line on stderr (``warning: MESSAGE``), without the
    second line of source code that Python adds (the CLI and every worker call it)."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"warning: {text}", file=file or sys.stderr, flush=True)

    warnings.showwarning = show


def _limit_threads(threads: int) -> None:
    """Worker initializer: die with the forkserver (:func:`die_with_parent`), warnings on one
    line, BLAS/OpenMP/numba threads capped so workers don't oversubscribe, and the allocator
    tuned (:func:`tune_allocator`)."""
    die_with_parent()
    one_line_warnings()
    tune_allocator()
    for name in _THREAD_ENV:
        os.environ[name] = str(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return
    threadpool_limits(limits=threads)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes (forkserver on POSIX, else spawn), threads capped."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":  # takes effect when the forkserver (re)starts
        context.set_forkserver_preload(["__main__", "immunomon.pipeline._forkserver"])
        os.environ[POOL_OWNER] = str(os.getpid())
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_limit_threads,
        initargs=(max(1, (os.cpu_count() or 1) // workers),),
    )


def _map_processes(fn: Callable, items: Sequence, workers: int, advance: Callable) -> list:
    """Local process pool (the :func:`worker_pool` one if open); results in input order."""
    shared = workers in _POOLS
    if shared and _POOLS[workers] is None:
        _POOLS[workers] = _new_pool(workers)
    pool = _POOLS[workers] if shared else _new_pool(workers)
    try:
        futures = [pool.submit(fn, item) for item in items]
        index = {future: i for i, future in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            failed = sorted((f for f in done if f.exception() is not None), key=index.get)
            if failed:
                for future in pending:
                    future.cancel()
                error = failed[0].exception()
                if isinstance(error, BrokenProcessPool):
                    raise UserError("a worker process died (killed by the system, most likely "
                                    "out of memory): run again with fewer --workers or on a "
                                    "machine with more memory") from None
                raise error
            for _ in done:
                advance()
        return [future.result() for future in futures]
    finally:
        if not shared:
            pool.shutdown(cancel_futures=True)


def _map_dask(fn: Callable, items: Sequence, scheduler: Any, advance: Callable) -> list:
    """``dask.distributed``: ``Client.map`` + ``as_completed``; results in input order."""
    from distributed import Client, as_completed

    own_client = not isinstance(scheduler, Client)
    if own_client:
        try:
            client = Client(scheduler, set_as_default=False, timeout="20s")
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler ({err})")
    else:
        client = scheduler
    try:
        with client.as_current():
            futures = client.map(fn, items, pure=False)
            for future in as_completed(futures):
                if future.status == "error":
                    client.cancel(futures)
                    future.result()  # re-raises the worker's exception here
                advance()
            return client.gather(futures)
    finally:
        if own_client:
            client.close()
