"""Preloaded by the worker pool's forkserver, and imported nowhere else: the forkserver dies
with the process that started it (:func:`~immunomon.pipeline.executor.die_with_parent`)."""

import os

from immunomon.pipeline.executor import POOL_OWNER, die_with_parent

die_with_parent(int(os.environ[POOL_OWNER]) if os.environ.get(POOL_OWNER) else None)
