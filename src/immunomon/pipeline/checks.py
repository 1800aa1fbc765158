"""Whole-study validation: the manifest (:mod:`immunomon.io.study`) plus each stage's checks of
the study's settings (analysis plan, gating routes, normalisation, CITE-seq sources), so that
``validate`` rejects up front whatever ``run`` would reject, every problem at once.

A stage registers a checker in :data:`CHECKS` as ``"module:function"``; the function takes a
:class:`~immunomon.io.study.Study` and returns problem lines (empty when fine). It is called
even when the manifest has problems of its own, so it must tolerate rows that name unknown
visits or panels.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from immunomon.errors import UserError

#: Checkers of the study's settings, in the order their problems are listed.
CHECKS: tuple[str, ...] = (
    "immunomon.pipeline.supervised:check_gating",
    "immunomon.pipeline.citeseq:check_citeseq",
    "immunomon.stats.plan_check:check_plan",
    "immunomon.pipeline.normalise:check_normalisation",
)


def check_study(study) -> list[str]:
    """Problems found by every registered checker of :data:`CHECKS`."""
    problems: list[str] = []
    for spec in CHECKS:
        module, name = spec.split(":")
        problems += getattr(importlib.import_module(module), name)(study)
    return problems


def validate(study_dir, *, check_files: bool = True,
             overrides: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of a study folder: manifest and settings (empty when valid)."""
    from immunomon.io.study import read_study

    study, problems = read_study(study_dir, check_files=check_files, overrides=overrides)
    return problems + (check_study(study) if study is not None else [])


def load_checked(study_dir, *, check_files: bool = True,
                 overrides: Mapping[str, str] | None = None):
    """:func:`~immunomon.io.study.load_study` plus :func:`check_study`: the study, or a
    :class:`UserError` listing every problem of both."""
    from immunomon.io.study import read_study

    study, problems = read_study(study_dir, check_files=check_files, overrides=overrides)
    if study is not None:
        problems = problems + check_study(study)
    if problems:
        raise UserError(problems)
    return study
