"""das_core.scoring."""
