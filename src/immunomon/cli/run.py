"""CLI verbs: ``run`` (study folder -> run directory), ``demo`` (simulate + run), ``report``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from immunomon.atomic import atomic_write
from immunomon.errors import UserError

from .app import SET_HELP, app, parse_set


def _cpus() -> int:
    """CPUs this process may use (the default number of workers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        typer.echo(text, err=True)


def _finish(run_dir: Path, quiet: bool) -> None:
    """Name the report; exit 3 with one line per problem if samples could not be analysed."""
    from immunomon.pipeline.run import not_analysed

    _say(quiet, f"report: {run_dir / 'report.html'}")
    problems = not_analysed(run_dir)
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise typer.Exit(3)


@app.command()
def run(
    study_dir: Path = typer.Argument(..., help="Study folder (study.yaml, samples.csv, FCS files)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    workers: int = typer.Option(None, "--workers", "-w",
                                help="Local worker processes (default: number of CPUs)."),
    scheduler: str = typer.Option(None, "--scheduler",
                                  help="Dask scheduler address (tcp://host:8786) instead of local processes."),
    seed: int = typer.Option(None, "--seed", help="Seed of every random step (default: study.yaml's seed)."),
    cache: Path = typer.Option(None, "--cache", help="Cache folder (default: RUN_DIR/.cache)."),
    include_excluded: bool = typer.Option(False, "--include-excluded",
                                          help="Also analyse samples excluded in study.yaml or failing QC."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    settings: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Analyse a study end to end: QC, gating, clustering, statistics, report."""
    from immunomon.pipeline.run import RunOptions, run_study

    run_dir = run_study(study_dir, out, workers=workers or _cpus(), scheduler=scheduler, seed=seed,
                        quiet=quiet, cache_dir=cache,
                        options=RunOptions(include_excluded=include_excluded),
                        overrides=parse_set(settings))
    _finish(run_dir, quiet)


@app.command()
def demo(
    out: Path = typer.Option(Path("immunomon-demo"), "--out", "-o",
                             help="Folder for the simulated study (OUT/study) and its run (OUT/run)."),
    patients: int = typer.Option(46, "--patients", help="Patients (dealt over 11 diseases)."),
    events: int = typer.Option(50_000, "--events", help="Events per FCS file."),
    workers: int = typer.Option(None, "--workers", "-w",
                                help="Worker processes (default: number of CPUs)."),
    seed: int = typer.Option(1, "--seed", help="Seed of the simulation and the analysis."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Simulate the low-dose IL-2 trial (7 visits) and run it: OUT/study -> OUT/run."""
    from immunomon.pipeline.run import run_study
    from immunomon.simulate import simulate_study

    workers = workers or _cpus()
    study, marker = out / "study", out / "demo.json"
    wanted = {"patients": patients, "events": events, "seed": seed}
    reuse = (study / "study.yaml").is_file() and marker.is_file() and \
        json.loads(marker.read_text()) == wanted
    if reuse:
        _say(quiet, f"reusing the simulated study in {study}")
    else:
        _say(quiet, f"simulating {patients} patients x 7 visits x {events:,} events into {study} ...")
        marker.unlink(missing_ok=True)
        simulate_study(study, patients=patients, events=events, seed=seed, workers=workers,
                       overwrite=True)
        atomic_write(marker, json.dumps(wanted) + "\n")
    run_dir = run_study(study, out / "run", workers=workers, seed=seed, quiet=quiet)
    _finish(run_dir, quiet)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Run directory written by `immunomon run`."),
) -> None:
    """Re-render RUN_DIR/report.html and RUN_DIR/figures from RUN_DIR/tables."""
    from immunomon.pipeline.lock import run_lock
    from immunomon.pipeline.run import render_report

    if not (run_dir / "tables").is_dir():
        raise UserError(f"{run_dir}: not a run directory (no tables/ folder)")
    with run_lock(run_dir):  # never while a run writes there
        typer.echo(render_report(run_dir))
