"""Benchmarks: every backend side by side, the machine's ceilings, FLOPs, the test modes."""
