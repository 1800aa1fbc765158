"""CLI verb ``cluster``: FlowSOM clustering of one transformed FCS file or of a whole study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from immunomon.errors import UserError

from .app import app, fcs_app  # noqa: F401


def _select_channels(path: Path, names: list[str], labels: list[str], wanted: list[str]) -> list[int]:
    """Column index of every requested channel, matched by ``$PnN`` then ``$PnS``."""
    out, problems = [], []
    for w in wanted:
        if w in names:
            out.append(names.index(w))
        elif w in labels:
            out.append(labels.index(w))
        else:
            problems.append(f"{path}: no channel {w!r} ($PnN or $PnS); channels: "
                            + ", ".join(f"{n} ({s})" if s else n for n, s in zip(names, labels)))
    if problems:
        raise UserError(problems)
    return out


def cluster_file(path: Path, channels: list[str] | None, k: int, seed: int, grid: tuple[int, int],
                 labels_out: Path) -> np.ndarray:
    """Cluster the events of one already-transformed FCS file; write one id per event."""
    from immunomon.clustering import FlowSOM
    from immunomon.io.fcs import read_fcs
    from immunomon.pipeline.prepare import is_fluorescence

    fcs = read_fcs(path)
    names, labels = list(fcs.names), [s.strip() for s in fcs.labels]
    cols = (_select_channels(path, names, labels, channels) if channels
            else [j for j, n in enumerate(names) if is_fluorescence(n)])
    if fcs.events.shape[0] < grid[0] * grid[1]:
        raise UserError(f"{path}: {fcs.events.shape[0]} events, fewer than the {grid[0]}x{grid[1]} SOM nodes")
    X = fcs.events[:, cols]
    ids = FlowSOM(grid=grid, n_metaclusters=k, random_state=seed).fit_predict(X)
    labels_out.parent.mkdir(parents=True, exist_ok=True)
    with open(labels_out, "w", newline="\n") as fh:
        fh.write("metacluster\n")
        np.savetxt(fh, ids, fmt="%d")
    return ids


def _parse_grid(text: str) -> tuple[int, int]:
    try:
        x, y = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise UserError(f"--grid {text!r}: expected XxY, e.g. 10x10") from err
    return x, y


@app.command()
def cluster(
    target: Path = typer.Argument(..., help="A transformed FCS file, or a study folder.", exists=True),
    channels: str = typer.Option(None, "--channels", help="FILE mode: comma-separated channels ($PnN or "
                                 "$PnS); default every fluorescence channel."),
    metaclusters: int = typer.Option(20, "--metaclusters", "-k", help="FILE mode: number of metaclusters."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: 0 for a file, the study's seed "
                              "for a study)."),
    grid: str = typer.Option("10x10", "--grid", help="FILE mode: SOM grid XxY."),
    labels: Path = typer.Option(None, "--labels", help="FILE mode: output CSV, a header line then "
                                "one metacluster id (1..k) per event in file order."),
    out: Path = typer.Option(None, "--out", help="STUDY mode: output folder (tables/ inside)."),
    workers: int = typer.Option(1, "--workers", help="STUDY mode: parallel sample workers."),
    train_cells: int = typer.Option(500_000, "--train-cells", help="STUDY mode: events drawn for SOM "
                                    "training, split evenly over the samples."),
    embed_cells: int = typer.Option(20_000, "--embed-cells", help="STUDY mode: events drawn for the "
                                    "UMAP map, split evenly over the samples."),
    markers: Path = typer.Option(None, "--marker-table", help="STUDY mode: marker table YAML naming "
                                 "the metaclusters (default: built-in)."),
) -> None:
    """Cluster cells with a self-organising map and metaclustering (FlowSOM algorithm).

    FILE mode: ``immunomon cluster FILE --channels A,B,C --metaclusters K --seed S --labels OUT.csv``.
    STUDY mode: ``immunomon cluster STUDY_DIR --out DIR`` writes the clusters, cluster_counts,
    cluster_markers and embedding tables.
    """
    if target.is_dir():
        if out is None:
            raise UserError(f"{target}: a study folder needs --out DIR")
        from immunomon.pipeline.unsupervised import cluster_study

        tables = cluster_study(target, out, workers=workers, marker_table=markers, seed=seed,
                               train_cells=train_cells, embed_cells=embed_cells)
        summary = tables["clusters"][["cluster", "label", "confidence", "n_cells"]]
        typer.echo(summary.to_string(index=False))
        typer.echo(f"tables written to {Path(out) / 'tables'}")
        return
    if labels is None:
        raise UserError(f"{target}: a single FCS file needs --labels OUT.csv")
    wanted = [c.strip() for c in channels.split(",") if c.strip()] if channels else None
    ids = cluster_file(target, wanted, metaclusters, 0 if seed is None else seed, _parse_grid(grid), labels)
    typer.echo(f"{len(ids)} events -> {labels} ({len(np.unique(ids))} metaclusters populated)")
