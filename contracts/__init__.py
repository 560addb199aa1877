"""The shared contracts every component builds on: the pod-state store and its snapshot,
the access-log record and writer, every series we emit, vLLM's page, the scraper, the pods
file. Imports nothing else of llmtraffic."""
