"""Figures (matplotlib PNG/PDF, plotly HTML) and the self-contained HTML report."""
