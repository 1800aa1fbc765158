"""Write the MMRM fixtures of this folder (run once; the CSVs are the fixture).

    python tests/data/stats/mmrm/make_fixtures.py

Each CSV: one row per subject × post-baseline visit with an observation: subject,
visit (D8, D15, D29, D85), visit_index (0..3), arm, baseline (log scale), baseline_c
(baseline minus the mean baseline of the fixture's subjects), change (log scale). Changes
are drawn from a multivariate normal with unequal visit variances and unstructured
correlation, so every covariance structure is estimable but only ``us`` is right.
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent
VISITS = ("D8", "D15", "D29", "D85")
SD = np.array([0.35, 0.52, 0.42, 0.45])
CORR = np.array([[1.0, 0.72, 0.60, 0.50],
                 [0.72, 1.0, 0.81, 0.66],
                 [0.60, 0.81, 1.0, 0.86],
                 [0.50, 0.66, 0.86, 1.0]])
MEAN = np.array([0.40, 0.25, 0.20, 0.10])
SLOPE = np.array([-0.30, -0.20, -0.25, -0.35])


def trial(n: int, seed: int, dropout: float = 0.0, arms: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cov = CORR * np.outer(SD, SD)
    rows = []
    for i in range(n):
        arm = ("active" if i % 2 else "placebo") if arms else "all"
        base = rng.normal(-3.0, 0.3)
        shift = MEAN * (arm != "placebo")
        y = shift + SLOPE * (base + 3.0) + rng.multivariate_normal(np.zeros(4), cov)
        last = 4
        if dropout and rng.random() < dropout:
            last = int(rng.integers(1, 4))
        for j in range(last):
            if dropout and j > 0 and rng.random() < 0.08:
                continue  # an intermittent missing visit
            rows.append((f"S{i + 1:02d}", VISITS[j], j, arm, base, y[j]))
    df = pd.DataFrame(rows, columns=["subject", "visit", "visit_index", "arm", "baseline", "change"])
    first = df.drop_duplicates("subject")
    df.insert(5, "baseline_c", df["baseline"] - first["baseline"].mean())
    return df


if __name__ == "__main__":
    for name, frame in (("balanced", trial(24, 11)), ("dropouts", trial(40, 12, dropout=0.35)),
                        ("two_arms", trial(36, 13, dropout=0.25, arms=True))):
        frame.to_csv(HERE / f"{name}.csv", index=False, float_format="%.10g", lineterminator="\n")
