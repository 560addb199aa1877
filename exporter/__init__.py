"""Everything that observes: access logs, token series, vLLM scraping, the pod-state store."""
