"""Benchmark suites of nas3d_fast: each suite defines its cases once (benchmarks/<suite>.py); they run
side by side with their baselines through ``python -m benchmarks.run SUITE`` and under pytest-benchmark
through ``benchmarks/test_<suite>.py``."""
