"""Per-sample preparation: read FCS → compensate → transform → marker names → QC.

:func:`prepare_sample` is the first stage of both the supervised (gating) and the
unsupervised (clustering) branch of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from immunomon.errors import UserError
from immunomon.preprocess.qc import QualityControl

#: Channels that are never compensated nor transformed (scatter and time), by prefix.
NON_FLUORESCENCE_PREFIXES = ("FSC", "SSC", "TIME", "EVENT")


def is_fluorescence(channel: str) -> bool:
    """True unless the channel name starts with FSC, SSC, Time or Event (case-insensitive)."""
    return not channel.upper().startswith(NON_FLUORESCENCE_PREFIXES)


@dataclass
class PreparedSample:
    """One sample after preprocessing.

    Attributes
    ----------
    sample_id
        The sample's id in the manifest.
    events
        QC-passed events, ``(events_after_qc, n_channels)`` float32 DataFrame, columns =
        marker names; fluorescence compensated and transformed with the panel's
        transform, scatter and time in linear instrument units.
    qc_steps
        The ``qc_steps`` rows of the sample (see :mod:`immunomon.preprocess.qc`).
    events_total, events_after_qc, qc_pass
        Events in the file, events kept, whether the file passed QC.
    keep
        Bool mask ``(events_total,)`` over the file's events (file order).
    panel
        The sample's panel name.
    transforms
        Marker → transform object used for it (intensity channels only), e.g. to
        report intensities on the linear scale.
    removed_by
        ``(events_total,)`` int8: the row of ``qc_steps`` that removed each file event,
        -1 if kept.
    all_events
        Every file event (same columns as ``events``) when asked for
        (``keep_all_events=True``, e.g. to draw QC), else None.
    roles, classes
        Column → channel role (``marker``, ``scatter``, ``time``, ...) and marker class
        (``type``, ``state``, ``none``).
    compensated
        Whether a (non-identity) spillover matrix was applied.
    raw, spillover
        With ``keep_raw=True``: every file event's linear uncompensated values (columns =
        ``$PnN``) and the file's spillover matrix, for imported (FlowJo, Gating-ML) gates.
    normalised
        With batch normalisation (``normalise``/``normaliser``): ``before``, the QC-passed
        events of the normalised markers before normalisation (DataFrame, same rows as
        ``events``), and ``outside``, marker → share of them outside the range of the
        batch's control events (extrapolated); else None.
    """

    sample_id: str
    events: pd.DataFrame
    qc_steps: pd.DataFrame
    events_total: int
    events_after_qc: int
    qc_pass: bool
    keep: np.ndarray
    panel: str = ""
    transforms: dict[str, Any] = field(default_factory=dict)
    removed_by: np.ndarray | None = None
    all_events: pd.DataFrame | None = None
    roles: dict[str, str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    compensated: bool = False
    raw: pd.DataFrame | None = None
    spillover: pd.DataFrame | None = None
    normalised: dict[str, Any] | None = None

    @property
    def fluorescence_markers(self) -> list[str]:
        """Markers with a transform (the intensity channels), in column order."""
        return [m for m in self.events.columns if m in self.transforms]

    def markers_of_class(self, kind: str) -> list[str]:
        """Marker-role columns of class ``kind`` (``type`` / ``state``), in column order."""
        return [m for m in self.events.columns
                if self.roles.get(m, "marker") == "marker" and self.classes.get(m) == kind]


def marker_names(names: list[str], labels: list[str], channels: dict) -> list[str]:
    """Column names for a file's channels: the panel's ``marker`` for channels listed in
    the panel (``channels``: ``$PnN`` → ``{marker, ...}``), else ``$PnS``, else ``$PnN``;
    made unique by appending the channel name on collisions."""
    out = []
    for name, label in zip(names, labels):
        spec = channels.get(name) or {}
        marker = spec.get("marker") if isinstance(spec, dict) else getattr(spec, "marker", None)
        out.append(str(marker or label or name))
    seen: dict[str, int] = {}
    for m in out:
        seen[m] = seen.get(m, 0) + 1
    return [m if seen[m] == 1 else f"{m} ({n})" for m, n in zip(out, names)]


def select_events(events: np.ndarray, keep: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """The rows ``keep`` (bool mask) of a Fortran-ordered ``(n_events, n_channels)`` array as
    a table with ``columns``, filled column by column (no pandas take, no index to reset)."""
    out = np.empty((int(keep.sum()), events.shape[1]), dtype=events.dtype, order="F")
    for j in range(events.shape[1]):
        np.compress(keep, events[:, j], out=out[:, j])
    return pd.DataFrame(out, columns=columns, copy=False)


#: Channel roles whose values are intensities: compensated (when in the spillover matrix) and
#: transformed; scatter, time, Gaussian parameters and other channels stay linear.
INTENSITY_ROLES = ("marker", "viability", "dna", "bead", "barcode")


def prepare_events(
    raw: np.ndarray,
    names: list[str],
    columns: list[str],
    *,
    spillover: pd.DataFrame | None,
    transform: Any,
    ranges: list[float] | None = None,
    limits: list[float] | None = None,
    qc: QualityControl | None = None,
    sample_id: str = "",
    keep_all_events: bool = False,
    normalise: Any = None,
) -> PreparedSample:
    """Compensate, transform, (normalise) and QC one file's events (no study needed).

    Parameters
    ----------
    raw
        ``(n_events, n_channels)`` raw events in file order (linear instrument units).
    names
        Channel names (``$PnN``), used to match the spillover matrix.
    columns
        Marker name of every channel (the output's column names).
    spillover
        Spillover matrix over fluorescence channels, or None (no compensation).
    transform
        A transform object (``transform(x)``) applied to every fluorescence channel
        (:func:`is_fluorescence`), or a mapping channel name (``$PnN``) → transform for the
        channels to transform; None: no transform.
    ranges
        ``$PnR`` of every channel (the scale of QC's debris bounds; the margins limits
        when ``limits`` is not given).
    limits
        Per channel, the raw value at which its detector saturates (NaN: no instrument
        limit), for the margins step (:func:`margin_limits`).
    qc
        Quality-control settings; default :class:`QualityControl()`.
    keep_all_events
        Also return every file event (``all_events``), not only the QC-passed ones.
    normalise
        Batch normalisation applied after the transform and before QC:
        ``normalise(events, columns)`` changes the Fortran-ordered float32 events in place
        (:class:`~immunomon.preprocess.normalise.BatchNormalisation`).
    """
    from immunomon.preprocess.compensation import compensate

    raw = np.asarray(raw)
    # one contiguous float32 column per channel (pandas' layout)
    if spillover is not None:
        events = compensate(raw, names, spillover, dtype=np.float32, order="F")
    else:
        events = raw.astype(np.float32, order="F")
    if isinstance(transform, dict):
        per_channel = {j: transform[n] for j, n in enumerate(names) if transform.get(n) is not None}
    elif transform is not None:
        per_channel = {j: transform for j, n in enumerate(names) if is_fluorescence(n)}
    else:
        per_channel = {}
    for j, t in per_channel.items():
        t.transform_inplace(events[:, j])
    if normalise is not None:  # batch normalisation on the transformed scale (CytoNorm)
        normalise(events, columns)
    frame = pd.DataFrame(events, columns=columns, copy=False)
    rng = {c: float(r) for c, r in zip(columns, ranges)} if ranges is not None else None
    lim = {c: float(v) for c, v in zip(columns, limits)} if limits is not None else None
    result = (qc or QualityControl()).apply(frame, sample_id=sample_id, raw=raw, ranges=rng, limits=lim)
    kept = frame if result.keep.all() else select_events(events, result.keep, columns)
    transforms = {columns[j]: t for j, t in per_channel.items()}
    return PreparedSample(sample_id, kept, result.steps, result.events_total, result.events_after_qc,
                          result.qc_pass, result.keep, transforms=transforms, removed_by=result.removed_by,
                          all_events=frame if keep_all_events else None)


def margin_limits(channels: pd.DataFrame, roles: list[str] | None = None) -> list[float]:
    """Per channel, the value (linear, scaled as :func:`~immunomon.io.fcs.read_fcs` with
    ``scale=True`` gives it) at which the detector saturates, NaN where the file states no
    real instrument limit.

    Integer data: the top channel ``$PnR - 1`` (for a log-amplified channel its linear
    value). Float data: ``$PnR - 1`` only when ``$PnR`` is a digitiser range (a power of two
    from 1024, e.g. BD's 262,144); other float ranges (flowCore and other writers store each
    channel's observed maximum there) are no limit. Time channels never have one.

    Parameters
    ----------
    channels
        :attr:`immunomon.io.fcs.FCSFile.channels` (range, datatype, log_decades, log_offset,
        gain).
    roles
        Channel roles (``time`` channels get NaN); default: inferred from the names.
    """
    out = []
    for j, ch in enumerate(channels.itertuples(index=False)):
        role = roles[j] if roles is not None else ("time" if str(ch.name).upper().startswith("TIME") else "")
        r = float(ch.range)
        if role == "time" or not np.isfinite(r) or r <= 1:
            out.append(float("nan"))
            continue
        integer = ch.datatype in ("I", "A")
        if integer and ch.log_decades > 0:
            f2 = ch.log_offset if ch.log_offset > 0 else 1.0
            out.append(float(f2 * 10.0 ** (ch.log_decades * (r - 1) / r)))
        elif integer or _digitiser_range(r):
            gain = ch.gain if np.isfinite(ch.gain) and ch.gain not in (0.0,) else 1.0
            out.append(float((r - 1) / gain))
        else:
            out.append(float("nan"))
    return out


def _digitiser_range(r: float) -> bool:
    return r >= 1024 and float(r).is_integer() and (int(r) & (int(r) - 1)) == 0


def channel_roles(panel, names: list[str], labels: list[str]) -> list[str]:
    """Role of every channel of a file: the panel's ``role`` where stated, else inferred from
    the channel's name and label (:func:`immunomon.io.discover.channel_role`)."""
    from immunomon.io.discover import channel_role

    channels = getattr(panel, "channels", {}) or {}
    instrument = getattr(panel, "instrument", None) or "flow"
    out = []
    for name, label in zip(names, labels):
        spec = channels.get(name)
        role = getattr(spec, "role", None) if spec is not None else None
        out.append(role or channel_role(name, label or "", instrument))
    return out


def marker_classes(panel, names: list[str], columns: list[str], roles: list[str]) -> dict[str, str]:
    """Column → marker class (``type``, ``state``, ``none``): the panel's ``class`` where
    stated, else the built-in lineage list for marker channels and ``none`` for the others."""
    from immunomon.markernames import marker_class

    channels = getattr(panel, "channels", {}) or {}
    out = {}
    for name, column, role in zip(names, columns, roles):
        spec = channels.get(name)
        declared = getattr(spec, "marker_class", None) if spec is not None else None
        out[column] = declared or (marker_class(column) if role == "marker" else "none")
    return out


def panel_transforms(panel, names: list[str], roles: list[str]) -> dict[str, Any]:
    """``$PnN`` → transform object of every intensity channel (:data:`INTENSITY_ROLES`): the
    panel's ``transform`` with its per-channel parameters merged in."""
    from immunomon.preprocess.transforms import from_spec

    t = _as_dict(getattr(panel, "transform", None)) or {"type": "arcsinh", "cofactor": 150.0}
    per_channel = t.get("channels") or {}
    out = {}
    for name, role in zip(names, roles):
        if role in INTENSITY_ROLES:
            out[name] = from_spec(transform_spec({**t, "params": {**(t.get("params") or {}),
                                                                  **per_channel.get(name, {})}}))
    return out


def _qc_for(panel, columns: list[str], roles: list[str]) -> QualityControl:
    """The panel's QC settings: the instrument's default steps, the columns of each role,
    then what study.yaml's ``qc`` block sets."""
    by_role: dict[str, list[str]] = {}
    for column, role in zip(columns, roles):
        by_role.setdefault(role, []).append(column)
    derived: dict[str, Any] = {}
    if by_role.get("time"):
        derived["time"] = by_role["time"][0]
    if by_role.get("viability"):
        derived["viability"] = by_role["viability"][0]
    for role in ("dna", "gaussian"):
        derived[role] = tuple(by_role.get(role, ()))
    derived["beads"] = tuple(c for c in by_role.get("bead", ()) if c.lower() != "beaddist")
    settings = panel.qc.settings() if getattr(panel, "qc", None) is not None else {}
    return QualityControl.for_instrument(getattr(panel, "instrument", None), **{**derived, **settings})


def prepare_sample(study, sample_id: str, *, qc: QualityControl | None = None,
                   keep_all_events: bool = False, keep_raw: bool = False,
                   normaliser: Any = None) -> PreparedSample:
    """Read (linear values: ``$PnE`` log decades undone, ``$PnG`` gain divided out),
    compensate (the file's ``$SPILLOVER`` unless the panel says ``compensation: none``),
    transform the intensity channels (panel's transform, per-channel parameters), normalise
    batches (``normaliser``) and QC one sample of a study.

    Parameters
    ----------
    study
        A loaded :class:`immunomon.io.study.Study`.
    sample_id
        A ``sample_id`` of ``study.samples``.
    qc
        Quality-control settings; default: the panel instrument's steps with its channels
        of each role, then the panel's ``qc`` settings in study.yaml.
    keep_all_events
        Also keep every file event in ``all_events`` (for QC plots).
    keep_raw
        Also keep every file event's linear, uncompensated values in ``raw`` (columns =
        ``$PnN``, float64), for gates imported from FlowJo or Gating-ML.
    normaliser
        The panel's fitted :class:`~immunomon.preprocess.normalise.CytoNorm` (the run's
        ``normalise`` stage), applied with the sample's ``batch`` after the transform.
    """
    from immunomon.io.fcs import read_fcs

    try:
        row = study.sample(sample_id)
    except KeyError:
        raise UserError(f"{study.root}/samples.csv: no sample {sample_id!r}") from None
    panel_name = str(row.get("panel", ""))
    panels = study.config.panels
    if panel_name not in panels:
        raise UserError(f"{study.root}/samples.csv: sample {sample_id!r} names panel {panel_name!r}, "
                        f"not defined in study.yaml (panels: {sorted(panels)})")
    panel = panels[panel_name]
    dataset = int(row["dataset"]) if "dataset" in row and pd.notna(row["dataset"]) else 1
    normalise = None
    if normaliser is not None:  # the panel's CytoNorm splines of the sample's batch
        if str(row.get("batch")) not in normaliser.batches_:
            raise UserError(f"{study.root}/samples.csv: sample {sample_id!r} is in batch "
                            f"{row.get('batch')!r}, which has no bridge control to normalise it on")
        normalise = normaliser.for_batch(row.get("batch"))
    f = read_fcs(study.path_of(sample_id), dataset=dataset, scale=True)
    names, labels = list(f.names), list(f.labels)
    channels = _as_dict(getattr(panel, "channels", {}) or {})
    columns = marker_names(names, labels, channels)
    roles = channel_roles(panel, names, labels)
    if qc is None:
        qc = _qc_for(panel, columns, roles)
    use_file = getattr(panel, "compensation", "file") != "none"
    spillover = f.spillover if use_file else None
    compensated = spillover is not None and not np.allclose(spillover.to_numpy(), np.eye(len(spillover)))
    prepared = prepare_events(
        f.events, names, columns, spillover=spillover if compensated else None,
        transform=panel_transforms(panel, names, roles), ranges=list(f.channels["range"].astype(float)),
        limits=margin_limits(f.channels, roles), qc=qc, sample_id=sample_id,
        keep_all_events=keep_all_events, normalise=normalise,
    )
    prepared.panel = panel_name
    prepared.roles = dict(zip(columns, roles))
    prepared.classes = marker_classes(panel, names, columns, roles)
    prepared.compensated = compensated
    if keep_raw:
        prepared.raw = pd.DataFrame(f.events.astype(np.float64), columns=names, copy=False)
        prepared.spillover = f.spillover
    if normalise is not None:
        prepared.normalised = normalise.kept(prepared.keep)
    return prepared


def transform_spec(transform: Any) -> dict | None:
    """The :func:`~immunomon.preprocess.transforms.from_spec` mapping of a panel's
    ``transform`` (study.yaml: ``{type, cofactor, params}``; ``cofactor`` is arcsinh's)."""
    t = _as_dict(transform)
    if t is None:
        return None
    kind = str(t.get("type", "arcsinh"))
    spec = {"type": kind, **(t.get("params") or {})}
    if kind == "arcsinh":
        spec.setdefault("cofactor", t.get("cofactor", 150.0))
    return spec


def _as_dict(obj: Any) -> Any:
    """A pydantic model or mapping as a plain dict (None stays None)."""
    if obj is None or isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(obj)
