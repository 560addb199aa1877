"""`make_policy(name)`: the policies by name."""

from __future__ import annotations

from llmtraffic.balancer.policy.leastrequest import LeastRequest
from llmtraffic.balancer.policy.randompick import RandomPick
from llmtraffic.balancer.policy.request import Policy
from llmtraffic.balancer.policy.roundrobin import RoundRobin
from llmtraffic.balancer.policy.settings import PolicyConfig

POLICY_NAMES = ("llm", "round-robin", "random", "least-request")


def make_policy(name: str, config: PolicyConfig | None = None,
                seed: int | None = None) -> Policy:
    if name == "llm":
        from llmtraffic.balancer.policy.llm import LLMPolicy  # the native core: balancer only
        return LLMPolicy(config, seed)
    if name == "round-robin":
        return RoundRobin(seed)
    if name == "random":
        return RandomPick(seed)
    if name == "least-request":
        return LeastRequest(seed)
    raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")
