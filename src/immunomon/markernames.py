"""Marker names: cleaning ``$PnS`` labels, canonical spellings and the built-in lineage list.

Used by ``immunomon init`` (:mod:`immunomon.io.discover`) to turn what a cytometer wrote into
marker names, by the gating templates and the marker tables to find a marker whatever its
spelling (``HLADR`` = ``HLA-DR``, ``CD8a`` = ``CD8``), and to propose each marker's class
(``type``: lineage, defines populations and clusters; ``state``: signalling / activation,
compared within them — CATALYST's ``marker_class``).

>>> clean_label("CD4 BV605")
'CD4'
>>> clean_label("CD20(Sm147)Dd")
'CD20'
>>> clean_label("cd8 FITC-A")
'CD8'
>>> canonical("HLADR"), canonical("FoxP3"), canonical("CD8a")
('HLA-DR', 'FOXP3', 'CD8')
>>> marker_class("pS6"), marker_class("CD19"), marker_class("Ki67")
('state', 'type', 'state')
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["clean_label", "canonical", "marker_key", "find_marker", "marker_class", "is_known",
           "FLUOROCHROME"]

#: Fluorochromes and dyes as they appear in ``$PnS`` labels and ``$PnN`` names (a label token
#: matching this is not the marker). Case-insensitive, whole token.
FLUOROCHROME = re.compile(
    r"^(?:"
    r"FITC|PE|APC|PerCP|ECD|PC5(?:\.5)?|PC7|PE[-_ ]?Cy\d(?:\.\d)?|PerCP[-_ ]?Cy\d(?:\.\d)?|"
    r"PerCP[-_ ]?eF(?:luor)?\d+|APC[-_ ]?Cy\d|APC[-_ ]?H7|APC[-_ ]?R700|APC[-_ ]?Fire\d+|"
    r"APC[-_ ]?eF(?:luor)?\d+|APC[-_ ]?Vio\d+|PE[-_ ]?Vio\d+|PE[-_ ]?CF\d+|PE[-_ ]?Dazzle\d*|"
    r"PE[-_ ]?Texas[-_ ]?Red|PE[-_ ]?TR|PE[-_ ]?eF(?:luor)?\d+|PE[-_ ]?Fire\d+|Texas[-_ ]?Red|"
    r"B?UV\d+|BV\d+|BUV\d+|BB\d+|BYG\d+|RB\d+|NFB\d+|SB\d+|Super[-_ ]?Bright\d+|"
    r"Spark[-_ ]?(?:NIR|UV|Blue|Violet|YG|Red)?[-_ ]?\d+|cFluor[-_ ]?\w*\d+|"
    r"eF(?:luor)?\d+|A(?:lexa)?(?:F|x|[-_ ]?Fluor)?[-_ ]?\d{3}|Alexa|Fluor|AF\d+|"
    r"Qdot[-_ ]?\d+|QD\d+|Pacific[-_ ]?(?:Blue|Orange)|PacBlu(?:e)?|PacOrange|PB|PO|"
    r"V\d{3}|Vio(?:Blue|Green|Bright\w*|\d+)|KO|Krome[-_ ]?Orange|AmCyan|Horizon|"
    r"DyLight\d+|Cy\d(?:\.\d)?|GFP|YFP|RFP|mCherry|BD|Biotin|SAv|Streptavidin|"
    r"RD1|PE[-_ ]?RD1|TRI|Tri[-_ ]?Color|Cy[-_ ]?Chrome|PC5\.5|APC[-_ ]?A\d+|APC[-_ ]?AF\d+|KrO|"
    r"PB\d+|PO\d+|Violet\d*|Aqua|FL\d+"
    r")(?:[-_ ]?[AHW])?$",
    re.IGNORECASE,
)
#: Elements used as mass tags in mass cytometry.
_ELEMENTS = ("La|Ce|Pr|Nd|Sm|Eu|Gd|Tb|Dy|Ho|Er|Tm|Yb|Lu|In|Pt|Ir|Pd|Rh|Ba|Cs|Bi|Cd|Au|Os|Sn|Te|"
             "Ag|Xe|Hf|Ta|Y|I")
#: A mass tag on its own (``Sm147``, ``147Sm``, ``Sm147Di``); case-sensitive.
MASS_TAG = re.compile(rf"^(?:(?:{_ELEMENTS})\d{{2,3}}(?:D[id])?|\d{{2,3}}(?:{_ELEMENTS})(?:D[id])?)$")

# A mass tag in parentheses: CD20(Sm147)Dd, CD3(110:114)Dd, CD45(In115)Di
_MASS_PAREN = re.compile(rf"\((?:(?:{_ELEMENTS})\d{{2,3}}|\d{{2,3}}(?:{_ELEMENTS})|\d{{2,3}}(?::\d{{2,3}})?)\)\s*D?[id]?$")
# Leading or trailing mass tag joined by _ or -: 141Pr_CD7, Pr141_CD7, CD7_141Pr
_MASS_PREFIX = re.compile(rf"^(?:\d{{2,3}}(?:{_ELEMENTS})|(?:{_ELEMENTS})\d{{2,3}})(?:D[id])?[_\- ]+")
_MASS_SUFFIX = re.compile(rf"[_\- ]+(?:\d{{2,3}}(?:{_ELEMENTS})|(?:{_ELEMENTS})\d{{2,3}})(?:D[id])?$")
# A detector described by laser and filter (Beckman Astrios: "488-513/26", "405-SSC")
_DETECTOR_LABEL = re.compile(r"^\d{3}[-/ ](?:\d{3}/\d{2,3}|\d{3}LP|[FS]SC)$", re.IGNORECASE)
# A label token that is certainly a marker name: CD numbers and the common antigen families
_MARKER_TOKEN = re.compile(r"^(?:CD\d+[a-zA-Z]{0,2}|HLA-?DR|TCR\w+|Ig[MDGAE]|FOXP3|Ki-?67|CC?X?CR\d+)$",
                           re.IGNORECASE)
_DETECTOR_SUFFIX = re.compile(r"[-_ ](?:A|H|W)$")

#: Spellings of one marker (lower case, without spaces, hyphens, underscores and dots) →
#: the canonical name used by the built-in templates and marker table.
_ALIASES = {
    "hladr": "HLA-DR", "foxp3": "FOXP3", "ki67": "Ki67", "ki-67": "Ki67", "cd8a": "CD8",
    "cd8alpha": "CD8", "tcrgd": "TCRgd", "tcryd": "TCRgd", "gdtcr": "TCRgd", "tcrγδ": "TCRgd",
    "tcrgammadelta": "TCRgd", "tcrab": "TCRab", "tcrb": "TCRab", "tcrαβ": "TCRab",
    "tcrvα72": "TCRVa7.2", "tcrva72": "TCRVa7.2", "igm": "IgM", "igd": "IgD", "igg": "IgG",
    "iga": "IgA", "ige": "IgE", "pd1": "PD-1", "pdl1": "PD-L1", "ctla4": "CTLA-4", "tim3": "TIM-3",
    "lag3": "LAG-3", "granzymeb": "Granzyme B", "grzb": "Granzyme B", "gzmb": "Granzyme B",
    "perforin": "Perforin", "tbet": "T-bet", "helios": "HELIOS", "cd235ab_cd61": "CD235ab/CD61",
    "cd235abcd61": "CD235ab/CD61", "fcer1a": "FceRIa", "fcεri": "FceRIa", "nkg2d": "NKG2D",
    "nkg2a": "NKG2A", "nkp46": "NKp46", "crth2": "CRTH2", "livedead": "Viability",
    "viability": "Viability", "l/d": "Viability", "ld": "Viability", "dna1": "DNA1",
    "dna2": "DNA2", "cisplatin": "Cisplatin", "ifng": "IFNg", "ifnγ": "IFNg", "tnfa": "TNFa",
    "tnfα": "TNFa", "il2": "IL-2", "il4": "IL-4", "il17": "IL-17", "il17a": "IL-17",
    "il10": "IL-10", "il6": "IL-6", "mip1b": "MIP1b",
}

#: Lineage (``type``) markers of human blood: they define populations and clusters.
LINEAGE = {
    "CD3", "CD4", "CD8", "CD8b", "CD19", "CD20", "CD22", "CD24", "CD14", "CD16", "CD56", "CD11b",
    "CD11c", "CD123", "CD33", "CD45", "CD45RA", "CD45RO", "CCR7", "CD27", "CD28", "CD127", "CD25",
    "FOXP3", "HELIOS", "CD1c", "CD141", "CD303", "CD304", "CD66", "CD66b", "CD15", "CD16b", "CD61",
    "CD235ab/CD61", "CD235ab", "CD7", "CD2", "CD5", "CD57", "CD161", "CD34", "CD117", "CD38",
    "CD62L", "CD95", "CD10", "CD21", "CD24", "CD138", "IgM", "IgD", "IgG", "IgA", "HLA-DR",
    "TCRgd", "TCRab", "TCRVa7.2", "CD294", "CRTH2", "FceRIa", "CD203c", "CD49d", "CD29", "CD44",
    "CD64", "CD32", "CD36", "CD163", "CD206", "CXCR3", "CXCR5", "CCR4", "CCR6", "CCR2", "CCR9",
    "CCR10", "CD26", "NKG2A", "NKG2C", "NKG2D", "NKp46", "CD94", "KIR2DL1", "CD160", "CD244",
    "CD1d", "CD58", "CD31", "CD35", "CD39", "CD73", "CD196", "CD183", "CD185", "CD197", "T-bet",
}
#: Signalling / activation / function (``state``) markers, compared within populations.
STATE = {
    "Ki67", "CD69", "CD71", "CD137", "CD154", "CD40L", "CD107a", "PD-1", "PD-L1", "CTLA-4",
    "TIM-3", "LAG-3", "TIGIT", "ICOS", "OX40", "CD134", "Granzyme B", "Perforin", "IFNg", "TNFa",
    "IL-2", "IL-4", "IL-17", "IL-10", "IL-6", "IL-21", "IL-22", "MIP1b", "GM-CSF", "CD83", "CD86",
    "CD80", "p38", "S6", "ERK", "Akt", "STAT1", "STAT3", "STAT4", "STAT5", "STAT6", "CREB", "IkB",
    "IkBa", "NFkB", "MAPKAPK2", "Btk", "Plcg2", "Zap70", "Lck", "Syk", "Slp76", "SHP2", "Lat",
    "Rb", "cPARP", "CC3", "cleaved caspase 3", "pH3", "IdU", "CyclinB1",
}
_STATE_PREFIX = re.compile(r"^p(?:[A-Z0-9]|p38)")  # pS6, pStat5, pErk, pp38


def marker_key(name: str) -> str:
    """Comparison key of a marker name: lower case without spaces, ``-``, ``_`` and ``.``."""
    return re.sub(r"[\s\-_.]", "", str(name)).lower()


def canonical(name: str) -> str:
    """The canonical spelling of a marker (``HLADR`` → ``HLA-DR``, ``cd4`` → ``CD4``,
    ``CD8a`` → ``CD8``); unknown names are returned with only CD numbers upper-cased."""
    name = str(name).strip()
    key = marker_key(name)
    if key in _ALIASES:
        return _ALIASES[key]
    m = re.fullmatch(r"cd(\d+)(ra|ro|rb|[a-z])?", key)
    if m:
        suffix = m.group(2) or ""
        return f"CD{m.group(1)}{suffix.upper() if len(suffix) == 2 else suffix}"
    return name


def clean_label(label: str, name: str = "") -> str:
    """The marker measured by a channel, from its ``$PnS`` label (or ``$PnN`` name when the
    label is empty): mass tags (``CD20(Sm147)Dd``, ``141Pr_CD7``), fluorochromes
    (``CD4 BV605``, ``cd8 FITC-A``) and detector suffixes removed, canonical spelling
    (:func:`canonical`). Returns ``""`` when nothing but a fluorochrome / detector is left."""
    text = str(label or "").strip() or str(name or "").strip()
    if marker_key(text) in _ALIASES:
        return _ALIASES[marker_key(text)]
    if _DETECTOR_LABEL.match(text):
        return ""
    text = _MASS_PAREN.sub("", text).strip()
    text = _MASS_PREFIX.sub("", text)
    text = _MASS_SUFFIX.sub("", text).strip()
    head, slash, tail = text.partition("/")
    if slash and FLUOROCHROME.match(tail.strip()):
        text = head.strip()  # "PI/PE-Cy5-A": the dye before the slash
    text = _DETECTOR_SUFFIX.sub("", text).strip()
    kept = [t for t in map(_strip_dye, re.split(r"\s+", text)) if t]
    if not kept:
        return ""
    if len(kept) > 1:  # "CD4 SK3", "CD3 UCHT1": a marker and its clone (clone names have digits)
        markers = [t for t in kept if _MARKER_TOKEN.match(t) or is_known(t)]
        others = [t for t in kept if t not in markers]
        if len(markers) == 1 and all(re.search(r"\d", t) for t in others):
            return canonical(markers[0])
    return canonical(" ".join(kept))


def _is_dye(token: str) -> bool:
    return bool(FLUOROCHROME.match(token) or MASS_TAG.match(token) or token.isdigit())


def _strip_dye(token: str) -> str:
    """A label token without its fluorochrome: ``FITC`` → "", ``CD45RA-BV711`` → ``CD45RA``."""
    if _is_dye(token):
        return ""
    for m in re.finditer(r"[-_]", token):
        if _is_dye(token[m.end():]):
            return token[: m.start()]
    return token


def is_known(marker: str) -> bool:
    """True for a marker of the built-in lineage or state lists (any spelling)."""
    c = canonical(marker)
    return c in LINEAGE or c in STATE or bool(_STATE_PREFIX.match(c))


def marker_class(marker: str) -> str:
    """``type`` for lineage markers, ``state`` for signalling / activation markers
    (phospho-proteins ``p…``, cytokines, Ki67 …); unknown markers are ``type`` (a guess:
    most antibodies of a phenotyping panel are lineage markers)."""
    c = canonical(marker)
    if c in LINEAGE:
        return "type"
    if c in STATE or _STATE_PREFIX.match(c):
        return "state"
    return "type"


def find_marker(wanted: str, available: Iterable[str]) -> str | None:
    """The name in ``available`` that means marker ``wanted``: the same name, else the same
    canonical spelling (``HLADR`` for ``HLA-DR``); None when absent."""
    available = list(available)
    if wanted in available:
        return wanted
    target = marker_key(canonical(wanted))
    for name in available:
        if marker_key(canonical(name)) == target:
            return name
    return None
