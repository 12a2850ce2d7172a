"""Herd benchmarks: `python -m bench` (make bench)."""
