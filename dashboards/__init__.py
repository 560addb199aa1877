"""Grafana dashboards generated as code with grafana-foundation-sdk."""
