"""map_samples: input order, determinism across backends, progress, errors."""

import os

import numpy as np
import pytest

from immunomon.errors import UserError
from immunomon.pipeline.executor import map_samples


def draw(seed: int) -> np.ndarray:
    """A seeded random draw whose cost varies with the seed (finish order != input order)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=1000 + 5000 * (seed % 3)).cumsum()[-5:]


def fail_on_three(x: int) -> int:
    if x == 3:
        raise UserError(f"sample {x}: broken")
    return x


ITEMS = [7, 3, 11, 2, 5, 8]


def test_in_process_matches_plain_loop():
    ticks = []
    got = map_samples(draw, ITEMS, progress=lambda: ticks.append(1))
    for a, b in zip(got, [draw(s) for s in ITEMS]):
        np.testing.assert_array_equal(a, b)
    assert len(ticks) == len(ITEMS)


def test_processes_keep_input_order_and_values():
    ticks = []
    got = map_samples(draw, ITEMS, workers=2, progress=lambda: ticks.append(1))
    assert len(got) == len(ITEMS) and len(ticks) == len(ITEMS)
    for a, seed in zip(got, ITEMS):
        np.testing.assert_array_equal(a, draw(seed))


def test_rich_progress_task_is_advanced():
    from rich.progress import Progress

    with Progress(disable=True) as bar:
        task = bar.add_task("x", total=len(ITEMS))
        map_samples(abs, ITEMS, progress=(bar, task))
        assert bar.tasks[0].completed == len(ITEMS)


def test_dask_local_cluster_matches_loop():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        got = map_samples(draw, ITEMS, scheduler=cluster.scheduler_address)
        with Client(cluster) as client:
            got_client = map_samples(draw, ITEMS, scheduler=client)
    for a, b, seed in zip(got, got_client, ITEMS):
        np.testing.assert_array_equal(a, draw(seed))
        np.testing.assert_array_equal(b, draw(seed))


@pytest.mark.parametrize("workers", [1, 2])
def test_errors_propagate(workers):
    with pytest.raises(UserError, match="sample 3"):
        map_samples(fail_on_three, ITEMS, workers=workers)


def test_bad_workers_is_user_error():
    with pytest.raises(UserError, match="workers"):
        map_samples(abs, ITEMS, workers=0)



def worker_pid(_) -> int:
    return os.getpid()


def test_worker_pool_is_reused_across_calls():
    from immunomon.pipeline.executor import worker_pool

    with worker_pool(2):
        first = map_samples(worker_pid, ITEMS, workers=2)
        second = map_samples(worker_pid, ITEMS, workers=2)
    assert len(set(first) | set(second)) <= 2 and os.getpid() not in first


def _tuned_in_worker(_):
    from immunomon.pipeline.executor import tune_allocator

    return tune_allocator()


def test_allocator_tuned_on_glibc_in_process_and_workers():
    import platform

    from immunomon.pipeline.executor import tune_allocator

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is glibc
    assert map_samples(_tuned_in_worker, [0, 1], workers=2) == [glibc, glibc]
