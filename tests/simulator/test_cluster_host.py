"""Pods sharing one host's cores (a measured CPU profile): a step goes slower for as long
as another pod steps beside it, re-timed when that pod starts or stops, not fixed at the
step's start; and the time outside the engine is the busy pod's when requests are in
flight."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.simulator.cluster import Cluster, ClusterConfig
from llmtraffic.simulator.profile import StepFit, get_profile
from llmtraffic.simulator.workloads import BASE_MODEL, WorkloadRequest

#: 10 ms a step + 1 ms a prefill token: a prompt of ~1,000 tokens is a ~1 s step
FIT = StepFit(base_s=0.01, prefill_token_s=1e-3, prefill_pair_s=0.0, decode_seq_s=0.0,
              decode_context_s=0.0, adapter_s=0.0)


def _profile(contention: float, **kw):
    return replace(get_profile("llama2-7b-a10"), name="host-test", step_fit=FIT,
                   chars_per_token=1.0, host_contention=contention, **kw)


def _run(profile, reqs):
    cluster = Cluster(ClusterConfig(pods=2, profile=profile, seed=1),
                      lambda r: make_policy("round-robin", seed=r))
    cluster.run(reqs, 10.0)
    return {q.request_id: q for q in cluster.requests}, cluster


def _long_then_busy() -> list[WorkloadRequest]:
    """A ~1 s prefill on one pod; half way through, the other pod starts decoding."""
    return [WorkloadRequest(0, 0.0, BASE_MODEL, "x" * 1000, max_tokens=1, output_len=1),
            WorkloadRequest(1, 0.5, BASE_MODEL, "y" * 10, max_tokens=300, output_len=300)]


def test_a_step_slows_only_while_another_pod_steps_beside_it():
    reqs = _long_then_busy()
    alone, _ = _run(_profile(0.0), reqs)
    work = alone["0"].first_token  # the prefill step on a host of its own
    assert work > 0.9
    shared, _ = _run(_profile(0.5), reqs)
    # 0.5 s at full speed, the rest at 1 / 1.5 once the other pod steps
    assert shared["0"].first_token == pytest.approx(0.5 + (work - 0.5) * 1.5, rel=1e-6)
    assert shared["0"].finished_at == shared["0"].first_token
    # the other pod's first step began beside the long one: slowed from its start
    assert shared["1"].first_token - 0.5 == pytest.approx(
        (alone["1"].first_token - 0.5) * 1.5, rel=1e-6)


def test_the_time_outside_the_engine_is_the_busy_one_beside_requests_in_flight():
    reqs = [WorkloadRequest(0, 0.0, BASE_MODEL, "x" * 10, max_tokens=50, output_len=50),
            WorkloadRequest(1, 0.01, BASE_MODEL, "y" * 10, max_tokens=1, output_len=1),
            WorkloadRequest(2, 0.02, BASE_MODEL, "z" * 10, max_tokens=1, output_len=1)]
    _, cluster = _run(_profile(0.0, frontend_s=0.005, frontend_busy_s=0.02), reqs)
    # round-robin: 0 and 2 on one pod (2 arrives while 0 decodes), 1 alone on the other
    assert cluster.frontend == {"0": 0.005, "1": 0.005, "2": 0.02}
    _, plain = _run(_profile(0.0, frontend_s=0.005), reqs)
    assert set(plain.frontend.values()) == {0.005}
