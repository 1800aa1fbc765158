"""Orchestration: per-sample stages in parallel, caching, provenance, the run directory."""
