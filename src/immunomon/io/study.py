"""The study manifest: ``study.yaml`` + ``samples.csv`` (+ clinical and AE tables).

>>> from immunomon.io.study import load_study
>>> study = load_study("my_trial")                        # doctest: +SKIP
>>> study.samples[["sample_id", "patient_id", "visit"]]   # doctest: +SKIP
>>> study.path_of("P001_D1")                              # doctest: +SKIP

``study.yaml`` (validated with pydantic; unknown keys are errors)::

    study_id: SIM-LDIL2
    seed: 1
    visits: [{name: D1, day: 1}, {name: D8, day: 8}]
    baseline: D1
    panels:
      treg:
        assay: cytometry               # or citeseq (then `features:` instead of `channels:`)
        instrument: flow               # flow | spectral | mass
        channels:                      # $PnN -> marker, fluorochrome, class, role
          FSC-A: {marker: FSC-A, role: scatter}
          BV421-A: {marker: CD25, fluorochrome: BV421, class: type}
        compensation: file             # the file's $SPILLOVER, or none
        transform: {type: arcsinh, cofactor: 150}
        gating: {template: treg}       # or {gatingml: gates.xml} or {wsp: w.wsp, wsp_group: All};
                                       # no gating block: QC + clustering only
        clustering: {markers: [CD25], grid: [10, 10], metaclusters: 20, marker_table: m.csv}
        normalisation: {method: cytonorm, quantiles: 99, clustering: false}
    exclusions: [{sample_id: P001_D8, reason: clotted sample}]
    analysis:                          # the statistical analysis plan (AnalysisPlan)
      alpha: 0.05
      min_patients: 6
      primary: [{parameter: Treg % of CD4 T, visits: [D8], comparison: change_from_baseline,
                 method: mmrm}]

``samples.csv``: one row per FCS file; required columns ``sample_id``, ``file`` (relative to
the study folder), ``patient_id``, ``visit``, ``panel``; optional ``disease``, ``arm``
(treatment arm, same on all rows of a patient), ``batch`` (acquisition batch), ``control``
(true for a bridge/reference control: exempt from the baseline rule, left out of the
statistics), ``dataset`` (1-based data set index, default 1), ``lymphocytes_per_ul``,
``hashtag`` (CITE-seq: the sample's hashtag in a pooled library). Other columns are kept.
``baseline`` may be left out of study.yaml only when the study has a single visit
(cross-sectional studies). Optional ``clinical.csv`` and ``adverse_events.csv``: see
:mod:`immunomon.io.clinical`.

:func:`load_study` checks everything at once and raises :class:`~immunomon.errors.UserError`
with one line per problem, naming the file, the line (header = line 1) and the column.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Mapping

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from immunomon.errors import UserError

from .clinical import read_adverse_events, read_clinical, read_csv_text, where
from .fcs import FCSError, read_fcs_metadata

#: Built-in gating templates (``gating: {template: <name>}``); any other value is a path.
BUILTIN_TEMPLATES = ("treg", "lineage", "mass")
SAMPLE_COLUMNS = ("sample_id", "file", "patient_id", "disease", "arm", "visit", "day", "panel",
                  "batch", "control", "dataset", "lymphocytes_per_ul", "excluded_reason")
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0", ""}
_REQUIRED = ("sample_id", "file", "patient_id", "visit", "panel")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf/nan: never a setting


#: Largest side of a SOM grid (``clustering.grid``): FlowSOM grids are 5x5 to 30x30; beyond
#: 50x50 nodes the consensus metaclustering alone (nodes² per resampling) takes hours.
MAX_GRID_SIDE = 50
#: Largest number of data sets in one file (``dataset`` of samples.csv).
MAX_DATASET = 2**31 - 1
GridSide = Annotated[int, Field(ge=1, le=MAX_GRID_SIDE)]


#: Roles of a channel (``channels.<ch>.role``): what it measures besides a marker.
CHANNEL_ROLES = ("marker", "scatter", "time", "viability", "dna", "bead", "barcode", "gaussian",
                 "other")
#: Marker classes (``channels.<ch>.class``): lineage (``type``) markers define populations and
#: clusters, signalling/activation (``state``) markers are compared within them (CATALYST).
MARKER_CLASSES = ("type", "state", "none")


class Channel(_Model):
    """One channel of a panel: the marker it measures (scatter/time: the channel name), its
    fluorochrome or mass tag, its marker ``class`` and its ``role``; ``None`` = not stated
    (the code infers it from the names)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    marker: str = Field(min_length=1)
    fluorochrome: str | None = None
    marker_class: Literal["type", "state", "none"] | None = Field(None, alias="class")
    role: Literal["marker", "scatter", "time", "viability", "dna", "bead", "barcode", "gaussian",
                  "other"] | None = None


class Feature(_Model):
    """One feature of a CITE-seq panel (Cell Ranger ``features.tsv`` id): the protein (ADT)
    marker it measures and its class (``isotype`` for isotype controls)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    marker: str = Field(min_length=1)
    marker_class: Literal["type", "state", "isotype", "none"] | None = Field(None, alias="class")


class Visit(_Model):
    """A protocol visit: its label (e.g. ``D8``) and study day."""

    name: str = Field(min_length=1)
    day: int


class Gating(_Model):
    """How a panel is gated: a template (built-in name or YAML path), a Gating-ML file or a
    FlowJo workspace (and its sample group). Paths are relative to the study folder."""

    template: str | None = None
    gatingml: str | None = None
    wsp: str | None = None
    wsp_group: str | None = None


class Transform(_Model):
    """Transform of the intensity channels (markers, viability, DNA, beads, barcodes; never
    scatter, time or Gaussian parameters): ``params`` for the non-arcsinh types, and
    ``channels`` ($PnN → parameters) for per-channel values merged over ``params`` (e.g. the
    logicle ``T`` and ``W`` that ``immunomon init`` estimates for every channel)."""

    type: Literal["arcsinh", "logicle", "biex", "hyperlog", "log", "linear"] = "arcsinh"
    cofactor: float = Field(150.0, gt=0)
    params: dict[str, float] = Field(default_factory=dict)
    channels: dict[str, dict[str, float]] = Field(default_factory=dict)


class Clustering(_Model):
    """Clustering settings: markers used (default: the panel's ``type`` markers), SOM grid,
    number of metaclusters and the marker table that names clusters (a CSV/YAML path
    relative to the study folder, same format as the CLI's ``--marker-table``; default: the
    built-in table)."""

    markers: list[str] | None = Field(None, min_length=1)
    grid: tuple[GridSide, GridSide] = (10, 10)
    metaclusters: int = Field(20, ge=2)
    marker_table: str | None = None


class NormalisationClustering(_Model):
    """CytoNorm per FlowSOM cluster of the controls: SOM grid and metaclusters."""

    grid: tuple[GridSide, GridSide] = (5, 5)
    metaclusters: int = Field(5, ge=1)


class Normalisation(_Model):
    """Batch normalisation on bridge controls (``samples.csv`` ``control`` column): CytoNorm
    quantile normalisation per batch and marker on the transformed scale. ``holdout``: control
    samples normalised but not fitted on (they measure how well batches are brought
    together)."""

    method: Literal["cytonorm"] = "cytonorm"
    quantiles: int = Field(99, ge=2, le=1000)
    clustering: Literal[False] | NormalisationClustering = False
    markers: list[str] | None = Field(None, min_length=1)
    holdout: list[str] | None = None


class QC(_Model):
    """Quality-control settings of a panel's files: the parameters of
    :class:`immunomon.preprocess.qc.QualityControl` (marker names for the columns); a field
    left out keeps that class's default."""

    steps: list[Literal["margins", "time", "doublets", "debris", "dead", "beads", "dna",
                        "gaussian"]] | None = None
    max_loss: float | None = Field(None, ge=0, le=1)
    time: str | None = None
    fsc_a: str | None = None
    fsc_h: str | None = None
    ssc_a: str | None = None
    viability: str | None = None
    rate_bin_events: int | None = Field(None, ge=1)
    segment_events: int | None = Field(None, ge=1)
    max_segments: int | None = Field(None, ge=1)
    rate_mad: float | None = Field(None, gt=0)
    signal_mad: float | None = Field(None, gt=0)
    min_shift: float | None = Field(None, ge=0)
    signal_channels: list[str] | None = None
    doublet_mad: float | None = Field(None, gt=0)
    debris_fsc_bounds: tuple[float, float] | None = None
    debris_ssc_floor: float | None = None
    dead_bounds: tuple[float, float] | Literal["auto"] | None = None
    dna: list[str] | None = None
    beads: list[str] | None = None
    gaussian: list[str] | None = None
    limits: dict[str, float] | None = None

    def settings(self) -> dict:
        """The fields that are set, as :class:`QualityControl` keyword arguments."""
        return {k: tuple(v) if isinstance(v, (list, tuple)) else v
                for k, v in self.model_dump(exclude_none=True).items()}


# ------------------------------------------------------------ CITE-seq panel settings
class CiteSeqQC(_Model):
    """Cell QC of a CITE-seq panel (``panels.<name>.citeseq.qc``): cells whose log ADT total
    (and, with RNA, log UMI and gene counts) lie more than ``mad`` median absolute
    deviations from the sample's median are removed, as are cells above ``max_mito``
    mitochondrial RNA fraction, hashtag doublets/negatives and RNA doublets; a sample keeps
    ``min_cells`` cells or fails QC."""

    mad: float = Field(4.0, gt=0)
    max_mito: float = Field(0.2, gt=0, le=1)
    rna_doublets: bool = True
    min_cells: int = Field(50, ge=1)


class CiteSeq(_Model):
    """Settings of a CITE-seq panel (``panels.<name>.citeseq``): ADT normalisation
    (``auto``: dsb when the raw matrix with empty droplets is there, else CLR across cells),
    the range of ADT totals of the empty droplets dsb uses as background, the clustering
    space (``adt`` or ``adt+rna``: concatenated reduced spaces), Leiden resolution and
    neighbours, the number of cells in the Leiden graph (others join by their nearest graph
    cells), the marker table that names clusters (path relative to the study folder;
    default the built-in CITE-seq table) and cell QC."""

    normalisation: Literal["auto", "dsb", "clr"] = "auto"
    background_counts: tuple[int, int] = (10, 1000)
    modality: Literal["adt", "adt+rna"] = "adt"
    resolution: float = Field(1.0, gt=0)
    neighbours: int = Field(15, ge=2)
    graph_cells: int = Field(200_000, ge=100)
    marker_table: str | None = None
    qc: CiteSeqQC = Field(default_factory=CiteSeqQC)


class Panel(_Model):
    """An antibody panel: its assay and instrument, channels (cytometry) or features
    (CITE-seq), compensation, transform, gating (none = QC + clustering only), clustering,
    quality control and batch normalisation."""

    assay: Literal["cytometry", "citeseq"] = "cytometry"
    instrument: Literal["flow", "spectral", "mass"] | None = None
    channels: dict[str, Channel] = Field(default_factory=dict)
    features: dict[str, Feature] = Field(default_factory=dict)
    compensation: Literal["file", "none"] = "file"
    transform: Transform = Field(default_factory=Transform)
    gating: Gating | None = None
    clustering: Clustering | None = None
    qc: QC | None = None
    normalisation: Normalisation | None = None
    citeseq: CiteSeq | None = None  # CITE-seq settings (assay: citeseq); None = defaults

    @model_validator(mode="before")
    @classmethod
    def _instrument_transform(cls, data):
        """Without a ``transform``, a mass-cytometry panel gets arcsinh with cofactor 5 (the
        field's default, cofactor 150, is conventional flow's)."""
        if isinstance(data, dict) and data.get("instrument") == "mass" and "transform" not in data:
            data = {**data, "transform": {"type": "arcsinh", "cofactor": 5.0}}
        return data

    def marker_of(self, channel: str) -> str:
        """The marker measured in ``channel`` ($PnN)."""
        return self.channels[channel].marker

    @property
    def markers(self) -> dict[str, str]:
        """Marker -> channel ($PnN)."""
        return {c.marker: name for name, c in self.channels.items()}


class Endpoint(_Model):
    """One end point of the analysis plan: a supervised ``parameter`` (or a ``cluster``, or a
    ``cluster`` × ``marker``), the visit(s) it is tested at (none = every visit after
    baseline), the comparison and the method (none = the comparison's default: ``mmrm``
    for change from baseline and arm differences, ``welch_t`` for group differences,
    ``edger_ql`` for clusters, ``limma`` for cluster × marker)."""

    parameter: str | None = None
    cluster: str | None = None
    marker: str | None = None
    panel: str | None = None
    visits: list[str] = Field(default_factory=list)
    comparison: Literal["change_from_baseline", "arm_difference",
                        "group_difference"] = "change_from_baseline"
    method: str | None = None


class KeySecondary(_Model):
    """Key secondary end points, tested in the order given with a multiplicity strategy."""

    strategy: Literal["fixed_sequence", "holm"] = "fixed_sequence"
    endpoints: list[Endpoint] = Field(default_factory=list)


class Responder(_Model):
    """A responder: visit/baseline ratio at or above ``ratio`` (above within-patient
    variability)."""

    ratio: float = Field(1.25, gt=1)


class SelectivityPlan(_Model):
    """Selectivity: target and off-target parameters and the equivalence margins on the
    fold-change scale."""

    targets: list[str] = Field(min_length=1)
    off_targets: list[str] = Field(min_length=1)
    margins: tuple[float, float] = (0.8, 1.25)


class AnalysisPlan(_Model):
    """The pre-specified statistical analysis plan (``analysis:`` of study.yaml)."""

    alpha: float = Field(0.05, gt=0, lt=1)
    min_patients: int = Field(6, ge=2)
    control_arm: str | None = None
    reference_group: str | None = None
    primary: list[Endpoint] = Field(default_factory=list)
    key_secondary: KeySecondary | None = None
    responder: Responder = Field(default_factory=Responder)
    selectivity: SelectivityPlan | None = None


class Exclusion(_Model):
    """A sample left out of the analysis, and why."""

    sample_id: str = Field(min_length=1)
    reason: str = Field(min_length=1)


class StudyConfig(_Model):
    """The content of ``study.yaml``."""

    study_id: str = Field(min_length=1)
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**63)
    visits: list[Visit] = Field(min_length=1)
    baseline: str | None = None
    panels: dict[str, Panel] = Field(min_length=1)
    exclusions: list[Exclusion] = Field(default_factory=list)
    analysis: AnalysisPlan | None = None

    @property
    def visit_days(self) -> dict[str, int]:
        """Visit name -> study day, in protocol order."""
        return {v.name: v.day for v in self.visits}


@dataclass
class Study:
    """A loaded, validated study folder."""

    root: Path
    config: StudyConfig
    samples: pd.DataFrame
    clinical: pd.DataFrame | None = None
    adverse_events: pd.DataFrame | None = None
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)

    _rows: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def sample(self, sample_id: str) -> dict:
        """The ``samples.csv`` row of ``sample_id``, column → value (first row if repeated).

        Raises ``KeyError`` for an unknown id. Rows are indexed once per ``samples`` table
        (a lookup is a dict access, not a scan of the table)."""
        if self._rows is None or self._rows[0] is not self.samples:
            rows: dict[str, dict] = {}
            for record in self.samples.to_dict("records"):
                rows.setdefault(record["sample_id"], record)
            self._rows = (self.samples, rows)
        try:
            return self._rows[1][sample_id]
        except KeyError:
            raise KeyError(f"unknown sample_id {sample_id!r}") from None

    def path_of(self, sample_id: str) -> Path:
        """Absolute path of the FCS file of ``sample_id``."""
        return (self.root / self.sample(sample_id)["file"]).resolve()

    def panel_of(self, sample_id: str) -> Panel:
        """The panel configuration of ``sample_id``."""
        return self.config.panels[self.sample(sample_id)["panel"]]

    @property
    def kept(self) -> pd.DataFrame:
        """The samples that are not excluded."""
        return self.samples.loc[self.samples["excluded_reason"] == ""]


# ----------------------------------------------------------------------------- study.yaml

def _yaml_lines(root) -> dict[tuple, int]:
    """(key path) -> 1-based line of the nodes of a composed YAML document.

    Every node is visited once (iteratively): a node met again through an alias (``*name``)
    keeps the path where it was first met, so aliases that multiply a node ("billion
    laughs") or refer to themselves cost nothing; paths below an alias fall back to the
    alias's own line (:func:`_line_of`).
    """
    lines: dict[tuple, int] = {}
    seen: set[int] = set()
    stack = [(root, ())]
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else repr(key.start_mark)
                lines[path + (name,)] = key.start_mark.line + 1
                stack.append((value, path + (name,)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,)) for i, item in enumerate(node.value))
    return lines


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    loc = tuple(str(x) if not isinstance(x, int) else x for x in loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc)


def apply_overrides(data: dict, overrides: Mapping[str, str]) -> list[str]:
    """Set ``KEY=VALUE`` pairs (``--set analysis.min_patients=3``) into parsed study.yaml
    ``data`` in place; ``KEY`` is a dotted path (list items by 0-based index), ``VALUE`` is
    read as YAML (``3``, ``[D8, D15]``, ``false``). Returns one problem line per bad pair."""
    problems = []
    for key, text in overrides.items():
        parts = [p for p in str(key).split(".")]
        if not all(parts):
            problems.append(f"--set {key}={text}: the key must be a dotted path such as "
                            f"analysis.min_patients")
            continue
        try:
            value = yaml.safe_load(str(text)) if str(text).strip() else ""
        except yaml.YAMLError as err:
            problems.append(f"--set {key}={text}: the value is not valid YAML "
                            f"({getattr(err, 'problem', err)})")
            continue
        node = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not (part.isdigit() and int(part) < len(node)):
                    problems.append(f"--set {key}={text}: '{'.'.join(parts[:i])}' is a list of "
                                    f"{len(node)} item(s); '{part}' is not one of its indexes")
                    break
                part = int(part)
            elif not isinstance(node, dict):
                problems.append(f"--set {key}={text}: '{'.'.join(parts[:i])}' is not a mapping")
                break
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return problems


def _read_config(path: Path, overrides: Mapping[str, str] | None = None
                 ) -> tuple[StudyConfig | None, dict, list[str]]:
    """Parse and validate ``study.yaml`` (with ``--set`` overrides applied): (config, line
    map, problems)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, {}, [f"{path}: file not found"]
    except (OSError, UnicodeDecodeError) as err:
        return None, {}, [f"{path}: cannot be read ({err})"]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, {}, [f"{path}{at}: not valid YAML ({getattr(err, 'problem', err)})"]
    except RecursionError:
        return None, {}, [f"{path}: not valid YAML (nested too deeply)"]
    if not isinstance(data, dict):
        return None, {}, [f"{path}: must be a mapping of study settings (study_id, visits, "
                          f"baseline, panels, ...)"]
    if overrides:
        problems = apply_overrides(data, overrides)
        if problems:
            return None, {}, problems
    lines = _yaml_lines(node)
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = tuple(e["loc"])
            field = ".".join(str(x) for x in loc) or "(top level)"
            line = _line_of(lines, loc)
            at = f", line {line}" if line else ""
            msg = "required field is missing" if e["type"] == "missing" else e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(f"{path}{at}: {field}: {msg}")
        visits = data.get("visits")
        if data.get("baseline") is None and isinstance(visits, list) and len(visits) > 1:
            problems.append(f"{path}: baseline: required field is missing (the study has "
                            f"{len(visits)} visits)")
        return None, lines, problems
    return config, lines, _check_config(config, path, lines)


def _check_config(cfg: StudyConfig, path: Path, lines: dict) -> list[str]:
    """Cross-field checks of ``study.yaml``."""
    problems = []

    def at(*loc):
        line = _line_of(lines, loc)
        return f"{path}, line {line}" if line else str(path)

    names = [v.name for v in cfg.visits]
    for i, v in enumerate(cfg.visits):
        if names.index(v.name) != i:
            problems.append(f"{at('visits', i)}: visits.{i}.name: visit '{v.name}' is declared "
                            f"twice")
    if cfg.baseline is None and len(names) > 1:
        problems.append(f"{at('visits')}: baseline: required field is missing (the study has "
                        f"{len(names)} visits: {', '.join(names)})")
    elif cfg.baseline is not None and cfg.baseline not in names:
        problems.append(f"{at('baseline')}: baseline: '{cfg.baseline}' is not one of the "
                        f"visits ({', '.join(names)})")
    root = path.parent
    for pname, panel in cfg.panels.items():
        if panel.assay == "cytometry" and not panel.channels:
            problems.append(f"{at('panels', pname)}: panels.{pname}.channels: a cytometry panel "
                            f"needs at least one channel")
        if panel.assay == "citeseq" and not panel.features:
            problems.append(f"{at('panels', pname)}: panels.{pname}.features: a CITE-seq panel "
                            f"needs at least one feature")
        seen: dict[str, str] = {}
        for chan, c in panel.channels.items():
            if c.marker in seen:
                problems.append(f"{at('panels', pname, 'channels', chan)}: panels.{pname}."
                                f"channels.{chan}: marker '{c.marker}' is mapped twice (also "
                                f"to channel '{seen[c.marker]}')")
            seen.setdefault(c.marker, chan)
        if panel.clustering is not None:
            table = panel.clustering.marker_table
            if table and not (root / table).is_file():
                problems.append(f"{at('panels', pname, 'clustering', 'marker_table')}: panels."
                                f"{pname}.clustering.marker_table: '{table}' is not an existing "
                                f"file")
            for m in panel.clustering.markers or []:
                if m not in seen:
                    problems.append(f"{at('panels', pname, 'clustering', 'markers')}: panels."
                                    f"{pname}.clustering.markers: '{m}' is not a marker of "
                                    f"the panel")
            nodes = panel.clustering.grid[0] * panel.clustering.grid[1]
            if panel.clustering.metaclusters > nodes:
                problems.append(f"{at('panels', pname, 'clustering', 'metaclusters')}: panels."
                                f"{pname}.clustering.metaclusters: {panel.clustering.metaclusters}"
                                f" metaclusters need at least as many SOM nodes; the grid has "
                                f"{nodes}")
        g = panel.gating
        if g is not None:
            given = [k for k in ("template", "gatingml", "wsp") if getattr(g, k)]
            loc = ("panels", pname, "gating")
            if len(given) > 1:
                problems.append(f"{at(*loc)}: panels.{pname}.gating: give one of template, "
                                f"gatingml, wsp (got {', '.join(given)})")
            if g.wsp_group and not g.wsp:
                problems.append(f"{at(*loc)}: panels.{pname}.gating.wsp_group needs wsp")
            for key in given:
                value = getattr(g, key)
                if key == "template" and value in BUILTIN_TEMPLATES:
                    continue
                if not (root / value).is_file():
                    kind = f"not a built-in template ({', '.join(BUILTIN_TEMPLATES)}) nor " \
                        if key == "template" else ""
                    problems.append(f"{at(*loc, key)}: panels.{pname}.gating.{key}: '{value}' "
                                    f"is {kind}an existing file")
    ids = [e.sample_id for e in cfg.exclusions]
    for i, sid in enumerate(ids):
        if ids.index(sid) != i:
            problems.append(f"{at('exclusions', i)}: exclusions.{i}: sample '{sid}' is "
                            f"excluded twice")
    return problems


# ---------------------------------------------------------------------------- samples.csv

def _read_samples(path: Path, cfg: StudyConfig, check_files: bool
                  ) -> tuple[pd.DataFrame | None, list[str]]:
    """``samples.csv`` checked against the config (and the FCS files' TEXT)."""
    df, problems = read_csv_text(path)
    if df is None:
        return None, problems
    problems = [f"{path}, line 1: required column '{c}' is missing" for c in _REQUIRED
                if c not in df.columns]
    if problems:
        return None, problems
    if df.empty:
        return None, [f"{path}, line 2: no samples (the table has a header but no rows)"]
    for col, default in (("disease", ""), ("arm", ""), ("batch", ""), ("control", ""),
                         ("dataset", "1"), ("lymphocytes_per_ul", "")):
        if col not in df.columns:
            df[col] = default
    root = path.parent
    days = cfg.visit_days
    dataset = pd.to_numeric(df["dataset"].replace("", "1"), errors="coerce")
    lymph = pd.to_numeric(df["lymphocytes_per_ul"].mask(df["lymphocytes_per_ul"] == ""), errors="coerce")
    first_id: dict[str, int] = {}
    first_key: dict[tuple, int] = {}
    first_file: dict[tuple, int] = {}
    disease_of: dict[str, tuple[str, int]] = {}
    arm_of: dict[str, tuple[str, int]] = {}
    control = df["control"].str.strip().str.lower()
    for i, row in df.iterrows():
        for col in _REQUIRED:
            if not row[col]:
                problems.append(f"{where(path, i, col)}: empty value")
        sid = row["sample_id"]
        if sid and sid in first_id:
            problems.append(f"{where(path, i, 'sample_id')}: duplicate sample id '{sid}' "
                            f"(first on line {first_id[sid] + 2})")
        first_id.setdefault(sid, i)
        if row["visit"] and row["visit"] not in days:
            problems.append(f"{where(path, i, 'visit')}: unknown visit '{row['visit']}' "
                            f"(study.yaml declares {', '.join(days)})")
        if row["panel"] and row["panel"] not in cfg.panels:
            problems.append(f"{where(path, i, 'panel')}: unknown panel '{row['panel']}' "
                            f"(study.yaml declares {', '.join(cfg.panels)})")
        key = (row["patient_id"], row["visit"], row["panel"])
        if control.iloc[i] not in _TRUE:  # a bridge control repeats donor × visit per batch
            if all(key) and key in first_key:
                problems.append(f"{where(path, i, 'visit')}: patient {key[0]} already has a "
                                f"{key[2]} sample at {key[1]} (line {first_key[key] + 2})")
            first_key.setdefault(key, i)
        pid, dis = row["patient_id"], row["disease"]
        if pid in disease_of and disease_of[pid][0] != dis:
            problems.append(f"{where(path, i, 'disease')}: patient {pid} has disease '{dis}' "
                            f"here but '{disease_of[pid][0]}' on line {disease_of[pid][1] + 2}")
        disease_of.setdefault(pid, (dis, i))
        arm = row["arm"]
        if pid in arm_of and arm_of[pid][0] != arm:
            problems.append(f"{where(path, i, 'arm')}: patient {pid} is in arm '{arm}' here but "
                            f"in '{arm_of[pid][0]}' on line {arm_of[pid][1] + 2}")
        arm_of.setdefault(pid, (arm, i))
        if control.iloc[i] not in _TRUE | _FALSE:
            problems.append(f"{where(path, i, 'control')}: '{row['control']}' is not true or "
                            f"false")
        ds = dataset.iloc[i]
        if not (np.isfinite(ds) and ds == int(ds) and 1 <= ds <= MAX_DATASET):
            problems.append(f"{where(path, i, 'dataset')}: '{row['dataset']}' is not a data "
                            f"set number (1, 2, ...)")
            ds = 1
        if row["lymphocytes_per_ul"] and not (np.isfinite(lymph.iloc[i]) and lymph.iloc[i] >= 0):
            problems.append(f"{where(path, i, 'lymphocytes_per_ul')}: "
                            f"'{row['lymphocytes_per_ul']}' is not a count per µL")
        fkey = (row["file"], int(ds), row.get("hashtag", ""))
        if row["file"] and fkey in first_file:
            what = f"hashtag {fkey[2]}" if fkey[2] else f"data set {int(ds)}"
            problems.append(f"{where(path, i, 'file')}: file '{row['file']}' ({what}) is "
                            f"already used on line {first_file[fkey] + 2}")
        first_file.setdefault(fkey, i)
        if row["file"] and check_files:
            problems += _check_fcs(root, row, int(ds), cfg, where(path, i, "file"))
    # a baseline sample for every patient (bridge controls exempt) in each of its panels
    is_control = control.isin(_TRUE).to_numpy()
    patients = df.loc[(df["patient_id"] != "").to_numpy() & ~is_control]
    pairs = patients[["patient_id", "panel"]].drop_duplicates()
    have = set(zip(df["patient_id"], df["panel"], df["visit"]))
    for pid, panel in pairs.itertuples(index=False):
        if cfg.baseline is not None and (pid, panel, cfg.baseline) not in have:
            line = first_key[next(k for k in first_key if k[0] == pid and k[2] == panel)] + 2
            problems.append(f"{path}, line {line}, column 'visit': patient {pid} has no "
                            f"baseline ({cfg.baseline}) sample in panel '{panel}'")
    df["control"] = is_control
    df["dataset"] = dataset.where(np.isfinite(dataset) & dataset.between(1, MAX_DATASET), 1
                                  ).astype(np.int64)
    df["lymphocytes_per_ul"] = lymph.astype(float)
    df["day"] = df["visit"].map(days)
    reasons = {e.sample_id: e.reason for e in cfg.exclusions}
    df["excluded_reason"] = df["sample_id"].map(reasons).fillna("")
    extra = [c for c in df.columns if c not in SAMPLE_COLUMNS]
    return df[list(SAMPLE_COLUMNS) + extra], problems


def _check_fcs(root: Path, row, dataset: int, cfg: StudyConfig, at: str) -> list[str]:
    """Problems of one sample's FCS file: missing, unreadable, missing channels."""
    fpath = root / row["file"]
    panel = cfg.panels.get(row["panel"])
    if panel is not None and panel.assay == "citeseq":  # a Cell Ranger output, not an FCS file
        return [] if fpath.exists() else [f"{at}: Cell Ranger output not found: {fpath}"]
    if not fpath.exists() and not fpath.is_symlink():
        return [f"{at}: file not found: {fpath}"]
    try:  # the reader names what is not a regular file: FIFO, device, folder, broken link
        meta = read_fcs_metadata(fpath, dataset=dataset)
    except FCSError as err:
        return [f"{at}: {p}" for p in err.problems]
    if panel is None:
        return []
    names = set(meta.names)
    return [f"{at}: {row['file']}: channel '{chan}' (marker {c.marker}) of panel "
            f"'{row['panel']}' is missing from the file" for chan, c in panel.channels.items()
            if chan not in names]


# --------------------------------------------------------------------------------- entry

def _load(study_dir, check_files: bool, overrides: Mapping[str, str] | None = None
          ) -> tuple[Study | None, list[str]]:
    root = Path(study_dir)
    if not root.is_dir():
        return None, [f"{root}: not a study folder (directory not found)"]
    cfg, lines, problems = _read_config(root / "study.yaml", overrides)
    if cfg is None:
        return None, problems
    samples, sp = _read_samples(root / "samples.csv", cfg, check_files)
    problems += sp
    if samples is None:
        return None, problems
    known = set(samples["sample_id"])
    for i, e in enumerate(cfg.exclusions):
        if e.sample_id not in known:
            line = _line_of(lines, ("exclusions", i))
            problems.append(f"{root / 'study.yaml'}{f', line {line}' if line else ''}: "
                            f"exclusions.{i}.sample_id: unknown sample '{e.sample_id}' (not "
                            f"in samples.csv)")
    patients = set(samples["patient_id"])
    clinical = adverse = None
    if (root / "clinical.csv").exists():
        clinical, cp = read_clinical(root / "clinical.csv", patients, set(cfg.visit_days))
        problems += cp
    if (root / "adverse_events.csv").exists():
        adverse, ap = read_adverse_events(root / "adverse_events.csv", patients)
        problems += ap
    return Study(root=root.resolve(), config=cfg, samples=samples, clinical=clinical,
                 adverse_events=adverse, overrides=dict(overrides or {})), problems


def read_study(study_dir, *, check_files: bool = True,
               overrides: Mapping[str, str] | None = None) -> tuple[Study | None, list[str]]:
    """The study as far as it could be read, and every problem of its manifest (one line
    each). The study is None when study.yaml or samples.csv could not be read at all; when it
    is returned with problems, its rows may name unknown visits or panels."""
    return _load(study_dir, check_files, overrides)


def validate_study(study_dir, *, check_files: bool = True,
                   overrides: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of a study folder, one line each (empty when valid)."""
    return _load(study_dir, check_files, overrides)[1]


def load_study(study_dir, *, check_files: bool = True,
               overrides: Mapping[str, str] | None = None) -> Study:
    """Load and validate a study folder.

    Parameters
    ----------
    study_dir
        Folder holding ``study.yaml``, ``samples.csv`` and optionally ``clinical.csv`` and
        ``adverse_events.csv``.
    check_files
        Also open every FCS file's TEXT segment (existence, data set, channels of the panel).
    overrides
        ``KEY=VALUE`` settings applied over study.yaml before validation (the CLI's
        ``--set``), e.g. ``{"analysis.min_patients": "3"}``; kept in ``Study.overrides``.

    Raises
    ------
    UserError
        Listing every problem found, one line each.
    """
    study, problems = _load(study_dir, check_files, overrides)
    if problems:
        raise UserError(problems)
    return study
