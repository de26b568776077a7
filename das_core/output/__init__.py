"""das_core.output."""
