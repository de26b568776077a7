"""das_core.runtime."""
