"""``immunomon init``: a study folder guessed from a folder of FCS files.

:func:`scan` reads the TEXT segment of every file below a folder (recursively; files that are
not FCS, or cannot be read, are listed with the reason), :func:`discover` groups the files
into panels by their channel set and guesses, per panel, the instrument kind (conventional
flow, spectral, mass cytometry), every channel's marker (cleaned ``$PnS``), role and class,
the transform, compensation, quality control and gating, and builds ``samples.csv`` from a
file-name pattern, TEXT keywords or a sample sheet. :func:`write_study` writes the commented
``study.yaml`` and ``samples.csv``; the :class:`Discovery` also says what was guessed and
what the user must still fill in.

Nothing here reads more than the TEXT segment, except the estimation of logicle widths for
flow panels (a few thousand events of a few files per panel).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from immunomon.atomic import atomic_write, write_csv
from immunomon.errors import UserError
from immunomon.markernames import FLUOROCHROME, canonical, clean_label, is_known, marker_class

from .fcs import FCSError, read_fcs, read_fcs_metadata

__all__ = ["FileInfo", "ChannelGuess", "PanelGuess", "Discovery", "scan", "discover",
           "write_study", "channel_role", "instrument_kind"]

#: Gaussian-discrimination parameters of CyTOF 2 / Helios files.
GAUSSIAN = ("event_length", "center", "offset", "width", "residual")
#: Mass channels of the normalisation beads (EQ four-element beads) and of the reagents.
BEAD_MASSES = {("Ce", 140), ("Eu", 151), ("Eu", 153), ("Ho", 165), ("Lu", 175)}
_VIABILITY = re.compile(r"(viab|live|dead|l/d|\b7-?aad\b|^pi$|\bdapi\b|zombie|fvs\d*|"
                        r"fixable|aqua|cisplatin|^sytox)", re.IGNORECASE)
_DNA = re.compile(r"(dna|intercalator|^ir19[13]|hoechst)", re.IGNORECASE)
_MASS_NAME = re.compile(r"^(?P<el>[A-Z][a-z]?)(?P<mass>\d{2,3})D[id]$|^(?P<mass2>\d{2,3})(?P<el2>[A-Z][a-z]?)D[id]$")
_MASS_LABEL = re.compile(r"\((?P<el>[A-Z][a-z]?)(?P<mass>\d{2,3})\)D[id]$")
_SPECTRAL_CYT = re.compile(r"aurora|northern\s*lights|nl-\d|id7000|sp6800|symphony\s*s8|"
                           r"bigfoot|fusion\s*s6|cytek\s*(aurora|nl)", re.IGNORECASE)
_MASS_CYT = re.compile(r"cytof|helios|dvs\s*sciences|fluidigm|hyperion|standard\s*biotools",
                       re.IGNORECASE)
_BASELINE = re.compile(r"^(ref(erence)?|baseline|bl|pre(treatment)?|unstim(ulated)?|ctrl|control|"
                       r"screen(ing)?|d(ay)?[-_]?0|d(ay)?[-_]?1|v(isit)?[-_]?[01]|w(eek)?[-_]?0|"
                       r"m(onth)?[-_]?0|t0|0)$", re.IGNORECASE)
#: samples.csv columns that a ``--pattern`` field or a sample sheet may fill.
SAMPLE_FIELDS = ("sample_id", "patient_id", "visit", "disease", "arm", "batch", "control",
                 "lymphocytes_per_ul")
_PATTERN_FIELDS = {"patient": "patient_id", "visit": "visit", "batch": "batch",
                   "disease": "disease", "arm": "arm", "sample": "sample_id"}
#: At most this many files per panel, and events per file, are read to estimate logicle widths.
ESTIMATE_FILES, ESTIMATE_EVENTS = 5, 20_000
LOGICLE_M = 4.5


@dataclass
class FileInfo:
    """The TEXT of one FCS data set: what ``init`` needs to know about a file."""

    path: Path
    rel: str
    names: list[str]
    labels: list[str]
    ranges: list[float]
    datatype: str
    keywords: dict[str, str]
    events: int
    spillover: bool
    n_datasets: int = 1

    @property
    def channel_set(self) -> tuple[tuple[str, str], ...]:
        """What makes a panel: the channels and the marker each measures (two tubes on the
        same detectors with other antibodies are two panels)."""
        return tuple(sorted((n, clean_label(lab) if lab != n else "") for n, lab in
                            zip(self.names, self.labels)))


@dataclass
class ChannelGuess:
    """One channel of a guessed panel."""

    name: str
    label: str
    marker: str
    role: str
    marker_class: str
    known: bool = True
    fluorochrome: str = ""


@dataclass
class PanelGuess:
    """One panel: its files, channels and the settings guessed for it."""

    name: str
    instrument: str
    instrument_reason: str
    files: list[FileInfo]
    channels: list[ChannelGuess]
    compensation: str
    transform: dict
    template: str | None
    qc: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Discovery:
    """What :func:`discover` found: panels, the samples table, bad files and the gaps."""

    root: Path
    panels: list[PanelGuess]
    samples: pd.DataFrame
    visits: list[tuple[str, int]]
    baseline: str | None
    skipped: list[str]
    guesses: list[str]
    gaps: list[str]
    gating: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------- scan
def scan(fcs_dir: str | Path) -> tuple[list[FileInfo], list[str]]:
    """TEXT of every FCS file below ``fcs_dir`` (sorted paths), and one line per file that was
    skipped (not an FCS file, or unreadable: the reader's message with its byte offset)."""
    root = Path(fcs_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    files, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            with open(path, "rb") as fh:
                magic = fh.read(6)
        except OSError as err:
            skipped.append(f"{path}: cannot be read ({err.strerror})")
            continue
        if not magic.startswith(b"FCS"):
            skipped.append(f"{path}: not an FCS file (it does not start with 'FCS'); skipped")
            continue
        try:
            meta = read_fcs_metadata(path)
        except FCSError as err:
            skipped.append("; ".join(err.problems) + "; skipped")
            continue
        ch = meta.channels
        files.append(FileInfo(path=path, rel=rel, names=list(meta.names),
                              labels=[str(x or "") for x in meta.labels],
                              ranges=[float(r) for r in ch["range"]],
                              datatype=str(meta.keywords.get("$DATATYPE", "F")).upper(),
                              keywords=meta.keywords, events=int(meta.n_events or 0),
                              spillover=meta.spillover is not None, n_datasets=meta.n_datasets))
    return files, skipped


# ------------------------------------------------------------------------ channel roles
def _mass_tag(name: str, label: str) -> tuple[str, int] | None:
    """(element, mass) of a mass-cytometry channel (``Ce140Di``, ``CD20(Sm147)Dd``)."""
    m = _MASS_NAME.match(name)
    if m:
        return (m["el"] or m["el2"], int(m["mass"] or m["mass2"]))
    m = _MASS_LABEL.search(name) or _MASS_LABEL.search(label)
    return (m["el"], int(m["mass"])) if m else None


def instrument_kind(files: list[FileInfo]) -> tuple[str, str]:
    """``(flow | spectral | mass, why)`` from ``$CYT`` and the channel names."""
    f = files[0]
    cyt = str(f.keywords.get("$CYT", "")).strip()
    tags = sum(_mass_tag(n, lab) is not None for n, lab in zip(f.names, f.labels))
    scatter = any(channel_role(n, lab, "flow") == "scatter" for n, lab in zip(f.names, f.labels))
    if not scatter and (_MASS_CYT.search(cyt) or tags >= max(3, len(f.names) // 3)):
        why = f"$CYT '{cyt}'" if _MASS_CYT.search(cyt) else f"{tags} mass-tag channel names"
        return "mass", why
    fluor = [n for n in f.names if re.search(r"-A$", n) and not re.match(r"(FSC|SSC)", n, re.I)]
    if _SPECTRAL_CYT.search(cyt) or len(fluor) >= 30:
        why = f"$CYT '{cyt}'" if _SPECTRAL_CYT.search(cyt) else f"{len(fluor)} detectors"
        return "spectral", why
    return "flow", f"$CYT '{cyt}'" if cyt else "no mass tags, fewer than 30 detectors"


def channel_role(name: str, label: str, instrument: str) -> str:
    """Role of a channel: ``time``, ``scatter``, ``gaussian``, ``dna``, ``viability``,
    ``bead``, ``barcode``, ``other`` (unused detector, event counter) or ``marker``."""
    low, lab = name.strip().lower(), label.strip()
    if re.match(r"^(time|hdr-tm|tm\b)", low) or lab.lower().startswith("time"):
        return "time"
    if re.match(r"^(fsc|ssc|fs\b|ss\b|fs[- ]|ss[- ])", low) or re.match(r"^\d{3}-[fs]sc$", lab.lower()):
        return "scatter"
    if low in GAUSSIAN:
        return "gaussian" if instrument == "mass" else "other"
    if low in ("event", "ev", "event #", "eventnum", "event_number", "time2") or low.startswith("unused"):
        return "other"
    if low in ("beaddist", "bead_dist"):
        return "bead"
    tag = _mass_tag(name, lab) if instrument == "mass" else None
    unlabelled = not lab or lab == name or clean_label(lab) == ""
    if tag is not None:
        el, mass = tag
        if el == "Ir" and mass in (191, 193):
            return "dna"
        if (el == "Pt" and mass in (194, 195, 196, 198) or el == "Rh" and mass == 103) and \
                (unlabelled or _VIABILITY.search(lab) or re.search(r"pt|rh", lab, re.I)):
            return "viability"
        if el == "Pd" and 102 <= mass <= 110 or re.fullmatch(r"BC\d+", lab, re.I):
            return "barcode"
        if (el, mass) in BEAD_MASSES and (unlabelled or re.search(r"bead", lab, re.I)):
            return "bead"
        if unlabelled:
            return "other"
    if lab and _DNA.search(lab) and instrument == "mass":
        return "dna"
    if lab and _VIABILITY.search(lab):
        return "viability"
    return "marker"


def _fluorochrome(name: str, label: str) -> str:
    """The fluorochrome named by a flow channel (``BV421-A`` → ``BV421``), or ""."""
    for text in (name, label):
        for token in re.split(r"\s+", text.strip()):
            if FLUOROCHROME.match(token):
                return re.sub(r"[-_ ]?[AHW]$", "", token)
    return ""


def _channels(f: FileInfo, instrument: str) -> list[ChannelGuess]:
    """Markers, roles and classes of a file's channels (marker names made unique)."""
    labelled = any(lab and lab != n and clean_label(lab) for n, lab in zip(f.names, f.labels)
                   if channel_role(n, lab, instrument) == "marker")
    out: list[ChannelGuess] = []
    for name, label in zip(f.names, f.labels):
        role = channel_role(name, label, instrument)
        marker, cls, known = name, "none", True
        if role == "marker":
            cleaned = clean_label(label, "" if labelled else name) if label != name else ""
            if not cleaned and labelled:
                role = "other"  # an unlabelled detector in a labelled panel: unused
            else:
                marker = cleaned or name
                cls = marker_class(marker)
                known = bool(cleaned) and is_known(marker)
        elif role == "viability":
            marker = "Viability"
        elif role in ("dna", "barcode", "bead") and label and label != name:
            marker = clean_label(label) or name
        area = f"{name[:-2]}-A" if re.search(r"-[HW]$", name) else None
        if role == "marker" and instrument != "mass" and area in f.names:
            area_label = f.labels[f.names.index(area)]
            if clean_label(area_label) == marker or not label or label == name:
                role, cls = "other", "none"  # height/width of a detector whose area is kept
        out.append(ChannelGuess(name, label, marker, role, cls, known,
                                _fluorochrome(name, label) if instrument != "mass" else ""))
    seen: dict[str, int] = {}
    for c in out:  # unique marker names: the first (an -A channel, a marker) keeps the name
        seen[c.marker] = seen.get(c.marker, 0) + 1
    for c in out:
        if seen[c.marker] > 1 and c.marker != c.name:
            first = next(o for o in out if o.marker == c.marker)
            if c is not first:
                c.marker = f"{c.marker} ({c.name})"
                if c.role in ("marker", "viability"):
                    c.role, c.marker_class = "other", "none"
    return out


# --------------------------------------------------------------------------- transforms
def _power_of_two(x: float) -> bool:
    return x >= 1024 and float(x).is_integer() and (int(x) & (int(x) - 1)) == 0


def _logicle_parameters(panel_files: list[FileInfo], channels: list[ChannelGuess],
                        compensate: bool) -> dict[str, dict[str, float]]:
    """Per-channel logicle ``T`` (top of scale, data units) and ``W`` (linearisation width,
    decades) from a few files: ``W = (M - log10(T / |r|)) / 2`` with ``r`` the 5th percentile
    of the negative values (Parks et al. 2006, flowCore's ``estimateLogicle``); ``W = 0``
    when no value is negative (log-amplified data)."""
    from immunomon.preprocess.compensation import compensate as apply_spill

    wanted = [c.name for c in channels if c.role in ("marker", "viability")]
    step = max(1, len(panel_files) // ESTIMATE_FILES)
    pooled: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
    tops: dict[str, float] = {}
    for f in panel_files[::step][:ESTIMATE_FILES]:
        try:
            data = read_fcs(f.path, scale=True)
        except FCSError:
            continue
        events = data.events[:: max(1, len(data.events) // ESTIMATE_EVENTS)]
        if compensate and data.spillover is not None:
            events = apply_spill(events, list(data.names), data.spillover)
        for j, row in enumerate(data.channels.itertuples(index=False)):
            if row.name not in pooled:
                continue
            pooled[row.name].append(np.asarray(events[:, j], dtype=np.float64))
            if row.datatype in ("I", "A") or _power_of_two(row.range):
                top = float(row.range)
                if row.log_decades > 0 and row.datatype in ("I", "A"):
                    top = (row.log_offset or 1.0) * 10.0 ** row.log_decades
                elif row.gain not in (0.0, 1.0) and np.isfinite(row.gain):
                    top = top / row.gain
            else:
                top = float(np.nanmax(events[:, j])) if len(events) else float(row.range)
            tops[row.name] = max(tops.get(row.name, 0.0), top)
    out = {}
    for name, parts in pooled.items():
        if not parts:
            continue
        x = np.concatenate(parts)
        top = max(tops.get(name, 0.0), float(np.nanmax(x)) if x.size else 1.0, 1.0)
        neg = x[x < 0]
        w = 0.0
        if neg.size >= 10:
            r = abs(float(np.quantile(neg, 0.05)))
            if r > 0:
                w = (LOGICLE_M - math.log10(top / r)) / 2
        w = float(min(max(w, 0.0), LOGICLE_M / 2 - 0.25))
        out[name] = {"T": float(f"{top:.6g}"), "W": round(w, 3)}
    return out


# ------------------------------------------------------------------------------ panels
def _panel_name(instrument: str, index: int, total: int) -> str:
    """``flow``, ``spectral`` or ``mass``; numbered in file order when there are several panels."""
    return instrument if total == 1 else f"{instrument}{index}"


def _template(instrument: str, channels: list[ChannelGuess]) -> str | None:
    """The built-in template that fits the panel's markers, or None (no gating)."""
    markers = {canonical(c.marker) for c in channels if c.role == "marker"}
    lineage = {"CD3", "CD19", "CD20", "CD14", "CD56"} & markers
    if "CD3" not in markers and len(lineage) < 2:
        return None
    return "mass" if instrument == "mass" else "lineage"


def _qc_settings(instrument: str, channels: list[ChannelGuess]) -> dict:
    """QC fields that differ from the defaults: the panel's scatter and time column names."""
    by_role: dict[str, list[str]] = {}
    for c in channels:
        by_role.setdefault(c.role, []).append(c.marker)
    qc: dict = {}
    times = by_role.get("time", [])
    if times and times[0] != "Time":
        qc["time"] = times[0]
    scatter = by_role.get("scatter", [])

    def pick(kind: str, suffix: str) -> str | None:
        for s in scatter:
            if re.match(rf"^{kind}\d?[- ]?(?:{suffix})", s, re.IGNORECASE):
                return s
        return None

    fsc_a = pick("FSC", "A|Area") or pick("FS", "INT|Lin|A")
    fsc_h = pick("FSC", "H|Height") or pick("FS", "Peak")
    ssc_a = pick("SSC", "A|Area") or pick("SS", "INT|Lin|A")
    for key, value, default in (("fsc_a", fsc_a, "FSC-A"), ("fsc_h", fsc_h, "FSC-H"),
                                ("ssc_a", ssc_a, "SSC-A")):
        if value and value != default:
            qc[key] = value
    if not fsc_a and fsc_h:  # height only (FACSCalibur): debris on FSC-H, no doublet step
        qc["fsc_a"] = fsc_h
    if not ssc_a:
        ssc_h = pick("SSC", "H|Height")
        if ssc_h:
            qc["ssc_a"] = ssc_h
    return qc


def _guess_panels(files: list[FileInfo]) -> list[PanelGuess]:
    groups: dict[tuple[str, ...], list[FileInfo]] = {}
    for f in files:
        groups.setdefault(f.channel_set, []).append(f)
    ordered = sorted(groups.values(), key=lambda fs: fs[0].rel)
    panels = []
    for i, group in enumerate(ordered, start=1):
        kind, why = instrument_kind(group)
        channels = _channels(group[0], kind)
        notes = []
        if kind == "mass":
            compensation = "none"
            transform = {"type": "arcsinh", "cofactor": 5}
        else:
            spill = sum(f.spillover for f in group)
            exported = [n for n in group[0].names if n.startswith("Comp-")]
            compensation = "file" if spill and not exported else "none"
            if exported:  # FlowJo's export of compensated values keeps the matrix in TEXT
                notes.append(f"channels named 'Comp-...' ({exported[0]}, ...): the values are "
                             "compensated already; compensation off")
            elif spill and spill < len(group):
                notes.append(f"{len(group) - spill} of {len(group)} files hold no spillover matrix: "
                             "they are analysed uncompensated")
            if not spill and not exported:
                notes.append("no file holds a spillover matrix ($SPILLOVER/$SPILL): compensation "
                             "off (hardware-compensated or already unmixed data)")
            per_channel = _logicle_parameters(group, channels, compensation == "file")
            transform = {"type": "logicle", "params": {"M": LOGICLE_M, "A": 0.0},
                         "channels": per_channel}
        template = _template(kind, channels)
        panels.append(PanelGuess(_panel_name(kind, i, len(ordered)), kind, why, group,
                                 channels, compensation, transform, template,
                                 _qc_settings(kind, channels), notes))
    return panels


# ----------------------------------------------------------------------------- samples
def pattern_regex(pattern: str) -> re.Pattern:
    """``"{patient}_{visit}.fcs"`` → a regex with one named group per field (``{*}`` or
    ``{_}``: any text, ignored)."""
    out, pos = [], 0
    for m in re.finditer(r"\{([A-Za-z_*]+)\}", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        key = m.group(1)
        if key in ("*", "_"):
            out.append(".*?")
        elif key in _PATTERN_FIELDS:
            out.append(f"(?P<{key}>.+?)")
        else:
            raise UserError(f"--pattern {pattern!r}: unknown field {{{key}}} (use "
                            f"{', '.join('{' + k + '}' for k in _PATTERN_FIELDS)} or {{*}})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + "$", re.IGNORECASE if pattern.islower() else 0)


def keyword_value(keywords: dict[str, str], wanted: str) -> str | None:
    """A TEXT keyword's value by name, case-insensitive; a vendor prefix (``&10PATIENT ID``,
    ``@SAMPLEID1``, ``#``) is ignored when the exact name is absent."""
    target = wanted.strip().upper()
    if target in keywords:
        return keywords[target]
    for key, value in keywords.items():
        if re.sub(r"^[&@#$]?\d*", "", key).strip() == target.lstrip("$"):
            return value
    return None


def _visit_day(name: str, order: int) -> int:
    """Study day of a visit label: ``D8`` → 8, ``W4`` → 28, ``M3`` → 90, else its order."""
    m = re.fullmatch(r"(?i)(d|day|w|wk|week|m|month|v|visit|t)?[-_ ]?(\d+)", str(name).strip())
    if not m:
        return order
    unit = (m.group(1) or "d").lower()[0]
    n = int(m.group(2))
    return n * {"d": 1, "w": 7, "m": 30, "v": 1, "t": 1}[unit]


def visits_of(labels: list[str]) -> tuple[list[tuple[str, int]], str | None, str]:
    """Visits in protocol order with their study days, the baseline guess and why."""
    names = list(dict.fromkeys(v for v in labels if v))
    if not names:
        return [], None, ""
    base = next((v for v in names if _BASELINE.match(v)), None)
    days = {v: _visit_day(v, i + 1) for i, v in enumerate(names)}
    numbered = all(re.fullmatch(r"(?i)(d|day|w|wk|week|m|month|v|visit|t)?[-_ ]?\d+", v) for v in names)
    if base is None:
        base = min(names, key=lambda v: (days[v], names.index(v)))
        why = "the earliest visit" if numbered else "the first visit (alphabetical)"
    else:
        why = f"'{base}' reads as a baseline"
    if not numbered:  # labels without days: baseline first, the others in order
        ordered = [base] + sorted(v for v in names if v != base)
        days = {v: i for i, v in enumerate(ordered)}
    visits = sorted(((v, int(days[v])) for v in names), key=lambda t: (t[1], names.index(t[0])))
    return visits, base, why


def guess_visits(labels: list[str]) -> tuple[list[tuple[str, int]], str | None, list[str]]:
    """:func:`visits_of` as ``init`` reports it: (visits, baseline — None for a single visit —,
    the guess in words, as a list of at most one line)."""
    visits, baseline, why = visits_of(labels)
    if len(visits) <= 1:
        return visits, None, []
    return visits, baseline, [f"baseline visit '{baseline}' ({why}); visits in order: "
                              + ", ".join(f"{v} (day {d})" for v, d in visits)]


def study_path(target: Path, out_dir: Path) -> str:
    """How study.yaml / samples.csv name a file: relative to the study folder when it is at most
    two levels up, else absolute."""
    rel = Path(os.path.relpath(target.resolve(), out_dir.resolve()))
    ups = sum(part == ".." for part in rel.parts)
    return rel.as_posix() if ups <= 2 else target.resolve().as_posix()


def _sample_id(rel: str, used: set[str]) -> str:
    stem = re.sub(r"\.(fcs|lmd)$", "", Path(rel).name, flags=re.IGNORECASE)
    sid = re.sub(r"[^\w.\-]+", "_", stem).strip("_") or "sample"
    base, k = sid, 2
    while sid in used:
        sid, k = f"{base}_{k}", k + 1
    used.add(sid)
    return sid


def _read_sheet(path: Path, files: list[FileInfo]) -> tuple[dict[str, dict], list[str]]:
    """A sample sheet (CSV): one row per file, matched by the column holding file names."""
    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot be read as CSV ({err})") from None
    names = {Path(f.rel).name for f in files} | {f.rel for f in files}
    key = next((c for c in sheet.columns if sheet[c].isin(names).any()), None)
    if key is None:
        raise UserError(f"{path}: no column holds the FCS file names (e.g. "
                        f"{sorted(names)[0] if names else 'x.fcs'})")
    rename = {"patient": "patient_id", "subject": "patient_id", "usubjid": "patient_id",
              "sample": "sample_id", "condition": "visit", "timepoint": "visit"}
    notes = []
    rows = {}
    for rec in sheet.to_dict("records"):
        row = {}
        for col, value in rec.items():
            if col == key:
                continue
            target = col if col in SAMPLE_FIELDS else rename.get(col.lower(), col)
            row.setdefault(target, value)  # other columns are kept as extra samples.csv columns
        rows[str(rec[key])] = row
    used = [rename.get(c.lower(), c) for c in sheet.columns if c != key]
    notes.append(f"{path.name}: columns {', '.join(used)} taken from the sheet (matched on its "
                 f"column '{key}')")
    return rows, notes


def _samples(files: list[FileInfo], panels: list[PanelGuess], out_dir: Path, pattern: str | None,
             patient_keyword: str | None, visit_keyword: str | None, batch_keyword: str | None,
             sheet: Path | None) -> tuple[pd.DataFrame, list[str], list[str]]:
    panel_of = {id(f): p.name for p in panels for f in p.files}
    regex = pattern_regex(pattern) if pattern else None
    sheet_rows, notes = _read_sheet(sheet, files) if sheet else ({}, [])
    problems: list[str] = []
    used: set[str] = set()
    rows = []
    for f in files:
        row = {c: "" for c in ("sample_id", "file", "patient_id", "visit", "panel", "disease",
                               "arm", "batch")}
        row["file"] = study_path(f.path, out_dir)
        row["panel"] = panel_of[id(f)]
        if regex is not None:
            target = f.rel if "/" in (pattern or "") else Path(f.rel).name
            m = regex.match(target)
            if m is None:
                problems.append(f"{f.path}: file name does not match --pattern {pattern!r}")
            else:
                for key, value in m.groupdict().items():
                    row[_PATTERN_FIELDS[key]] = value
        for option, column in ((patient_keyword, "patient_id"), (visit_keyword, "visit"),
                               (batch_keyword, "batch")):
            if option:
                value = keyword_value(f.keywords, option)
                if value is None or not str(value).strip():
                    problems.append(f"{f.path}: no TEXT keyword {option!r} (for {column})")
                else:
                    row[column] = str(value).strip()
        extra = sheet_rows.get(f.rel) or sheet_rows.get(Path(f.rel).name) or {}
        for key, value in extra.items():
            if key not in ("file", "panel") and value != "" and not row.get(key):
                row[key] = value
        if not row["batch"] and not batch_keyword and f.keywords.get("$DATE"):
            row["batch"] = str(f.keywords["$DATE"]).strip()
        row["sample_id"] = row.get("sample_id") or ""
        if row["sample_id"]:
            used.add(row["sample_id"])
        rows.append(row)
    for row, f in zip(rows, files):
        if not row["sample_id"]:
            row["sample_id"] = _sample_id(f.rel, used)
    table = pd.DataFrame(rows).fillna("")
    return table, notes, problems


# ----------------------------------------------------------------------------- discover
def discover(fcs_dir: str | Path, out_dir: str | Path, *, pattern: str | None = None,
             patient_keyword: str | None = None, visit_keyword: str | None = None,
             batch_keyword: str | None = None, sheet: str | Path | None = None,
             template: str = "auto", wsp: str | Path | None = None, wsp_group: str | None = None,
             gatingml: str | Path | None = None) -> Discovery:
    """Scan ``fcs_dir`` and guess a study for ``out_dir`` (nothing is written).

    Parameters
    ----------
    fcs_dir
        Folder of FCS files (searched recursively; other files are listed as skipped).
    out_dir
        The study folder to be written (file paths in ``samples.csv`` are relative to it).
    pattern
        File-name pattern with fields ``{patient}``, ``{visit}``, ``{batch}``, ``{disease}``,
        ``{arm}``, ``{sample}`` and ``{*}`` (anything), e.g. ``"{patient}_{visit}.fcs"``;
        matched against the file name (the path below ``fcs_dir`` when it holds a ``/``).
    patient_keyword, visit_keyword, batch_keyword
        TEXT keywords holding the patient id, visit and batch (default batch: ``$DATE``).
    sheet
        A CSV with one row per file (a column of file names; columns named as samples.csv
        columns, or ``patient``/``condition``, fill them).
    template
        ``auto`` (the built-in template that fits each panel's markers), ``none`` or a
        template name/path used for every panel. Ignored with ``wsp`` or ``gatingml``.
    wsp, wsp_group, gatingml
        Gate every panel with this FlowJo workspace (and group) or Gating-ML file.
    """
    root = Path(fcs_dir)
    out = Path(out_dir)
    files, skipped = scan(root)
    if not files:
        raise UserError([f"{root}: no readable FCS file found", *skipped])
    panels = _guess_panels(files)
    samples, sheet_notes, problems = _samples(files, panels, out, pattern, patient_keyword,
                                              visit_keyword, batch_keyword,
                                              Path(sheet) if sheet else None)
    skipped += problems
    guesses, gaps = list(sheet_notes), []
    gating: dict = {}
    if wsp or gatingml:
        key = "wsp" if wsp else "gatingml"
        gating = {key: study_path(Path(wsp or gatingml), out)}
        if wsp and wsp_group:
            gating["wsp_group"] = wsp_group
    for p in panels:
        if gating:
            p.template = None
        elif template == "none":
            p.template = None
        elif template != "auto":
            p.template = template
    if not samples["visit"].astype(bool).any():
        samples["visit"] = "V1"
        guesses.append("one visit 'V1' for every sample (no visit given: --pattern {visit}, "
                       "--visit-keyword or a sample sheet)")
    visits, baseline, said = guess_visits(samples["visit"].tolist())
    guesses += said
    n_missing = {c: int((samples[c] == "").sum()) for c in ("patient_id", "visit")}
    for col, n in n_missing.items():
        if n:
            gaps.append(f"samples.csv: column '{col}' is empty on {n} of {len(samples)} rows "
                        f"(fill it, or re-run init with --pattern or "
                        f"--{'patient' if col == 'patient_id' else 'visit'}-keyword)")
    for p in panels:
        unknown = [c.marker for c in p.channels if c.role == "marker" and c.marker == c.name]
        if unknown:
            gaps.append(f"study.yaml: panel '{p.name}': {len(unknown)} channel(s) have no marker "
                        f"name in $PnS ({', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''}): "
                        f"set panels.{p.name}.channels.<channel>.marker")
        guessed = [c.marker for c in p.channels if c.role == "marker" and not c.known
                   and c.marker != c.name]
        if guessed:
            guesses.append(f"panel '{p.name}': class 'type' guessed for markers not in the built-in "
                           f"list: {', '.join(guessed)}")
    return Discovery(root, panels, samples, visits, baseline, skipped, guesses, gaps, gating)


# -------------------------------------------------------------------------------- write
def yaml_scalar(value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _panel_yaml(p: PanelGuess, gating: dict) -> list[str]:
    y = yaml_scalar
    kind = {"mass": "mass cytometry", "spectral": "spectral flow cytometry",
            "flow": "conventional flow cytometry"}[p.instrument]
    lines = [f"  {y(p.name)}:",
             f"    # {len(p.files)} file(s); {kind} (from {p.instrument_reason})",
             f"    instrument: {p.instrument}",
             "    channels:   # $PnN: marker (cleaned $PnS), class (type: lineage, state: "
             "signalling/activation, none), role"]
    for c in p.channels:
        entry = {"marker": c.marker}
        if c.fluorochrome:
            entry["fluorochrome"] = c.fluorochrome
        entry["class"] = c.marker_class
        entry["role"] = c.role
        note = []
        if c.label and c.label != c.marker:
            note.append(f"$PnS {c.label!r}")
        if c.role == "marker" and not c.known:
            note.append("class guessed" if c.marker != c.name else "no marker name: fill in")
        comment = f"  # {'; '.join(note)}" if note else ""
        lines.append(f"      {y(c.name)}: {y(entry)}{comment}")
    if p.compensation == "none":
        why = ("mass cytometry has no spectral spillover" if p.instrument == "mass" else
               "the values are compensated already (Comp- channels)"
               if any(c.name.startswith("Comp-") for c in p.channels) else
               "the files hold no spillover matrix")
        lines.append(f"    compensation: none   # {why}")
    else:
        lines.append("    compensation: file   # each file's $SPILLOVER / $SPILL matrix")
    t = p.transform
    if t["type"] == "arcsinh":
        lines.append(f"    transform: {{type: arcsinh, cofactor: {t['cofactor']:g}}}   "
                     "# the usual mass-cytometry cofactor")
    else:
        lines += ["    transform:   # logicle per channel: T = top of the channel's scale, "
                  "W = linearisation width estimated",
                  "                 # from the 5th percentile of its negative values "
                  "(Parks et al. 2006), M = 4.5 decades",
                  "      type: logicle",
                  f"      params: {y(t['params'])}",
                  "      channels:"]
        lines += [f"        {y(name)}: {y(v)}" for name, v in t["channels"].items()]
    if gating:
        lines.append(f"    gating: {y(gating)}")
    elif p.template:
        what = ("T, B, NK cells and monocytes, CD4/CD8 T, naive/memory where the markers exist"
                if p.template == "lineage" else "lineage populations after the QC cleanup")
        lines.append(f"    gating: {{template: {p.template}}}   # built-in: {what}; data-driven "
                     "gate positions")
    else:
        lines.append("    # no gating block: QC, clustering and differential abundance/state only")
    lines.append("    clustering: {grid: [10, 10], metaclusters: 20}   # markers: the type markers")
    if p.qc:
        lines.append(f"    qc: {y(p.qc)}   # column names of this panel's scatter / time channels")
    return lines


def study_yaml(d: Discovery, study_id: str) -> str:
    """The commented ``study.yaml`` of a discovery."""
    import yaml

    y = yaml_scalar
    lines = ["# study.yaml written by `immunomon init` from " + str(d.root),
             "# Check every line marked as guessed; `immunomon validate` lists what is missing.",
             f"study_id: {y(study_id)}",
             "seed: 1",
             "visits:   # protocol visits and their study day"]
    for name, day in d.visits:
        lines.append(f"- {{name: {y(name)}, day: {day}}}")
    if d.baseline is not None:
        lines.append(f"baseline: {y(d.baseline)}   # guessed: every patient needs a sample at this visit")
    else:
        lines.append("# one visit: a cross-sectional study (no baseline)")
    lines.append("panels:")
    for p in d.panels:
        lines += _panel_yaml(p, d.gating)
    lines.append("exclusions: []   # e.g. - {sample_id: X, reason: clotted sample}")
    text = "\n".join(lines) + "\n"
    yaml.safe_load(text)  # what we write must parse
    return text


def write_study(d: Discovery, out_dir: str | Path, *, study_id: str | None = None,
                force: bool = False, render=None) -> Path:
    """Write ``study.yaml`` (``render(d, study_id)``, default :func:`study_yaml`) and
    ``d.samples`` as ``samples.csv`` into ``out_dir`` (created); refuses to overwrite an
    existing study.yaml unless ``force``. The study id defaults to the folder's name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "study.yaml").exists() and not force:
        raise UserError(f"{out / 'study.yaml'}: exists already (use --force to overwrite it)")
    sid = study_id or re.sub(r"[^\w\-]+", "-", out.resolve().name).strip("-") or "study"
    atomic_write(out / "study.yaml", (render or study_yaml)(d, sid))
    write_csv(d.samples, out / "samples.csv")
    return out
