# Reference p values of R's edgeR for tests/test_stats_da.py (run once by hand; R is not a
# dependency of immunomon):
#   apt-get install -y r-bioc-edger
#   Rscript tests/data/stats/make_edger_reference.R   (from the repository root)
# Design ~ patient + visit (patient as block), baseline D1; common then tagwise (no trend)
# Cox-Reid dispersions, glmFit + glmLRT of each visit coefficient.
suppressPackageStartupMessages(library(edgeR))
counts <- as.matrix(read.csv("tests/data/stats/counts.csv", row.names = 1, check.names = FALSE))
design_df <- read.csv("tests/data/stats/design.csv", stringsAsFactors = FALSE)
stopifnot(identical(colnames(counts), design_df$sample_id))
patient <- factor(design_df$patient_id)
visit <- relevel(factor(design_df$visit), ref = "D1")
design <- model.matrix(~ patient + visit)
y <- DGEList(counts = counts, lib.size = colSums(counts))
y <- estimateGLMCommonDisp(y, design)
y <- estimateGLMTagwiseDisp(y, design)
fit <- glmFit(y, design)
out <- NULL
for (v in grep("^visit", colnames(design), value = TRUE)) {
  res <- glmLRT(fit, coef = v)$table
  out <- rbind(out, data.frame(cluster = rownames(res), visit = sub("^visit", "", v),
                               logFC = res$logFC, LR = res$LR, PValue = res$PValue,
                               dispersion = y$tagwise.dispersion))
}
write.csv(out, "tests/data/stats/edger_reference.csv", row.names = FALSE)
cat("common dispersion", y$common.dispersion, "\n")
cat("edgeR", as.character(packageVersion("edgeR")), "\n")

# Quasi-likelihood F tests with the common dispersion and no Poisson bound (what
# immunomon.stats.nbglm.ql_ftest implements): without, then with edgeR's default abundance
# trend of the QL prior (squeezeVar with covariate AveLogCPM; ql_ftest's default).
ql_reference <- function(y, trend, path, label) {
  qfit <- glmQLFit(y, design, dispersion = y$common.dispersion, abundance.trend = trend)
  out <- NULL
  for (v in grep("^visit", colnames(design), value = TRUE)) {
    res <- glmQLFTest(qfit, coef = v, poisson.bound = FALSE)$table
    out <- rbind(out, data.frame(cluster = rownames(res), visit = sub("^visit", "", v),
                                 logFC = res$logFC, F = res$F, PValue = res$PValue))
  }
  write.csv(out, path, row.names = FALSE)
  cat(label, qfit$df.prior, "\n")
}
ql_reference(y, FALSE, "tests/data/stats/edger_ql_reference.csv", "QL prior df")
y$AveLogCPM <- aveLogCPM(y)
ql_reference(y, TRUE, "tests/data/stats/edger_ql_trend_reference.csv", "QL prior df (abundance trend)")
