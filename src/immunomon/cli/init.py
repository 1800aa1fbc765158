"""CLI verb ``init``: write a study folder (study.yaml + samples.csv) from a folder of FCS files."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command()
def init(
    fcs_dir: Path = typer.Argument(..., help="Folder of FCS files (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Study folder to write (study.yaml, samples.csv)."),
    pattern: str = typer.Option(None, "--pattern", help="File-name pattern, e.g. "
                                "'{patient}_{visit}.fcs' (fields: patient, visit, batch, disease, "
                                "arm, sample; {*} = anything)."),
    patient_keyword: str = typer.Option(None, "--patient-keyword",
                                        help="TEXT keyword holding the patient id, e.g. 'PATIENT ID'."),
    visit_keyword: str = typer.Option(None, "--visit-keyword", help="TEXT keyword holding the visit."),
    batch_keyword: str = typer.Option(None, "--batch-keyword",
                                      help="TEXT keyword holding the acquisition batch (default $DATE)."),
    sheet: Path = typer.Option(None, "--sheet", help="CSV sample sheet, one row per file (a column "
                               "of file names; samples.csv column names fill those columns)."),
    template: str = typer.Option("auto", "--template", help="Gating: 'auto' (the built-in template "
                                 "that fits each panel), 'none', or a template name / YAML path."),
    wsp: Path = typer.Option(None, "--wsp", help="Gate with this FlowJo workspace instead."),
    wsp_group: str = typer.Option(None, "--wsp-group", help="The workspace's sample group."),
    gatingml: Path = typer.Option(None, "--gatingml", help="Gate with this Gating-ML 2.0 file instead."),
    study_id: str = typer.Option(None, "--study-id", help="study_id (default: the folder name)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing study.yaml."),
) -> None:
    """Guess a study from FCS files: panels, markers, roles, classes, instrument, transform,
    compensation, gating, samples.csv. Prints what it guessed and what is still to fill in.

    Files that are not FCS or cannot be read are listed (one line each, on stderr); exit status
    0, or 2 when no usable FCS file is left.
    """
    from immunomon.io.discover import discover, write_study

    d = discover(fcs_dir, out, pattern=pattern, patient_keyword=patient_keyword,
                 visit_keyword=visit_keyword, batch_keyword=batch_keyword, sheet=sheet,
                 template=template, wsp=wsp, wsp_group=wsp_group, gatingml=gatingml)
    write_study(d, out, study_id=study_id, force=force)
    n_files = sum(len(p.files) for p in d.panels)
    typer.echo(f"{fcs_dir}: {n_files} FCS file(s) in {len(d.panels)} panel(s)"
               + (f"; {len(d.skipped)} file(s) skipped (listed on stderr)" if d.skipped else ""))
    for p in d.panels:
        kinds = {"mass": "mass cytometry", "spectral": "spectral flow", "flow": "flow cytometry"}
        markers = [c for c in p.channels if c.role == "marker"]
        state = [c.marker for c in markers if c.marker_class == "state"]
        other = {r: [c.marker for c in p.channels if c.role == r]
                 for r in ("scatter", "time", "viability", "dna", "bead", "barcode", "gaussian")}
        typer.echo(f"  panel {p.name}: {len(p.files)} file(s), {kinds[p.instrument]} "
                   f"({p.instrument_reason}), {len(p.channels)} channels")
        typer.echo(f"    markers ({len(markers)}): {', '.join(c.marker for c in markers)}")
        if state:
            typer.echo(f"    state markers: {', '.join(state)}")
        roles = "; ".join(f"{r}: {', '.join(v)}" for r, v in other.items() if v)
        if roles:
            typer.echo(f"    {roles}")
        t = p.transform
        tr = (f"arcsinh, cofactor {t['cofactor']:g}" if t["type"] == "arcsinh" else
              f"logicle per channel (M {t['params']['M']:g}; W estimated from the data)")
        typer.echo(f"    transform: {tr}; compensation: {p.compensation}")
        gating = (", ".join(f"{k}: {v}" for k, v in d.gating.items()) if d.gating else
                  f"template {p.template}" if p.template else "none (QC + clustering only)")
        typer.echo(f"    gating: {gating}")
        for note in p.notes:
            typer.echo(f"    note: {note}")
    s = d.samples
    typer.echo(f"  samples.csv: {len(s)} samples, {s['patient_id'].replace('', None).nunique()} "
               f"patient(s), {len(d.visits)} visit(s)"
               + (f", {s['batch'].replace('', None).nunique()} batch(es)" if (s['batch'] != '').any() else ""))
    for g in d.guesses:
        typer.echo(f"  guessed: {g}")
    for line in d.skipped:
        typer.echo(f"warning: {line}", err=True)
    if d.gaps:
        typer.echo("Still to fill in before `immunomon run`:")
        for g in d.gaps:
            typer.echo(f"  - {g}")
    typer.echo(f"wrote {out / 'study.yaml'} and {out / 'samples.csv'}; next: immunomon validate {out}")
