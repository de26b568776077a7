"""das_core.clap."""
