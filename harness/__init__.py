"""The harness: load client, process stacks (pods, balancers, exporters, routers), a local
Prometheus, and the routing benchmarks behind `llmtraffic bench`."""
