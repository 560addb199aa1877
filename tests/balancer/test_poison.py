"""Counters that cannot be poisoned: junk model names (each a 404) take no label slot, and a
pod's absurd usage is counted by neither the balancer nor the exporter reading its access
log, which agree on every number; a corrupt counter value in a checkpoint is refused."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from llmtraffic.contracts.tokens import MAX_REQUEST_TOKENS, UNKNOWN_MODEL, TokenCounters
from llmtraffic.exporter.accesslog import make_parser
from tests.balancer.conftest import BASE, POOL
from tests.fixtures.fakepod import FakePod

pytestmark = pytest.mark.e2e


@pytest.fixture
async def pod():
    p = await FakePod(BASE).start()
    yield p
    await p.stop()


async def post(app, body: dict) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", json=body,
                          headers={"Host": "test.com"}) as r:
            await r.read()
            return r.status


def exporter_counts(app) -> TokenCounters:
    """What the exporter counts from the balancer's access log."""
    parse, counters = make_parser("json").parse, TokenCounters()
    for line in Path(app.options.access_log).read_bytes().splitlines():
        counters.observe(parse(line))
    return counters


async def test_junk_model_names_take_no_label_slot(pod, make_app):
    app = await make_app([pod.address], max_label_values=5)
    for i in range(20):  # 404s; a junk name with a bad field too (it is a 404 first)
        assert await post(app, {"model": f"junk-{i}", "prompt": "hi",
                                "max_tokens": "x" if i % 2 else 4}) == 404
    assert await post(app, {"model": "llama2", "prompt": "hi"}) == 200
    assert app.stats.overflow == {} and app.core.counters.overflow == {}
    models = {key[1] for key in app.stats.requests}
    assert models == {UNKNOWN_MODEL, "llama2"}
    assert app.stats.requests[(POOL, "llama2", BASE, "llm", "200")] == 1
    exporter = exporter_counts(app)
    assert exporter.requests == {(UNKNOWN_MODEL, "404"): 20, ("llama2", "200"): 1}
    assert exporter.overflow == {}


@pytest.mark.parametrize("absurd", [2**64, 10**15, MAX_REQUEST_TOKENS + 1])
async def test_absurd_usage_is_counted_by_neither_process(absurd, pod, make_app):
    app = await make_app([pod.address])
    assert await post(app, {"model": "llama2", "prompt": "hi"}) == 200
    pod.usage = {"prompt_tokens": absurd, "completion_tokens": 5, "total_tokens": absurd}
    assert await post(app, {"model": "llama2", "prompt": "hi"}) == 200
    balancer, exporter = app.core.counters, exporter_counts(app)
    assert balancer.usage_rejected == exporter.usage_rejected == 1
    assert balancer.prompt == exporter.prompt == {("llama2",): 3.0}
    assert balancer.completion == exporter.completion == {("llama2",): 1.0}
    assert balancer.requests == exporter.requests == {("llama2", "200"): 2}
    assert app.stats.prompt == {(POOL, "llama2", "llm"): 3.0}
