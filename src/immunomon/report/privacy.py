"""Keep FCS TEXT keywords that cannot identify a person; drop the rest.

FCS files carry free-text keywords written by the acquisition software and the operator:
``$SRC`` (specimen source, often a patient name or hospital number), ``$OP`` (operator),
``$SMNO`` (specimen number), ``$COM``/``COMMENT`` and any vendor keyword. None of them may
reach the report or ``provenance.json``. :func:`safe_keywords` keeps an allow-list instead of
removing a deny-list, so a keyword nobody thought of is dropped by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Keywords kept verbatim: instrument, acquisition date/time, data layout, event count.
ALLOWED_KEYWORDS = frozenset(
    {
        "$CYT", "$CYTSN", "$DATE", "$BTIM", "$ETIM", "$TOT", "$PAR", "$MODE", "$DATATYPE",
        "$BYTEORD", "$NEXTDATA", "$TIMESTEP", "$ABRT", "$LOST", "$VOL", "$ORIGINALITY",
        "$BEGINDATETIME", "$ENDDATETIME", "$SPILLOVER", "$SPILL", "$UNICODE",
    }
)
#: Per-channel keywords ($PnN name, $PnS stain, $PnB bits, $PnE amplification, $PnR range,
#: $PnG gain, $PnV voltage, $PnD display, $PnTYPE, $PnDATATYPE, $PnL excitation wavelength,
#: $PnO power, $PnT detector type) describe the panel, never a person.
_CHANNEL_KEYWORD = re.compile(r"^\$P\d+(N|S|B|E|R|G|V|D|L|O|T|TYPE|DATATYPE|F|P)$")


def is_safe_keyword(key: str) -> bool:
    """True when the FCS TEXT keyword ``key`` (any case) is on the allow-list."""
    k = str(key).strip().upper()
    return k in ALLOWED_KEYWORDS or bool(_CHANNEL_KEYWORD.match(k))


def safe_keywords(keywords: Mapping[str, object] | None) -> dict[str, str]:
    """Return the allow-listed subset of FCS TEXT keywords.

    Parameters
    ----------
    keywords
        ``{keyword: value}`` as read from an FCS TEXT segment (any key case); ``None`` gives ``{}``.

    Returns
    -------
    dict
        ``{KEYWORD: value}`` with upper-cased keys, sorted by key, values as ``str``. Keeps the
        instrument (``$CYT``, ``$CYTSN``), acquisition date and times (``$DATE``, ``$BTIM``,
        ``$ETIM``), ``$TOT``, ``$PAR``, the data layout and the per-channel ``$Pn*`` keywords;
        drops ``$SRC``, ``$OP``, ``$SMNO``, ``$COM``, ``$FIL``, ``$INST``, ``$EXP``, comments
        and every non-standard keyword.
    """
    if not keywords:
        return {}
    kept = {str(k).strip().upper(): str(v) for k, v in keywords.items() if is_safe_keyword(k)}
    return dict(sorted(kept.items()))


def scrub(obj: object) -> object:
    """Return a copy of a JSON-like object in which every keyword mapping is made safe.

    A mapping is treated as FCS TEXT keywords when any of its keys starts with ``$``; it is
    replaced by :func:`safe_keywords` of itself. Other mappings and lists are walked
    recursively. Used on ``provenance.json`` before anything of it is shown.
    """
    if isinstance(obj, Mapping):
        if any(str(k).startswith("$") for k in obj):
            return safe_keywords(obj)
        return {k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    return obj
