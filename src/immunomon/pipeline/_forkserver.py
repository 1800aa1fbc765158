"""Preloaded by the worker pool's forkserver, and imported nowhere else: the forkserver dies
with the process that started it (:func:`~immunomon.pipeline.executor.die_with_parent`)."""

from immunomon.pipeline.executor import die_with_parent

die_with_parent()
