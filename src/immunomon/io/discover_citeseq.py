"""``immunomon init`` for 10x Genomics Cell Ranger outputs: a CITE-seq study folder.

A sample is any folder holding ``filtered_feature_bc_matrix`` (folder or ``.h5``), directly or
in ``outs/`` (:func:`immunomon.io.tenx.find_outputs`); ``--pattern`` is matched against the
sample folder's name with the same fields as for FCS files (``{patient}_{visit}``). The panel
lists the Antibody Capture features with their marker and class (isotype controls found by
name; ``state`` or ``type`` from the built-in list of human blood markers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from immunomon.markernames import canonical, marker_class

from .discover import guess_visits, pattern_regex, study_path, write_study
from .tenx import discover as discover_outputs

PANEL = "citeseq"


@dataclass
class CiteseqDiscovery:
    """What :func:`discover_citeseq` found: the features of the panel, the samples table, the
    visits (protocol order, study day), the baseline guess and what the user must check."""

    root: Path
    features: dict[str, dict]
    samples: pd.DataFrame
    visits: list[tuple[str, int]]
    baseline: str | None
    guesses: list[str]


def discover_citeseq(folder: str | Path, out_dir: str | Path, *,
                     pattern: str | None = None) -> CiteseqDiscovery:
    """Guess a CITE-seq study from the Cell Ranger outputs below ``folder`` (nothing written)."""
    root, out = Path(folder), Path(out_dir)
    regex = pattern_regex(pattern.removesuffix(".fcs")) if pattern else None
    panel, samples = discover_outputs(root, regex)
    features = {}
    for fid, spec in panel["features"].items():
        marker = canonical(spec["marker"])
        cls = spec["class"] if spec["class"] == "isotype" else marker_class(marker)
        features[fid] = {"marker": marker, "class": cls}
    samples["file"] = [study_path(root / rel, out) for rel in samples["file"]]
    guesses = []
    if not pattern:
        guesses.append("each sample folder is its own patient at one visit 'V1' (give "
                       "--pattern '{patient}_{visit}' to read them from the folder names)")
    visits, baseline, said = guess_visits(samples["visit"].tolist())
    guesses += said
    return CiteseqDiscovery(root, features, samples, visits, baseline, guesses)


def study_yaml(d: CiteseqDiscovery, study_id: str) -> str:
    """The commented ``study.yaml`` of a CITE-seq discovery."""
    import yaml

    from .discover import yaml_scalar as y

    lines = [f"# study.yaml written by `immunomon init` from {d.root} (10x Cell Ranger outputs)",
             "# Check the marker names and classes; `immunomon validate` lists what is missing.",
             f"study_id: {y(study_id)}", "seed: 1", "visits:   # protocol visits and their study day"]
    lines += [f"- {{name: {y(name)}, day: {day}}}" for name, day in d.visits]
    lines.append(f"baseline: {y(d.baseline)}   # guessed" if d.baseline is not None else
                 "# one visit: a cross-sectional study (no baseline)")
    lines += ["panels:", f"  {PANEL}:", "    assay: citeseq",
              "    features:   # Cell Ranger feature id: marker, class (type: lineage, state: "
              "activation, isotype: isotype control)"]
    lines += [f"      {y(fid)}: {y(spec)}" for fid, spec in d.features.items()]
    lines += ["    # citeseq: {normalisation: auto}   # dsb when the raw matrix holds empty "
              "droplets, else CLR", "exclusions: []"]
    text = "\n".join(lines) + "\n"
    yaml.safe_load(text)  # what we write must parse
    return text


def write_citeseq_study(d: CiteseqDiscovery, out_dir: str | Path, *,
                        study_id: str | None = None, force: bool = False) -> Path:
    """:func:`~immunomon.io.discover.write_study` with this module's ``study.yaml``."""
    return write_study(d, out_dir, study_id=study_id, force=force, render=study_yaml)
