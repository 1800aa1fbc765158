"""The statistics part of the generated methods text: the analysis plan (primary analysis,
key secondary end points, multiplicity), then the exploratory and sensitivity methods that
produced the stats tables (from their ``method`` and ``role`` columns)."""

from __future__ import annotations

import pandas as pd

from .rundata import RunData

#: Plain-language names of statistical methods, matched on a lower-cased substring, in order.
METHOD_NAMES = (
    ("mmrm", "a mixed model for repeated measures (MMRM) — for the change within an arm, "
             "every visit (baseline included) as a response with a mean per arm and visit "
             "and the change as the contrast visit − baseline; for differences between arms, "
             "the change at each later visit with baseline × visit and arm × visit fixed "
             "effects — with an unstructured covariance over visits (pre-specified fallback: "
             "heterogeneous Toeplitz, heterogeneous compound symmetry, AR(1); the structure "
             "used is given in each row), REML, Kenward–Roger degrees of freedom, standard "
             "errors from the observed information (valid when dropout depends on observed "
             "values) and every available visit (missing at random, no imputation)"),
    ("wilcoxon", "Wilcoxon signed-rank tests of the within-patient changes (effect: "
                 "Hodges–Lehmann estimate)"),
    ("paired_t", "paired t-tests of the within-patient changes (t on n − 1 df)"),
    ("welch_t", "Welch t-tests between arms or groups (Welch–Satterthwaite df)"),
    ("rank_sum", "Wilcoxon rank-sum tests between arms or groups (effect: Hodges–Lehmann "
                 "shift)"),
    ("ttest", "paired t-tests on per-patient log ratios"),
    ("glmm", "negative-binomial generalised linear mixed models with patient as random effect"),
    ("lmm", "linear mixed models with a random intercept per patient"),
    ("mixed", "linear mixed models with a random intercept per patient"),
    ("edger_ql", "negative-binomial GLMs with patient as block and edgeR's quasi-likelihood "
                 "F tests (abundance-trended prior; offsets log cells per sample)"),
    ("edger", "negative-binomial GLMs with edgeR dispersions and likelihood-ratio tests "
              "(patient as block, offsets log cells per sample)"),
    ("gee", "binomial generalised estimating equations weighted by cells (logit link, "
            "exchangeable correlation within patient, sandwich errors, t on patients − "
            "parameters df)"),
    ("glm", "negative-binomial GLMs with patient as blocking factor"),
    ("limma", "limma-style moderated t-tests of per-sample cluster medians (patient as block, "
              "empirical Bayes variance moderation)"),
    ("spearman", "Spearman rank correlations"),
)
SCALES = ("Percentages are analysed on the logit scale (effects are odds ratios), other "
          "positive values on the log scale (fold changes) and intensities on the panel's "
          "transformed scale (differences), the same scale for every method.")


def describe_method(name: str) -> str:
    """Plain-language description of a ``method`` value (the value itself when unknown)."""
    low = str(name).lower()
    for key, text in METHOD_NAMES:
        if key in low:
            return f"{text} (`{name}`)"
    return f"`{name}`"


def _methods(df: pd.DataFrame | None, role: str | None = None) -> list[str]:
    if df is None or "method" not in df.columns:
        return []
    if role is not None and "role" in df.columns:
        df = df[df["role"].astype(str) == role]
    return [describe_method(m) for m in pd.unique(df["method"].astype(str))]


def join_words(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _endpoints(rows: pd.DataFrame) -> str:
    names = rows.get("parameter", rows.get("label"))
    return join_words([f"{n} at {v}" for n, v in zip(names.astype(str), rows["visit"].astype(str))])


def _plan_sentences(run: RunData) -> list[str]:
    plan = (run.provenance.get("parameters") or {}).get("analysis") or {}
    st = []
    frames = [run.get(t) for t in ("stats_supervised", "stats_da", "stats_ds")]
    frames = [f for f in frames if f is not None and "role" in f.columns]
    prim = pd.concat([f[f["role"] == "primary"] for f in frames]) if frames else pd.DataFrame()
    keys = pd.concat([f[f["role"] == "key_secondary"] for f in frames]) if frames else pd.DataFrame()
    alpha = plan.get("alpha", 0.05)
    if len(prim):
        st.append(f"The statistical analysis plan (study.yaml, analysis:) was fixed before the "
                  f"analysis. The primary end point — {_endpoints(prim)} — was analysed with "
                  f"{join_words(_methods(prim))}, two-sided alpha = {alpha:g}"
                  + (", Holm-adjusted over the primary tests." if len(prim) > 1 else "."))
    if len(keys):
        strategy = (plan.get("key_secondary") or {}).get("strategy", "fixed_sequence")
        how = ("in a fixed sequence" if strategy == "fixed_sequence"
               else "with Holm's procedure")
        st.append(f"Key secondary end points ({_endpoints(keys)}) were tested {how}, only "
                  f"when the primary analysis was significant (serial gatekeeping).")
    if plan:
        st.append(f"Strata with fewer than {plan.get('min_patients', 6)} patients are "
                  f"descriptive: estimate and 95 % CI, no test.")
    return st


def statistics_sentences(run: RunData) -> list[str]:
    """Sentences describing the statistics of the run (plain text, escaped by the caller)."""
    st = _plan_sentences(run)
    sup_table = run.get("stats_supervised")
    has_roles = sup_table is not None and "role" in sup_table.columns
    explo = _methods(sup_table, "exploratory" if has_roles else None)
    if explo:
        baseline = f"baseline ({run.baseline})" if run.baseline else "the reference group"
        st.append(f"Every parameter was compared with {baseline} at every visit, pooled and per "
                  f"disease (and arm), with {join_words(explo)}" +
                  (" as exploratory analyses." if has_roles else "."))
        st.append(SCALES)
    sens = _methods(sup_table, "sensitivity") if has_roles else []
    if sens:
        st.append(f"Sensitivity analyses: {join_words(sens)}.")
    da, ds = _methods(run.get("stats_da")), _methods(run.get("stats_ds"))
    if da:
        st.append(f"Differential abundance of metaclusters was tested with {join_words(da)}.")
    if ds:
        st.append(f"Differential state (median marker expression per metacluster) was tested "
                  f"with {join_words(ds)}.")
    if explo or da or ds:
        st.append("Exploratory p-values were adjusted with the Benjamini–Hochberg procedure "
                  "within each table × method × visit × stratum (× arm) family; q < 0.05 is "
                  "called significant. Confirmatory end points take no part in these families.")
    resp = run.get("responders")
    if resp is not None:
        if "threshold" in resp.columns:
            st.append(f"A patient responds when a parameter's value at a visit is at least "
                      f"{resp['threshold'].iloc[0]:g} times its baseline value; the fraction of "
                      f"responders has an exact (Clopper–Pearson) 95 % CI.")
        else:
            st.append("A patient responds when a parameter's value at a visit exceeds its "
                      "baseline value (ratio > 1).")
    sel = run.get("selectivity")
    if sel is not None and "verdict" in sel.columns:
        st.append(f"Selectivity: the targets change when a target is significant after Holm "
                  f"adjustment over the targets; an off-target is unchanged when its 95 % CI "
                  f"lies within the equivalence margins [{sel['margin_low'].iloc[0]:g}, "
                  f"{sel['margin_high'].iloc[0]:g}] and changed when it lies beyond them.")
    if run.get("clinical_immune") is not None:
        st.append("Associations between clinical scores and immune parameters are Spearman "
                  "rank correlations (ρ) across patients.")
    return st
