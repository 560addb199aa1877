"""Merging the workers' series: one worker's page comes back as it was; counters and
histograms add up; each gauge follows its rule."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from llmtraffic.balancer.metricsmerge import (MergedCollector, from_wire, merge, to_wire)
from llmtraffic.balancer.stats import BalancerCollector, BalancerStats
from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import counter_family, gauge_family
from llmtraffic.contracts.record import LLMRecord
from llmtraffic.contracts.store import MetricsStore, Pod


def page(families) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MergedCollector(list(families)))
    return generate_latest(reg).decode()


def worker(requests: int) -> CollectorRegistry:
    stats = BalancerStats("llm")
    for _ in range(requests):
        stats.observe(LLMRecord(pool="p", model="m", target_model="m", response_code=200,
                                duration_ms=12.0))
    store = MetricsStore()
    store.set_pods([Pod("vllm-0", "10.0.0.1:8000", {}, "p")])
    reg = CollectorRegistry()
    reg.register(BalancerCollector(stats, store))
    return reg


def sample(text: str, prefix: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    return float(line.rsplit(" ", 1)[1])


def test_one_worker_comes_back_as_it_was():
    reg = worker(3)
    assert page(merge([from_wire(to_wire(reg.collect()))])) == generate_latest(reg).decode()


def test_counters_and_histograms_add_up_across_workers():
    text = page(merge([list(worker(3).collect()), list(worker(4).collect())]))
    assert sample(text, "llmtraffic_balancer_requests_total{") == 7
    assert sample(text, "llmtraffic_balancer_request_duration_seconds_count{") == 7
    assert sample(text, "llmtraffic_balancer_request_duration_seconds_sum{") == \
        7 * 0.012
    assert text.count("# TYPE llmtraffic_balancer_requests_total counter") == 1


def test_gauges_follow_their_rule():
    def gauges(inflight: float, ratio: float, open_: float):
        return [gauge_family(m.BALANCER_INFLIGHT, [(("p", "vllm-0"), inflight)]),
                gauge_family(m.BALANCER_CHARS_PER_TOKEN, [(("m",), ratio)]),
                gauge_family(m.BALANCER_CIRCUIT_OPEN, [(("p", "vllm-0"), open_)]),
                counter_family(m.BALANCER_CIRCUIT_OPENS, iter([(("p", "vllm-0"), 1.0)]))]

    text = page(merge([gauges(2, 3.0, 0), gauges(5, 4.0, 1)]))
    assert sample(text, "llmtraffic_balancer_inflight_requests{") == 7  # held by either
    assert sample(text, "llmtraffic_balancer_chars_per_token{") == 3.5  # their mean
    assert sample(text, "llmtraffic_balancer_circuit_open{") == 1  # open in one of them
    assert sample(text, "llmtraffic_balancer_circuit_opens_total{") == 2
