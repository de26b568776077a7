"""das_core.label."""
