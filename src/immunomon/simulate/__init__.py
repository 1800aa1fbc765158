"""Synthetic immunomonitoring trials with known truth."""
