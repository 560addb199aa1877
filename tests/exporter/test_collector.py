"""Token counters (cap, dimensions, checkpoint state), the collector's exposition checked
by the real promtool, pool gauges, and the enriched log."""

from __future__ import annotations

import io
import subprocess

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts.record import LLMRecord
from llmtraffic.exporter.collector import ExporterCollector, ExporterStats
from llmtraffic.contracts.tokens import TokenCounters
from llmtraffic.exporter.enrich import Enricher, enrich
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics


def samples(collector) -> dict:
    reg = CollectorRegistry()
    reg.register(collector)
    text = generate_latest(reg).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out, text


def rec(model, p=10, c=5, **kw):
    return LLMRecord(model=model, prompt_tokens=p, completion_tokens=c, response_code=200,
                     **kw)


def test_cardinality_cap_folds_into_other_and_counts_overflow():
    c = TokenCounters(max_values_per_label=3)
    for i in range(10):
        c.observe(rec(f"m{i}"))
    s, _ = samples(ExporterCollector(c, ExporterStats()))
    models = {dict(k[1])["model"] for k in s if k[0] == "asm_llm_proxy_prompt_tokens_total"}
    assert models == {"m0", "m1", "m2", "other"}
    assert s[("asm_llm_proxy_prompt_tokens_total", (("model", "other"),))] == 70
    assert s[("llmtraffic_exporter_label_overflow_total", (("label", "model"),))] == 7


def test_extra_dimensions_and_streaming_and_non_streaming_both_counted():
    c = TokenCounters(dimensions=("model", "lb_policy"))
    c.observe(rec("a", 1, 2, stream=True, lb_policy="llm"))
    c.observe(rec("a", 3, 4, stream=False, lb_policy="llm"))
    c.observe(rec("a", 5, 6, lb_policy="round-robin"))
    assert not c.observe(LLMRecord(path="/healthz"))  # not an LLM request
    s, _ = samples(ExporterCollector(c, ExporterStats()))
    key = ("asm_llm_proxy_completion_tokens_total", (("lb_policy", "llm"), ("model", "a")))
    assert s[key] == 6
    assert s[("asm_llm_proxy_requests_total", (("model", "a"), ("response_code", "200")))] == 3
    with pytest.raises(ValueError, match="dimension"):
        TokenCounters(dimensions=("modle",))


def test_control_characters_never_reach_labels():
    c = TokenCounters()
    c.observe(rec("evil\nmodel\x00{x=\"y\"}"))
    assert list(c.prompt) == [('evilmodel{x="y"}',)]


def test_state_round_trip():
    c = TokenCounters(dimensions=("model", "pool"))
    for i in range(5):
        c.observe(rec(f"m{i % 2}", ttft_ms=100 * i, duration_ms=1000 * i, pool="p"))
    d = TokenCounters(dimensions=("model", "pool"))
    d.restore(orjson.loads(orjson.dumps(c.state())))
    assert d.state() == c.state()
    assert samples(ExporterCollector(d, ExporterStats()))[0] == \
        samples(ExporterCollector(c, ExporterStats()))[0]
    with pytest.raises(ValueError, match="dimensions"):
        TokenCounters().restore(c.state())


def test_ttft_and_duration_histograms():
    c = TokenCounters()
    c.observe(rec("a", ttft_ms=120, duration_ms=900))
    c.observe(rec("a", ttft_ms=3000))
    s, _ = samples(ExporterCollector(c, ExporterStats()))
    name = "asm_llm_proxy_time_to_first_token_seconds"
    assert s[(name + "_count", (("model", "a"),))] == 2
    assert s[(name + "_bucket", (("le", "0.25"), ("model", "a")))] == 1
    assert s[(name + "_sum", (("model", "a"),))] == pytest.approx(3.12)
    assert s[("asm_llm_proxy_request_duration_seconds_count", (("model", "a"),))] == 1


def test_promtool_accepts_the_exposition():
    c = TokenCounters()
    c.observe(rec("a", ttft_ms=10, duration_ms=20))
    stats = ExporterStats()
    stats.lines["/var/log/a.log"] = 3
    stats.parse_error("invalid_json")
    stats.rotation("rename")
    stats.scrape("vllm-0", "ok", 0.002)
    store = MetricsStore()
    store.set_pods([Pod("vllm-0", "10.0.0.1:8000", {}, "pool")])
    store.update("10.0.0.1:8000", PodMetrics(kv_usage=0.4), 0.0)
    _, text = samples(ExporterCollector(c, stats, store, clock=lambda: 0.1))
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_pod_and_pool_gauges_count_only_fresh_pods():
    store = MetricsStore(stale_after=2.0)
    store.set_pods([Pod(f"v{i}", f"10.0.0.{i}:8000", {}, "pool") for i in range(3)])
    store.update("10.0.0.0:8000", PodMetrics(kv_usage=0.2, waiting=1), 99.0)
    store.update("10.0.0.1:8000", PodMetrics(kv_usage=0.6, waiting=4), 99.0)
    store.update("10.0.0.2:8000", PodMetrics(kv_usage=0.9, waiting=50), 90.0)  # stale
    s, _ = samples(ExporterCollector(None, ExporterStats(), store, clock=lambda: 100.0))
    assert s[("llmtraffic_pool_ready_pods", (("pool", "pool"),))] == 2
    assert s[("llmtraffic_pool_kv_cache_usage_mean", (("pool", "pool"),))] == pytest.approx(0.4)
    assert s[("llmtraffic_pool_kv_cache_usage_max", (("pool", "pool"),))] == pytest.approx(0.6)
    assert s[("llmtraffic_pool_requests_waiting", (("pool", "pool"),))] == 5
    assert s[("llmtraffic_pod_up", (("pod", "v2"), ("pool", "pool")))] == 0
    assert s[("llmtraffic_pod_metrics_age_seconds", (("pod", "v2"), ("pool", "pool")))] == 10


def test_enrich_fields_pod_resolution_and_no_secrets(tmp_path):
    store = MetricsStore()
    store.set_pods([Pod("vllm-3", "10.0.0.3:8000", {}, "llama", namespace="ml")])
    r = rec("a", 10, 40, duration_ms=2200, ttft_ms=200, upstream_host="10.0.0.3:8000",
            user_agent="curl", request_id="x")
    out = enrich(r, store)
    assert out["total_tokens"] == 50 and out["tokens_per_s"] == 20.0
    assert (out["pod"], out["namespace"], out["pool"]) == ("vllm-3", "ml", "llama")
    path = tmp_path / "enriched.log"
    e = Enricher(store, str(path))
    e.write(r)
    first = e.tell()
    e.write(r)
    e.flush()
    assert path.read_bytes().count(b"\n") == 2
    e.truncate_to(first)
    e.write(rec("b"))
    e.close()
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [x["model"] for x in lines] == ["a", "b"]
    text = path.read_text().lower()
    for secret in ("authorization", "api-key", "api_key", "cookie", "bearer"):
        assert secret not in text


def test_observe_with_cached_keys_counts_what_the_plain_rules_count():
    """Keys are remembered per dimension values; a reference that caps every label of
    every record (the rules as written) must count the same, overflow included."""
    import random

    from llmtraffic.contracts.families import OTHER, clean_label

    def reference(records, dims, cap):
        seen = {d: set() for d in dims}
        overflow, prompt, completion, requests, dur = {}, {}, {}, {}, {}

        def capped(d, value):
            v = clean_label(value)
            if v in seen[d]:
                return v
            if len(seen[d]) >= cap:
                overflow[d] = overflow.get(d, 0) + 1
                return OTHER
            seen[d].add(v)
            return v

        for r in records:
            if not r.model:
                continue
            key = tuple(capped(d, getattr(r, d)) for d in dims)
            if r.prompt_tokens is not None:
                prompt[key] = prompt.get(key, 0.0) + r.prompt_tokens
            if r.completion_tokens is not None:
                completion[key] = completion.get(key, 0.0) + r.completion_tokens
            rk = (key[0], "" if r.response_code is None else str(r.response_code))
            requests[rk] = requests.get(rk, 0.0) + 1
            if r.duration_ms is not None:
                dur[key[0]] = dur.get(key[0], 0) + 1
        return prompt, completion, requests, overflow, dur

    rng = random.Random(7)
    models = ["a", "b", "a\x00", "c\n", "", None, "other", "d", "e", "f"]
    values = {"pool": ["p", None, "q\t", "r", "s"], "response_code": [200, 429, None, 503],
              "stream": [True, False, None], "ttft_ms": [0.0, -0.0, 1.5, None]}
    for dims in [("model",), ("model", "pool"), ("model", "response_code", "stream"),
                 ("model", "ttft_ms")]:
        for cap in (2, 3, 200):
            records = [LLMRecord(model=rng.choice(models), prompt_tokens=rng.choice([1, None]),
                                 completion_tokens=rng.choice([2, None]),
                                 duration_ms=rng.choice([5.0, None]),
                                 **{d: rng.choice(values[d]) for d in dims if d != "model"},
                                 **({"response_code": rng.choice(values["response_code"])}
                                    if "response_code" not in dims else {}))
                       for _ in range(600)]
            c = TokenCounters(dims, cap)
            for r in records:
                c.observe(r)
            got = (c.prompt, c.completion, c.requests, c.overflow,
                   {k: sum(h.counts) for k, h in c.duration.items()})
            assert got == reference(records, c.dimensions, cap), (dims, cap)
