"""Benchmarks: ``python -m benchmarks`` prints a table and writes JSON to benchmarks/results/."""
