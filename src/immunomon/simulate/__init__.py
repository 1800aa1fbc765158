"""Synthetic immunomonitoring trials with known truth.

``simulate_study(out_dir, patients=46, visits=(...), events=50_000, seed=1,
effect="planted", effect_size=1.0)`` writes a complete study folder (FCS files, manifest,
clinical and adverse-event tables) and its ``truth/``. The model is described in
:mod:`immunomon.simulate.model` (cohort, visits, planted effects),
:mod:`immunomon.simulate.events` (cells, artefacts, acquisition) and
:mod:`immunomon.simulate.panel` (channels, spillover). This package never imports the
analysis code.
"""

from .study import DEFAULT_VISITS, simulate_study

__all__ = ["simulate_study", "DEFAULT_VISITS"]
