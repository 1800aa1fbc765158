"""CLI verb ``normalise``: write a study's files with CytoNorm batch normalisation applied."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import SET_HELP, app, parse_set


@app.command()
def normalise(
    study_dir: Path = typer.Argument(..., help="Study folder (study.yaml, samples.csv, ...)."),
    out: Path = typer.Option(..., "--out", help="Folder for the normalised FCS files."),
    seed: int = typer.Option(None, help="Seed of a clustered normalisation (default: "
                                        "study.yaml's seed)."),
    workers: int = typer.Option(1, help="Parallel processes."),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Normalise every file of the panels whose study.yaml asks for it (normalisation:
    {method: cytonorm}) on the bridge controls of each batch; write FCS 3.1 files with the
    source's names and keywords plus IMMUNOMON_NORMALISATION, and normalisation.csv."""
    from immunomon.pipeline.checks import load_checked
    from immunomon.pipeline.normalise import write_normalised

    study = load_checked(study_dir, overrides=parse_set(settings))
    paths = write_normalised(study, out, study.config.seed if seed is None else seed,
                             workers=max(1, workers))
    typer.echo(f"{out}: {len(paths)} normalised FCS files and normalisation.csv")
