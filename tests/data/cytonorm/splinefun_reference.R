# Reference values of R's stats::splinefun(method = "monoH.FC") for tests/test_normalise.py.
# Run from the repository root: Rscript tests/data/cytonorm/splinefun_reference.R
set.seed(1)
cases <- list(
  # CytoNorm-like: 99 quantiles of two skewed batches (ties at the bottom, a flat stretch)
  quantiles = {
    a <- sort(c(rep(0, 20), rgamma(79, 2, 1)))
    b <- sort(c(rep(0.1, 15), rgamma(84, 2.2, 0.9)))
    list(x = a, y = b)
  },
  # a knot pair outside the Fritsch-Carlson region (slopes get rescaled) and a flat interval
  steep = list(x = c(0, 1, 2, 3, 4, 5, 6), y = c(0, 0.1, 3, 3, 3.2, 6, 6.1)),
  # unsorted input with tied x (regularize.values: sort, mean of tied y)
  ties = list(x = c(3, 1, 2, 2, 5, 4, 4, 4), y = c(2, 0, 1, 1.5, 4, 3, 3.3, 2.7))
)
rows <- list()
knots <- list()
for (name in names(cases)) {
  cs <- cases[[name]]
  f <- suppressWarnings(splinefun(cs$x, cs$y, method = "monoH.FC"))
  at <- seq(min(cs$x) - 1, max(cs$x) + 1, length.out = 401)
  at <- c(at, unique(cs$x))
  rows[[name]] <- data.frame(case = name, t = at, value = f(at))
  knots[[name]] <- data.frame(case = name, x = cs$x, y = cs$y)
}
write.csv(do.call(rbind, knots), "tests/data/cytonorm/splinefun_knots.csv", row.names = FALSE)
out <- do.call(rbind, rows)
write.csv(out, "tests/data/cytonorm/splinefun_reference.csv", row.names = FALSE)
cat(R.version.string, "\n")
