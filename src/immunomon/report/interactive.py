"""Interactive plotly figures of the HTML report: study overview, end point, kinetics, clinical.

Every string that comes from the data is HTML-escaped before it enters a figure (plotly renders
labels as a subset of HTML), and :func:`plotly_div` escapes ``<``, ``>`` and ``&`` inside the
figure JSON, so no data value can close the ``<script>`` element that carries it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.utils import PlotlyJSONEncoder

from .htmltable import esc

FONT = dict(family="Inter, 'Helvetica Neue', Arial, sans-serif", size=13, color="#222")
CONFIG = {"displaylogo": False, "responsive": True,
          "toImageButtonOptions": {"format": "svg", "scale": 1}}
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}


def base_layout(fig: go.Figure, *, height: int = 420, **kw) -> go.Figure:
    """Apply the report's look (white template, font, margins) to ``fig``; ``kw`` overrides."""
    layout = dict(template="plotly_white", font=FONT, height=height,
                  margin=dict(l=70, r=20, t=50, b=60), hoverlabel=dict(font_size=12),
                  legend=dict(itemsizing="constant"))
    for key, value in kw.items():
        layout[key] = {**layout[key], **value} if isinstance(layout.get(key), dict) else value
    fig.update_layout(**layout)
    return fig


def plotly_div(fig: go.Figure | dict, div_id: str) -> str:
    """The ``<div>`` and ``<script>`` that draw ``fig`` (a figure or a ``{"data", "layout"}``
    spec) with the page's single plotly.js."""
    spec = fig if isinstance(fig, dict) else fig.to_plotly_json()
    payload = json.dumps({"data": spec["data"], "layout": spec["layout"]},
                         cls=PlotlyJSONEncoder, separators=(",", ":"), sort_keys=True)
    for ch, rep in _JSON_ESCAPES.items():
        payload = payload.replace(ch, rep)
    cfg = json.dumps(CONFIG, sort_keys=True)
    return (f'<div class="plot" id="{esc(div_id)}"></div>\n<script>(function(){{var f={payload};'
            f'Plotly.newPlot("{esc(div_id)}",f.data,f.layout,{cfg});}})();</script>')


def _lines(df: pd.DataFrame, x: str, y: str, by: str) -> tuple[list, list, list]:
    """x, y, hover text of per-``by`` polylines separated by ``None`` (one trace, many lines).

    ``df`` is sorted so that each ``by`` group's rows are contiguous.
    """
    xs, ys, txt = [], [], []
    keys = df[by].to_numpy()
    for i, (k, xv, yv) in enumerate(zip(keys, df[x].to_numpy(), df[y].astype(float).to_numpy())):
        xs.append(esc(xv))
        ys.append(None if np.isnan(yv) else float(yv))
        txt.append(esc(k))
        if i + 1 == len(keys) or keys[i + 1] != k:
            xs.append(None)
            ys.append(None)
            txt.append(None)
    return xs, ys, txt


def fig_patients_per_disease(samples: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """Horizontal bars: number of patients per disease arm (all samples received)."""
    n = samples.groupby("disease")["patient_id"].nunique().sort_values()
    fig = go.Figure(go.Bar(x=n.to_numpy(), y=[esc(d) for d in n.index], orientation="h",
                           marker_color=[colours.get(str(d), "#555") for d in n.index],
                           text=n.to_numpy(), textposition="outside",
                           hovertemplate="%{y}: %{x} patients<extra></extra>"))
    fig.update_xaxes(title="patients")
    return base_layout(fig, height=max(260, 28 * len(n) + 90), title="Patients per disease")


def fig_samples_per_visit(samples: pd.DataFrame, visits: Sequence[str]) -> go.Figure:
    """Stacked bars per visit: samples analysed, failed QC, excluded in study.yaml."""
    excl = samples.get("excluded_reason", pd.Series("", index=samples.index)).fillna("")
    qc = samples.get("qc_pass", pd.Series(True, index=samples.index)).fillna(False).astype(bool)
    status = np.where(excl.astype(str).str.len() > 0, "excluded",
                      np.where(qc, "analysed", "failed QC"))
    counts = pd.crosstab(samples["visit"].astype(str), status).reindex(visits, fill_value=0)
    fig = go.Figure()
    for name, colour in (("analysed", "#2E86AB"), ("failed QC", "#E4572E"),
                         ("excluded", "#A0A0A0")):
        if name in counts.columns:
            fig.add_bar(x=[esc(v) for v in counts.index], y=counts[name], name=name,
                        marker_color=colour, hovertemplate="%{x}: %{y} " + name + "<extra></extra>")
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="samples")
    return base_layout(fig, height=340, title="Samples per visit")


def fig_primary(paired: pd.DataFrame, visits: tuple[str, str], colours: dict[str, str],
                parameter: str) -> go.Figure:
    """Paired dot plot: each patient's value at baseline and at the end-point visit.

    Group 0 pools all patients; then one group per disease. ``paired`` is the output of
    :func:`immunomon.report.prep.paired_values`.
    """
    b, v = visits
    groups = ["All patients"] + sorted(paired["disease"].astype(str).unique())
    fig = go.Figure()
    for disease, g in paired.groupby("disease", sort=True):
        for gi in (0, groups.index(str(disease))):
            xs, ys, hov = [], [], []
            for pid, row in g.iterrows():
                xs += [gi - 0.2, gi + 0.2, None]
                ys += [row[b], row[v], None]
                hov += [esc(pid)] * 2 + [None]
            fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=esc(disease),
                            legendgroup=esc(disease), showlegend=gi == 0, text=hov,
                            line=dict(color=colours.get(str(disease), "#555"), width=1.2),
                            marker=dict(size=7, line=dict(width=0.5, color="white")),
                            hovertemplate="%{text}<br>%{y:.3g}<extra>" + esc(disease) + "</extra>")
    ticks = [f"<b>{esc(g)}</b><br>n={len(paired) if i == 0 else (paired['disease'] == g).sum()}"
             f"<br><span style='color:#777'>{esc(b)} → {esc(v)}</span>"
             for i, g in enumerate(groups)]
    fig.update_xaxes(tickvals=list(range(len(groups))), ticktext=ticks, tickangle=0,
                     range=[-0.6, len(groups) - 0.4], showgrid=False)
    for i in range(1, len(groups)):
        fig.add_vline(x=i - 0.5, line=dict(color="#e5e5e5", width=1))
    fig.update_yaxes(title=esc(parameter))
    return base_layout(fig, height=480, margin=dict(l=70, r=20, t=40, b=110),
                       title=f"{esc(parameter)}: {esc(b)} → {esc(v)}, per patient")


def fig_trajectories(long: pd.DataFrame, keys: Sequence[str], key_col: str, value_col: str,
                     visits: Sequence[str], colours: dict[str, str], *, title: str = "") -> dict:
    """Per-patient lines over visits, coloured by disease, one dropdown entry per ``keys``.

    ``long`` has columns ``patient_id, disease, visit`` plus ``key_col`` (what the dropdown
    selects: a parameter or a clinical score) and ``value_col``, sorted by patient then visit.
    Returns a figure spec (``{"data", "layout"}``; traces built as plain dicts, which is much
    faster than plotly's validated objects for hundreds of traces).
    """
    traces: list[dict] = []
    owners: list[int] = []
    index = {k: i for i, k in enumerate(keys)}
    for (key, disease), g in long.groupby([key_col, "disease"], sort=True):
        if key not in index:
            continue
        xs, ys, txt = _lines(g, "visit", value_col, "patient_id")
        traces.append(dict(type="scatter", x=xs, y=ys, text=txt, mode="lines+markers",
                           name=esc(disease), legendgroup=esc(disease),
                           visible=index[key] == 0, opacity=0.8, marker=dict(size=4),
                           line=dict(color=colours.get(str(disease), "#555"), width=1),
                           hovertemplate="%{text} %{x}: %{y:.3g}<extra>" + esc(disease) +
                           "</extra>"))
        owners.append(index[key])
    order = np.argsort(owners, kind="stable")
    traces, owners = [traces[i] for i in order], [owners[i] for i in order]
    fig = go.Figure()
    shown = [esc(v) for v in visits if v in set(long["visit"])]
    fig.update_xaxes(categoryorder="array", categoryarray=shown, type="category")
    buttons = [dict(label=esc(key), method="update",
                    args=[{"visible": [o == k for o in owners]}, {"yaxis.title.text": esc(key)}])
               for k, key in enumerate(keys)]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=0, xanchor="left", y=1.16,
                                        yanchor="top", direction="down", showactive=True)])
    fig.update_yaxes(title=esc(keys[0]) if keys else "")
    fig.add_annotation(text=title, x=0, xref="paper", y=1.17, yref="paper", xanchor="right",
                       yanchor="top", showarrow=False, xshift=-8, yshift=-6)
    base_layout(fig, height=480, margin=dict(l=150, r=20, t=90, b=50))
    return {"data": traces, "layout": fig.to_plotly_json()["layout"]}
