"""The statistics part of the generated methods text: which tests, models and multiplicity
adjustments produced the stats tables (from their ``method`` columns)."""

from __future__ import annotations

import pandas as pd

from .rundata import RunData

#: Plain-language names of statistical methods, matched on a lower-cased substring, in order.
METHOD_NAMES = (
    ("wilcoxon", "Wilcoxon signed-rank tests on per-patient log ratios (effect: Hodges–Lehmann "
                 "fold change)"),
    ("paired_t", "paired t-tests on per-patient log ratios (effect: ratio of geometric means)"),
    ("ttest", "paired t-tests on per-patient log ratios"),
    ("glmm", "negative-binomial generalised linear mixed models with patient as random effect"),
    ("lmm", "linear mixed models on log (logit for percentages) values with a random intercept "
            "per patient (y ~ visit + disease + (1 | patient))"),
    ("mixed", "linear mixed models with a random intercept per patient"),
    ("edger", "negative-binomial GLMs with edgeR dispersions and likelihood-ratio tests "
              "(design ~ patient + visit, offsets log cells per sample)"),
    ("gee", "binomial generalised estimating equations (logit link, exchangeable correlation "
            "within patient, bias-reduced sandwich errors)"),
    ("glm", "negative-binomial GLMs with patient as blocking factor"),
    ("limma", "limma-style moderated t-tests of per-sample cluster medians (design ~ patient + "
              "visit, empirical Bayes variance moderation)"),
    ("spearman", "Spearman rank correlations"),
)
def describe_method(name: str) -> str:
    """Plain-language description of a ``method`` value (the value itself when unknown)."""
    low = str(name).lower()
    for key, text in METHOD_NAMES:
        if key in low:
            return f"{text} (`{name}`)"
    return f"`{name}`"


def _methods(df: pd.DataFrame | None) -> list[str]:
    if df is None or "method" not in df.columns:
        return []
    return [describe_method(m) for m in pd.unique(df["method"].astype(str))]


def join_words(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def statistics_sentences(run: RunData) -> list[str]:
    """Sentences describing the statistics of the run (plain text, escaped by the caller)."""
    st = []
    sup = _methods(run.get("stats_supervised"))
    if sup:
        st.append(f"Change from baseline ({run.baseline}) of every parameter at every visit was "
                  f"tested per disease and pooled over diseases with {join_words(sup)}.")
    da, ds = _methods(run.get("stats_da")), _methods(run.get("stats_ds"))
    if da:
        st.append(f"Differential abundance of metaclusters was tested with {join_words(da)}.")
    if ds:
        st.append(f"Differential state (median marker expression per metacluster) was tested "
                  f"with {join_words(ds)}.")
    if sup or da or ds:
        st.append("P-values were adjusted with the Benjamini–Hochberg procedure within each "
                  "table × method × visit × disease stratum; q < 0.05 is called significant.")
    if run.get("responders") is not None:
        st.append("A patient responds when a parameter's value at a visit exceeds its baseline "
                  "value (ratio > 1).")
    if run.get("clinical_immune") is not None:
        st.append("Associations between clinical scores and immune parameters are Spearman "
                  "rank correlations (ρ) across patients.")
    return st
