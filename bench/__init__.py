"""Benchmarks (not installed; run from a checkout as `python -m bench.NAME`): balancer and
exporter overhead, scrape cost, soak, simulator calibration and loop lag."""
