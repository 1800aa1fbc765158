"""Draw docs/img/simulated_sample.png: one simulated patient at D1 and D8.

Run from the repository root: ``python docs/make_simulated_sample_figure.py``. The patient is
simulated afresh (seed 1, 200,000 events per file), compensated with the file's
``$SPILLOVER`` (numpy solve) and arcsinh-transformed (cofactor 150); cells are selected with
the truth labels. Rows: D1, D8; columns: CD4 vs CD8 on CD3+ lymphocytes, CD25 vs CD127 on
CD4 T cells, CD56 vs CD16 on CD3- lymphocytes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from immunomon.io.fcs import read_fcs  # noqa: E402
from immunomon.simulate import simulate_study  # noqa: E402

OUT = Path(__file__).parent / "img" / "simulated_sample.png"
COFACTOR = 150.0
T_LEAVES = {"Treg naive", "Treg memory", "CD4 Tconv", "CD8 T", "T cells"}
CD4_LEAVES = {"Treg naive", "Treg memory", "CD4 Tconv"}
NON_T_LYMPH = {"NK CD56bright", "NK CD56dim", "B cells", "Lymphocytes"}
PANELS = (  # (x marker, y marker, truth populations, title)
    ("CD8", "CD4", T_LEAVES, "CD3+ lymphocytes"),
    ("CD127", "CD25", CD4_LEAVES, "CD4 T cells"),
    ("CD16", "CD56", NON_T_LYMPH, "CD3- lymphocytes"),
)


def compensated(path: Path) -> pd.DataFrame:
    """Compensated, arcsinh-transformed fluorescence of one file (columns = markers)."""
    f = read_fcs(path, dtype="float64")
    spill = f.spillover
    idx = [f.names.index(c) for c in spill.columns]
    comp = np.linalg.solve(spill.to_numpy().T, f.events[:, idx].T).T  # x @ inv(S)
    labels = [f.labels[i] for i in idx]
    return pd.DataFrame(np.arcsinh(comp / COFACTOR), columns=labels)


def main(patient: str = "P001") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = simulate_study(Path(tmp) / "study", patients=1, visits=("D1", "D8"),
                              events=200_000, seed=1)
        data = {}
        for visit in ("D1", "D8"):
            sid = f"{patient}_{visit}"
            truth = pd.read_parquet(root / "truth" / "events" / f"{sid}.parquet")
            ok = (truth["artefact"] == "none").to_numpy()
            data[visit] = (compensated(root / "fcs" / f"{sid}.fcs")[ok].reset_index(drop=True),
                           truth["population"][ok].astype(str).reset_index(drop=True))

    fig, axes = plt.subplots(2, 3, figsize=(12, 8), constrained_layout=True)
    bins = np.linspace(-1.5, 8, 190)
    for row, visit in enumerate(("D1", "D8")):
        ev, pop = data[visit]
        for col, (xm, ym, leaves, title) in enumerate(PANELS):
            ax = axes[row, col]
            sel = pop.isin(leaves).to_numpy()
            ax.hist2d(ev[xm][sel], ev[ym][sel], bins=[bins, bins], norm=LogNorm(),
                      cmap="turbo", cmin=1, rasterized=True)
            ax.set_xlabel(f"{xm} (arcsinh/150)")
            ax.set_ylabel(f"{ym} (arcsinh/150)")
            ax.set_title(f"{patient} {visit} - {title} (n = {sel.sum():,})", fontsize=10)
            if col == 1:
                cd4 = pop.isin(CD4_LEAVES)
                treg = pop.isin({"Treg naive", "Treg memory"}).sum() / cd4.sum()
                ax.text(0.03, 0.97, f"true Treg = {100 * treg:.1f} % of CD4 T",
                        transform=ax.transAxes, va="top", fontsize=9,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
            if col == 2:
                nk = pop.isin({"NK CD56bright", "NK CD56dim"})
                bright = (pop == "NK CD56bright").sum() / nk.sum()
                ax.text(0.03, 0.97, f"true CD56bright = {100 * bright:.1f} % of NK",
                        transform=ax.transAxes, va="top", fontsize=9,
                        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    fig.suptitle("Simulated blood sample: compensated with the file's $SPILLOVER, "
                 "arcsinh (cofactor 150)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main(*sys.argv[1:])
