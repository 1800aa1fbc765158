"""Per-sample tables of the real 4-donor CyTOF study (Ref vs BCR-XL stimulation), the input
immunomon's statistics would get from a run: written once, the CSVs are the fixture.

    python tests/data/stats/bcrxl/make_tables.py [/work/shared/data/real/bcrxl]

Cells are assigned to coarse populations by thresholds on the arcsinh(x / 5) lineage
markers (T: CD3 > 1.8 and CD20 < 2; CD4 T: T and CD4 > 2.5; other T: T otherwise;
B: CD20 > 2.5 and CD3 < 1.8; monocytes: neither, CD33 > 1.2 or CD14 > 1; NK: none of these
and CD7 > 2; the rest other). Written:

* ``samples.csv`` — sample_id, patient_id, visit (Ref, BCRXL), day (0, 1), panel, disease
  (empty: healthy donors), arm (empty).
* ``parameters.csv`` — ``<population> % of Cells`` (percent) and ``<marker> median in
  <population>`` for the signalling markers (value: linear median; value_transformed: the
  median on the arcsinh(5) scale; transform ``arcsinh(5)``).
* ``cluster_counts.csv``, ``cluster_markers.csv`` — the same populations as clusters
  (counts; medians of the signalling markers on the arcsinh(5) scale).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from immunomon.io.fcs import read_fcs

HERE = Path(__file__).parent
STATE = ("pS6", "pPlcg2", "pBtk", "pErk", "pAkt", "pNFkB", "pp38", "pStat1", "pStat5")
POPULATIONS = ("CD4 T", "other T", "B cells", "Monocytes", "NK", "other")


def classify(x: pd.DataFrame) -> np.ndarray:
    t = (x["CD3"] > 1.8) & (x["CD20"] < 2)
    b = (x["CD20"] > 2.5) & (x["CD3"] < 1.8)
    mono = ~t & ~b & ((x["CD33"] > 1.2) | (x["CD14"] > 1.0))
    nk = ~t & ~b & ~mono & (x["CD7"] > 2)
    return np.select([t & (x["CD4"] > 2.5), t, b, mono, nk], POPULATIONS[:5], "other")


def main(source: Path) -> None:
    meta = pd.read_csv(source / "metadata.csv")
    samples, params, counts, markers = [], [], [], []
    for r in meta.itertuples():
        f = read_fcs(source / "fcs" / r.file_name)
        raw = pd.DataFrame(f.events, columns=list(f.channels["label"]))
        x = np.arcsinh(raw / 5)
        pop = classify(x)
        samples.append(dict(sample_id=r.sample_id, patient_id=r.patient_id, visit=r.condition,
                            day=int(r.condition == "BCRXL"), panel="cytof", disease="", arm=""))
        for k, name in enumerate(POPULATIONS, start=1):
            cells = pop == name
            counts.append(dict(sample_id=r.sample_id, cluster=k, label=name, count=int(cells.sum())))
            if name != "other":
                params.append(dict(sample_id=r.sample_id, parameter=f"{name} % of Cells",
                                   population=name, measure="percent",
                                   value=100 * cells.mean(), value_transformed=np.nan,
                                   transform=""))
            for m in STATE:
                if cells.sum() == 0:
                    continue
                markers.append(dict(sample_id=r.sample_id, cluster=k, label=name, marker=m,
                                    median=float(np.median(x.loc[cells, m]))))
                if name in ("CD4 T", "B cells", "Monocytes"):
                    params.append(dict(sample_id=r.sample_id, parameter=f"{m} median in {name}",
                                       population=name, measure="median",
                                       value=float(np.median(raw.loc[cells, m])),
                                       value_transformed=float(np.median(x.loc[cells, m])),
                                       transform="arcsinh(5)"))
    for name, rows in (("samples", samples), ("parameters", params),
                       ("cluster_counts", counts), ("cluster_markers", markers)):
        pd.DataFrame(rows).to_csv(HERE / f"{name}.csv", index=False, float_format="%.8g",
                                  lineterminator="\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/real/bcrxl"))
