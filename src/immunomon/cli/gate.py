"""CLI verb ``gate``: apply Gating-ML or FlowJo gates to one FCS file, or gate a whole study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer

from immunomon.atomic import write_csv
from immunomon.errors import UserError

from .app import app, fcs_app  # noqa: F401


def _events(path: Path) -> tuple[pd.DataFrame, object]:
    from immunomon.io.fcs import read_fcs

    f = read_fcs(path, dtype="float64", scale=True)
    return pd.DataFrame(f.events, columns=list(f.names)), f


@app.command()
def gate(
    path: Path = typer.Argument(..., help="An FCS file, or a study folder (with --out)."),
    gatingml: Path = typer.Option(None, "--gatingml", help="Gating-ML 2.0 file to apply to FILE."),
    membership: Path = typer.Option(None, "--membership", help="CSV: one 0/1 column per gate id, one row per event."),
    wsp: Path = typer.Option(None, "--wsp", help="FlowJo 10 workspace to apply to FILE."),
    sample: str = typer.Option(None, "--sample", help="Workspace sample (name, file name or id)."),
    group: str = typer.Option(None, "--group", help="Workspace sample group to choose the sample from."),
    counts: Path = typer.Option(None, "--counts", help="CSV of gate_path,count (FlowJo) or gate_id,count."),
    out: Path = typer.Option(None, "--out", help="Output folder when PATH is a study folder."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel samples (study mode)."),
) -> None:
    """Gate FILE with Gating-ML (--gatingml) or a FlowJo workspace (--wsp), or a study with --out.

    Events are read with FCS scaling ($PnE/$PnG) in float64 and compensated as the gates
    say (Gating-ML compensation-ref; FlowJo: the sample's matrix for Comp- channels).
    """
    if path.is_dir():
        if out is None:
            raise UserError(f"{path}: a study folder needs --out DIR")
        from immunomon.pipeline.supervised import gate_study

        gate_study(path, out, workers=workers)
        typer.echo(f"gated study {path} -> {out}")
        return
    if (gatingml is None) == (wsp is None):
        raise UserError(f"{path}: give exactly one of --gatingml GATES.xml or --wsp WORKSPACE.wsp")
    if not path.is_file():
        raise UserError(f"{path}: no such FCS file or study folder")
    if gatingml is not None:
        from immunomon.gating.gatingml import read_gatingml

        strategy = read_gatingml(gatingml)
        data, f = _events(path)
        result = strategy.apply(data, spillover=f.spillover)
        table = pd.DataFrame({"gate_id": strategy.population_ids,
                              "count": [int(result.membership(p).sum()) for p in strategy.population_ids]})
        if membership is not None:
            write_csv(result.membership_frame(), membership)
    else:
        from immunomon.gating.flowjo import read_wsp

        if membership is not None:
            raise UserError("--membership is written for --gatingml; use --counts with --wsp")
        ws = read_wsp(wsp)
        if sample is None and len(ws.samples) > 1:
            sample = path.name
        s = ws.sample(sample, group=group)
        data, _ = _events(path)
        table = s.counts(s.gate(data))
    if counts is not None:
        write_csv(table.iloc[:, :2], counts)
    typer.echo(table.to_string(index=False))
