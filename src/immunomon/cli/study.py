"""CLI verbs: ``validate`` (check a study folder) and ``simulate`` (write a synthetic trial)."""

from __future__ import annotations

from pathlib import Path

import typer

from immunomon.errors import UserError

from .app import SET_HELP, app, fcs_app, parse_set  # noqa: F401


@app.command()
def validate(
    study_dir: Path = typer.Argument(..., help="Study folder (study.yaml, samples.csv, ...)."),
    no_files: bool = typer.Option(False, "--no-files",
                                  help="Do not open the FCS files (skip channel checks)."),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Check a study folder; list every problem (one line each, exit 2) or summarise it."""
    from immunomon.pipeline.checks import load_checked

    study = load_checked(study_dir, check_files=not no_files, overrides=parse_set(settings))
    s = study.samples
    n_excl = int((s["excluded_reason"] != "").sum())
    extra = []
    if study.clinical is not None:
        extra.append(f"{len(study.clinical)} clinical values")
    if study.adverse_events is not None:
        extra.append(f"{len(study.adverse_events)} adverse events")
    typer.echo(f"{study.config.study_id}: valid — {len(s)} samples ({n_excl} excluded), "
               f"{s['patient_id'].nunique()} patients, {s['visit'].nunique()} visits, "
               f"{len(study.config.panels)} panel(s)"
               + (", " + ", ".join(extra) if extra else ""))


@app.command()
def simulate(
    out_dir: Path = typer.Argument(..., help="Folder to write the study into (new or empty)."),
    patients: int = typer.Option(46, help="Number of patients (dealt over 11 diseases)."),
    visits: str = typer.Option("D1,D8,D15,D29,D85,D183,D240",
                               help="Comma-separated visits D<day>; the first is baseline."),
    events: int = typer.Option(50_000, help="Events per FCS file."),
    seed: int = typer.Option(1, help="Master random seed."),
    effect: str = typer.Option("planted", help="'planted' treatment effects or 'none'."),
    effect_size: float = typer.Option(1.0, help="Multiplies every planted log fold change."),
    arms: str = typer.Option(None, help="Randomised arms, control first, e.g. "
                             "'placebo,ld-IL2' (1:1; the effects only in the other arms)."),
    workers: int = typer.Option(1, help="Parallel processes (output does not depend on it)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder."),
    assay: str = typer.Option("cytometry", help="'cytometry' (FCS files) or 'citeseq' "
                              "(Cell Ranger folders; --cells, --genes, --pool, --empty)."),
    cells: int = typer.Option(2000, help="CITE-seq: cells per sample."),
    genes: int = typer.Option(300, help="CITE-seq: RNA genes (0: ADT-only libraries)."),
    pool: int = typer.Option(0, help="CITE-seq: samples per hashtag-pooled library (0: none)."),
    empty: int = typer.Option(3000, help="CITE-seq: empty droplets per library (0: no raw "
                              "matrix, CLR instead of dsb)."),
    matrix_format: str = typer.Option("mtx", "--format", help="CITE-seq: 'mtx' or 'h5'."),
    batches: int = typer.Option(None, help="Acquisition batches, each with one bridge control "
                                "(default: random batches of ~24 samples, no controls)."),
    batch_effect: float = typer.Option(0.0, help="With --batches: per-batch, per-marker shift "
                                       "sd (arcsinh units; scale log-sd a third of it)."),
    confound: float = typer.Option(0.0, help="With --batches: share of patients whose k-th "
                                   "visit is acquired in batch k (visits confounded)."),
) -> None:
    """Simulate a low-dose IL-2 trial: FCS files (or Cell Ranger folders with --assay
    citeseq), manifest, clinical/AE tables and truth/."""
    from immunomon.simulate import simulate_study

    if assay == "citeseq":  # CITE-seq simulator (immunomon.simulate.citeseq)
        from immunomon.simulate.citeseq import simulate_citeseq

        try:
            root = simulate_citeseq(out_dir, patients=patients,
                                    visits=[v for v in visits.split(",") if v.strip()],
                                    cells=cells, seed=seed, effect=effect, genes=genes,
                                    pool=pool, empty=empty, fmt=matrix_format, overwrite=force)
        except (ValueError, FileExistsError) as err:
            raise UserError(f"simulate --assay citeseq: {err}") from None
        typer.echo(f"{root}: {len(list((root / 'data').iterdir()))} Cell Ranger libraries, "
                   f"{patients} patients, {cells} cells per sample, effect={effect}, seed {seed}")
        return
    if assay != "cytometry":
        raise UserError(f"--assay: '{assay}' is not cytometry or citeseq")
    if workers < 1:
        raise UserError(f"--workers: {workers} (need at least 1)")
    root = simulate_study(out_dir, patients=patients,
                          visits=[v for v in visits.split(",") if v.strip()], events=events,
                          seed=seed, effect=effect, effect_size=effect_size,
                          arms=tuple(a.strip() for a in arms.split(",")) if arms else None,
                          workers=workers, overwrite=force, batches=batches,
                          batch_effect=batch_effect, confound=confound)
    n = len(list((root / "fcs").glob("*.fcs")))
    typer.echo(f"{root}: {n} FCS files, {patients} patients, effect={effect} "
               f"(size {effect_size:g})" + (f", arms {arms}" if arms else "") + f", seed {seed}"
               + (f"; {batches} batches with a bridge control each, batch effect "
                  f"{batch_effect:g}, {confound:.0%} of patients confounded"
                  if batches is not None else ""))
