"""Measurements and profiles of stylepipe, run from the repository root (`python -m benchmarks.<name>`)."""
