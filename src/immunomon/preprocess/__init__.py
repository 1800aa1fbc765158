"""Per-file preprocessing: compensation, transforms and quality control."""
