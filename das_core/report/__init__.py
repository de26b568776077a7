"""das_core.report."""
