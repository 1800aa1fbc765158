"""CITE-seq speed and memory: immunomon against scanpy + muon doing the same steps, and the
whole 10^6-cell study.

    python benchmarks/bench_citeseq.py                       # 10^5 and 10^6 cells
    python benchmarks/bench_citeseq.py --sizes 20000 --study-cells 100000   # a quick check
    python benchmarks/bench_citeseq.py --part steps --peer-python /path/to/venv/bin/python

(scanpy and muon are not dependencies of immunomon: ``--peer-python`` names an environment
that has them, e.g. ``python -m venv /tmp/peer && /tmp/peer/bin/pip install -e . scanpy==1.11.5
muon==0.1.9``.)

1. *Steps* on the ADT of a simulated study (``immunomon simulate --assay citeseq``, 10
   lineage antibodies + HLA-DR + 2 isotypes), N cells pooled: CLR across cells (muon
   ``prot.pp.clr`` / ``immunomon.preprocess.adt.clr``), kNN graph (scanpy ``pp.neighbors``,
   pynndescent + umap weights / immunomon exact kNN + the same weights; both search on every
   core), Leiden (scanpy ``tl.leiden`` igraph flavour / immunomon, same igraph call), UMAP
   (only up to 2·10^5 cells; scanpy ``tl.umap`` / immunomon ``umap_embedding``). immunomon
   runs as the pipeline does: the graph holds at most 2·10^5 cells (``citeseq.graph_cells``)
   and the other cells take the majority cluster of their 15 nearest graph cells (the
   "transfer" column); up to 2·10^5 cells both tools build the whole graph. Each tool runs
   in its own process (after a 5,000-cell warm-up that compiles numba code, not timed); its
   peak process-tree PSS is measured every 0.25 s. One round per size (10^6 cells take
   minutes): ratios are of this run, on this machine.
2. *Study*: ``immunomon run`` on the simulated study of ``--study-cells`` cells (2 workers),
   peak process-tree PSS against ``--limit-gb``.

scanpy 1.11.5 (the last for Python 3.11) calls ``csr_array.getnnz``, which scipy 1.17
removed: the peer's process adds that one method back before running (``_scanpy_shim``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_cluster_study import watch  # noqa: E402 - the process-tree memory sampler

GRAPH_CELLS = 200_000
#: Threads of immunomon's neighbour search, as the pipeline uses with ``--workers`` = the
#: machine's cores (pynndescent, the peer's, uses every core through numba).
CORES = os.cpu_count() or 1
UMAP_MAX = 200_000


def _study(path: Path, cells: int) -> Path:
    """A simulated ADT-only study of about ``cells`` cells (25,000 per sample, .h5)."""
    from immunomon.simulate.citeseq import simulate_citeseq

    per = min(25_000, cells // 2)
    patients = max(1, cells // (2 * per))
    if not (path / "study.yaml").is_file():
        t = time.perf_counter()
        simulate_citeseq(path, patients=patients, visits=("D1", "D8"), cells=per, genes=0,
                         empty=5000, fmt="h5", seed=7, overwrite=True)
        print(f"simulated {path} ({patients * 2} samples × {per:,} cells) in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    return path


def _adt(study: Path, n: int) -> np.ndarray:
    """The first ``n`` cells' ADT counts of the study (dense float32, cells × antibodies)."""
    from immunomon.io.tenx import read_10x

    parts, total = [], 0
    for folder in sorted((study / "data").iterdir()):
        a = read_10x(folder / "outs")
        parts.append(a.X.toarray())
        total += a.n_obs
        if total >= n:
            break
    x = np.vstack(parts)[:n]
    if len(x) < n:
        raise SystemExit(f"the study has {len(x)} cells, fewer than {n}")
    return x


def _scanpy_shim() -> None:
    from scipy import sparse

    for cls in (sparse.csr_array, sparse.csr_matrix):
        if not hasattr(cls, "getnnz"):
            cls.getnnz = lambda self, axis=None: (np.diff(self.indptr) if axis == 1
                                                  else self.nnz)


def _run_peer(x: np.ndarray, umap: bool) -> dict:
    import anndata as ad
    import muon as mu
    import scanpy as sc

    _scanpy_shim()
    t = {}
    a = ad.AnnData(x.copy())
    s = time.perf_counter()
    mu.prot.pp.clr(a)
    t["normalise"] = time.perf_counter() - s
    s = time.perf_counter()
    sc.pp.neighbors(a, n_neighbors=15, use_rep="X", random_state=0)
    t["neighbours"] = time.perf_counter() - s
    s = time.perf_counter()
    sc.tl.leiden(a, resolution=1.0, flavor="igraph", n_iterations=2, directed=False,
                 random_state=0)
    t["leiden"] = time.perf_counter() - s
    t["transfer"] = 0.0
    if umap:
        s = time.perf_counter()
        sc.tl.umap(a, random_state=0)
        t["umap"] = time.perf_counter() - s
    t["clusters"] = int(a.obs["leiden"].nunique())
    return t


def _run_immunomon(x: np.ndarray, umap: bool) -> dict:
    from immunomon.clustering.embedding import subsample_indices, umap_embedding
    from immunomon.clustering.graph import knn, knn_graph, leiden, transfer_labels
    from immunomon.preprocess.adt import clr

    t = {}
    s = time.perf_counter()
    z = clr(x).astype(np.float32)
    t["normalise"] = time.perf_counter() - s
    graph = subsample_indices(len(z), GRAPH_CELLS, 0, key="graph")
    s = time.perf_counter()
    idx, dist = knn(z[graph], 15, n_jobs=CORES)
    g = knn_graph(idx, dist)
    t["neighbours"] = time.perf_counter() - s
    s = time.perf_counter()
    labels = np.empty(len(z), dtype=np.int64)
    labels[graph] = leiden(g, resolution=1.0, seed=0)
    t["leiden"] = time.perf_counter() - s
    s = time.perf_counter()
    rest = np.setdiff1d(np.arange(len(z)), graph)
    labels[rest] = transfer_labels(z[graph], labels[graph], z[rest], n_jobs=CORES)
    t["transfer"] = time.perf_counter() - s
    if umap:
        s = time.perf_counter()
        umap_embedding(z, random_state=0)
        t["umap"] = time.perf_counter() - s
    t["clusters"] = int(labels.max())
    return t


def worker(tool: str, study: Path, n: int, out: Path, umap_max: int = UMAP_MAX) -> None:
    """One tool on ``n`` cells (after a 5,000-cell warm-up); timings written to ``out``."""
    run = _run_peer if tool == "scanpy+muon" else _run_immunomon
    run(_adt(study, 5000), umap=umap_max > 0)
    x = _adt(study, n)
    out.write_text(json.dumps(run(x, umap=n <= umap_max)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--study-cells", type=int, default=1_000_000)
    ap.add_argument("--root", type=Path, default=Path("/tmp/immunomon_bench/citeseq"))
    ap.add_argument("--limit-gb", type=float, default=8.0)
    ap.add_argument("--part", choices=("all", "steps", "study"), default="all",
                    help="run only the step comparison or only the whole study")
    ap.add_argument("--umap-max", type=int, default=UMAP_MAX,
                    help="largest size embedded with UMAP (0: no UMAP)")
    ap.add_argument("--peer-python", default=sys.executable,
                    help="interpreter with scanpy and muon (default: this one)")
    ap.add_argument("--worker", nargs=3, metavar=("TOOL", "N", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    study = _study(args.root / f"study_{max(sizes + [args.study_cells])}",
                   max(sizes + [args.study_cells]))
    if args.worker:
        tool, n, out = args.worker
        worker(tool, study, int(n), Path(out), args.umap_max)
        return
    if args.part != "study":
        steps(args, sizes)
    if args.part != "steps":
        whole_study(args, study)


def steps(args, sizes: list[int]) -> None:
    """Part 1: the step comparison, one process per tool and size."""
    import pandas as pd

    gib = 1024 ** 3
    rows = []
    for n in sizes:
        for tool in ("immunomon", "scanpy+muon"):
            out = args.root / f"steps_{tool}_{n}.json"
            python = args.peer_python if tool == "scanpy+muon" else sys.executable
            r = watch([python, __file__, "--sizes", args.sizes, "--study-cells",
                       str(args.study_cells), "--root", str(args.root), "--umap-max",
                       str(args.umap_max), "--worker", tool, str(n), str(out)])
            if r["rc"] != 0:
                sys.exit(f"{tool} failed on {n} cells (exit {r['rc']})")
            rows.append({"cells": n, "tool": tool, **json.loads(out.read_text()),
                         "peak_pss_gib": r["pss"] / gib})
            print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    steps = [c for c in ("normalise", "neighbours", "leiden", "transfer", "umap") if c in df]
    df["total"] = df[steps].sum(axis=1, min_count=1)
    print("\nseconds per step (one round) and peak memory of each tool's process")
    print(df[["cells", "tool", *steps, "total", "clusters", "peak_pss_gib"]]
          .to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("\nratio immunomon / scanpy+muon (< 1: immunomon faster or smaller)")
    for n, g in df.groupby("cells"):
        a, b = g.set_index("tool").loc["immunomon"], g.set_index("tool").loc["scanpy+muon"]
        parts = [f"{c} {a[c] / b[c]:.2f}" for c in ("neighbours", "leiden", "umap", "total")
                 if c in g and np.isfinite(a[c]) and b[c] > 0]
        print(f"  {n:>9,} cells: " + ", ".join(parts)
              + f", memory {a['peak_pss_gib'] / b['peak_pss_gib']:.2f}")


def whole_study(args, study: Path) -> None:
    """Part 2: ``immunomon run`` on the whole study, peak process-tree memory."""
    import pandas as pd

    gib = 1024 ** 3
    run_dir = args.root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    r = watch([sys.executable, "-m", "immunomon", "run", str(study), "--out", str(run_dir),
               "--workers", "2", "--quiet"])
    if r["rc"] != 0:
        sys.exit(f"immunomon run failed (exit {r['rc']})")
    cells = pd.read_parquet(run_dir / "tables" / "samples.parquet")["events_after_qc"].sum()
    ok = r["pss"] <= args.limit_gb * 1e9
    print(f"\nwhole study: immunomon run on {cells:,} cells after QC "
          f"({len(list((study / 'data').iterdir()))} libraries), 2 workers: wall "
          f"{r['wall']:.0f} s, peak process-tree PSS {r['pss'] / gib:.2f} GiB, RSS "
          f"{r['rss'] / gib:.2f} GiB (limit {args.limit_gb} GB: {'within' if ok else 'EXCEEDED'})")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
