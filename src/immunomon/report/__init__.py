"""Figures (matplotlib PNG/PDF, plotly HTML) and the self-contained HTML report.

>>> from immunomon.report import render_report, safe_keywords
>>> render_report("run/")          # writes run/report.html and run/figures/*.png|pdf

The report draws what the run's tables hold; it computes no new results.
"""

from .privacy import safe_keywords

__all__ = ["render_report", "safe_keywords"]


def __getattr__(name: str):
    # render_report imports plotly and matplotlib: load them only when asked for.
    if name == "render_report":
        from .html import render_report

        return render_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
