"""Cell quality control of a 10x (CITE-seq) sample, every step counted.

>>> from immunomon.preprocess.cellqc import cell_qc
>>> keep, steps = cell_qc(adt_counts, rna_counts, gene_names, hashtag_calls=None)  # doctest: +SKIP

Steps, in order (each a row of ``qc_steps``: ``step``, ``status`` ``ran``/``skipped``,
``events_in``, ``events_removed``, ``reason``; events are cells here):

``hashtag``
    hashtag doublets and negatives of a pooled library (:mod:`.hashtag`); skipped when the
    sample is not pooled.
``adt_total``
    cells whose log ADT total is more than ``mad`` MADs from the sample median (empty-ish
    droplets, aggregates).
``rna_umis``, ``rna_genes``
    the same rule on log RNA UMI and detected-gene counts (skipped without RNA).
``mito``
    mitochondrial RNA fraction above ``max_mito`` (genes named ``MT-``/``mt-``; skipped
    without RNA or without such genes).
``rna_doublets``
    scrublet-class doublets (:func:`rna_doublet_scores`; skipped without RNA, when switched
    off, or with fewer than 200 cells).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

__all__ = ["cell_qc", "rna_doublet_scores", "QC_COLUMNS"]

QC_COLUMNS = ["step", "status", "events_in", "events_removed", "reason"]


def _mad_outliers(values: np.ndarray, mad: float) -> np.ndarray:
    v = np.log1p(np.asarray(values, dtype=np.float64))
    med = np.median(v)
    spread = 1.4826 * np.median(np.abs(v - med))
    if spread == 0:
        return np.zeros(v.shape, dtype=bool)
    return np.abs(v - med) > mad * spread


def _row_sums(x) -> np.ndarray:
    return np.asarray(x.sum(axis=1)).ravel()


def cell_qc(adt, rna=None, genes=None, hashtag_calls: np.ndarray | None = None, *,
            mad: float = 4.0, max_mito: float = 0.2, rna_doublets: bool = True,
            seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Cells kept (boolean, per row of ``adt``) and the ``qc_steps`` rows.

    Parameters
    ----------
    adt
        ADT counts, cells × proteins.
    rna, genes
        RNA counts (cells × genes, sparse) and the gene names; ``None`` without RNA.
    hashtag_calls
        Per cell ``True`` when it is a singlet of this sample's hashtag, ``False`` for
        doublets/negatives; ``None`` for a sample that is not pooled.
    """
    n = adt.shape[0]
    keep = np.ones(n, dtype=bool)
    rows = []

    def step(name, drop, reason=""):
        if drop is None:
            rows.append((name, "skipped", int(keep.sum()), 0, reason))
            return
        removed = keep & drop
        rows.append((name, "ran", int(keep.sum()), int(removed.sum()), reason))
        keep[removed] = False

    step("hashtag", None if hashtag_calls is None else ~np.asarray(hashtag_calls, bool),
         "not a pooled library" if hashtag_calls is None else "hashtag doublets and negatives")
    step("adt_total", _mad_outliers(_row_sums(adt), mad), f"log ADT total beyond {mad:g} MADs")
    if rna is None or rna.shape[1] == 0:
        for name in ("rna_umis", "rna_genes", "mito", "rna_doublets"):
            step(name, None, "no RNA (Gene Expression) in the library")
        return keep, pd.DataFrame(rows, columns=QC_COLUMNS)
    rna = sparse.csr_matrix(rna)
    umis = _row_sums(rna)
    step("rna_umis", _mad_outliers(umis, mad), f"log RNA UMIs beyond {mad:g} MADs")
    step("rna_genes", _mad_outliers(np.diff(rna.indptr), mad),
         f"log detected genes beyond {mad:g} MADs")
    mito = np.array([str(g).upper().startswith("MT-") for g in genes], dtype=bool)
    if mito.any():
        frac = _row_sums(rna[:, mito]) / np.maximum(umis, 1)
        step("mito", frac > max_mito, f"mitochondrial fraction above {max_mito:g}")
    else:
        step("mito", None, "no mitochondrial (MT-) genes in the library")
    if not rna_doublets:
        step("rna_doublets", None, "switched off (citeseq.qc.rna_doublets: false)")
    elif keep.sum() < 200:
        step("rna_doublets", None, "fewer than 200 cells")
    else:
        idx = np.flatnonzero(keep)
        called = np.zeros(n, dtype=bool)
        called[idx] = rna_doublet_scores(rna[idx], seed=seed)[1]
        step("rna_doublets", called, "scrublet-class simulated-doublet neighbourhoods")
    return keep, pd.DataFrame(rows, columns=QC_COLUMNS)


def rna_doublet_scores(counts, seed: int = 0, n_pcs: int = 30, sim_ratio: float = 2.0,
                       expected_rate: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Scrublet-class doublet scores and calls (Wolock, Lopez & Klein 2019).

    Doublets are simulated by adding the counts of random cell pairs (``sim_ratio`` × n);
    observed and simulated cells are library-size normalised, log-transformed and projected
    on the principal components of the observed cells; a cell's score is the fraction of
    simulated doublets among its k = ⌊√n / 2⌋ nearest neighbours, corrected for the
    simulated-to-observed ratio and the expected doublet rate (scrublet's formula). The
    call threshold is Otsu's split of the simulated doublets' scores (scrublet takes the
    minimum between their two modes). Returns ``(scores, calls)``.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from immunomon.clustering.annotate import otsu_threshold

    x = sparse.csr_matrix(counts, dtype=np.float64)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, n, size=(int(sim_ratio * n), 2))
    sim = x[pairs[:, 0]] + x[pairs[:, 1]]

    def norm(m):
        size = _row_sums(m)
        m = sparse.diags(np.median(_row_sums(x)) / np.maximum(size, 1)) @ m
        return np.log1p(m.toarray())

    obs, simulated = norm(x), norm(sim)
    var = obs.var(axis=0)
    genes = np.argsort(-var)[:min(2000, obs.shape[1])]
    pca = PCA(n_components=min(n_pcs, len(genes) - 1, n - 1), random_state=seed)
    a = pca.fit_transform(obs[:, genes])
    b = pca.transform(simulated[:, genes])
    k = max(int(round(np.sqrt(n) / 2)), 5)
    both = np.vstack([a, b])
    idx = NearestNeighbors(n_neighbors=k + 1).fit(both).kneighbors(both, return_distance=False)
    frac = (idx[:, 1:] >= n).mean(axis=1)
    r = len(b) / n
    score = frac * expected_rate / r / ((1 - expected_rate) - frac * (1 - expected_rate - expected_rate / r))
    score = np.clip(score, 0, 1)
    threshold = otsu_threshold(score[n:])
    return score[:n], score[:n] > threshold
