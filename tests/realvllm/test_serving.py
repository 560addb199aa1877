"""The seed's requests through the balancer to real vLLM pods, with the `openai` SDK as the
client: completions and chat, streaming and not, the seed's curl, the real 404; and the
exporter's token series equal to the `usage` the clients received, exactly."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from llmtraffic.exporter.app import ExporterApp, ExporterOptions
from tests.balancer.conftest import BASE, client, records, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the first waits for the fleet
SEED_PROMPT = "Write as if you were a critic: San Francisco"


async def test_the_seeds_curl_reaches_a_real_pod_with_its_adapter(real_fleet, make_app):
    app = await make_app(real_fleet.addresses)
    body = {"model": "tweet-summary", "prompt": SEED_PROMPT, "max_tokens": 20,
            "temperature": 0}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", json=body,
                          headers={"Host": "test.com"}) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
    assert answer["model"] == "tweet-summary"
    assert answer["choices"][0]["text"]
    assert answer["usage"]["completion_tokens"] == 20  # random weights never stop early
    line = records(app)[-1]
    assert line["model"] == line["target_model"] == "tweet-summary"
    assert line["upstream_host"] in real_fleet.addresses
    assert line["prompt_tokens"] == answer["usage"]["prompt_tokens"]


async def test_an_adapter_answers_differently_from_the_base_model(real_fleet, make_app):
    """The kit's adapters have non-zero B matrices, so an adapter is visible in the text."""
    app = await make_app(real_fleet.addresses)
    c = client(app, timeout=120)
    texts = {}
    for model in ("llama2", "tweet-summary", "sql-lora"):
        r = await c.completions.create(model=model, prompt=SEED_PROMPT, max_tokens=16,
                                       temperature=0)
        texts[model] = r.choices[0].text
    assert len(set(texts.values())) == 3, texts


async def test_completions_and_chat_streaming_and_not_through_the_openai_sdk(real_fleet,
                                                                            make_app):
    app = await make_app(real_fleet.addresses)
    c = client(app, timeout=120)
    r = await c.completions.create(model="sql-lora", prompt="SELECT", max_tokens=8)
    assert r.usage.completion_tokens == 8 and r.choices[0].text
    chat = await c.chat.completions.create(
        model="tweet-summary", max_tokens=8,
        messages=[{"role": "user", "content": "Summarise: the fog rolled in."}])
    assert chat.choices[0].message.content and chat.usage.completion_tokens == 8
    text, usage = "", None
    stream = await c.chat.completions.create(
        model="llama2", max_tokens=12, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count to five."}])
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text and usage is not None and usage.completion_tokens == 12
    pieces, n = [], 0
    stream = await c.completions.create(model="sql-lora", prompt="x", max_tokens=10,
                                        stream=True)
    async for chunk in stream:  # the balancer asked for usage itself and drops that event
        pieces.append(chunk.choices[0].text if chunk.choices else "")
        n += 1
    assert "".join(pieces) and n >= 1
    streamed = [r for r in records(app) if r["stream"]]
    assert [r["completion_tokens"] for r in streamed] == [12, 10]


async def test_an_unknown_model_gets_vllms_404_shape(real_fleet, make_app):
    """Straight to a pod, vLLM answers 404 in OpenAI's error shape; the balancer refuses a
    model no InferenceModel names with the same shape, before any pod sees it."""
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{real_fleet.urls[0]}/v1/completions",
                          json={"model": "no-such-model", "prompt": "x"}) as r:
            assert r.status == 404
            pod_error = (await r.json())["error"]
    app = await make_app(real_fleet.addresses)
    with pytest.raises(openai.NotFoundError) as e:
        await client(app).completions.create(model="no-such-model", prompt="x")
    ours = e.value.body
    assert set(pod_error) >= {"message", "type", "code"}
    assert set(ours) >= {"message", "type", "code"}
    assert pod_error["code"] == ours["code"] == 404


async def test_exporter_token_sums_equal_the_usage_clients_received(real_fleet, make_app,
                                                                    tmp_path):
    app = await make_app(real_fleet.addresses)
    exporter = ExporterApp(ExporterOptions(access_logs=[app.options.access_log],
                                           listen="127.0.0.1:0", poll_interval=0.05,
                                           from_beginning=True))
    await exporter.start()
    try:
        c = client(app, timeout=120)
        want: dict[str, list[int]] = {}

        async def one(i: int) -> None:
            model = ("tweet-summary", "sql-lora", "llama2")[i % 3]
            if i % 2:
                r = await c.completions.create(model=model, prompt=f"{i} " * (5 + i),
                                               max_tokens=4 + i % 5)
                usage = r.usage
            else:
                usage = None
                stream = await c.chat.completions.create(
                    model=model, max_tokens=4 + i % 5, stream=True,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": f"{i} " * (5 + i)}])
                async for chunk in stream:
                    usage = chunk.usage or usage
            p, q = want.setdefault(model, [0, 0]), usage
            p[0] += q.prompt_tokens
            p[1] += q.completion_tokens

        await asyncio.gather(*(one(i) for i in range(12)))
        await wait_for(lambda: len(records(app)) == 12, "12 access-log lines")

        async def sums() -> dict[str, list[float]]:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{exporter.port}/metrics") as r:
                    text = await r.text()
            got: dict[str, list[float]] = {}
            for line in text.splitlines():
                for i, name in enumerate(("asm_llm_proxy_prompt_tokens_total",
                                          "asm_llm_proxy_completion_tokens_total")):
                    if line.startswith(name + "{"):
                        model = json.loads(line.split('model=')[1].split("}")[0].split(",")[0])
                        got.setdefault(model, [0.0, 0.0])[i] += float(line.rsplit(" ", 1)[1])
            return got

        for _ in range(100):
            got = await sums()
            if got == want:
                break
            await asyncio.sleep(0.05)
        assert got == want
        assert BASE not in got  # counted under the name the client asked for
    finally:
        await exporter.stop()
