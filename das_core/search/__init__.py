"""das_core.search."""
