"""The balancer's OpenAI proxy over simulator pods, with the `openai` SDK as client: the
seed's request, usage capture, LoRA and prefix affinity, shedding, round-robin, the weighted
split, every error status, pods dying mid-run and clients leaving mid-stream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.balancer.proxy import BalancerApp
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics
from llmtraffic.harness.prometheus import free_port
from llmtraffic.simulator import tokenizer
from llmtraffic.simulator.profile import DEFAULT_PROFILE, get_profile
from llmtraffic.simulator.server import run_fleet_in_thread
from tests.balancer.conftest import (BASE, LABELS, LORAS, POOL, SEED_FILES, client, next_scrape,
                                     records, stop_pod, total_inflight, wait_for)

pytestmark = pytest.mark.e2e

SEED_BODY = (b'{"model": "tweet-summary", "prompt": "Write as if you were a critic: San '
             b'Francisco", "max_tokens": 100, "temperature": 0}')
#: the seed prompt's 44 characters at the simulated engine's tokenizer's ratio
SEED_PROMPT_TOKENS = tokenizer.count("Write as if you were a critic: San Francisco",
                                     get_profile(DEFAULT_PROFILE).chars_per_token)
LONG = {"ignore_eos": True}  # the simulator then generates exactly max_tokens


@pytest.fixture(scope="module")
def fleet():
    with run_fleet_in_thread(3, time_scale=50, lora_modules=LORAS, seed=11) as f:
        yield f


@pytest.fixture
def lora_fleet():
    """One LoRA slot per pod, so a running adapter fills its pod's slot."""
    with run_fleet_in_thread(3, time_scale=20, lora_modules=LORAS, max_loras=1,
                             seed=21) as f:
        yield f


@pytest.fixture
def doomed_fleet():
    """A fleet whose pods a test may kill."""
    with run_fleet_in_thread(3, time_scale=20, lora_modules=LORAS, seed=31) as f:
        yield f


@pytest.fixture
def blackhole():
    """An address whose connects time out (listen backlog full: the kernel drops SYNs), as
    a vanished pod's IP often does."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    yield f"127.0.0.1:{port}"
    for c in fillers + [srv]:
        c.close()


async def post_raw(app: BalancerApp, body: bytes, host: str = "test.com",
                   path: str = "/v1/completions", **headers: str) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{app.port}{path}", data=body,
                          headers={"Host": host, "Content-Type": "application/json",
                                   **headers}) as r:
            return r.status, dict(r.headers), await r.json(content_type=None)


async def get_raw(app: BalancerApp, path: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.port}{path}", headers=headers) as r:
            return r.status, await r.text()


async def metric(app: BalancerApp, name: str, **labels: str) -> float:
    """Sum of the balancer's /metrics samples `name` whose labels include `labels`."""
    status, text = await get_raw(app, "/metrics")
    assert status == 200
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


# ---- the seed ------------------------------------------------------------------------------
async def test_seed_step4_curl_request(fleet, make_app):
    app = await make_app(fleet.addresses)
    status, _, out = await post_raw(app, SEED_BODY)  # curl -H "host: test.com" ... -d '...'
    assert status == 200, out
    assert out["object"] == "text_completion" and out["model"] == "tweet-summary"
    assert out["choices"][0]["text"].strip()
    usage = out["usage"]
    # 44 characters at the simulated engine's tokenizer's ratio (the default profile's)
    assert usage["prompt_tokens"] == SEED_PROMPT_TOKENS
    assert 1 <= usage["completion_tokens"] <= 100
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    r = await client(app).completions.create(
        model="tweet-summary", prompt="Write as if you were a critic: San Francisco",
        max_tokens=100, temperature=0)
    assert r.model == "tweet-summary" and r.choices[0].text and r.usage.prompt_tokens == SEED_PROMPT_TOKENS

    first, second = records(app)
    assert first["authority"] == "test.com" and first["response_code"] == 200
    assert (first["model"], first["target_model"], first["criticality"], first["pool"]) == \
        ("tweet-summary", "tweet-summary", "Critical", POOL)
    assert first["completion_tokens"] == usage["completion_tokens"]
    assert first["upstream_host"] in fleet.addresses
    assert first["pod"] in {"vllm-0", "vllm-1", "vllm-2"}
    assert second["completion_tokens"] == r.usage.completion_tokens


async def test_models_health_and_ready(fleet, make_app):
    app = await make_app(fleet.addresses)
    models = await client(app).models.list()
    assert {m.id for m in models.data} == {"tweet-summary", "sql-lora", "llama2", "batch",
                                           "mix"}
    assert (await get_raw(app, "/health"))[0] == 200
    status, text = await get_raw(app, "/ready")
    assert status == 200 and json.loads(text)["ready_pods"] >= 1
    empty = await make_app([], pods=[])
    assert await get_raw(empty, "/ready") == (503, '{"ready_pods": 0}')


# ---- usage ---------------------------------------------------------------------------------
async def test_streaming_and_non_streaming_usage_is_counted(fleet, make_app):
    app = await make_app(fleet.addresses)
    c = client(app)
    r = await c.completions.create(model="llama2", prompt="hello there", max_tokens=7,
                                   extra_body=LONG)
    assert r.usage.completion_tokens == 7
    assert r.model == BASE  # the InferenceModel's target, as the pod saw it

    # the balancer asks the pod for usage on every stream, but a client that did not ask
    # never sees the extra chunk
    chunks = [ch async for ch in await c.completions.create(
        model="llama2", prompt="hello", max_tokens=5, stream=True, extra_body=LONG)]
    assert chunks and all(ch.choices and ch.usage is None for ch in chunks)
    assert len("".join(ch.choices[0].text for ch in chunks).split()) == 5

    chat = [ch async for ch in await c.chat.completions.create(
        model="tweet-summary", messages=[{"role": "user", "content": "summarise: hi"}],
        max_tokens=6, stream=True, stream_options={"include_usage": True}, extra_body=LONG)]
    assert chat[-1].choices == [] and chat[-1].usage.completion_tokens == 6
    assert sum(1 for ch in chat if ch.choices and ch.choices[0].delta.content) == 6

    recs = records(app)
    assert [x.get("completion_tokens") for x in recs] == [7, 5, 6]
    assert [x.get("stream") for x in recs] == [False, True, True]
    assert all(x.get("prompt_tokens", 0) > 0 for x in recs)
    assert all(x.get("ttft_ms") is not None for x in recs[1:])
    assert await metric(app, "llmtraffic_balancer_completion_tokens_total",
                        model="llama2") == 12
    assert await metric(app, "llmtraffic_balancer_completion_tokens_total",
                        model="tweet-summary") == 6
    assert await metric(app, "llmtraffic_balancer_requests_total", model="llama2",
                        response_code="200") == 2


# ---- affinity --------------------------------------------------------------------------------
async def test_lora_affinity_sends_an_adapter_where_it_runs(lora_fleet, make_app):
    app = await make_app(lora_fleet.addresses)
    c = client(app)
    long = asyncio.create_task(c.completions.create(
        model="tweet-summary", prompt="a long summary", max_tokens=3000, extra_body=LONG))

    def running_tweet_summary() -> list[str]:
        return [p.address for p in app.store.snapshot(time.monotonic()).pods
                if p.metrics and "tweet-summary" in p.metrics.running_adapters]

    await wait_for(lambda: len(running_tweet_summary()) == 1, "tweet-summary to run")
    (home,) = running_tweet_summary()
    for i in range(4):
        await next_scrape(app)
        await c.completions.create(model="tweet-summary", prompt=f"tweet {i}", max_tokens=2)
        await next_scrape(app)
        await c.completions.create(model="sql-lora", prompt=f"query {i}", max_tokens=2)
    long.cancel()
    await asyncio.gather(long, return_exceptions=True)
    await wait_for(lambda: total_inflight(app) == 0, "in-flight counts back to 0")

    done = [x for x in records(app) if x.get("response_code") == 200]
    tweets = [x for x in done if x["model"] == "tweet-summary"]
    sqls = [x for x in done if x["model"] == "sql-lora"]
    assert len(tweets) == 4 and len(sqls) == 4
    # the adapter's own pod, every time, for LoRA's sake ...
    assert {x["upstream_host"] for x in tweets} == {home}
    assert {x["pick_reason"] for x in tweets} == {"llm:lora"}
    # ... and another adapter never goes to the pod whose only slot is taken
    assert home not in {x["upstream_host"] for x in sqls}


async def test_prefix_affinity_keeps_a_shared_prefix_on_one_pod(fleet, make_app):
    app = await make_app(fleet.addresses)
    c = client(app)
    prefixes = {"a": "You are a careful assistant; answer in one line. " * 15,
                "b": "Summarise the meeting notes below for the weekly report. " * 15}
    for group, prefix in prefixes.items():
        for i in range(4):
            await next_scrape(app)  # equal queues: only the prefix tells pods apart
            await c.completions.create(model="llama2", prompt=f"{prefix}Question {i}?",
                                       max_tokens=2)
    recs = records(app)
    assert len(recs) == 8 and all(x["response_code"] == 200 for x in recs)
    for group in (recs[:4], recs[4:]):
        assert len({x["upstream_host"] for x in group}) == 1
        assert [x["pick_reason"] for x in group[1:]] == ["llm:prefix"] * 3


# ---- shedding ------------------------------------------------------------------------------
async def test_only_sheddable_requests_are_shed_when_saturated(fleet, make_app):
    """No admission queue (GIE without flow control): the rest is scheduled at once."""
    store = MetricsStore(stale_after=600)
    app = await make_app(fleet.addresses, store=store, scrape_interval=3600, max_queued=0)
    # the start's scrape gave every pod's metrics; the loop's rounds are spread over the hour
    await wait_for(lambda: sum(app.scrape_counts.scrapes.values()) >= len(fleet.addresses),
                   "the start's scrape")

    def report(**kw: float) -> None:
        now = time.monotonic()
        for a in fleet.addresses:
            store.update(a, PodMetrics(models=(BASE,), **kw), now)

    report(waiting=50, kv_usage=0.95)
    c = client(app)
    with pytest.raises(openai.RateLimitError) as e:
        await c.completions.create(model="batch", prompt="later", max_tokens=1)
    assert e.value.status_code == 429
    assert e.value.response.headers["Retry-After"] == "1"
    assert "saturated" in e.value.message
    for model in ("tweet-summary", "llama2"):  # Critical and Standard are still served
        r = await c.completions.create(model=model, prompt="now", max_tokens=1)
        assert r.choices[0].text

    report(waiting=0, kv_usage=0.1)
    r = await c.completions.create(model="batch", prompt="later", max_tokens=1)
    assert r.model == BASE
    assert await metric(app, "llmtraffic_balancer_shed_total", model="batch",
                        reason="shed") == 1
    assert [x["response_code"] for x in records(app)] == [429, 200, 200, 200]


async def test_an_objective_with_a_negative_priority_is_shed_when_saturated(fleet, make_app,
                                                                              extra_models,
                                                                              tmp_path):
    """GIE v1: the request names its InferenceObjective in x-gateway-inference-objective."""
    objectives = tmp_path / "objectives.yaml"
    objectives.write_text(f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {{name: background}}
spec: {{priority: -5, poolRef: {{name: {POOL}}}}}
""")
    store = MetricsStore(stale_after=600)
    app = await make_app(fleet.addresses, store=store, scrape_interval=3600, max_queued=0,
                         configs=SEED_FILES + [extra_models, str(objectives)])
    await wait_for(lambda: sum(app.scrape_counts.scrapes.values()) >= len(fleet.addresses),
                   "the start's scrape")  # the loop's rounds are spread over the hour
    for a in fleet.addresses:
        store.update(a, PodMetrics(models=(BASE,), waiting=50, kv_usage=0.95),
                     time.monotonic())
    c = client(app)
    with pytest.raises(openai.RateLimitError) as e:
        await c.completions.create(model="llama2", prompt="later", max_tokens=1,
                                   extra_headers={"x-gateway-inference-objective": "background"})
    assert "priority -5" in e.value.message
    r = await c.completions.create(model="llama2", prompt="now", max_tokens=1)
    assert r.choices[0].text  # no objective: priority 0, scheduled
    assert [(x["response_code"], x.get("criticality")) for x in records(app)] == [
        (429, None), (200, "Standard")]


async def test_a_saturated_pool_queues_requests_until_a_pod_has_room(fleet, make_app):
    """The admission queue through HTTP: a Standard request waits while every pod is over
    the thresholds and is served once a scrape shows room; one that waits past
    --queue-timeout gets 503 with Retry-After in OpenAI's error shape."""
    store = MetricsStore(stale_after=600)
    app = await make_app(fleet.addresses, store=store, scrape_interval=3600,
                         queue_timeout=30, max_queued=1000)
    await wait_for(lambda: sum(app.scrape_counts.scrapes.values()) >= len(fleet.addresses),
                   "the start's scrape")  # the loop's rounds are spread over the hour

    def report(**kw: float) -> None:
        for a in fleet.addresses:
            store.update(a, PodMetrics(models=(BASE,), **kw), time.monotonic())

    report(waiting=50, kv_usage=0.95)
    c = client(app)
    waiting = asyncio.create_task(c.completions.create(model="llama2", prompt="wait",
                                                       max_tokens=1))
    admission = app.core.admission
    assert admission is not None
    await wait_for(lambda: len(admission.queue) == 1, "the request queued")
    assert not waiting.done()
    report(waiting=0, kv_usage=0.1)
    admission.poke()  # what the next scrape's round would do
    assert (await waiting).choices[0].text
    admission.timeout = 0.05
    report(waiting=50, kv_usage=0.95)
    with pytest.raises(openai.InternalServerError) as e:
        await c.completions.create(model="llama2", prompt="give up", max_tokens=1)
    assert e.value.status_code == 503 and e.value.response.headers["Retry-After"] == "1"
    assert "--queue-timeout" in e.value.message
    assert [x["response_code"] for x in records(app)] == [200, 503]
    assert await metric(app, "llmtraffic_balancer_shed_total", model="llama2",
                        reason="queue_timeout") == 1


# ---- round-robin and the weighted split ------------------------------------------------------
async def test_round_robin_spreads_evenly(fleet, make_app):
    app = await make_app(fleet.addresses, policy="round-robin")
    c = client(app)
    await asyncio.gather(*(c.completions.create(model="llama2", prompt=f"p{i}", max_tokens=1)
                           for i in range(12)))
    hosts = Counter(x["upstream_host"] for x in records(app) if x["response_code"] == 200)
    assert hosts == {a: 4 for a in fleet.addresses}
    assert {x["lb_policy"] for x in records(app)} == {"round-robin"}


async def test_weighted_split_rewrites_the_model(fleet, make_app):
    app = await make_app(fleet.addresses)
    c = client(app)
    out = await asyncio.gather(*(c.completions.create(model="mix", prompt=f"q{i}",
                                                      max_tokens=1) for i in range(40)))
    served = Counter(r.model for r in out)  # the pod echoes the model it was sent
    assert set(served) == {"sql-lora-2", "sql-lora-3"}  # weight 0 never chosen
    assert 22 <= served["sql-lora-2"] <= 38  # weights 3:1 of 40
    logged = Counter((x["model"], x["target_model"]) for x in records(app))
    assert logged == {("mix", t): n for t, n in served.items()}


# ---- error statuses ------------------------------------------------------------------------
async def test_bad_bodies_are_400(fleet, make_app):
    app = await make_app(fleet.addresses)
    for body, words in ((b'{"model": "tweet-summary", "prompt": ', "not valid JSON"),
                        (b"", "empty"), (b'["tweet-summary"]', "JSON object"),
                        (b'{"prompt": "hi"}', "`model` is required"),
                        (b'{"model": "tweet-summary"}', "`prompt` is required"),
                        (b'{"model": "tweet-summary", "prompt": "x", "stream": "yes"}',
                         "`stream`")):
        status, _, out = await post_raw(app, body)
        assert status == 400, body
        assert out["error"]["type"] == "invalid_request_error"
        assert words in out["error"]["message"]
    with pytest.raises(openai.BadRequestError) as e:
        await client(app).completions.create(model="", prompt="hi", max_tokens=1)
    assert e.value.status_code == 400 and e.value.body["param"] == "model"
    assert all(x["response_code"] == 400 for x in records(app))


async def test_unknown_model_is_404(fleet, make_app):
    app = await make_app(fleet.addresses)
    with pytest.raises(openai.NotFoundError) as e:
        await client(app).completions.create(model="gpt-4", prompt="hi", max_tokens=1)
    assert "gpt-4" in e.value.message and "tweet-summary" in e.value.message


async def test_unknown_host_is_404(fleet, make_app):
    app = await make_app(fleet.addresses)
    with pytest.raises(openai.NotFoundError) as e:
        await client(app, host="other.com").completions.create(
            model="tweet-summary", prompt="hi", max_tokens=1)
    assert "other.com" in e.value.message and "test.com" in e.value.message


async def test_body_over_the_limit_is_413(fleet, make_app):
    app = await make_app(fleet.addresses, max_body_bytes=2048)
    c = client(app)
    r = await c.completions.create(model="llama2", prompt="x" * 1500, max_tokens=1)
    assert r.choices
    with pytest.raises(openai.APIStatusError) as e:
        await c.completions.create(model="llama2", prompt="x" * 3000, max_tokens=1)
    assert e.value.status_code == 413 and "2048" in e.value.message


async def test_no_ready_pod_is_503(fleet, make_app):
    empty = await make_app([], pods=[])
    with pytest.raises(openai.InternalServerError) as e:
        await client(empty).completions.create(model="tweet-summary", prompt="hi",
                                                max_tokens=1)
    assert e.value.status_code == 503 and "no ready pod" in e.value.message

    draining = await make_app([], pods=[Pod(f"vllm-{i}", a, dict(LABELS), ready=False)
                                        for i, a in enumerate(fleet.addresses)])
    with pytest.raises(openai.InternalServerError) as e:
        await client(draining).completions.create(model="tweet-summary", prompt="hi",
                                                   max_tokens=1)
    assert e.value.status_code == 503
    assert await metric(draining, "llmtraffic_balancer_shed_total",
                        reason="no_endpoint") == 1

    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    unreachable = await make_app(dead)
    with pytest.raises(openai.InternalServerError) as e:
        await client(unreachable).completions.create(model="tweet-summary", prompt="hi",
                                                      max_tokens=1)
    assert e.value.status_code == 503 and "no pod could be reached" in e.value.message
    assert total_inflight(unreachable) == 0


async def test_api_key_is_required_when_set(fleet, make_app):
    app = await make_app(fleet.addresses, api_key="s3cret")
    with pytest.raises(openai.AuthenticationError) as e:
        await client(app, api_key="wrong").completions.create(model="tweet-summary",
                                                             prompt="hi", max_tokens=1)
    assert e.value.status_code == 401
    status, _, out = await post_raw(app, SEED_BODY)  # no Authorization header at all
    assert status == 401 and out["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        await client(app, api_key="wrong").models.list()
    r = await client(app, api_key="s3cret").completions.create(model="tweet-summary",
                                                               prompt="hi", max_tokens=1)
    assert r.choices
    assert [x["response_code"] for x in records(app)] == [401, 401, 200]


# ---- pods dying, clients leaving ---------------------------------------------------------------
async def test_pod_killed_mid_run_never_hangs_a_client(doomed_fleet, make_app):
    app = await make_app(doomed_fleet.addresses)
    c = client(app, timeout=20)  # a hang shows up as APITimeoutError

    async def one(i: int) -> str:
        try:
            if i % 2:
                async for _ in await c.completions.create(
                        model="llama2", prompt=f"stream {i}", max_tokens=250, stream=True,
                        extra_body=LONG):
                    pass
            else:
                await c.completions.create(model="llama2", prompt=f"whole {i}",
                                           max_tokens=250, extra_body=LONG)
            return "ok"
        except openai.APITimeoutError:
            return "hang"
        except openai.APIError:
            return "error"

    tasks = [asyncio.create_task(one(i)) for i in range(9)]
    victim = doomed_fleet.addresses[0]

    def victim_generating() -> bool:
        state = app.store.snapshot(time.monotonic()).by_address()[victim]
        return state.metrics is not None and state.metrics.running > 0

    await wait_for(victim_generating, "the victim pod to be generating")
    await stop_pod(doomed_fleet, 0)
    results = await asyncio.gather(*tasks)
    assert "hang" not in results
    await wait_for(lambda: total_inflight(app) == 0, "in-flight counts back to 0")
    recs = records(app)
    assert len(recs) == 9
    # the victim was cut mid-run; requests served elsewhere were untouched
    assert any(x["response_code"] != 200 for x in recs if x["upstream_host"] == victim)
    assert all(x["response_code"] == 200 for x in recs if x["upstream_host"] != victim)
    assert results.count("error") == sum(x["response_code"] != 200 for x in recs)

    after = [await c.completions.create(model="llama2", prompt=f"after {i}", max_tokens=2)
             for i in range(6)]
    assert all(r.choices for r in after)


async def test_connect_failure_is_retried_on_another_pod(doomed_fleet, make_app):
    # both balancers saw every pod up (their next scrape is an hour away); then one dies
    app = await make_app(doomed_fleet.addresses, policy="round-robin", scrape_interval=3600)
    strict = await make_app(doomed_fleet.addresses, policy="round-robin", retries=0,
                            scrape_interval=3600)
    for a in (app, strict):  # the start's scrape (the loop's first round is spread over the hour)
        await wait_for(lambda: sum(a.scrape_counts.scrapes.values()) >= 3, "the start's scrape")
    await stop_pod(doomed_fleet, 1)
    dead = doomed_fleet.addresses[1]
    c = client(app)
    for i in range(6):
        if i % 2:
            chunks = [ch async for ch in await c.completions.create(
                model="llama2", prompt="hi", max_tokens=3, stream=True, extra_body=LONG)]
            assert len(chunks) == 3
        else:
            r = await c.completions.create(model="llama2", prompt="hi", max_tokens=3)
            assert r.choices
    recs = records(app)
    assert [x["response_code"] for x in recs] == [200] * 6
    assert dead not in {x["upstream_host"] for x in recs}
    # round-robin lands on the dead pod once: the refused connect marks it in the store, and
    # every policy skips a marked pod from then on
    assert app.stats.retries == {(POOL,): 1.0}
    assert await metric(app, "llmtraffic_balancer_retries_total") == 1
    state = app.store.snapshot(time.monotonic()).by_address()[dead]
    assert state.last_error and state.last_error.startswith("proxy: ConnectFailed")

    statuses = []
    for _ in range(3):
        try:
            await client(strict).completions.create(model="llama2", prompt="hi", max_tokens=1)
            statuses.append(200)
        except openai.APIStatusError as e:
            assert "no pod could be reached" in e.message
            statuses.append(e.status_code)
    assert sorted(statuses) == [200, 200, 503]


async def test_connect_timeout_is_retried_on_another_pod(fleet, blackhole, make_app):
    store = MetricsStore(stale_after=600)
    app = await make_app(fleet.addresses[:2] + [blackhole], policy="round-robin",
                         connect_timeout=0.3, scrape_timeout=0.3, store=store,
                         scrape_interval=3600)
    # as if the pod had vanished after its last good scrape (the next is an hour away)
    store.update(blackhole, PodMetrics(models=(BASE,)), time.monotonic())
    c = client(app)
    for i in range(3):
        r = await c.completions.create(model="llama2", prompt="hi", max_tokens=1)
        assert r.choices
    recs = records(app)
    assert [x["response_code"] for x in recs] == [200] * 3
    assert blackhole not in {x["upstream_host"] for x in recs}
    assert app.stats.retries == {(POOL,): 1.0}


async def test_pod_dying_mid_stream_ends_the_clients_stream_with_an_error(doomed_fleet,
                                                                         make_app):
    app = await make_app(doomed_fleet.addresses)
    stream = await client(app).completions.create(model="llama2", prompt="a long story",
                                                  max_tokens=1000, stream=True,
                                                  extra_body=LONG)
    it = stream.__aiter__()
    got = [await it.__anext__() for _ in range(3)]
    assert all(ch.choices[0].text for ch in got)
    (victim,) = [i for i, a in enumerate(doomed_fleet.addresses) if app.store.inflight(a)]
    await stop_pod(doomed_fleet, victim)
    with pytest.raises(openai.APIError) as e:
        async for _ in it:
            pass
    assert not isinstance(e.value, openai.APITimeoutError)
    assert "mid-stream" in e.value.message
    await wait_for(lambda: total_inflight(app) == 0, "in-flight counts back to 0")
    (rec,) = records(app)
    assert (rec["response_code"], rec["response_flags"]) == (502, "UC")


async def test_client_leaving_mid_stream_releases_its_inflight_count(fleet, make_app):
    app = await make_app(fleet.addresses)
    stream = await client(app).completions.create(model="llama2", prompt="go on",
                                                  max_tokens=3000, stream=True,
                                                  extra_body=LONG)
    it = stream.__aiter__()
    await it.__anext__()
    await it.__anext__()
    assert total_inflight(app) == 1
    await stream.close()
    await wait_for(lambda: total_inflight(app) == 0, "in-flight count released")
    await wait_for(lambda: len(records(app)) == 1, "the access-log line")
    (rec,) = records(app)
    assert rec["response_flags"] == "DC" and rec.get("completion_tokens") is None
    # the proxy hung up on the pod too: it stops generating
    await next_scrape(app)
    await wait_for(lambda: all(p.metrics.running == 0 for p in
                               app.store.snapshot(time.monotonic()).pods if p.metrics),
                   "the pod to drop the abandoned request")

    # a non-streaming client giving up (its own timeout) is released the same way
    with pytest.raises(openai.APITimeoutError):
        await client(app, timeout=0.3).completions.create(
            model="llama2", prompt="go on", max_tokens=3000, extra_body=LONG)
    await wait_for(lambda: total_inflight(app) == 0, "in-flight count released")
    await wait_for(lambda: len(records(app)) == 2, "the access-log line")
    assert records(app)[1]["response_flags"] == "DC"
