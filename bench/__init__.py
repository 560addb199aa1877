"""Benchmarks and workloads: routing quality, overhead, calibration."""
