"""das_core.io."""
