# edgeR's TMM normalisation factors of counts.csv (200 genes x 6 samples, no header; genes
# 1-20 tripled in samples 4-6). Run from this folder: Rscript tmm_reference.R
suppressMessages(library(edgeR))
y <- as.matrix(read.csv("counts.csv", header = FALSE))
write.csv(data.frame(factor = calcNormFactors(y)), "tmm_factors.csv", row.names = FALSE)
cat("edgeR", format(packageVersion("edgeR")), "\n")
