"""Throughput and memory benchmarks (``make bench``); every figure is measured in the run that reports it."""
