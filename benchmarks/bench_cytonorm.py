"""CytoNorm: immunomon against cytonormpy on the same files — time, peak memory, agreement.

    python -m venv /tmp/cnvenv && /tmp/cnvenv/bin/pip install cytonormpy==1.0.2
    python benchmarks/bench_cytonorm.py --cytonormpy-python /tmp/cnvenv/bin/python

(cytonormpy pins flowio<=1.3.0 and pulls scanpy through pytometry, so it lives in its own
environment; ``--cytonormpy-python`` defaults to this interpreter.)

Data: CytoNorm's example files (``tests/data/real/cytonorm``: 3 batches, a ``ref`` control and an
``other`` file each, 1,000 events × 55 channels, 37 normalised), as they are and resampled
to ``--events`` events per file (drawn with replacement, seeded, written as FCS 3.1 under
``benchmarks/_work/cytonorm``). Both tools do the same job from FCS files to FCS files:
read, arcsinh(x/5), 99 quantiles per batch on the ``ref`` files, goal = their mean, monotone
splines, normalise all six files, write them. immunomon runs ``immunomon.pipeline.normalise.
write_normalised`` (``immunomon normalise``) on a study folder over the files; cytonormpy
runs ``CytoNorm.run_fcs_data_setup`` → ``calculate_quantiles(99)`` → ``calculate_splines``
→ ``normalize_data``. Each run is a fresh process (time after imports; peak RSS of the
process, imports included); tools alternate within each of ``--repeats`` rounds and the
table shows medians and the median of the per-round ratios. Agreement: largest difference
between the two tools' normalised ``other`` files on the arcsinh scale.

``--clustering`` prints instead the between-batch earth mover's distances per channel of
the controls and of the held-out files, before and after CytoNorm without and with
clustering (how many channels the clustered variants leave no worse), over whole
distributions and within cell populations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "tests" / "data" / "real" / "cytonorm"
WORK = HERE / "_work" / "cytonorm"


def _dataset(events: int | None) -> Path:
    """A folder with the six files (resampled to ``events`` per file), metadata and channels."""
    from immunomon.io.fcs import read_fcs, write_fcs

    folder = WORK / (f"n{events}" if events else "original")
    if (folder / "metadata.csv").is_file():
        return folder
    (folder / "fcs").mkdir(parents=True, exist_ok=True)
    meta = pd.read_csv(FIXTURE / "metadata.csv")
    for i, name in enumerate(meta["file_name"]):
        if events is None:
            shutil.copy(FIXTURE / "fcs" / name, folder / "fcs" / name)
            continue
        f = read_fcs(FIXTURE / "fcs" / name)
        idx = np.random.default_rng([events, i]).integers(0, len(f.events), events)
        write_fcs(folder / "fcs" / name, f.events[idx], f.names, f.labels,
                  ranges=list(f.channels["range"]), keywords=f.keywords)
    meta.assign(sample_ID=np.arange(1, len(meta) + 1)).to_csv(folder / "metadata.csv",
                                                              index=False)
    shutil.copy(FIXTURE / "coding_detectors.txt", folder)
    return folder


def _study(data: Path) -> Path:
    """A study folder over ``data`` (the shape of tests/test_batch.py's CytoNorm study)."""
    import yaml

    from immunomon.io.fcs import read_fcs_metadata

    root = data / "study"
    if (root / "samples.csv").is_file():
        return root
    root.mkdir()
    meta = pd.read_csv(data / "metadata.csv")
    detectors = (data / "coding_detectors.txt").read_text().split()
    first = read_fcs_metadata(data / "fcs" / meta["file_name"].iloc[0])
    label = dict(zip(first.names, first.labels))
    config = {"study_id": "CYTONORM", "visits": [{"name": "D1", "day": 1}],
              "panels": {"cytof": {
                  "instrument": "mass", "compensation": "none",
                  "channels": {c: {"marker": label[c] or c, "role": "marker"} for c in detectors},
                  "transform": {"type": "arcsinh", "cofactor": 5}, "qc": {"steps": []},
                  "normalisation": {"method": "cytonorm", "quantiles": 99}}}}
    (root / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    pd.DataFrame({"sample_id": meta["file_name"].str.replace(".fcs", "", regex=False),
                  "file": "../fcs/" + meta["file_name"],
                  "patient_id": meta["file_name"].str.extract(r"(PTLG\d+)")[0], "visit": "D1",
                  "panel": "cytof", "batch": meta["batch"],
                  "control": meta["reference"] == "ref"}).to_csv(root / "samples.csv",
                                                                 index=False)
    return root


def _child(tool: str, data: Path, out: Path) -> dict:
    """One timed run in this (fresh) process."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if tool == "immunomon":  # what the run imports lazily, imported before the clock starts
        import immunomon.io.fcs_write  # noqa: F401
        import immunomon.pipeline.prepare  # noqa: F401
        import immunomon.preprocess.qc  # noqa: F401
        import immunomon.preprocess.transforms  # noqa: F401
        from immunomon.pipeline.checks import load_checked
        from immunomon.pipeline.normalise import write_normalised

        study = load_checked(data / "study")
        t0 = time.perf_counter()
        write_normalised(study, out, seed=0)
    else:
        import cytonormpy as cnp

        meta = pd.read_csv(data / "metadata.csv")
        detectors = (data / "coding_detectors.txt").read_text().split()
        t0 = time.perf_counter()
        cn = cnp.CytoNorm()
        cn.add_transformer(cnp.AsinhTransformer())
        cn.run_fcs_data_setup(metadata=meta, input_directory=data / "fcs",
                              output_directory=out, channels=detectors)
        cn.calculate_quantiles(n_quantiles=99)
        cn.calculate_splines()
        cn.normalize_data()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(python: str, tool: str, data: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    if tool == "cytonormpy":  # its own environment must not see this checkout's packages
        env.pop("PYTHONPATH")
    proc = subprocess.run([python, __file__, "--child", tool, "--data", str(data), "--out",
                           str(out)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _agreement(data: Path, a: Path, b: Path) -> float:
    from immunomon.io.fcs import read_fcs

    meta = pd.read_csv(data / "metadata.csv")
    detectors = (data / "coding_detectors.txt").read_text().split()
    worst = 0.0
    for name in meta.loc[meta["reference"] == "other", "file_name"]:
        x = read_fcs(next(a.rglob(name)))
        y = read_fcs(b / f"Norm_{name}")
        ix = [x.names.index(c) for c in detectors]
        iy = [y.names.index(c) for c in detectors]
        diff = np.arcsinh(x.events[:, ix] / 5.0) - np.arcsinh(y.events[:, iy] / 5.0)
        worst = max(worst, float(np.abs(diff).max()))
    return worst


def clustering_table(settings=((5, 5, 5), (5, 5, 3), (3, 3, 2)),
                     populations=((7, 7, 8, 11), (4, 4, 4, 3), (10, 10, 10, 5), (6, 6, 6, 21))
                     ) -> None:
    """Between-batch EMD per channel (mean over batch pairs, arcsinh scale, every event) of
    the controls and of the held-out ``other`` files: before, after CytoNorm without and with
    clustering (FlowSOM grid × metaclusters, seed 1) — over whole distributions, and within
    cell populations (:func:`immunomon.stats.batch.emd_within_clusters`; populations from
    FlowSOMs of the raw controls independent of the normalisation's: grid × metaclusters ×
    seed in ``populations``, the median over them of each channel's distance)."""
    from itertools import combinations

    from scipy.stats import wasserstein_distance

    from immunomon.clustering import FlowSOM
    from immunomon.io.fcs import read_fcs
    from immunomon.preprocess.normalise import CytoNorm
    from immunomon.stats.batch import emd_within_clusters

    meta = pd.read_csv(FIXTURE / "metadata.csv")
    detectors = (FIXTURE / "coding_detectors.txt").read_text().split()

    def events(name):
        f = read_fcs(FIXTURE / "fcs" / name)
        return np.arcsinh(f.events[:, [f.names.index(c) for c in detectors]] / 5.0)

    sets = {kind: {str(r.batch): events(r.file_name)
                   for r in meta[meta["reference"] == kind].itertuples()}
            for kind in ("ref", "other")}
    pooled = np.concatenate(list(sets["ref"].values()))
    labellers = [FlowSOM(grid=(gx, gy), n_metaclusters=k, random_state=seed).fit(pooled)
                 for gx, gy, k, seed in populations]

    def emd(by_batch):
        return np.mean([[wasserstein_distance(by_batch[a][:, j], by_batch[b][:, j])
                         for j in range(len(detectors))]
                        for a, b in combinations(sorted(by_batch), 2)], axis=0)

    def emd_within(by_batch, raw):
        out = []
        for som in labellers:
            lab = {b: som.predict(x) for b, x in raw.items()}
            per = {b: [{c: (y[lab[b] == c, j], int((lab[b] == c).sum()))
                        for c in np.unique(lab[b])} for j in range(len(detectors))]
                   for b, y in by_batch.items()}
            out.append(np.mean([[emd_within_clusters(per[a][j], per[b][j])
                                 for j in range(len(detectors))]
                                for a, b in combinations(sorted(by_batch), 2)], axis=0))
        return np.median(out, axis=0)

    models = {"no clustering": CytoNorm(99).fit(sets["ref"], detectors)}
    for gx, gy, k in settings:
        som = FlowSOM(grid=(gx, gy), n_metaclusters=k, random_state=1)
        models[f"{gx}x{gy} grid, {k} metaclusters"] = CytoNorm(99, clustering=som).fit(
            sets["ref"], detectors)
    rows = []
    for kind, label in (("ref", "controls (fitted)"), ("other", "held-out other files")):
        raw = sets[kind]
        before, before_w = emd(raw), emd_within(raw, raw)
        after = {name: {b: model.transform(x, b) for b, x in raw.items()}
                 for name, model in models.items()}
        base = emd(after["no clustering"])
        base_w = emd_within(after["no clustering"], raw)
        for name, y in after.items():
            d, w = emd(y), emd_within(y, raw)
            rows.append(f"| {label} | {name} | {before.mean():.4f} | {d.mean():.4f} | "
                        f"{int((d <= base + 1e-12).sum())} of {len(detectors)} | "
                        f"{before_w.mean():.4f} | {w.mean():.4f} | "
                        f"{int((w <= base_w + 1e-12).sum())} of {len(detectors)} |")
    print("\n| files | normalisation | whole: EMD before | whole: EMD after | whole: channels no "
          "worse than without clustering | within populations: EMD before | within: EMD after "
          "| within: channels no worse |\n|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cytonormpy-python", default=sys.executable)
    ap.add_argument("--events", type=int, nargs="*", default=[100_000, 1_000_000],
                    help="resampled sizes per file (besides the original 1,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clustering", action="store_true",
                    help="only the per-channel EMD table with and without clustering")
    ap.add_argument("--child", choices=["immunomon", "cytonormpy"])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.data, a.out)))
        return
    if a.clustering:
        clustering_table()
        return
    pythons = {"immunomon": sys.executable, "cytonormpy": a.cytonormpy_python}
    rows = []
    for events in [None, *a.events]:
        data = _dataset(events)
        _study(data)
        runs = {t: [] for t in pythons}
        for _ in range(a.repeats):
            for tool, python in pythons.items():
                runs[tool].append(_run(python, tool, data, WORK / "out" / tool))
        ratios_t = [c["seconds"] / i["seconds"] for i, c in zip(runs["immunomon"],
                                                                runs["cytonormpy"])]
        agree = _agreement(data, WORK / "out" / "immunomon", WORK / "out" / "cytonormpy")
        med = {t: (float(np.median([r["seconds"] for r in v])),
                   float(np.median([r["peak_mb"] for r in v]))) for t, v in runs.items()}
        rows.append({"events per file": events or 1000, "files": 6,
                     "immunomon s": round(med["immunomon"][0], 3),
                     "cytonormpy s": round(med["cytonormpy"][0], 3),
                     "speed-up (median of rounds)": round(float(np.median(ratios_t)), 1),
                     "immunomon peak MB": round(med["immunomon"][1]),
                     "cytonormpy peak MB": round(med["cytonormpy"][1]),
                     "max |Δ| arcsinh": f"{agree:.1e}"})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print("\n| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
