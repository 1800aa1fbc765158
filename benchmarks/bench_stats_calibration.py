"""Calibration of the trial statistics on table-level simulated trials (no events).

    python benchmarks/bench_stats_calibration.py                 # 400 null + 60 effect trials
    python benchmarks/bench_stats_calibration.py --null 20 --effect-trials 4   # smoke run
    python benchmarks/bench_stats_calibration.py --effect-trials 0 --save null.parquet

Null trials (``simulate_tables(effect="none")``: 46 patients, 7 visits, patient random
effects, dropouts, NB cluster counts) are analysed pooled (``disease = all``) with the MMRM,
paired t test, Wilcoxon, the edgeR-like NB GLM (QL F test and LRT), the GEE binomial and
limma DS; every parameter at once, as a run does (the per-parameter calibration of the
supervised tests under harder scenarios is ``benchmarks/calibration.py``). Reported:

* KS test of uniformity of the p values. Criterion ("independent"): per trial one visit
  (rotating D8, D15, ... with the trial number) and only the mutually independent
  parameters of the simulator (the 19 drawn states; complements, counts and ratios are
  functions of them) or every tested cluster — p values of different trials are independent,
  so the KS p value is valid. "all" pools every p value (dependent within a trial; shown
  for information).
* FDR of BH at 0.05 under the complete null: every rejection is false, so FDR = P(R > 0)
  per family (method × visit), the family-wise false discovery rate. Mean over
  trials × visits with a 95 % upper bound from a trial-level bootstrap (2,000 resamples).
  400 null trials by default: a family of ~19 nearly independent, exactly calibrated tests
  has P(R > 0) = 5 %, and with 200 trials the bound is about the estimate + 1.5 points, so
  such a test would exceed 7 % in about a third of the seed windows (seen here: NB QL
  6.3 % on seeds 1000-1199, 3.8 % on 1200-1399; LMM 4.8 % and 5.8 %); with 400 it is
  about + 0.9 points.
* Effect trials (planted effects scaled by 0.25, 0.5, 1): power = fraction of trials with
  q < 0.05 per planted parameter at D8, and FDR = E[V/R] over families (V = rejections of
  parameters the simulator does not change; for clusters, of clusters without a planted
  effect — their proportions do shrink by a few % as the Treg clusters grow, a true
  compositional change that a test on proportions may detect, counted here as false).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from multiprocessing import Pool  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from immunomon.simulate.tables import FRACTIONS, MEDIANS, VISITS, simulate_tables  # noqa: E402
from immunomon.stats import StatsOptions, analyze  # noqa: E402

OPTIONS = StatsOptions(per_disease=False, supervised_methods=("mmrm", "paired_t", "wilcoxon"),
                       da_methods=("edger_ql", "edger_lrt", "gee_binomial"))
INDEPENDENT = {v[0] for v in FRACTIONS.values()} | {v[0] for v in MEDIANS.values()}
ALPHA = 0.05


def one_trial(args) -> pd.DataFrame:
    """p and q of every pooled test of one simulated trial (long table)."""
    seed, effect, size = args
    t = simulate_tables(seed=seed, effect=effect, effect_size=size)
    inputs = {k: t[k] for k in ("samples", "parameters", "cluster_counts", "cluster_markers")}
    res = analyze(inputs, baseline="D1", options=OPTIONS)
    sup = res["stats_supervised"].rename(columns={"parameter": "feature"})
    da = res["stats_da"].assign(feature=lambda d: "cluster " + d["cluster"].astype(str))
    ds = res["stats_ds"].assign(feature=lambda d: d["label"] + " / " + d["marker"],
                                method="limma_ds")
    cols = ["feature", "visit", "method", "p", "q", "status"]
    out = pd.concat([sup[cols], da[cols], ds[cols]], ignore_index=True)
    out = out[out["status"] == "ok"].drop(columns="status")
    truth = t["effects"].set_index(["parameter", "visit"])["kind"]
    ce = t["cluster_effects"].assign(feature=lambda d: "cluster " + d["cluster"].astype(str))
    ce_null = ce.set_index(["feature", "visit"])["kind"] != "planted"
    key = list(zip(out["feature"], out["visit"]))
    null = [truth.get(k, "none") == "none" if not k[0].startswith("cluster ") else
            bool(ce_null.get(k, True)) for k in key]
    out["null"] = np.array(null) if size else True
    if size:  # cluster markers: Treg clusters' CD25 and Ki67 are planted
        planted = out["feature"].str.match(r"^Treg .* / (CD25|Ki67)$") & (out["method"] == "limma_ds")
        out.loc[planted & (out["visit"] != "D1"), "null"] = False
    return out.assign(seed=seed, effect_size=size)


def run(tasks, workers):
    if workers > 1:
        with Pool(workers) as pool:
            return pool.map(one_trial, tasks, chunksize=1)
    return [one_trial(t) for t in tasks]


def upper_bound(per_trial: np.ndarray, seed: int = 0, reps: int = 2000) -> float:
    """95 % upper bound of the mean of per-trial rates (bootstrap over trials)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_trial), (reps, len(per_trial)))
    return float(np.quantile(per_trial[idx].mean(axis=1), 0.95))


def null_table(res: list[pd.DataFrame]) -> pd.DataFrame:
    visits = [v for v, _ in VISITS[1:]]
    rows = []
    allp = pd.concat(res, ignore_index=True)
    for method, g in allp.groupby("method", sort=False):
        indep = []
        for i, r in enumerate(res):
            v = visits[i % len(visits)]
            h = r[(r["method"] == method) & (r["visit"] == v)]
            if method in ("paired_t", "wilcoxon", "mmrm"):
                h = h[h["feature"].isin(INDEPENDENT)]
            indep.append(h["p"].to_numpy())
        indep = np.concatenate(indep)
        fam = g.groupby(["seed", "visit"])["q"].apply(lambda q: float((q < ALPHA).any()))
        per_trial = fam.groupby(level=0).mean().to_numpy()
        rows.append(dict(method=method, trials=g["seed"].nunique(), p_values=len(indep),
                         ks_p_independent=stats.kstest(indep, "uniform").pvalue,
                         ks_p_all=stats.kstest(g["p"], "uniform").pvalue,
                         frac_p_below_05=float((g["p"] < 0.05).mean()),
                         fdr_null=float(fam.mean()), fdr_upper95=upper_bound(per_trial)))
    return pd.DataFrame(rows)


def effect_tables(res: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    allp = pd.concat(res, ignore_index=True)
    d8 = allp[(allp["visit"] == "D8") & ~allp["null"]
              & allp["method"].isin(["paired_t", "mmrm", "edger_ql", "limma_ds"])]
    power = (d8.assign(hit=d8["q"] < ALPHA)
             .pivot_table(index=["feature", "method"], columns="effect_size", values="hit", aggfunc="mean"))
    rows = []
    for (method, size), g in allp.groupby(["method", "effect_size"]):
        fdp = []
        for _, fam in g.groupby(["seed", "visit"]):
            rej = fam["q"] < ALPHA
            fdp.append((rej & fam["null"]).sum() / rej.sum() if rej.any() else 0.0)
        fdp = np.array(fdp)
        rows.append(dict(method=method, effect_size=size, families=len(fdp), fdr=fdp.mean(),
                         fdr_upper95=upper_bound(fdp)))
    return power, pd.DataFrame(rows)


def markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A GitHub markdown table (4 significant digits)."""
    if index:
        df = df.reset_index()
    df.columns = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]

    def fmt(x):
        return f"{x:.4g}" if isinstance(x, (float, np.floating)) else str(x)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--null", type=int, default=400, help="number of null trials")
    ap.add_argument("--effect-trials", type=int, default=20, help="trials per effect size")
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--save", help="write every null-trial p and q value to this parquet file")
    a = ap.parse_args()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 200)
    t0 = time.perf_counter()
    null = run([(a.seed + i, "none", 0.0) for i in range(a.null)], a.workers)
    t1 = time.perf_counter()
    print(f"## Null trials: {a.null} ({t1 - t0:.0f} s, {(t1 - t0) / max(a.null, 1):.2f} s/trial "
          f"with {a.workers} workers)\n")
    print(markdown(null_table(null)))
    if a.save:
        pd.concat(null, ignore_index=True).to_parquet(a.save)
    if not a.effect_trials:
        print(f"\nTotal {time.perf_counter() - t0:.0f} s")
        return
    eff = run([(a.seed + 100_000 + i, "planted", s) for s in a.sizes for i in range(a.effect_trials)],
              a.workers)
    t2 = time.perf_counter()
    power, fdr = effect_tables(eff)
    print(f"\n## Effect trials: {a.effect_trials} per effect size ({t2 - t1:.0f} s)\n")
    print("Power (fraction of trials with q < 0.05) at D8, by planted feature and effect size:\n")
    print(markdown(power, index=True))
    print("\nFDR = E[V/R] (V: rejections of unchanged features) with planted effects:\n")
    print(markdown(fdr))
    print(f"\nTotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
