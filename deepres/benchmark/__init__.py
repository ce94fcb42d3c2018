"""Benchmark harness: throughput and memory of every backend against common baselines."""
