"""Smoke tests of bench.balancer_overhead: tiny runs, sane structure (never timings)."""

import math
import random
import shutil

import pytest

from bench.balancer_overhead import (BASE_MODEL, POOL, Prompts, config_files, live_overhead,
                                     pick_latency, report_live, report_picks, summarize)


def test_prompts_are_1_to_2_kb_and_share_prefixes():
    p = Prompts(random.Random(0), systems=3)
    prompts = [p.next() for _ in range(30)]
    assert all(900 <= len(x) <= 2200 for x in prompts)
    assert len({x[:512] for x in prompts}) <= 3  # shared system prompts
    assert len(set(prompts)) == 30


def test_config_files_load_with_the_seed(tmp_path):
    from llmtraffic.balancer.config import load_resources
    from llmtraffic.simulator.server import SEED_ADAPTERS

    res = load_resources(config_files(tmp_path))
    models = {m.model_name: m for m in res.models_in(POOL)}
    assert set(models) == {BASE_MODEL, *SEED_ADAPTERS}
    assert models["tweet-summary"].criticality == "Critical"  # the seed's own, unchanged
    assert res.pool_for_host("test.com").name == POOL


def test_pick_latency_rows_are_sane():
    rows = pick_latency(sizes=(10,), picks=200, warmup=20)
    assert [(r["pods"], r["policy"], r["stage"]) for r in rows] == [
        (10, "llm", "decide"), (10, "llm", "pick"),
        (10, "llm-python", "decide"), (10, "llm-python", "pick"),
        (10, "round-robin", "decide"), (10, "round-robin", "pick")]
    for r in rows:
        assert r["picks"] == 200
        assert sum(r["reasons"].values()) == 200
        for key in ("p50_us", "p99_us", "mean_us"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["p50_us"] <= r["p99_us"]
    llm = rows[0]["reasons"]
    assert set(llm) <= {"llm:prefix", "llm:lora", "llm:load"}
    assert llm.get("llm:prefix", 0) > 0  # the prompts share prefixes
    assert rows[2]["reasons"] == llm  # both cores decide alike
    assert set(rows[4]["reasons"]) == {"round-robin"}
    text = report_picks(rows)
    assert "goal llm" not in text  # the goal names 100 pods only
    assert "round-robin" in text
    assert "the Python core's median is" in text


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("vllm-router") is None, reason="vllm-router not installed")
def test_live_overhead_tiny_run_counts_every_request():
    r = live_overhead(pods=1, requests=10, warmup=2, concurrencies=(4,), duration=0.5,
                      rounds=1)
    routers = ["vllm-router rr", "vllm-router cache_aware", "llmtraffic round-robin",
               "llmtraffic llm", "bare aiohttp proxy"]
    assert r["targets"] == ["direct", *routers]
    for name in routers:
        for mode in ("plain", "stream"):
            lat = r["latency"][name][mode]
            assert lat.errors == {} and len(lat.routed) == len(lat.direct) == 10, name
    for name in r["targets"]:
        for mode in ("plain", "stream"):
            ((run,),) = r["throughput"][name][mode]
            assert run["errors"] == {}, (name, run)
            assert run["requests"] == run["started"] > 0
            if mode == "plain":
                assert run["usage_tokens"] == run["requests"] * r["max_tokens"]  # ignore_eos
            else:  # one event per token, whoever relays them
                assert run["events"] >= run["requests"] * r["stream_tokens"]
            assert run["cpu_pct"]["pods"] > 0
            assert ("router" in run["cpu_pct"]) == (name != "direct")
    s = summarize(r)
    for (name, mode, conc), row in s.items():
        assert 0 < row["p50_ms"] <= row["p99_ms"], (name, mode, conc)
        assert row["rps"] > 0 and row["errors"] == {}, (name, mode, conc)
    assert s[("vllm-router rr", "plain", 4)]["cpu_ms"] > 0
    assert s[("llmtraffic llm", "stream", 4)]["cpu_ms"] > 0  # its workers' CPU counted
    text = report_live(r)
    assert "goal llmtraffic llm plain: added p50 ≤ 0.5 ms at concurrency 1:" in text
    assert "goal llmtraffic llm stream: req/s ≥ 1x vllm-router rr at concurrency 4:" in text
