"""On real vLLM engines, the llm policy keeps an adapter's requests on the pod that has it
loaded and a repeated long prompt on the pod that cached it — shown by the pods' own pages
(`vllm:lora_requests_info`, `vllm:prefix_cache_hits`) — where round-robin spreads them."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest

from llmtraffic.contracts.store import PodMetrics
from llmtraffic.contracts.vllm import parse_metrics
from tests.balancer.conftest import client, next_scrape, records, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the first waits for the fleet
WORDS = ("fog bridge harbor cable tram hill market mural bay pier coffee sourdough light "
         "wind street window garden tower ferry island night morning").split()


async def page(url: str) -> PodMetrics:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/metrics") as r:
            return parse_metrics(await r.read())


def long_prompt(seed: int, words: int = 900) -> str:
    """Well over one 128-token CPU block (the kit's tokenizer gives about 1.3 tokens per
    word here), unique to this run so earlier tests' caches do not count."""
    rng = random.Random(f"{seed}-{time.time_ns()}")
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def hits(fleet) -> dict[str, float]:
    return {p.address: (await page(p.url)).prefix_hits for p in fleet.pods}


@pytest.mark.parametrize("policy", ["llm", "round-robin"])
async def test_a_repeated_long_prompt_stays_on_the_pod_that_cached_it(real_fleet, make_app,
                                                                      policy):
    app = await make_app(real_fleet.addresses, policy=policy)
    c = client(app, timeout=120)
    prompt = long_prompt(1)
    before = await hits(real_fleet)
    for _ in range(4):
        r = await c.completions.create(model="llama2", prompt=prompt, max_tokens=2)
        assert r.usage.prompt_tokens > 256
    gained = {a: h - before[a] for a, h in (await hits(real_fleet)).items()}
    pods = [r["upstream_host"] for r in records(app)]
    if policy == "llm":
        assert len(set(pods)) == 1, pods
        # the 2nd, 3rd and 4th requests hit the cached blocks on that one pod
        assert gained[pods[0]] >= 3 * 128 * (r.usage.prompt_tokens // 128 - 1)
    else:
        assert set(pods) == set(real_fleet.addresses)
        # each pod saw the prompt twice: one cold prefill, one hit
        assert all(g < 2 * r.usage.prompt_tokens for g in gained.values())
    assert sum(gained.values()) > 0


@pytest.mark.parametrize("policy", ["llm", "round-robin"])
async def test_an_adapters_requests_go_where_it_is_loaded(real_fleet, make_app, policy):
    """One long `sql-lora` stream runs; once a scrape shows the adapter running on its pod,
    three more `sql-lora` requests, one after another, follow it there (llm) or spread
    (round-robin)."""
    app = await make_app(real_fleet.addresses, policy=policy)
    c = client(app, timeout=180)

    async def one(tokens: int) -> None:
        stream = await c.completions.create(model="sql-lora", prompt="SELECT name FROM",
                                            max_tokens=tokens, stream=True,
                                            extra_body={"ignore_eos": True})
        async for _ in stream:
            pass

    first = asyncio.create_task(one(400))
    await wait_for(lambda: any("sql-lora" in (p.metrics.running_adapters if p.metrics else ())
                               for p in app.store.snapshot(time.monotonic()).pods),
                   "a scrape showing sql-lora running", timeout=60)
    loaded = next(p.address for p in app.store.snapshot(time.monotonic()).pods
                  if p.metrics and "sql-lora" in p.metrics.running_adapters)
    for _ in range(3):  # one after another, each after a fresh scrape: affinity, not load
        await next_scrape(app)
        await one(8)
    await first
    later = [r["upstream_host"] for r in records(app)][:3]  # the long one finishes last
    if policy == "llm":
        assert later == [loaded] * 3, (later, loaded)
    else:
        assert set(later) == set(real_fleet.addresses), later
