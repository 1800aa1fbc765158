"""Input/output: FCS files, the study manifest, clinical and adverse-event tables."""
