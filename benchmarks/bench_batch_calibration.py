"""Batch effects confounded with visits: false changes without normalisation, calibration with
CytoNorm, the planted Treg effect, and no change of conclusions without batch effects.

    nohup nice python benchmarks/bench_batch_calibration.py --trials 1000 --workers 2 \\
        > /tmp/batch_calibration.txt 2>&1 &
    python benchmarks/bench_batch_calibration.py --trials 20          # smoke run

A marker-level simulation (events of CD4 T cells only, six markers on the arcsinh scale; no
FCS files): each trial has ``--patients`` patients seen at D1 and D8 and two acquisition
batches; half the patients have D1 in batch 1 and D8 in batch 2 (visits confounded with
batches), the others' samples go to a batch at random; each batch holds one bridge control
(an aliquot of the same donor sample, ``--control-events`` events, 200,000 by default: the
control's own sampling error — its quantiles, and its Treg share drawn anew in every aliquot —
becomes, through the splines, an error shared by the whole batch; with 20,000 control events
the null false-positive rate after normalisation was 8.5 % over 1,000 trials, with 100,000
5.9 % over 150). Every event of a batch
gets the batch's effect on the transformed scale, per marker ``z -> scale·z + shift`` with
``shift ~ N(0, --batch-effect)`` and ``log scale ~ N(0, --batch-effect / 3)`` (the model of
``immunomon simulate --batch-effect``).

Biology: Treg (FOXP3+ CD127lo) are 5 % of CD4 T at baseline (patient log-sd 0.3, visit sd
0.07) and double at D8 (the planted effect, fold 2); the Tconv states (Ki67+, HLA-DR+, CD45RA+
fractions: patient logit sd 0.3, visit sd 0.12) and Tconv marker levels (patient sd 0.06,
visit sd 0.03 arcsinh units) do not change. Parameters come from fixed gates (FOXP3 > 2.2 and
CD127 < 3, Ki67/HLA-DR > 2, CD45RA > 2.5): ``Treg % of CD4 T`` (planted) and six null
parameters (``Tconv Ki67+ %``, ``Tconv HLA-DR+ %``, ``CD45RA+ % of Tconv``, ``CD25 median in
Tconv``, ``CD127 median in Tconv``, ``FOXP3 median in Treg``).

Each trial is analysed twice, on the events as acquired and after CytoNorm
(:class:`immunomon.preprocess.normalise.CytoNorm`, 99 quantiles, fitted on the two controls),
with the primary method (``--method``, any supervised method of
:func:`immunomon.stats.analyze`; today ``paired_t``, the MMRM of issue 11 when it lands),
pooled, D8 vs D1. Reported: the false-positive rate of the null parameters (p < 0.05) with a
95 % interval from a trial-level bootstrap, per parameter and pooled; the mean estimated
Treg fold change against the planted 2; and, on trials without batch effect
(``--batch-effect 0``, same seeds), the share of (trial, parameter) conclusions that
normalisation changes.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

from multiprocessing import Pool  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from immunomon.preprocess.normalise import CytoNorm  # noqa: E402
from immunomon.stats import StatsOptions, analyze  # noqa: E402

MARKERS = ("FOXP3", "CD127", "CD25", "Ki67", "HLA-DR", "CD45RA")
#: (mean, sd) per marker of Treg and Tconv cells (arcsinh, cofactor 150).
TREG = {"FOXP3": (3.9, 0.35), "CD127": (2.0, 0.45), "CD25": (4.0, 0.4), "Ki67": (0.3, 0.4),
        "HLA-DR": (0.3, 0.4), "CD45RA": (0.9, 0.5)}
TCONV = {"FOXP3": (0.5, 0.4), "CD127": (3.9, 0.4), "CD25": (1.2, 0.6), "Ki67": (0.3, 0.4),
         "HLA-DR": (0.3, 0.4), "CD45RA": (1.0, 0.5)}
STATE_ON = {"Ki67": (3.7, 0.4), "HLA-DR": (3.5, 0.4), "CD45RA": (4.3, 0.35)}
#: Tconv state fractions at baseline (logit scale moves per patient and visit).
STATES = {"Ki67": 0.03, "HLA-DR": 0.05, "CD45RA": 0.45}
PLANTED = "Treg % of CD4 T"
NULL = ("Tconv Ki67+ %", "Tconv HLA-DR+ %", "CD45RA+ % of Tconv", "CD25 median in Tconv",
        "CD127 median in Tconv", "FOXP3 median in Treg")
TRUE_FOLD = 2.0
ALPHA = 0.05


def _logit(p):
    return np.log(p / (1 - p))


def _expit(x):
    return 1 / (1 + np.exp(-x))


def _person(rng) -> dict:
    return {"treg": np.log(0.05) + rng.normal(0, 0.3),
            "states": {k: _logit(v) + rng.normal(0, 0.3) for k, v in STATES.items()},
            "shift": rng.normal(0, 0.06, len(MARKERS))}


def _sample(person: dict, fold: float, n: int, rng, visit_noise: bool,
            marker_sd: float = 0.03) -> np.ndarray:
    """``(n, 6)`` float32 events (arcsinh) of one sample of a person, Treg first (the order of
    events does not matter here); ``fold`` multiplies Treg %; ``marker_sd``: visit-to-visit sd
    of the marker levels."""
    def noise(sd, size=None):
        return rng.normal(0, sd, size) if visit_noise else (np.zeros(size) if size else 0.0)

    k = rng.binomial(n, min(np.exp(person["treg"] + noise(0.07)) * fold, 0.5))
    x = rng.standard_normal((n, len(MARKERS)), dtype=np.float32)
    for block, table in ((slice(0, k), TREG), (slice(k, n), TCONV)):
        x[block] *= np.array([s for _, s in table.values()], dtype=np.float32)
        x[block] += np.array([m for m, _ in table.values()], dtype=np.float32)
    x += (person["shift"] + noise(marker_sd, 6)).astype(np.float32)
    for name, (m, s) in STATE_ON.items():  # Tconv states
        on = k + np.flatnonzero(rng.random(n - k) < _expit(person["states"][name] + noise(0.12)))
        x[on, MARKERS.index(name)] = m + s * rng.standard_normal(on.size, dtype=np.float32)
    return x


def _parameters(x: np.ndarray) -> dict[str, float]:
    """The fixed-gate parameters of one sample's events."""
    c = {m: x[:, j] for j, m in enumerate(MARKERS)}
    treg = (c["FOXP3"] > 2.2) & (c["CD127"] < 3.0)
    tconv = ~treg

    def med(m, sel):
        return 150 * np.sinh(np.median(c[m][sel]))

    return {PLANTED: 100 * treg.mean(),
            "Tconv Ki67+ %": 100 * (c["Ki67"][tconv] > 2).mean(),
            "Tconv HLA-DR+ %": 100 * (c["HLA-DR"][tconv] > 2).mean(),
            "CD45RA+ % of Tconv": 100 * (c["CD45RA"][tconv] > 2.5).mean(),
            "CD25 median in Tconv": med("CD25", tconv),
            "CD127 median in Tconv": med("CD127", tconv),
            "FOXP3 median in Treg": med("FOXP3", treg)}


def primary(method: str, samples: pd.DataFrame, params: pd.DataFrame,
            options: StatsOptions) -> pd.DataFrame:
    """``stats_supervised`` rows (pooled, D8 vs D1) of ``method`` (``options`` asks
    :func:`~immunomon.stats.analyze` for that table and method alone)."""
    return analyze({"samples": samples, "parameters": params}, baseline="D1",
                   visits=["D1", "D8"], options=options)["stats_supervised"]


def one_trial(args) -> pd.DataFrame:
    """Primary-method results (effect, p) of every parameter of one trial, raw and normalised."""
    seed, size, cfg = args
    rng = np.random.default_rng([seed, 7])
    n_pat = cfg["patients"]
    shift = rng.normal(0, size, (2, len(MARKERS)))
    scale = np.exp(rng.normal(0, size / 3, (2, len(MARKERS))))
    confounded = rng.permutation(n_pat) < n_pat // 2
    rows, events, baseline = [], {}, []
    for i in range(n_pat):
        person = _person(rng)
        baseline.append(np.exp(person["treg"]))
        for v, (visit, fold) in enumerate((("D1", 1.0), ("D8", TRUE_FOLD))):
            batch = v if confounded[i] else int(rng.integers(2))
            sid = f"P{i:02d}_{visit}"
            events[sid] = (batch, _sample(person, fold, cfg["events"], rng, True,
                                          cfg["marker_sd"]))
            rows.append({"sample_id": sid, "patient_id": f"P{i:02d}", "disease": "all",
                         "visit": visit, "day": 1 if visit == "D1" else 8})
    donor = _person(rng)
    controls = {b: _sample(donor, 1.0, cfg["control_events"], rng, False) for b in (0, 1)}
    acquired = {k: (b, x * scale[b] + shift[b]) for k, (b, x) in events.items()}
    controls = {str(b): x * scale[b] + shift[b] for b, x in controls.items()}
    model = CytoNorm(n_quantiles=99).fit(controls, MARKERS)
    samples = pd.DataFrame(rows)
    out = []
    for stage in ("raw", "normalised"):
        params = []
        for sid, (b, x) in acquired.items():
            if stage == "normalised":
                x = model.transform(x, str(b))
            params += [{"sample_id": sid, "parameter": k, "value": val,
                        "measure": "percent" if "%" in k else "median"}
                       for k, val in _parameters(x).items()]
        res = primary(cfg["method"], samples, pd.DataFrame(params), cfg["options"])
        res = res[(res["visit"] == "D8") & (res["disease"] == "all")]
        out.append(res[["parameter", "effect", "effect_scale", "p"]].assign(stage=stage))
    res = pd.concat(out, ignore_index=True).assign(trial=seed, batch_effect=size)
    return res.assign(truth=_true_effect(res, np.array(baseline)))


def _true_effect(res: pd.DataFrame, p: np.ndarray) -> float:
    """The planted Treg change on the scale the method reports it: ``TRUE_FOLD`` as a fold
    change, or as an odds ratio the exponentiated mean of the patients' logit changes
    (doubling 5 % is an odds ratio of about 2.1)."""
    scale = res.loc[res["parameter"] == PLANTED, "effect_scale"].astype(str)
    if scale.empty or "odds" not in scale.iloc[0]:
        return TRUE_FOLD
    return float(np.exp(np.mean(_logit(np.minimum(p * TRUE_FOLD, 0.5)) - _logit(p))))


def _interval(hits: pd.DataFrame, rng, n_boot: int = 2000) -> tuple[float, float]:
    """95 % trial-level bootstrap interval of the mean of ``hits`` (rows = trials)."""
    m = hits.to_numpy(float)
    idx = rng.integers(0, len(m), (n_boot, len(m)))
    means = m[idx].mean(axis=(1, 2)) if m.ndim == 2 else m[idx].mean(axis=1)
    return tuple(np.quantile(means, [0.025, 0.975]))


def report(res: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    eff = res[res["batch_effect"] > 0]
    null = res[(res["batch_effect"] == 0)]
    trials = eff["trial"].nunique()
    print(f"\n## Null parameters, batch effects confounded with visits ({trials} trials, "
          f"{len(NULL)} null parameters each)\n")
    print("| stage | parameter | false-positive rate | 95 % interval (trial bootstrap) |")
    print("|---|---|---:|---|")
    verdict = {}
    for stage in ("raw", "normalised"):
        s = eff[(eff["stage"] == stage) & eff["parameter"].isin(NULL)]
        hits = (s["p"] < ALPHA).astype(float)
        wide = s.assign(hit=hits).pivot_table(index="trial", columns="parameter", values="hit")
        for name in NULL:
            lo, hi = _interval(wide[[name]], rng)
            print(f"| {stage} | {name} | {wide[name].mean():.4f} | [{lo:.4f}, {hi:.4f}] |")
        lo, hi = _interval(wide, rng)
        rate = float(wide.to_numpy().mean())
        verdict[stage] = (rate, lo, hi)
        print(f"| {stage} | **all null** | **{rate:.4f}** | [{lo:.4f}, {hi:.4f}] |")
    rate, lo, hi = verdict["normalised"]
    ok = 0.035 <= rate <= 0.065 or (lo <= 0.05 <= hi and hi <= 0.08)
    print(f"\nWith normalisation: {rate:.2%} (95 % interval {lo:.2%}–{hi:.2%}) -> "
          f"{'PASS' if ok else 'FAIL'} (criterion: within [3.5 %, 6.5 %], or an interval "
          f"containing 5 % with upper bound <= 8 %); without: {verdict['raw'][0]:.2%}.")
    scale = res.loc[res["parameter"] == PLANTED, "effect_scale"].iloc[0]
    print(f"\n## Planted effect (Treg % of CD4 T x{TRUE_FOLD:g} at D8), as the method reports "
          f"it ({scale}; true value per trial from the patients' baseline %)\n")
    print("| batch effect | stage | mean estimate | mean true value | relative error | "
          "power (p < 0.05) |")
    print("|---|---|---:|---:|---:|---:|")
    for size, g in res.groupby("batch_effect"):
        for stage in ("raw", "normalised"):
            t = g[(g["stage"] == stage) & (g["parameter"] == PLANTED)]
            est, true = float(t["effect"].mean()), float(t["truth"].mean())
            print(f"| {size:g} | {stage} | {est:.3f} | {true:.3f} | "
                  f"{float((t['effect'] / t['truth']).mean()) - 1:+.1%} | "
                  f"{(t['p'] < ALPHA).mean():.3f} |")
    t = eff[(eff["stage"] == "normalised") & (eff["parameter"] == PLANTED)]
    err = abs(float((t["effect"] / t["truth"]).mean()) - 1)
    print(f"\nPlanted effect after normalisation within 10 % of its true size: "
          f"{'PASS' if err <= 0.10 else 'FAIL'} ({err:.1%}).")
    if len(null):
        wide = null.assign(sig=null["p"] < ALPHA).pivot_table(
            index=["trial", "parameter"], columns="stage", values="sig", aggfunc="first")
        changed = (wide["raw"] != wide["normalised"])
        print(f"\n## Without batch effects ({null['trial'].nunique()} trials): normalisation "
              f"changed {int(changed.sum())} of {len(changed)} conclusions "
              f"({changed.mean():.2%}; p < 0.05 vs not)")
        for stage in ("raw", "normalised"):
            s = null[(null["stage"] == stage) & null["parameter"].isin(NULL)]
            print(f"- false-positive rate, {stage}: {(s['p'] < ALPHA).mean():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--events", type=int, default=5000, help="events per trial sample")
    ap.add_argument("--control-events", type=int, default=200_000)
    ap.add_argument("--batch-effect", type=float, default=0.3)
    ap.add_argument("--marker-sd", type=float, default=0.03,
                    help="visit-to-visit sd of marker levels (arcsinh units)")
    ap.add_argument("--method", default="paired_t", help="primary method (stats_supervised)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--save", help="write every trial's results to this parquet file")
    a = ap.parse_args()
    cfg = {"patients": a.patients, "events": a.events, "control_events": a.control_events,
           "method": a.method, "marker_sd": a.marker_sd,
           "options": StatsOptions(per_disease=False, supervised_methods=(a.method,),
                                   min_patients=2, tables=("stats_supervised",))}
    jobs = [(a.seed + t, size, cfg) for size in (a.batch_effect, 0.0) for t in range(a.trials)]
    t0 = time.perf_counter()
    if a.workers > 1:
        with Pool(a.workers) as pool:
            parts = pool.map(one_trial, jobs, chunksize=4)
    else:
        parts = [one_trial(j) for j in jobs]
    res = pd.concat(parts, ignore_index=True)
    print(f"{a.trials} trials x 2 (batch effect {a.batch_effect:g} and 0), {a.patients} "
          f"patients, {a.events} events per sample, {a.control_events} per control, marker "
          f"visit sd {a.marker_sd:g}, method {a.method}: {time.perf_counter() - t0:.0f} s")
    if a.save:
        res.to_parquet(a.save)
    report(res)


if __name__ == "__main__":
    main()
