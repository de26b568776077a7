"""das_core.audio."""
