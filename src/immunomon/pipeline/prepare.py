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
        Marker → transform object used for it (fluorescence markers only), e.g. to
        report intensities on the linear scale.
    removed_by
        ``(events_total,)`` int8: the row of ``qc_steps`` that removed each file event,
        -1 if kept.
    all_events
        Every file event (same columns as ``events``) when asked for
        (``keep_all_events=True``, e.g. to draw QC), else None.
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
    normalised: dict[str, Any] | None = None

    @property
    def fluorescence_markers(self) -> list[str]:
        """Markers with a transform (fluorescence), in column order."""
        return [m for m in self.events.columns if m in self.transforms]


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


def prepare_events(
    raw: np.ndarray,
    names: list[str],
    columns: list[str],
    *,
    spillover: pd.DataFrame | None,
    transform: Any,
    ranges: list[float] | None = None,
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
        Transform object (``transform(x)``) applied to fluorescence channels, or None.
    ranges
        ``$PnR`` of every channel, for the margin step of QC.
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
    fluor = [j for j, n in enumerate(names) if is_fluorescence(n)]
    if transform is not None:
        for j in fluor:
            transform.transform_inplace(events[:, j])
    if normalise is not None:  # batch normalisation on the transformed scale (CytoNorm)
        normalise(events, columns)
    frame = pd.DataFrame(events, columns=columns, copy=False)
    rng = {c: float(r) for c, r in zip(columns, ranges)} if ranges is not None else None
    result = (qc or QualityControl()).apply(frame, sample_id=sample_id, raw=raw, ranges=rng)
    kept = frame if result.keep.all() else select_events(events, result.keep, columns)
    transforms = {columns[j]: transform for j in fluor} if transform is not None else {}
    return PreparedSample(sample_id, kept, result.steps, result.events_total, result.events_after_qc,
                          result.qc_pass, result.keep, transforms=transforms, removed_by=result.removed_by,
                          all_events=frame if keep_all_events else None)


def prepare_sample(study, sample_id: str, *, qc: QualityControl | None = None,
                   keep_all_events: bool = False, normaliser: Any = None) -> PreparedSample:
    """Read, compensate (file's ``$SPILLOVER``), transform (panel's transform on
    fluorescence channels) and QC one sample of a study.

    Parameters
    ----------
    study
        A loaded :class:`immunomon.io.study.Study`.
    sample_id
        A ``sample_id`` of ``study.samples``.
    qc
        Quality-control settings; default: the panel's ``qc`` settings in study.yaml (unset
        ones: :class:`~immunomon.preprocess.qc.QualityControl`'s defaults).
    keep_all_events
        Also keep every file event in ``all_events`` (for QC plots).
    normaliser
        The panel's fitted :class:`~immunomon.preprocess.normalise.CytoNorm` (the run's
        ``normalise`` stage), applied with the sample's ``batch`` after the transform.
    """
    from immunomon.io.fcs import read_fcs
    from immunomon.preprocess.transforms import from_spec

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
    f = read_fcs(study.path_of(sample_id), dataset=dataset)
    channels = _as_dict(getattr(panel, "channels", {}) or {})
    transform = from_spec(transform_spec(getattr(panel, "transform", None)))
    if qc is None and getattr(panel, "qc", None) is not None:
        qc = QualityControl(**panel.qc.settings())
    prepared = prepare_events(
        f.events, list(f.names), marker_names(list(f.names), list(f.labels), channels),
        spillover=f.spillover, transform=transform, ranges=list(f.channels["range"].astype(float)),
        qc=qc, sample_id=sample_id, keep_all_events=keep_all_events, normalise=normalise,
    )
    prepared.panel = panel_name
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
    if kind == "arcsinh" and "cofactor" in t:
        spec["cofactor"] = t["cofactor"]
    return spec


def _as_dict(obj: Any) -> Any:
    """A pydantic model or mapping as a plain dict (None stays None)."""
    if obj is None or isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(obj)
