"""The building block of the report: a titled section of HTML, and shared drawing context."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import style
from .htmltable import esc
from .rundata import RunData


@dataclass
class Section:
    """One report section: anchor ``id``, ``title`` (plain text) and ``body`` (safe HTML)."""

    id: str
    title: str
    body: str


@dataclass
class Context:
    """What every section builder needs besides the tables: colours and a figure counter."""

    run: RunData
    disease_colours: dict[str, str] = field(default_factory=dict)
    visit_colours: dict[str, str] = field(default_factory=dict)
    n_plots: int = 0

    @classmethod
    def of(cls, run: RunData) -> Context:
        """Context with the disease and visit colours of ``run``."""
        return cls(run, style.category_colours(run.diseases), style.visit_colours(run.visits))

    def plot_id(self) -> str:
        """A fresh ``id`` for a figure ``<div>``."""
        self.n_plots += 1
        return f"plot{self.n_plots}"


def missing_note(run: RunData, *names: str) -> str:
    """A notice naming the missing tables among ``names`` ('' when all are present)."""
    gone = run.missing(*names)
    if not gone:
        return ""
    why = "; ".join(esc(run.problems.get(n, f"tables/{n}.parquet has no rows")) for n in gone)
    return f'<p class="missing">Not available: {why}.</p>'


def para(text: str, cls: str = "") -> str:
    """An escaped paragraph."""
    c = f' class="{cls}"' if cls else ""
    return f"<p{c}>{esc(text)}</p>"
