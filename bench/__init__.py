"""Benchmark suites and stored results of deepres (run with ``pytest bench/ --benchmark-only``)."""
