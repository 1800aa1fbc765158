"""Shared pytest fixtures.

``small_study``: a simulated study (6 patients × visits D1, D8 × 5,000 events, seed 1,
planted effects) written once per test session; any test may read it (never modify it).
``gated_small_study``: that study gated once with :func:`immunomon.pipeline.supervised.gate_study`
(``(out_dir, tables)``). ``prepared_small_study``: every sample prepared and gated in memory.
``truth_events``: the per-event truth labels of a sample. ``cli``: run ``immunomon ARGS`` in
this process and get ``(exit status, stdout, stderr)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_STUDY = dict(patients=6, visits=("D1", "D8"), events=5_000, seed=1)


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> Path:
    """Folder of a small simulated study with its ``truth/`` (see module docstring)."""
    from immunomon.simulate import simulate_study

    return simulate_study(tmp_path_factory.mktemp("small_study") / "study", **SMALL_STUDY)


@pytest.fixture(scope="session")
def gated_small_study(small_study, tmp_path_factory):
    """``(out_dir, tables)`` of ``gate_study(small_study, out_dir)``."""
    from immunomon.pipeline.supervised import gate_study

    out = tmp_path_factory.mktemp("gated_small_study")
    return out, gate_study(small_study, out)


@pytest.fixture(scope="session")
def prepared_small_study(small_study):
    """``{sample_id: (PreparedSample, TemplateGating)}`` of every sample of ``small_study``,
    prepared with :func:`~immunomon.pipeline.prepare.prepare_sample` and gated with the
    built-in ``treg`` template."""
    from immunomon.gating.template import GatingTemplate
    from immunomon.io.study import load_study
    from immunomon.pipeline.prepare import prepare_sample

    study = load_study(small_study)
    template = GatingTemplate.load("treg")
    out = {}
    for sid in study.samples["sample_id"]:
        prepared = prepare_sample(study, sid)
        out[sid] = (prepared, template.apply(prepared.events, sid))
    return out


@pytest.fixture(scope="session")
def truth_events(small_study):
    """Function ``sample_id -> DataFrame(population, artefact)`` of the study's truth, one
    row per file event (file order)."""
    import pandas as pd

    def load(sample_id: str):
        return pd.read_parquet(Path(small_study) / "truth" / "events" / f"{sample_id}.parquet").astype(str)

    return load


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*args) -> (exit status, stdout, stderr)`` of ``immunomon ARGS`` run in-process."""
    import sys

    from immunomon.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["immunomon", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
