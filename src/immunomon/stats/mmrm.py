"""Mixed model for repeated measures (MMRM): REML, unstructured covariance with a fallback
order, Kenward–Roger and Satterthwaite degrees of freedom — on numpy/scipy.

The model, per subject i with observed visits O_i::

    y_i = X_i b + e_i,    e_i ~ N(0, Sigma_g[O_i, O_i])

with no random effects: all within-subject correlation is in ``Sigma_g``, a T × T
covariance over the visits (T = number of visit levels), one per covariance group g
(default: a single group). Missing visits are left out (missing at random; no imputation).

Covariance structures (``structure``), in the default fallback order:

* ``us`` — unstructured: every variance and covariance free (T(T+1)/2 parameters).
* ``toeph`` — heterogeneous Toeplitz: a variance per visit and one correlation per lag
  (2T − 1).
* ``csh`` — heterogeneous compound symmetry: a variance per visit and one correlation (T + 1).
* ``ar1`` — first-order autoregressive: one variance, correlation rho^|j − k| (2).

Lags are visit positions (0, 1, 2, ... in protocol order), not days. A structure is used
when REML converges to an interior point with a non-singular information matrix;
otherwise :func:`fit_mmrm_fallback` tries the next one and says why in ``notes``.

Inference for a contrast ``L'b`` (:meth:`MMRMFit.contrast`):

* ``kr`` — Kenward & Roger (1997): the bias-corrected and inflated covariance
  ``Phi_A = Phi + 2 Phi U Phi`` with ``U = sum_rs W_rs (Q_rs - P_r Phi P_s - R_rs / 4)``,
  W the inverse *expected* REML information, and for one-dimensional L the df
  ``2 (L' Phi L)^2 / sum_rs W_rs g_r g_s``, ``g_r = L' Phi P_r Phi L`` (pbkrtest's
  formula, which for one contrast reduces to this). The covariance parameters used for
  W and the derivatives are SAS's: the covariances themselves for ``us`` (linear, so R = 0),
  the variances and correlations for the other structures (R from their second
  derivatives).
* ``satterthwaite`` — the model-based SE ``sqrt(L' Phi L)`` with df
  ``2 (L' Phi L)^2 / g' W_obs g``, W_obs the inverse *observed* REML information (the
  Hessian, as lmerTest and the R ``mmrm`` package).

Missing visits (``information="observed"``, the default): both add to the SE the part of
the inverse *observed* information that the expected information drops, the fixed
effects' share of the β–θ block, ``Phi B' W_obs B Phi``. Its expectation is zero only
when values are missing completely at random; under MAR dropout (the likelier the higher
the last value) the model-based SE of SAS, nlme and R ``mmrm`` is too small (KR, 20 % / 40 %
dropout: 6.7 % / 7.8 % false positives at alpha 5 %), with the term 4.4 % / 4.1 %. With
complete data and a mean per visit (and arm) the term is exactly zero, so the MMRM of
change from baseline stays the paired t.

Optimisation: BFGS on an unconstrained parametrisation (log-Cholesky for ``us``; log
standard deviations and transformed correlations for the others, Toeplitz correlations
through partial autocorrelations so that every step is positive definite) with the
analytic REML gradient, then Newton steps on the observed information. Agreement with
R ``nlme::gls(correlation = corSymm(), weights = varIdent(), method = "REML")`` and with the
published KR/Satterthwaite formulas: ``tests/test_mmrm.py`` and ``tests/data/stats/mmrm/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, optimize, stats

#: Covariance structures in the pre-specified fallback order.
FALLBACK_ORDER = ("us", "toeph", "csh", "ar1")
#: Plain names of the structures (the ``covariance`` column of ``stats_supervised``).
STRUCTURE_NAMES = {"us": "unstructured", "toeph": "heterogeneous Toeplitz",
                   "csh": "heterogeneous compound symmetry", "ar1": "AR(1)"}
DF_METHODS = ("kr", "satterthwaite")
LOG_2PI = np.log(2 * np.pi)


class MMRMError(ValueError):
    """The model could not be fitted with the requested covariance structure (the message
    says why: not identifiable, not converged, rank-deficient design)."""


# ----------------------------------------------------------------------- structures

class _Structure(ABC):
    """A covariance parametrisation: ``phi`` (unconstrained, for the optimiser) and
    ``psi`` (the SAS-style parameters used for the information and KR)."""

    key = ""

    def __init__(self, T: int):
        self.T = T

    @abstractmethod
    def n_params(self) -> int:
        """q, the number of covariance parameters."""

    @abstractmethod
    def sigma_phi(self, phi: np.ndarray) -> np.ndarray:
        """Sigma (T, T) of an unconstrained ``phi``."""

    @abstractmethod
    def phi_of(self, S: np.ndarray) -> np.ndarray:
        """The phi whose Sigma is closest to the PD matrix ``S`` within the structure."""

    @abstractmethod
    def sigma_psi(self, psi: np.ndarray) -> np.ndarray:
        """Sigma (T, T) of the SAS-style parameters ``psi``."""

    @abstractmethod
    def psi_of(self, S: np.ndarray) -> np.ndarray:
        """psi of a Sigma of the structure."""

    @abstractmethod
    def dsigma_phi(self, phi: np.ndarray) -> np.ndarray:
        """(q, T, T) derivatives of Sigma with respect to phi."""

    @abstractmethod
    def dsigma_psi(self, psi: np.ndarray) -> np.ndarray:
        """(q, T, T) derivatives of Sigma with respect to psi."""

    @abstractmethod
    def dpsi_dphi(self, phi: np.ndarray) -> np.ndarray:
        """(q, q) Jacobian d psi / d phi."""

    def d2sigma_psi(self, psi: np.ndarray) -> np.ndarray | None:
        """(q, q, T, T) second derivatives with respect to psi; None when linear."""
        return None


def _num_jac(fn, x: np.ndarray) -> np.ndarray:
    """Central-difference derivatives of a matrix-valued function: (len(x), *fn(x).shape)."""
    h = 1e-6 * np.maximum(np.abs(x), 1e-2)
    out = []
    for r in range(len(x)):
        e = np.zeros(len(x))
        e[r] = h[r]
        out.append((fn(x + e) - fn(x - e)) / (2 * h[r]))
    return np.array(out)


class _Unstructured(_Structure):
    key = "us"

    def __init__(self, T: int):
        super().__init__(T)
        self.rows, self.cols = np.tril_indices(T)
        self.diag = self.rows == self.cols

    def n_params(self) -> int:
        return len(self.rows)

    def _chol(self, phi):
        L = np.zeros((self.T, self.T))
        L[self.rows, self.cols] = np.where(self.diag, np.exp(phi), phi)
        return L

    def sigma_phi(self, phi):
        L = self._chol(phi)
        return L @ L.T

    def dsigma_phi(self, phi):
        L = self._chol(phi)
        out = np.zeros((len(phi), self.T, self.T))
        for r, (a, b) in enumerate(zip(self.rows, self.cols)):
            scale = L[a, b] if a == b else 1.0
            d = np.outer(np.eye(self.T)[a], L[:, b])  # E_ab L'
            out[r] = scale * (d + d.T)
        return out

    def phi_of(self, S):
        L = np.linalg.cholesky(S)
        return np.where(self.diag, np.log(np.diag(L)[self.rows]), L[self.rows, self.cols])

    def sigma_psi(self, psi):
        S = np.zeros((self.T, self.T))
        S[self.rows, self.cols] = psi
        return S + np.tril(S, -1).T

    def dpsi_dphi(self, phi):
        return self.dsigma_phi(phi)[:, self.rows, self.cols].T

    def psi_of(self, S):
        return S[self.rows, self.cols].copy()

    def dsigma_psi(self, psi):
        out = np.zeros((len(psi), self.T, self.T))
        for r, (a, b) in enumerate(zip(self.rows, self.cols)):
            out[r, a, b] = out[r, b, a] = 1.0
        return out


class _Correlated(_Structure):
    """Heterogeneous variances times a correlation matrix C(rho) linear in rho:
    psi = (v_1..v_T, rho); phi = (log sd_1..log sd_T, transformed rho)."""

    n_rho = 0

    @abstractmethod
    def corr(self, rho: np.ndarray) -> np.ndarray:
        """The correlation matrix C (T, T)."""

    @abstractmethod
    def dcorr(self) -> np.ndarray:
        """(n_rho, T, T) derivatives of C (constant: C is linear in rho)."""

    @abstractmethod
    def rho_of_phi(self, x: np.ndarray) -> np.ndarray:
        """Correlation parameters of their unconstrained transform."""

    @abstractmethod
    def phi_of_rho(self, rho: np.ndarray) -> np.ndarray:
        """The unconstrained transform of correlation parameters."""

    @abstractmethod
    def rho_of_corr(self, C: np.ndarray) -> np.ndarray:
        """The structure's correlation parameters closest to the correlation matrix C."""

    def n_params(self):
        return self.T + self.n_rho

    def sigma_phi(self, phi):
        sd = np.exp(phi[: self.T])
        return self.corr(self.rho_of_phi(phi[self.T:])) * np.outer(sd, sd)

    def dsigma_phi(self, phi):
        T = self.T
        sd = np.exp(phi[:T])
        rho = self.rho_of_phi(phi[T:])
        S = self.corr(rho) * np.outer(sd, sd)
        eye = np.eye(T)
        d_sd = eye[:, :, None] * S[None] + eye[:, None, :] * S[None]  # d/d log sd_j
        jac = _num_jac(lambda x: self.rho_of_phi(x), phi[T:]) if self.n_rho else np.empty((0, 0))
        d_rho = np.einsum("ab,bjk->ajk", jac, self.dcorr() * np.outer(sd, sd)) \
            if self.n_rho else np.empty((0, T, T))
        return np.concatenate([d_sd, d_rho])

    def phi_of(self, S):
        sd = np.sqrt(np.diag(S))
        return np.concatenate([np.log(sd), self.phi_of_rho(self.rho_of_corr(S / np.outer(sd, sd)))])

    def dpsi_dphi(self, phi):
        T = self.T
        J = np.zeros((len(phi), len(phi)))
        J[np.arange(T), np.arange(T)] = 2 * np.exp(2 * phi[:T])
        if self.n_rho:
            J[T:, T:] = _num_jac(self.rho_of_phi, phi[T:]).T
        return J

    def sigma_psi(self, psi):
        sd = np.sqrt(np.maximum(psi[: self.T], 0.0))
        return self.corr(psi[self.T:]) * np.outer(sd, sd)

    def psi_of(self, S):
        sd = np.sqrt(np.diag(S))
        return np.concatenate([np.diag(S), self.rho_of_corr(S / np.outer(sd, sd))])

    def _ds(self, v):
        """(T, T, T): d(s_j s_k)/d v_a with s = sqrt(v)."""
        T = self.T
        s = np.sqrt(v)
        out = np.zeros((T, T, T))
        for a in range(T):
            out[a, a, :] = 0.5 * s / s[a]
            out[a, :, a] = 0.5 * s / s[a]
            out[a, a, a] = 1.0
        return out

    def dsigma_psi(self, psi):
        v, rho = psi[: self.T], psi[self.T:]
        ss = np.outer(np.sqrt(v), np.sqrt(v))
        out = [self._ds(v) * self.corr(rho)[None]]
        if self.n_rho:
            out.append(self.dcorr() * ss[None])
        return np.concatenate(out)

    def d2sigma_psi(self, psi):
        T, q = self.T, len(psi)
        v, rho = psi[:T], psi[T:]
        s = np.sqrt(v)
        C = self.corr(rho)
        out = np.zeros((q, q, T, T))
        for a in range(T):
            for b in range(T):
                if a == b:  # d2 sqrt(v_j v_k) / d v_a^2, j != k with a in {j, k}
                    m = np.zeros((T, T))
                    m[a, :] = -0.25 * s / v[a] ** 1.5
                    m[:, a] = -0.25 * s / v[a] ** 1.5
                    m[a, a] = 0.0
                else:
                    m = np.zeros((T, T))
                    m[a, b] = m[b, a] = 0.25 / (s[a] * s[b])
                out[a, b] = m * C
        if self.n_rho:
            ds = self._ds(v)
            dc = self.dcorr()
            for a in range(T):
                for r in range(self.n_rho):
                    out[a, T + r] = out[T + r, a] = ds[a] * dc[r]
        return out


def _lags(T: int) -> np.ndarray:
    i = np.arange(T)
    return np.abs(i[:, None] - i[None, :])


class _HetToeplitz(_Correlated):
    key = "toeph"

    @property
    def n_rho(self):
        return self.T - 1

    def corr(self, rho):
        return np.concatenate([[1.0], rho])[_lags(self.T)]

    def dcorr(self):
        lags = _lags(self.T)
        return np.array([(lags == k).astype(float) for k in range(1, self.T)])

    def rho_of_phi(self, x):
        return _pacf_to_acf(np.tanh(x))

    def phi_of_rho(self, rho):
        return np.arctanh(np.clip(_acf_to_pacf(rho), -0.999, 0.999))

    def rho_of_corr(self, C):
        return np.array([np.diagonal(C, k).mean() for k in range(1, self.T)])


class _HetCompoundSymmetry(_Correlated):
    key = "csh"

    @property
    def n_rho(self):
        return 1 if self.T > 1 else 0

    def _low(self):
        return -1.0 / (self.T - 1)

    def corr(self, rho):
        r = rho[0] if len(rho) else 0.0
        return np.where(np.eye(self.T, dtype=bool), 1.0, r)

    def dcorr(self):
        return (1.0 - np.eye(self.T))[None]

    def rho_of_phi(self, x):
        lo = self._low()
        return lo + (1 - lo) / (1 + np.exp(-x)) if len(x) else x

    def dpsi_dphi(self, phi):
        T = self.T
        J = np.diag(np.r_[2 * np.exp(2 * phi[:T]), np.zeros(self.n_rho)])
        if self.n_rho:
            u = 1 / (1 + np.exp(-phi[T]))
            J[T, T] = (1 - self._low()) * u * (1 - u)
        return J

    def phi_of_rho(self, rho):
        if not len(rho):
            return rho
        lo = self._low()
        u = np.clip((rho - lo) / (1 - lo), 1e-3, 1 - 1e-3)
        return np.log(u / (1 - u))

    def rho_of_corr(self, C):
        return np.array([C[~np.eye(self.T, dtype=bool)].mean()]) if self.T > 1 else np.empty(0)


class _AR1(_Structure):
    """psi = (variance, rho); phi = (log sd, atanh rho)."""

    key = "ar1"

    def n_params(self):
        return 2 if self.T > 1 else 1

    def _sigma(self, v, rho):
        return v * rho ** _lags(self.T)

    def sigma_phi(self, phi):
        return self._sigma(np.exp(2 * phi[0]), np.tanh(phi[1]) if len(phi) > 1 else 0.0)

    def phi_of(self, S):
        v = np.diag(S).mean()
        if self.T == 1:
            return np.array([0.5 * np.log(v)])
        sd = np.sqrt(np.diag(S))
        r = np.diagonal(S / np.outer(sd, sd), 1).mean()
        return np.array([0.5 * np.log(v), np.arctanh(np.clip(r, -0.95, 0.95))])

    def sigma_psi(self, psi):
        return self._sigma(psi[0], psi[1] if len(psi) > 1 else 0.0)

    def psi_of(self, S):
        if self.T == 1:
            return np.array([S[0, 0]])
        return np.array([S[0, 0], S[0, 1] / S[0, 0]])

    def dsigma_psi(self, psi):
        if self.T == 1:
            return np.ones((1, 1, 1))
        lag = _lags(self.T)
        v, r = psi
        return np.array([r ** lag, v * lag * r ** np.maximum(lag - 1, 0)])

    def d2sigma_psi(self, psi):
        out = np.zeros((len(psi), len(psi), self.T, self.T))
        if self.T > 1:
            lag = _lags(self.T)
            v, r = psi
            out[0, 1] = out[1, 0] = lag * r ** np.maximum(lag - 1, 0)
            out[1, 1] = v * lag * (lag - 1) * r ** np.maximum(lag - 2, 0)
        return out

    def dpsi_dphi(self, phi):
        if self.T == 1:
            return np.array([[2 * np.exp(2 * phi[0])]])
        return np.diag([2 * np.exp(2 * phi[0]), 1 - np.tanh(phi[1]) ** 2])

    def dsigma_phi(self, phi):
        v = np.exp(2 * phi[0])
        if self.T == 1:
            return np.full((1, 1, 1), 2 * v)
        r = np.tanh(phi[1])
        d = self.dsigma_psi(np.array([v, r]))
        return np.array([2 * v * d[0], (1 - r ** 2) * d[1]])


def _pacf_to_acf(pacf: np.ndarray) -> np.ndarray:
    """Autocorrelations at lags 1..k of the AR(k) process with these partial
    autocorrelations (Durbin–Levinson); |pacf| < 1 gives a positive definite Toeplitz
    correlation matrix."""
    k = len(pacf)
    acf = np.zeros(k)
    phi = np.zeros(k)
    for m in range(k):
        a = pacf[m]
        new = phi.copy()
        new[m] = a
        new[:m] = phi[:m] - a * phi[:m][::-1]
        acf[m] = (phi[:m] @ acf[:m][::-1] if m else 0.0) + a * (1 - (phi[:m] @ acf[:m] if m else 0.0))
        phi = new
    return acf


def _acf_to_pacf(acf: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pacf_to_acf` (Durbin–Levinson recursion)."""
    k = len(acf)
    pacf = np.zeros(k)
    phi = np.zeros(k)
    for m in range(k):
        num = acf[m] - (phi[:m] @ acf[:m][::-1] if m else 0.0)
        den = 1 - (phi[:m] @ acf[:m] if m else 0.0)
        a = num / den if den > 1e-12 else 0.0
        a = float(np.clip(a, -0.999, 0.999))
        new = phi.copy()
        new[m] = a
        new[:m] = phi[:m] - a * phi[:m][::-1]
        phi = new
        pacf[m] = a
    return pacf


_STRUCTURES = {"us": _Unstructured, "toeph": _HetToeplitz, "csh": _HetCompoundSymmetry,
               "ar1": _AR1}


# ----------------------------------------------------------------------- data

@dataclass
class _Pattern:
    group: int
    obs: np.ndarray  # visit positions observed
    X: np.ndarray    # (m, o, p)
    y: np.ndarray    # (m, o)


def _patterns(y, X, subject, visit, group) -> list[_Pattern]:
    """Subjects grouped by (covariance group, observed visits); rows sorted by visit."""
    order = np.lexsort((visit, subject))
    y, X, subject, visit, group = y[order], X[order], subject[order], visit[order], group[order]
    starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]])
    ends = np.r_[starts[1:], len(subject)]
    buckets: dict[tuple, list[tuple[int, int]]] = {}
    for s, e in zip(starts, ends):
        if np.unique(visit[s:e]).size != e - s:
            raise MMRMError("a subject has two observations at one visit")
        if np.unique(group[s:e]).size != 1:
            raise MMRMError("a subject is in two covariance groups")
        buckets.setdefault((int(group[s]), tuple(visit[s:e].tolist())), []).append((s, e))
    out = []
    for (g, obs), spans in sorted(buckets.items()):
        idx = np.array([np.arange(s, e) for s, e in spans])
        out.append(_Pattern(g, np.array(obs), X[idx], y[idx]))
    return out


# ----------------------------------------------------------------------- the fit

@dataclass
class Contrast:
    """Inference for one linear combination ``L'b``."""

    estimate: float
    se: float
    df: float
    t: float
    p: float

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """t confidence interval on ``df`` degrees of freedom."""
        if not (np.isfinite(self.se) and np.isfinite(self.df) and self.df > 0):
            return float("nan"), float("nan")
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return self.estimate - half, self.estimate + half


@dataclass
class MMRMFit:
    """A REML fit of :func:`fit_mmrm`.

    Attributes
    ----------
    beta, vcov
        Fixed effects (p,) and their model-based covariance ``Phi = (X' V^-1 X)^-1``.
    vcov_kr
        Kenward–Roger adjusted covariance ``Phi_A`` (p, p).
    vcov_cross
        The fixed effects' extra variance from the β–θ block of the observed information,
        ``Phi B' W_obs B Phi`` (p, p), ``B_r = sum_i r_i' S_i^-1 dS_i/dpsi_r S_i^-1 X_i``.
        Zero when every subject has the same observed visits and the mean model is
        saturated per visit (complete data); under MAR dropout it is what the expected
        information leaves out (Kenward & Molenberghs 1998).
    structure
        Key of the covariance structure used (``us``, ``toeph``, ``csh``, ``ar1``).
    sigma
        Fitted T × T covariance per covariance group.
    n_subjects, n_obs, loglik
        Subjects and observations analysed; REML log-likelihood (R's ``logLik``).
    notes
        Why earlier structures of the fallback order were not used.
    """

    beta: np.ndarray
    vcov: np.ndarray
    vcov_kr: np.ndarray
    structure: str
    sigma: list[np.ndarray]
    n_subjects: int
    n_obs: int
    loglik: float
    psi: np.ndarray
    P: np.ndarray = field(repr=False)
    W_expected: np.ndarray = field(repr=False)
    W_observed: np.ndarray = field(repr=False)
    vcov_cross: np.ndarray = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def covariance(self) -> str:
        """Plain name of the structure used."""
        return STRUCTURE_NAMES[self.structure]

    def df(self, L: np.ndarray, method: str = "kr") -> float:
        """Denominator degrees of freedom of ``L'b`` (one-dimensional L)."""
        u = self.vcov @ L
        g = np.einsum("p,rpq,q->r", u, self.P, u)
        W = self.W_expected if method == "kr" else self.W_observed
        denom = float(g @ W @ g)
        return 2 * float(L @ u) ** 2 / denom if denom > 0 else float("inf")

    def contrast(self, L, method: str = "kr", information: str = "observed") -> Contrast:
        """Estimate, SE, df, t and two-sided p of ``L'b`` with ``kr`` (adjusted SE) or
        ``satterthwaite`` (model-based SE) degrees of freedom.

        ``information="observed"`` (default) adds :attr:`vcov_cross` to the variance: with
        values missing at random the expected information underestimates it (MAR dropout
        of 20 % / 40 %, KR: 6.7 % / 7.8 % false positives at alpha 5 % without this term,
        4.4 % / 4.1 % with it; ``benchmarks/calibration.py``). ``"expected"``
        gives the textbook formulas (SAS PROC MIXED, pbkrtest, lmerTest), which the tests
        compare with R. The df are the same in both."""
        if method not in DF_METHODS:
            raise ValueError(f"df method {method!r} not one of {DF_METHODS}")
        if information not in ("observed", "expected"):
            raise ValueError(f"information {information!r} not 'observed' or 'expected'")
        L = np.asarray(L, float)
        est = float(L @ self.beta)
        V = self.vcov_kr if method == "kr" else self.vcov
        if information == "observed":
            V = V + self.vcov_cross
        var = float(L @ V @ L)
        se = np.sqrt(var) if var > 0 else float("nan")
        df = self.df(L, method)
        t = est / se if se > 0 else float("nan")
        p = float(2 * stats.t.sf(abs(t), df)) if np.isfinite(t) else float("nan")
        return Contrast(est, float(se), float(df), float(t), p)


class _Model:
    """REML criterion, gradient and information of one model/structure."""

    def __init__(self, patterns: list[_Pattern], T: int, n_groups: int, structure: str, p: int):
        self.pats, self.T, self.G, self.p = patterns, T, n_groups, p
        self.st = _STRUCTURES[structure](T)
        self.q = self.st.n_params()
        self.N = int(sum(pt.y.size for pt in patterns))

    def split(self, x):
        return [x[g * self.q:(g + 1) * self.q] for g in range(self.G)]

    # -- REML -------------------------------------------------------------------
    def _pieces(self, sigmas):
        """Per-pattern inverses and the GLS solution, or None if a Sigma is not PD."""
        H = np.zeros((self.p, self.p))
        b = np.zeros(self.p)
        yy = logdet = 0.0
        cache = []
        if not all(np.all(np.isfinite(S)) for S in sigmas):
            return None
        for pt in self.pats:
            S = sigmas[pt.group][np.ix_(pt.obs, pt.obs)]
            try:
                Li = np.linalg.inv(np.linalg.cholesky(S))
            except np.linalg.LinAlgError:
                return None
            Sinv = Li.T @ Li
            SX = np.matmul(Sinv, pt.X)                      # (m, o, p)
            flatX, flatSX = pt.X.reshape(-1, self.p), SX.reshape(-1, self.p)
            H += flatX.T @ flatSX
            b += flatSX.T @ pt.y.ravel()
            yy += float(np.sum((pt.y @ Sinv) * pt.y))
            logdet -= pt.y.shape[0] * 2 * np.log(np.diagonal(Li)).sum()
            cache.append((Sinv, SX))
        try:
            LH = np.linalg.cholesky(H)
        except np.linalg.LinAlgError:
            return None
        LHi = np.linalg.inv(LH)
        Phi = LHi.T @ LHi
        beta = Phi @ b
        crit = logdet + 2 * np.log(np.diagonal(LH)).sum() + yy - b @ beta + (self.N - self.p) * LOG_2PI
        return crit, beta, Phi, cache

    def _per_pattern(self, beta, Phi, cache):
        """Per pattern: (Sinv, SX, e = Sinv r, A = sum_i SX_i Phi SX_i')."""
        for pt, (Sinv, SX) in zip(self.pats, cache):
            e = (pt.y - pt.X @ beta) @ Sinv
            SXP = SX @ Phi
            A = np.tensordot(SXP, SX, axes=([0, 2], [0, 2]))
            yield pt, Sinv, SX, e, A

    def matrix_gradient(self, beta, Phi, cache):
        """d(-2 l_R)/d Sigma_g (T x T per group; entries treated as independent)."""
        G = np.zeros((self.G, self.T, self.T))
        for pt, Sinv, SX, e, A in self._per_pattern(beta, Phi, cache):
            G[pt.group][np.ix_(pt.obs, pt.obs)] += pt.y.shape[0] * Sinv - A - e.T @ e
        return G

    def objective(self, phi):
        sig = [self.st.sigma_phi(x) for x in self.split(phi)]
        got = self._pieces(sig)
        if got is None:
            return np.inf, np.zeros_like(phi)
        crit, beta, Phi, cache = got
        G = self.matrix_gradient(beta, Phi, cache)
        grad = np.concatenate([np.einsum("tab,ab->t", self.st.dsigma_phi(x), G[g])
                               for g, x in enumerate(self.split(phi))])
        return crit, grad

    # -- information in psi -------------------------------------------------------
    def information(self, psi_all, full: bool = False, observed: bool = True):
        """Criterion, score, expected and (``observed``) observed REML information at
        ``psi`` (all groups stacked); with ``full`` also the KR matrices P_r, Q_rs and R_rs."""
        psis = self.split(psi_all)
        sig = [self.st.sigma_psi(x) for x in psis]
        got = self._pieces(sig)
        if got is None:
            raise MMRMError("covariance not positive definite")
        crit, beta, Phi, cache = got
        Q, p = self.q * self.G, self.p
        P = np.zeros((Q, p, p))
        KQ = np.zeros((Q, Q, p, p)) if full else None
        RR = np.zeros((Q, Q, p, p)) if full else None
        Ktr, trQ, trV2, t1, ePe = (np.zeros((Q, Q)) for _ in range(5))
        bvec = np.zeros((Q, p))
        score = np.zeros(Q)
        dS = [self.st.dsigma_psi(x) for x in psis]
        d2S = [self.st.d2sigma_psi(x) if observed or full else None for x in psis]
        for pt, Sinv, SX, e, A in self._per_pattern(beta, Phi, cache):
            g, o, m = pt.group, pt.obs, pt.y.shape[0]
            k = len(o)
            sl = slice(g * self.q, (g + 1) * self.q)
            V = dS[g][:, o][:, :, o]                          # (q, o, o), symmetric
            Vf = V.reshape(len(V), k * k)
            C = np.matmul(Sinv, V)                            # Sinv V_r
            Ct = C.transpose(0, 2, 1).reshape(len(V), k * k)
            Ktr[sl, sl] += m * (C.reshape(len(V), k * k) @ Ct.T)
            trQ[sl, sl] += Vf @ np.matmul(C, A).transpose(0, 2, 1).reshape(len(V), k * k).T
            VSX = np.matmul(V[:, None], SX[None])             # (q, m, o, p): V_r SX_i
            P[sl] -= np.tensordot(VSX, SX, axes=([1, 2], [0, 1]))
            if observed:
                a_ = np.matmul(e, V)                          # (q, m, o): (V_r e_i)'
                af = a_.reshape(len(V), -1)
                t1[sl, sl] += np.matmul(a_, Sinv).reshape(len(V), -1) @ af.T
                bvec[sl] += np.tensordot(a_, SX, axes=([1, 2], [0, 1]))
            G = m * Sinv - A - e.T @ e
            score[sl] += -0.5 * (Vf @ G.ravel())
            if d2S[g] is not None:
                V2 = d2S[g][:, :, o][:, :, :, o]
                V2f = V2.reshape(len(V), len(V), k * k)
                trV2[sl, sl] += V2f @ (m * Sinv - A).ravel()
                ePe[sl, sl] += V2f @ (e.T @ e).ravel()
            if full:
                M = np.einsum("iap,ibq->abpq", SX, SX)
                if d2S[g] is not None:
                    RR[sl, sl] += np.tensordot(V2, M, axes=([2, 3], [0, 1]))
                K = np.matmul(np.matmul(V[:, None], Sinv), V[None])   # V_r Sinv V_s
                KQ[sl, sl] += np.tensordot(K, M, axes=([2, 3], [0, 1]))
        PhiP = np.matmul(Phi, P)
        trPP = np.einsum("rpq,sqp->rs", PhiP, PhiP)
        IE2 = Ktr - 2 * trQ + trPP                             # tr(P V_r P V_s)
        obs = None
        if observed:
            obs = -0.5 * IE2 + 0.5 * trV2 + (t1 - bvec @ Phi @ bvec.T) - 0.5 * ePe
            obs = 0.5 * (obs + obs.T)
        return dict(crit=crit, beta=beta, Phi=Phi, P=P, Q=KQ, R=RR, expected=0.5 * IE2,
                    observed=obs, cross=bvec, score=score, sigma=sig, psi=psi_all)


def _start(pats: list[_Pattern], T: int, G: int, p: int) -> list[np.ndarray]:
    """Moment start per group: covariances of OLS residuals over the pairs observed."""
    X = np.concatenate([pt.X.reshape(-1, p) for pt in pats])
    y = np.concatenate([pt.y.ravel() for pt in pats])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    out = []
    for g in range(G):
        R = np.full((sum(pt.y.shape[0] for pt in pats if pt.group == g), T), np.nan)
        i = 0
        for pt in pats:
            if pt.group != g:
                continue
            m = pt.y.shape[0]
            R[i:i + m][:, pt.obs] = pt.y - pt.X @ beta
            i += m
        ok = np.isfinite(R)
        Z = np.where(ok, R, 0.0)
        cnt = ok.T.astype(float) @ ok
        S = (Z.T @ Z) / np.maximum(cnt, 1)
        var = np.diag(S).copy()
        fill = np.nanmean(var[var > 0]) if np.any(var > 0) else 1.0
        var = np.where(var > 0, var, fill)
        sd = np.sqrt(var)
        C = np.where(cnt >= 3, S / np.outer(sd, sd), 0.0)
        np.fill_diagonal(C, 1.0)
        w, v = np.linalg.eigh(0.5 * (C + C.T))
        C = (v * np.maximum(w, 0.05)) @ v.T
        d = np.sqrt(np.diag(C))
        out.append(C / np.outer(d, d) * np.outer(sd, sd))
    return out


def fit_mmrm(y, X, subject, visit, *, group=None, structure: str = "us",
             n_visits: int | None = None) -> MMRMFit:
    """REML fit of an MMRM with one covariance structure.

    Parameters
    ----------
    y
        (N,) responses (e.g. change from baseline on the log or logit scale).
    X
        (N, p) fixed-effects design of full column rank.
    subject
        (N,) subject labels.
    visit
        (N,) visit positions 0..T-1 (protocol order; lags of Toeplitz/AR(1) count
        positions).
    group
        (N,) covariance group of each row (constant within a subject): a separate
        covariance matrix per group. None = one group.
    structure
        ``us``, ``toeph``, ``csh`` or ``ar1``.
    n_visits
        T (default: the largest visit position + 1).

    Raises
    ------
    MMRMError
        Rank-deficient design, a structure not identifiable from the data, or no
        convergence.
    """
    y = np.asarray(y, float)
    X = np.asarray(X, float)
    subject = np.asarray(subject)
    visit = np.asarray(visit, int)
    T = int(n_visits if n_visits is not None else visit.max() + 1)
    _, group = np.unique(np.zeros(len(y)) if group is None else np.asarray(group),
                         return_inverse=True)
    N, p = X.shape
    if structure not in _STRUCTURES:
        raise ValueError(f"covariance structure {structure!r} not one of {FALLBACK_ORDER}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(X))):
        raise MMRMError("missing values in the response or design")
    if np.linalg.matrix_rank(X) < p:
        raise MMRMError("design not of full rank")
    pats = _patterns(y, X, subject, visit, group)
    G = int(group.max()) + 1
    model = _Model(pats, T, G, structure, p)
    name = STRUCTURE_NAMES[structure]
    if N - p < model.q * G:
        raise MMRMError(f"{name}: not identifiable ({model.q * G} covariance parameters, "
                        f"{N - p} residual df)")
    start = np.concatenate([model.st.phi_of(S) for S in _start(pats, T, G, p)])
    info = _scoring(model, start)
    if info is None:  # the robust path: BFGS on the unconstrained parametrisation
        res = optimize.minimize(model.objective, start, jac=True, method="BFGS",
                                options={"gtol": 1e-6, "maxiter": 300})
        if not np.isfinite(res.fun):
            raise MMRMError(f"{name}: REML did not converge")
        info = _scoring(model, res.x)
        if info is None:
            raise MMRMError(f"{name}: REML did not converge")
    _check(info, name)
    info = model.information(info["psi"], full=True)
    W_e = np.linalg.inv(info["expected"])
    W_o = np.linalg.inv(info["observed"])
    Phi, P, Q, R = info["Phi"], info["P"], info["Q"], info["R"]
    inner = Q - np.matmul(P[:, None], np.matmul(Phi, P)[None]) - (0 if R is None else R / 4)
    U = np.tensordot(W_e, inner, axes=([0, 1], [0, 1]))
    Phi_A = Phi + 2 * Phi @ U @ Phi
    PB = Phi @ info["cross"].T
    cross = PB @ W_o @ PB.T
    n_sub = int(sum(pt.y.shape[0] for pt in pats))
    return MMRMFit(beta=info["beta"], vcov=Phi, vcov_kr=0.5 * (Phi_A + Phi_A.T),
                   structure=structure, sigma=info["sigma"], n_subjects=n_sub, n_obs=N,
                   loglik=-0.5 * info["crit"], psi=info["psi"], P=P, W_expected=W_e,
                   W_observed=W_o, vcov_cross=0.5 * (cross + cross.T))


def _near_boundary(sigmas) -> bool:
    """A variance near zero (or 10^6 times another) or a correlation matrix near
    singular."""
    for S in sigmas:
        d = np.sqrt(np.clip(np.diag(S), 0, None))
        if np.any(d <= 1e-3 * max(d.max(), 1e-300)):
            return True
        if np.linalg.eigvalsh(S / np.outer(d, d))[0] < 1e-5:
            return True
    return False


def _scoring(model: _Model, phi: np.ndarray, max_iter: int = 30) -> dict | None:
    """Fisher scoring on the unconstrained ``phi`` (expected information mapped through
    d psi / d phi, step halving on the REML criterion), then Newton steps in psi on the
    observed information. Returns the information at convergence, or None when no step
    improves the criterion (the caller then tries BFGS); raises :class:`MMRMError` when
    the estimate runs onto the boundary (a variance near zero or a singular correlation
    matrix) or does not converge in ``max_iter`` steps (a flat likelihood)."""
    def psi_of(x):
        return np.concatenate([model.st.psi_of(model.st.sigma_phi(y)) for y in model.split(x)])

    name = STRUCTURE_NAMES[model.st.key]
    try:
        info = model.information(psi_of(phi), observed=False)
    except MMRMError:
        return None
    for it in range(max_iter):
        J = linalg.block_diag(*[model.st.dpsi_dphi(y) for y in model.split(phi)])
        g = J.T @ info["score"]
        try:
            step = np.linalg.solve(J.T @ info["expected"] @ J, g)
        except np.linalg.LinAlgError:
            return None
        if float(step @ g) < 1e-9:
            return _newton(model, model.information(info["psi"]))
        step *= min(1.0, 3.0 / np.max(np.abs(step)))  # at most a factor e^3 per step
        for h in (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125):
            psi = psi_of(phi + h * step)
            got = model._pieces([model.st.sigma_psi(x) for x in model.split(psi)])
            if got is not None and got[0] <= info["crit"] + 1e-12:
                phi, info = phi + h * step, model.information(psi, observed=False)
                break
        else:
            if _near_boundary(info["sigma"]):
                break
            return None
        if it >= 1 and _near_boundary(info["sigma"]):
            break
    if _near_boundary(info["sigma"]):
        raise MMRMError(f"{name}: estimate at the boundary (zero variance or singular "
                        "correlation)")
    raise MMRMError(f"{name}: REML did not converge")


def _newton(model: _Model, info: dict, steps: int = 4) -> dict:
    """Newton steps in psi on the observed information (each kept only when the criterion
    does not increase): the last digits of the optimum."""
    for _ in range(steps):
        try:
            step = np.linalg.solve(info["observed"], info["score"])
            new = model.information(info["psi"] + step)
        except (np.linalg.LinAlgError, MMRMError):
            break
        if new["crit"] > info["crit"] + 1e-12:
            break
        done = abs(float(step @ info["score"])) < 1e-14
        info = new
        if done:
            break
    return info


def _check(info: dict, name: str) -> None:
    """Raise :class:`MMRMError` unless the fit is an interior, identifiable optimum."""
    for S in info["sigma"]:
        d = np.sqrt(np.clip(np.diag(S), 0, None))
        if np.any(d <= 1e-8 * max(d.max(), 1e-300)):
            raise MMRMError(f"{name}: estimate at the boundary (zero variance)")
        w = np.linalg.eigvalsh(S / np.outer(d, d))
        if w[0] < 1e-6:
            raise MMRMError(f"{name}: estimate at the boundary (singular correlation)")
    for key in ("expected", "observed"):
        w = np.linalg.eigvalsh(0.5 * (info[key] + info[key].T))
        if w[0] <= 1e-10 * max(abs(w[-1]), 1e-300):
            raise MMRMError(f"{name}: not identifiable (singular {key} information)")
    step = np.abs(np.linalg.solve(info["observed"], info["score"]))
    psi = np.abs(info["psi"])
    if np.any(step > 1e-4 * np.maximum(psi, 1e-3 * max(psi.max(), 1e-12))):
        raise MMRMError(f"{name}: REML did not converge")


def fit_mmrm_fallback(y, X, subject, visit, *, group=None, order=FALLBACK_ORDER,
                      n_visits: int | None = None) -> MMRMFit:
    """:func:`fit_mmrm` with each structure of ``order`` in turn until one fits; the fit's
    ``notes`` say why the earlier ones were not used. Raises :class:`MMRMError` (every
    reason) when none fits."""
    reasons = []
    for structure in order:
        try:
            fit = fit_mmrm(y, X, subject, visit, group=group, structure=structure,
                           n_visits=n_visits)
        except MMRMError as err:
            reasons.append(str(err))
            if "full rank" in str(err) or "two observations" in str(err):
                break
            continue
        fit.notes = reasons
        return fit
    raise MMRMError("; ".join(reasons))
