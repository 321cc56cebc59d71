"""Benchmarks: `make bench` runs each module (python -m benchmarks.<name>)."""
