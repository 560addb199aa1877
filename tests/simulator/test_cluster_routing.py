"""Short virtual-time runs: on shared prefixes the `llm` policy keeps each group on the pods
that cache it (as the oracle does) while round-robin spreads them and misses."""

from __future__ import annotations

from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.simulator.workloads import make_workload
from llmtraffic.simulator.cluster import Cluster, ClusterConfig


def _run(policy: str, workload: str, rate: float, duration: float = 120.0):
    reqs = make_workload(workload, rate, duration, seed=3)
    factory = "oracle" if policy == "oracle" else (lambda r: make_policy(policy, seed=r))
    return Cluster(ClusterConfig(pods=4, seed=3), factory).run(reqs, duration)


def test_llm_keeps_prefix_groups_together_like_the_oracle():
    rr, llm, oracle = (_run(p, "shared-prefix", 5.0) for p in ("round-robin", "llm", "oracle"))
    assert rr.prefix_hit_rate < 0.6
    assert llm.prefix_hit_rate > 0.85 and oracle.prefix_hit_rate > 0.85
    assert llm.ttft_p90_s <= 1.3 * oracle.ttft_p90_s
    assert llm.ttft_p90_s < rr.ttft_p90_s / 3
    assert llm.completed == rr.completed == oracle.completed
