# Reference values of dsb (Mule, Martins & Tsang 2022) on dsb_kotliarov_87ab, scripted from the
# published definition (the dsb R function DSBNormalizeProtein; the package itself is not
# installable here): step 1 background scaling on the empty droplets, step 2 per-cell
# two-component mclust mixture + first PC of [isotypes, background mean], regressed out with
# limma::removeBatchEffect.  Run from this folder:  Rscript dsb_reference.R
suppressMessages({library(Matrix); library(mclust); library(limma)})
read10x <- function(dir) {
  m <- readMM(gzfile(file.path(dir, "matrix.mtx.gz")))
  f <- read.delim(gzfile(file.path(dir, "features.tsv.gz")), header = FALSE)
  b <- read.delim(gzfile(file.path(dir, "barcodes.tsv.gz")), header = FALSE)
  m <- as.matrix(m); rownames(m) <- f$V1; colnames(m) <- b$V1; m
}
cells <- read10x("../dsb_kotliarov_87ab/filtered_feature_bc_matrix")
raw <- read10x("../dsb_kotliarov_87ab/raw_feature_bc_matrix")
empty <- raw[, !(colnames(raw) %in% colnames(cells))]
isotypes <- grep("sotype", rownames(cells), value = TRUE)       # isotype controls, by name
stopifnot(length(isotypes) == 4, ncol(empty) == 8005, ncol(cells) == 2872)
# step 1
adtu_log <- log(empty + 10); adt_log <- log(cells + 10)
mu_u <- apply(adtu_log, 1, mean); sd_u <- apply(adtu_log, 1, sd)
norm_adt <- apply(adt_log, 2, function(x) (x - mu_u) / sd_u)
# step 2
mu1 <- apply(norm_adt, 2, function(x) Mclust(x, G = 2, warn = FALSE, verbose = FALSE)$parameters$mean[1])
noise_matrix <- rbind(norm_adt[isotypes, ], mu1)
noise <- prcomp(t(noise_matrix), scale = TRUE)$x[, 1]
denoised <- removeBatchEffect(norm_adt, covariates = noise)
keep <- 1:200
write.csv(t(norm_adt[, keep]), "dsb_step1_first200.csv", quote = FALSE)
write.csv(t(denoised[, keep]), "dsb_step2_first200.csv", quote = FALSE)
write.csv(data.frame(barcode = colnames(cells), background_mean = mu1, technical = noise),
          "dsb_cell_terms.csv", quote = FALSE, row.names = FALSE)
cat("R", R.version.string, "mclust", format(packageVersion("mclust")), "limma",
    format(packageVersion("limma")), "\n")
