"""``render_report(run_dir)``: one self-contained, offline ``report.html`` from a run directory.

The page embeds plotly.js once (plotly's bundled copy), every figure as a ``<div>`` plus its
data, every static image as a base64 ``data:`` URL, and a Content-Security-Policy that forbids
any network request. Every text from the data is escaped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from plotly.offline import get_plotlyjs

from . import sections_citeseq as citeseq
from . import sections_more as more
from . import sections_plan as plan
from . import sections_study as study
from .sections_batch import batch_section
from .assets import CSS, TABLE_JS
from .figures import write_figures
from .htmltable import esc
from .methods import versions
from .rundata import RunData, load_run
from .section import Context, Section

log = logging.getLogger(__name__)

#: Forbids every fetch: scripts, styles and images only from the page itself.
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
       "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'")

#: Section builders in page order: the analysis plan first (a builder returning None — a
#: plan section of a run without a plan — adds no section).
SECTIONS: tuple[Callable[[Context], Section | None], ...] = (
    plan.primary, plan.key_secondary, study.overview, batch_section, study.kinetics,
    study.volcano, study.fold_changes, study.pca, more.clusters, more.differential, citeseq.citeseq,
    plan.selectivity, more.clinical, more.adverse_events, more.methods, more.provenance,
)
#: At most this many other PNGs of figures/ (e.g. gate plots) are shown in the gallery.
MAX_EXTRA_FIGURES = 24


def _applies(builder: Callable[[Context], Section | None], run: RunData) -> bool:
    """Whether the study holds the subject of a section: the supervised sections only when
    the study was gated, changes over visits (kinetics, fold changes, clinical change) only
    with two visits or more, statistics only where something was compared, the clinical and
    safety sections only for studies with those tables (the plan's, batch and CITE-seq
    builders return None when the run has no plan, batches or CITE-seq panel)."""
    if builder in (study.kinetics, study.volcano, study.fold_changes, study.pca):
        # a study without gating has empty population tables: no supervised sections
        if not _has_rows(run, "parameters"):
            return False
        if builder in (study.kinetics, study.fold_changes):  # changes need two visits
            return len(run.visits) >= 2
        return builder is study.pca or _has_rows(run, "stats_supervised")
    if builder is more.differential:  # e.g. one visit and no groups: nothing was compared
        return _has_rows(run, "stats_da") or _has_rows(run, "stats_ds")
    if builder is more.clinical and len(run.visits) < 2:  # clinical change needs two visits
        return False
    source = {more.clinical: ("clinical.csv", ("clinical_change", "clinical_summary")),
              more.adverse_events: ("adverse_events.csv", ("adverse_events_summary",))}.get(builder)
    inputs = run.provenance.get("inputs")
    if source and isinstance(inputs, list) and inputs and \
            all(run.get(name) is None for name in source[1]):  # no table: did the study have one?
        return any(str(i.get("path", "")).endswith(source[0]) for i in inputs if isinstance(i, dict))
    return True


def _has_rows(run: RunData, table: str) -> bool:
    """False when the run wrote ``table`` without rows (nothing to show); a missing table
    is still drawn as a section naming it."""
    return not run.problems.get(table, "").endswith("has no rows")


def _safe(builder: Callable[[Context], Section | None], ctx: Context) -> Section | None:
    """Run a section builder; a table it cannot draw gives a notice, not a failed report."""
    try:
        return builder(ctx)
    except Exception as exc:  # noqa: BLE001 - one malformed table must not lose the report
        log.warning("report section %s failed: %r", builder.__name__, exc)
        name = builder.__name__.replace("_", " ")
        return Section(builder.__name__, name.capitalize(), (
            f'<p class="missing">This section could not be drawn from the tables '
            f"({esc(type(exc).__name__)}: {esc(exc)}).</p>"))


def _figures(run_dir: Path, run: RunData) -> list[Path]:
    """Draw the publication figures; then list them and other top-level PNGs of figures/."""
    try:
        mine = write_figures(run, run_dir / "figures")
    except Exception as exc:  # noqa: BLE001 - the HTML report must still be written
        log.warning("publication figures failed: %r", exc)
        mine = []
    emb, cl = run.get("embedding"), run.get("clusters")
    if emb is not None and cl is not None:
        try:
            from .cluster_figures import draw_cluster_figures

            draw_cluster_figures({"embedding": _annotated(run, emb, cl), "clusters": cl},
                                 run_dir / "figures", formats=("png",))
        except Exception as exc:  # noqa: BLE001 - optional figures of the clustering branch
            log.warning("cluster figures failed: %r", exc)
    pngs = [p for p in mine if p.suffix == ".png"]
    others = sorted(p for p in (run_dir / "figures").glob("*.png") if p not in pngs)
    return pngs + others[:MAX_EXTRA_FIGURES]


def _annotated(run: RunData, emb, cl):
    """``embedding`` with each cell's cluster ``label`` and its sample's visit and disease."""
    keys = ["panel", "cluster"] if "panel" in emb.columns and "panel" in cl.columns else ["cluster"]
    if "label" not in emb.columns:
        emb = emb.merge(cl[keys + ["label"]].drop_duplicates(keys), on=keys, how="left")
    s = run.get("samples")
    extra = [c for c in ("visit", "disease") if c not in emb.columns]
    if s is not None and extra:
        emb = emb.merge(s[["sample_id", *extra]].astype(str), on="sample_id", how="left")
    return emb


def build_html(run: RunData, figures: list[Path]) -> str:
    """The whole page as a string (deterministic for the same tables and figures)."""
    ctx = Context.of(run)
    sections = [s for s in (_safe(b, ctx) for b in SECTIONS if _applies(b, run))
                if s is not None]
    sections.insert(-2, more.gallery(ctx, figures))
    prov = run.provenance
    study_id = prov.get("study_id") or (prov.get("parameters") or {}).get("study_id") or \
        run.run_dir.name
    ver = versions(prov).get("immunomon", "")
    sub = [f"Run directory {run.run_dir.name}"]
    if ver:
        sub.append(f"immunomon {ver}")
    for key in ("finished", "end_time"):
        if prov.get(key):
            sub.append(f"run finished {prov[key]}")
            break
    headline = _safe_text(plan.headline, ctx)
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title.split(":")[0])}</a>' for s in sections)
    body = "\n".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>\n{s.body}</section>'
                     for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(study_id)} — immunomonitoring report</title>"
        f"<style>{CSS}</style>\n<script>{get_plotlyjs()}</script>\n</head><body>\n"
        f"<header><h1>{esc(study_id)} — immunomonitoring report</h1>"
        f"<p>{esc(' · '.join(sub))}</p>"
        + (f'<p class="headline">{esc(headline)}</p>' if headline else "") +
        f"</header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
        "<footer>Generated by immunomon from the run's tables; every number is in tables/*.csv."
        f"</footer>\n<script>{TABLE_JS}</script>\n</body></html>\n")


def _safe_text(fn: Callable[[Context], str], ctx: Context) -> str:
    try:
        return fn(ctx)
    except Exception as exc:  # noqa: BLE001 - the headline is optional
        log.warning("report headline failed: %r", exc)
        return ""


def render_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` and ``RUN_DIR/figures/*.png|pdf`` from the run's tables.

    Parameters
    ----------
    run_dir
        A run directory (``tables/*.parquet``, ``provenance.json``); missing tables give
        notices in the report, never an error.

    Returns
    -------
    Path
        The written ``report.html`` (replaced atomically).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    page = build_html(run, _figures(run_dir, run))
    out = run_dir / "report.html"
    tmp = run_dir / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
