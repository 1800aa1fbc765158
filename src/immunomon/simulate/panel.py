"""The simulated 15-colour Treg/T/NK/B panel: channels, markers and spillover.

Nineteen channels in file order: ``FSC-A``, ``FSC-H``, ``SSC-A``, ``Time``, then fifteen
fluorescence channels named after their fluorochrome (``$PnN`` such as ``"BV421-A"``) whose
``$PnS`` is the marker. Values are float32 linear instrument units below 262144 (``$PnR``);
scatter is clipped at 0, fluorescence keeps the small negative values of baseline-restored
detector noise (as BD instruments write), and compensated fluorescence spreads below 0.

The spillover matrix ``S`` follows the FCS ``$SPILLOVER`` convention: rows are the
fluorochromes (sources), columns the detectors, diagonal 1, and a cell's measured detector
signals are ``true @ S``; compensation is ``measured @ inv(S)``.
"""

from __future__ import annotations

import numpy as np

#: Scatter and time channels, in file order (their marker is the channel name).
SCATTER_CHANNELS = ("FSC-A", "FSC-H", "SSC-A", "Time")

#: (channel $PnN, marker $PnS, fluorochrome) of the fluorescence channels, in file order.
FLUORESCENCE = (
    ("BUV395-A", "CD3", "BUV395"),
    ("BUV496-A", "CD16", "BUV496"),
    ("BUV737-A", "CD56", "BUV737"),
    ("BV421-A", "CD25", "BV421"),
    ("BV510-A", "Viability", "BV510"),
    ("BV605-A", "CD4", "BV605"),
    ("BV650-A", "HLA-DR", "BV650"),
    ("BV711-A", "CD45RA", "BV711"),
    ("BV786-A", "CD8", "BV786"),
    ("FITC-A", "HELIOS", "FITC"),
    ("PerCP-Cy5.5-A", "CD14", "PerCP-Cy5.5"),
    ("PE-A", "FOXP3", "PE"),
    ("PE-Cy7-A", "CD127", "PE-Cy7"),
    ("APC-A", "Ki67", "APC"),
    ("APC-R700-A", "CD19", "APC-R700"),
)

#: Marker class and channel role (study.yaml ``class``/``role``) of the markers that are not
#: lineage (``type``) markers: activation/proliferation read-outs (compared within populations
#: by differential state tests; CD25 density is the Treg activation read-out) and the
#: viability dye.
MARKER_ROLES = {
    "Viability": {"class": "none", "role": "viability"},
    "Ki67": {"class": "state", "role": "marker"},
    "HLA-DR": {"class": "state", "role": "marker"},
    "CD25": {"class": "state", "role": "marker"},
}

FLUOR_CHANNELS = tuple(c for c, _, _ in FLUORESCENCE)
#: Marker of each fluorescence channel, in file order.
MARKERS = tuple(m for _, m, _ in FLUORESCENCE)
CHANNELS = SCATTER_CHANNELS + FLUOR_CHANNELS
LABELS = SCATTER_CHANNELS + MARKERS

#: Instrument range ($PnR) of every channel; measured values are clipped below it.
RANGE = 262144
#: arcsinh cofactor of the panel's transform (fluorescence channels).
COFACTOR = 150.0
#: Seconds per unit of the Time channel ($TIMESTEP).
TIMESTEP = 0.01

# (source fluorochrome, detector fluorochrome, fraction of the source's signal seen there)
_SPILL = (
    ("BUV395", "BUV496", 0.08), ("BUV395", "BUV737", 0.01),
    ("BUV496", "BUV737", 0.04), ("BUV496", "BV510", 0.02),
    ("BUV737", "BV786", 0.05), ("BUV737", "APC-R700", 0.04),
    ("BV421", "BV510", 0.14), ("BV421", "FITC", 0.02),
    ("BV510", "BV605", 0.05), ("BV510", "FITC", 0.06),
    ("BV605", "BV650", 0.18), ("BV605", "BV711", 0.05), ("BV605", "PE", 0.02),
    ("BV650", "BV711", 0.22), ("BV650", "BV786", 0.05), ("BV650", "APC", 0.06),
    ("BV711", "BV786", 0.25), ("BV711", "APC-R700", 0.12),
    ("BV786", "APC-R700", 0.03),
    ("FITC", "PE", 0.18), ("FITC", "PerCP-Cy5.5", 0.03),
    ("PE", "PerCP-Cy5.5", 0.12), ("PE", "PE-Cy7", 0.03), ("PE", "FITC", 0.01),
    ("PerCP-Cy5.5", "PE-Cy7", 0.10), ("PerCP-Cy5.5", "APC-R700", 0.10),
    ("PE-Cy7", "PerCP-Cy5.5", 0.02),
    ("APC", "APC-R700", 0.35), ("APC", "BV650", 0.01),
    ("APC-R700", "APC", 0.05), ("APC-R700", "BV786", 0.02),
)


def spillover_matrix() -> np.ndarray:
    """The panel's spillover matrix, shape (15, 15), rows = sources, columns = detectors."""
    fluors = [f for _, _, f in FLUORESCENCE]
    s = np.eye(len(fluors))
    for src, dst, value in _SPILL:
        s[fluors.index(src), fluors.index(dst)] = value
    return s
