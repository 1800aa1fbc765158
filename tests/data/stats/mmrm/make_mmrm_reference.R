# Reference values for immunomon's MMRM (src/immunomon/stats/mmrm.py).
#
#   Rscript tests/data/stats/mmrm/make_mmrm_reference.R     (from the repository root)
#
# 1. nlme::gls REML fits of the fixtures balanced.csv, dropouts.csv, two_arms.csv with an
#    unstructured covariance (corSymm + varIdent), and of dropouts.csv and two_arms.csv with
#    the fallback structures (corARMA(p = T - 1) + varIdent = heterogeneous Toeplitz,
#    corCompSymm + varIdent = heterogeneous compound symmetry, corAR1 = AR(1)):
#    coefficients and model-based SEs -> gls_reference.csv.
# 2. Kenward-Roger (Kenward & Roger 1997) and Satterthwaite degrees of freedom written here
#    from the published formulas, fed the gls REML estimates: for each visit contrast the
#    KR-adjusted SE, KR df and p, the Satterthwaite df (observed information = numerical
#    Hessian of the REML log-likelihood, as lmerTest) and p -> df_reference.csv.
#    Covariance parameters as SAS: the covariances (us; linear), else the variances and
#    correlations (second-derivative term R_ij of KR 1997 included).
# 3. The formulas are checked against pbkrtest (KR) and lmerTest (Satterthwaite) on an lme4
#    random-intercept fit, the model both packages handle (stopifnot below) ->
#    formula_check.csv.
# 4. Per-visit lm ANCOVA (change ~ baseline_c) SEs and residual df of the balanced fixture
#    -> ancova_reference.csv.
suppressPackageStartupMessages({
  library(nlme); library(lme4); library(pbkrtest); library(lmerTest); library(numDeriv)
})
here <- "tests/data/stats/mmrm"
T <- 4L

design <- function(d) {
  X <- NULL
  for (k in 0:(T - 1)) X <- cbind(X, as.numeric(d$visit_index == k))
  for (k in 0:(T - 1)) X <- cbind(X, (d$visit_index == k) * d$baseline_c)
  nm <- c(paste0("v", 1:T), paste0("b", 1:T))
  if (length(unique(d$arm)) > 1) {
    for (k in 0:(T - 1)) X <- cbind(X, (d$visit_index == k) * (d$arm == "active"))
    nm <- c(nm, paste0("a", 1:T))
  }
  colnames(X) <- nm
  X
}

fit_gls <- function(d, structure) {
  X <- design(d)
  dd <- data.frame(change = d$change, X, subject = d$subject, pos = d$visit_index + 1L,
                   vf = factor(d$visit_index))
  f <- as.formula(paste("change ~ 0 +", paste(colnames(X), collapse = " + ")))
  ctl <- glsControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-10)
  vi <- varIdent(form = ~ 1 | vf)
  switch(structure,
    us = gls(f, dd, correlation = corSymm(form = ~ pos | subject), weights = vi,
             method = "REML", control = ctl),
    toeph = gls(f, dd, correlation = corARMA(form = ~ pos | subject, p = T - 1), weights = vi,
                method = "REML", control = ctl),
    csh = gls(f, dd, correlation = corCompSymm(form = ~ 1 | subject), weights = vi,
              method = "REML", control = ctl),
    ar1 = gls(f, dd, correlation = corAR1(form = ~ pos | subject), method = "REML",
              control = ctl))
}

# the fitted T x T covariance, from a subject observed at every visit
fitted_sigma <- function(fit, d) {
  full <- names(which(table(d$subject) == T))[1]
  C <- corMatrix(fit$modelStruct$corStruct)[[full]]
  if (is.null(fit$modelStruct$varStruct)) {
    s <- rep(fit$sigma, T)
  } else {
    m <- coef(fit$modelStruct$varStruct, unconstrained = FALSE, allCoef = TRUE)
    s <- fit$sigma * m[as.character(0:(T - 1))]
  }
  diag(s) %*% C %*% diag(s)
}

# ---- covariance parametrisations (psi) ------------------------------------------------
lags <- abs(outer(1:T, 1:T, "-"))
sigma_of <- function(psi, structure) {
  switch(structure,
    us = { S <- matrix(0, T, T); S[upper.tri(S, diag = TRUE)] <- psi; S + t(S) - diag(diag(S)) },
    toeph = { s <- sqrt(psi[1:T]); C <- matrix(c(1, psi[-(1:T)])[lags + 1], T); C * outer(s, s) },
    csh = { s <- sqrt(psi[1:T]); C <- matrix(psi[T + 1], T, T); diag(C) <- 1; C * outer(s, s) },
    ar1 = psi[1] * psi[2]^lags)
}
psi_of <- function(S, structure) {
  s <- sqrt(diag(S)); C <- S / outer(s, s)
  switch(structure,
    us = S[upper.tri(S, diag = TRUE)],   # column-major upper = row-major lower triangle
    toeph = c(diag(S), sapply(1:(T - 1), function(k) mean(C[lags == k]))),
    csh = c(diag(S), mean(C[lags > 0])),
    ar1 = c(S[1, 1], C[1, 2]))
}
dsigma <- function(psi, structure) {   # list of dSigma/dpsi_r
  J <- jacobian(function(x) as.vector(sigma_of(x, structure)), psi)
  lapply(seq_along(psi), function(r) matrix(J[, r], T))
}
d2sigma <- function(psi, structure) {  # list of lists of d2Sigma/dpsi_r dpsi_s
  q <- length(psi)
  H <- lapply(1:(T * T), function(e) hessian(function(x) as.vector(sigma_of(x, structure))[e], psi))
  lapply(1:q, function(r) lapply(1:q, function(s) matrix(sapply(H, function(h) h[r, s]), T)))
}

# ---- the block-diagonal marginal covariance of the data --------------------------------
big <- function(S, d) {
  V <- matrix(0, nrow(d), nrow(d))
  for (sub in unique(d$subject)) {
    i <- which(d$subject == sub); o <- d$visit_index[i] + 1
    V[i, i] <- S[o, o, drop = FALSE]
  }
  V
}

reml_loglik <- function(psi, structure, d, X) {
  V <- big(sigma_of(psi, structure), d)
  cV <- tryCatch(chol(V), error = function(e) NULL)
  if (is.null(cV)) return(-Inf)
  Vi <- chol2inv(cV); H <- t(X) %*% Vi %*% X
  b <- solve(H, t(X) %*% Vi %*% d$change); r <- d$change - X %*% b
  -0.5 * (2 * sum(log(diag(cV))) + determinant(H)$modulus + sum(r * (Vi %*% r)) +
          (nrow(X) - ncol(X)) * log(2 * pi))
}

# Kenward & Roger (1997): adjusted covariance and df of L'b (general l, here l = 1)
kr_formulas <- function(Sig, structure, d, X) {
  psi <- psi_of(Sig, structure)
  V <- big(Sig, d); Vi <- solve(V)
  Phi <- solve(t(X) %*% Vi %*% X)
  P <- Vi - Vi %*% X %*% Phi %*% t(X) %*% Vi
  dV <- lapply(dsigma(psi, structure), big, d = d)
  q <- length(psi)
  linear <- structure == "us"
  d2 <- if (linear) NULL else d2sigma(psi, structure)
  Pr <- lapply(dV, function(Vr) -t(X) %*% Vi %*% Vr %*% Vi %*% X)
  IE <- matrix(0, q, q)
  for (r in 1:q) for (s in 1:q) IE[r, s] <- 0.5 * sum(diag(P %*% dV[[r]] %*% P %*% dV[[s]]))
  W <- solve(IE)
  U <- matrix(0, ncol(X), ncol(X))
  for (r in 1:q) for (s in 1:q) {
    Qrs <- t(X) %*% Vi %*% dV[[r]] %*% Vi %*% dV[[s]] %*% Vi %*% X
    Rrs <- if (linear) 0 else t(X) %*% Vi %*% big(d2[[r]][[s]], d) %*% Vi %*% X
    U <- U + W[r, s] * (Qrs - Pr[[r]] %*% Phi %*% Pr[[s]] - Rrs / 4)
  }
  list(Phi = Phi, PhiA = Phi + 2 * Phi %*% U %*% Phi, Pr = Pr, W = W, psi = psi)
}

kr_df <- function(k, L) {        # KR 1997 section 4, for an l x p contrast matrix L
  L <- matrix(L, ncol = ncol(k$Phi)); l <- nrow(L)
  Theta <- t(L) %*% solve(L %*% k$Phi %*% t(L)) %*% L
  q <- length(k$Pr); A1 <- A2 <- 0
  for (r in 1:q) for (s in 1:q) {
    Mr <- Theta %*% k$Phi %*% k$Pr[[r]] %*% k$Phi
    Ms <- Theta %*% k$Phi %*% k$Pr[[s]] %*% k$Phi
    A1 <- A1 + k$W[r, s] * sum(diag(Mr)) * sum(diag(Ms))
    A2 <- A2 + k$W[r, s] * sum(diag(Mr %*% Ms))
  }
  B <- (A1 + 6 * A2) / (2 * l)
  g <- ((l + 1) * A1 - (l + 4) * A2) / ((l + 2) * A2)
  c1 <- g / (3 * l + 2 * (1 - g)); c2 <- (l - g) / (3 * l + 2 * (1 - g))
  c3 <- (l + 2 - g) / (3 * l + 2 * (1 - g))
  Estar <- 1 / (1 - A2 / l)
  Vstar <- (2 / l) * (1 + c1 * B) / ((1 - c2 * B)^2 * (1 - c3 * B))
  rho <- Vstar / (2 * Estar^2)
  m <- 4 + (l + 2) / (l * rho - 1)
  lambda <- m / (Estar * (m - 2))
  c(df = m, lambda = lambda)
}

satterthwaite_df <- function(Sig, structure, d, X, L) {
  psi <- psi_of(Sig, structure)
  H <- hessian(function(x) reml_loglik(x, structure, d, X), psi,
               method.args = list(d = 1e-3, eps = 1e-6, r = 6))
  Wobs <- solve(-H)
  varfun <- function(x) {
    Vi <- solve(big(sigma_of(x, structure), d))
    as.numeric(t(L) %*% solve(t(X) %*% Vi %*% X) %*% L)
  }
  g <- grad(varfun, psi)
  2 * varfun(psi)^2 / as.numeric(t(g) %*% Wobs %*% g)
}

contrasts_of <- function(X) {
  nm <- colnames(X); out <- list()
  for (k in 1:T) {
    e <- as.numeric(nm == paste0("v", k)); out[[paste0("change v", k)]] <- e
    if (any(nm == paste0("a", k))) {
      a <- as.numeric(nm == paste0("a", k))
      out[[paste0("arm difference v", k)]] <- a
      out[[paste0("active change v", k)]] <- e + a
    }
  }
  out
}

gls_rows <- list(); df_rows <- list()
runs <- list(c("balanced", "us"), c("dropouts", "us"), c("two_arms", "us"),
             c("dropouts", "toeph"), c("dropouts", "csh"), c("dropouts", "ar1"),
             c("two_arms", "csh"))
for (run in runs) {
  name <- run[1]; structure <- run[2]
  d <- read.csv(file.path(here, paste0(name, ".csv")))
  d <- d[order(d$subject, d$visit_index), ]
  X <- design(d)
  fit <- fit_gls(d, structure)
  Sig <- fitted_sigma(fit, d)
  se <- sqrt(diag(vcov(fit)))
  gls_rows[[length(gls_rows) + 1]] <- data.frame(
    fixture = name, structure = structure, term = names(coef(fit)), estimate = coef(fit),
    se = se, loglik = as.numeric(logLik(fit)))
  k <- kr_formulas(Sig, structure, d, X)
  stopifnot(max(abs(k$Phi - vcov(fit))) < 1e-6 * max(abs(vcov(fit))))
  for (cn in names(contrasts_of(X))) {
    L <- contrasts_of(X)[[cn]]
    est <- sum(L * coef(fit))
    se_kr <- sqrt(as.numeric(t(L) %*% k$PhiA %*% L))
    dk <- kr_df(k, L)
    stopifnot(abs(dk[["lambda"]] - 1) < 1e-8)  # one-dimensional contrast: no F scaling
    ds <- satterthwaite_df(Sig, structure, d, X, L)
    se_m <- sqrt(as.numeric(t(L) %*% k$Phi %*% L))
    df_rows[[length(df_rows) + 1]] <- data.frame(
      fixture = name, structure = structure, contrast = cn, estimate = est, se_model = se_m,
      se_kr = se_kr, df_kr = dk[["df"]], p_kr = 2 * pt(-abs(est / se_kr), dk[["df"]]),
      df_satterthwaite = ds, p_satterthwaite = 2 * pt(-abs(est / se_m), ds))
  }
  sig_out <- data.frame(fixture = name, structure = structure, row = rep(1:T, T),
                        col = rep(1:T, each = T), sigma = as.vector(Sig))
  write.csv(sig_out, file.path(here, sprintf("sigma_%s_%s.csv", name, structure)),
            row.names = FALSE)
}
write.csv(do.call(rbind, gls_rows), file.path(here, "gls_reference.csv"), row.names = FALSE)
write.csv(do.call(rbind, df_rows), file.path(here, "df_reference.csv"), row.names = FALSE)

# ---- 3. the formulas against pbkrtest and lmerTest on a random-intercept model -----------
d <- read.csv(file.path(here, "balanced.csv")); d <- d[order(d$subject, d$visit_index), ]
X <- design(d)
dd <- data.frame(change = d$change, X, subject = d$subject)
m <- lmer(as.formula(paste("change ~ 0 +", paste(colnames(X), collapse = " + "),
                           "+ (1 | subject)")), dd, REML = TRUE)
vc <- as.data.frame(VarCorr(m))
tau2 <- vc$vcov[vc$grp == "subject"]; s2 <- vc$vcov[vc$grp == "Residual"]
# V = tau2 J + s2 I per subject: the 'us' machinery with a linear 2-parameter Sigma
ri <- list(sigma = function(psi) matrix(psi[1], T, T) + diag(psi[2], T))
Vi <- solve(big(ri$sigma(c(tau2, s2)), d))
Phi <- solve(t(X) %*% Vi %*% X)
P <- Vi - Vi %*% X %*% Phi %*% t(X) %*% Vi
dV <- list(big(matrix(1, T, T), d), big(diag(1, T), d))
Pr <- lapply(dV, function(Vr) -t(X) %*% Vi %*% Vr %*% Vi %*% X)
IE <- matrix(0, 2, 2)
for (r in 1:2) for (s in 1:2) IE[r, s] <- 0.5 * sum(diag(P %*% dV[[r]] %*% P %*% dV[[s]]))
W <- solve(IE); U <- 0
for (r in 1:2) for (s in 1:2)
  U <- U + W[r, s] * (t(X) %*% Vi %*% dV[[r]] %*% Vi %*% dV[[s]] %*% Vi %*% X -
                      Pr[[r]] %*% Phi %*% Pr[[s]])
k <- list(Phi = Phi, PhiA = Phi + 2 * Phi %*% U %*% Phi, Pr = Pr, W = W)
PhiA_pb <- as.matrix(vcovAdj(m))
check <- list()
for (j in 1:T) {
  L <- as.numeric(colnames(X) == paste0("v", j))
  df_mine <- kr_df(k, L)[["df"]]
  df_pb <- Lb_ddf(matrix(L, 1), vcov(m), vcovAdj(m))
  sat <- contest1D(m, L, ddf = "Satterthwaite")
  rl <- function(x) {
    Vx <- big(ri$sigma(x), d); cV <- chol(Vx); Vxi <- chol2inv(cV); H <- t(X) %*% Vxi %*% X
    b <- solve(H, t(X) %*% Vxi %*% d$change); r <- d$change - X %*% b
    -0.5 * (2 * sum(log(diag(cV))) + determinant(H)$modulus + sum(r * (Vxi %*% r)))
  }
  Wobs <- solve(-hessian(rl, c(tau2, s2)))
  vf <- function(x) as.numeric(t(L) %*% solve(t(X) %*% solve(big(ri$sigma(x), d)) %*% X) %*% L)
  g <- grad(vf, c(tau2, s2))
  sat_mine <- 2 * vf(c(tau2, s2))^2 / as.numeric(t(g) %*% Wobs %*% g)
  check[[j]] <- data.frame(contrast = paste0("v", j),
                           se_kr_formula = sqrt(sum(L * (k$PhiA %*% L))),
                           se_kr_pbkrtest = sqrt(sum(L * (PhiA_pb %*% L))),
                           df_kr_formula = df_mine, df_kr_pbkrtest = df_pb,
                           df_satterthwaite_formula = sat_mine,
                           df_satterthwaite_lmerTest = sat$df)
}
check <- do.call(rbind, check)
stopifnot(all(abs(check$se_kr_formula / check$se_kr_pbkrtest - 1) < 1e-6),
          all(abs(check$df_kr_formula / check$df_kr_pbkrtest - 1) < 1e-6),
          all(abs(check$df_satterthwaite_formula / check$df_satterthwaite_lmerTest - 1) < 1e-4))
write.csv(check, file.path(here, "formula_check.csv"), row.names = FALSE)

# ---- 4. per-visit ANCOVA of the balanced fixture -----------------------------------------
an <- do.call(rbind, lapply(0:(T - 1), function(k) {
  s <- d[d$visit_index == k, ]
  f <- summary(lm(change ~ baseline_c, s))
  data.frame(contrast = paste0("change v", k + 1), estimate = f$coefficients[1, 1],
             se = f$coefficients[1, 2], df = f$df[2])
}))
write.csv(an, file.path(here, "ancova_reference.csv"), row.names = FALSE)
cat("written: gls_reference.csv, df_reference.csv, formula_check.csv, ancova_reference.csv\n")
