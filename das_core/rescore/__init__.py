"""das_core.rescore."""
