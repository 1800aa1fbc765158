"""CLI verbs: ``immunomon fcs info`` and ``immunomon fcs convert``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from immunomon.errors import UserError
from immunomon.io.fcs import FCSFile, read_fcs, read_fcs_metadata

from .app import app, fcs_app  # noqa: F401

_FORMATS = (".csv", ".parquet", ".h5ad")


def fcs_summary(f: FCSFile) -> dict:
    """JSON-ready description of one data set (what ``fcs info --json`` prints)."""
    kw = f.keywords
    spill = None
    if f.spillover is not None:
        spill = {"channels": [str(c) for c in f.spillover.columns],
                 "matrix": f.spillover.to_numpy().tolist()}
    channels = []
    for ch in f.channels.itertuples(index=False):
        channels.append({"name": ch.name, "label": ch.label, "bits": int(ch.bits),
                         "range": None if np.isnan(ch.range) else float(ch.range),
                         "datatype": ch.datatype, "log_decades": float(ch.log_decades),
                         "log_offset": float(ch.log_offset), "gain": float(ch.gain)})
    order = kw.get("$BYTEORD", "")
    return {
        "file": str(f.path), "datasets": f.n_datasets, "dataset": f.dataset,
        "fcs_version": f.version, "events": f.n_events, "parameters": len(channels),
        "datatype": kw.get("$DATATYPE", ""), "byteorder": order,
        "endianness": {"1,2,3,4": "little", "1,2": "little", "4,3,2,1": "big",
                       "2,1": "big"}.get(order.replace(" ", ""), "other"),
        "instrument": kw.get("$CYT", ""), "data_offsets": list(f.data_offsets),
        "channels": channels, "spillover": spill,
    }


@fcs_app.command("info")
def info(file: Path = typer.Argument(..., help="FCS file."),
         dataset: int = typer.Option(1, "--dataset", "-d", help="Data set, counted from 1."),
         as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Show version, data sets, events, channels and spillover of an FCS file."""
    s = fcs_summary(read_fcs_metadata(file, dataset=dataset))
    if as_json:
        typer.echo(json.dumps(s))
        return
    typer.echo(f"{s['file']}: FCS {s['fcs_version']}, data set {s['dataset']} of "
               f"{s['datasets']}")
    typer.echo(f"events {s['events']}, parameters {s['parameters']}, data type "
               f"{s['datatype']}, byte order {s['byteorder']} ({s['endianness']}), "
               f"instrument {s['instrument'] or '-'}")
    table = pd.DataFrame(s["channels"])
    table.index = range(1, len(table) + 1)
    typer.echo(table[["name", "label", "bits", "range", "datatype", "log_decades",
                      "gain"]].to_string())
    if s["spillover"] is None:
        typer.echo("spillover: none")
    else:
        typer.echo(f"spillover: {len(s['spillover']['channels'])} channels: "
                   f"{', '.join(s['spillover']['channels'])}")


@fcs_app.command("convert")
def convert(file: Path = typer.Argument(..., help="FCS file."),
            out: Path = typer.Argument(..., help="Output .csv, .parquet or .h5ad file."),
            dataset: int = typer.Option(1, "--dataset", "-d", help="Data set, counted from 1."),
            scale: bool = typer.Option(False, "--scale", help="Linear values ($PnE, $PnG)."),
            compensate: bool = typer.Option(False, "--compensate",
                                            help="Apply the file's spillover matrix.")) -> None:
    """Write the events of one data set as CSV, Parquet or AnnData (columns = $PnN)."""
    from immunomon.pipeline.rundir import atomic_path

    suffix = out.suffix.lower()
    if suffix not in _FORMATS:
        raise UserError(f"{out}: unknown output format {out.suffix!r}; use one of "
                        f"{', '.join(_FORMATS)}")
    if not out.parent.is_dir():
        raise UserError(f"{out}: cannot write (folder {out.parent} does not exist)")
    f = read_fcs(file, dataset=dataset, scale=scale)
    if compensate:
        _compensate(f)
    with atomic_path(out, parents=False) as tmp:  # a failed write leaves no partial file
        if suffix == ".h5ad":
            f.to_anndata().write_h5ad(tmp)
        else:
            df = pd.DataFrame(f.events, columns=f.names, copy=False)
            if suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.attrs["labels"] = dict(zip(f.names, f.labels))
                df.to_parquet(tmp, index=False)
    typer.echo(f"{out}: {f.events.shape[0]} events x {f.events.shape[1]} channels")


def _compensate(f: FCSFile) -> None:
    """Solve observed = true @ S for the spillover channels, in place."""
    if f.spillover is None:
        raise UserError(f"{f.path}: --compensate: the file has no spillover matrix")
    missing = [c for c in f.spillover.columns if c not in f.names]
    if missing:
        raise UserError(f"{f.path}: --compensate: spillover channels not in the file: "
                        f"{', '.join(map(str, missing))}")
    idx = [f.names.index(c) for c in f.spillover.columns]
    spill = f.spillover.to_numpy(dtype=np.float64)
    x = f.events[:, idx].astype(np.float64)
    try:
        f.events[:, idx] = np.linalg.solve(spill.T, x.T).T
    except np.linalg.LinAlgError:
        raise UserError(f"{f.path}: --compensate: the spillover matrix is singular") from None
