"""Thin entry points, one module per job; Ray wiring only (the logic lives in das_core)."""
