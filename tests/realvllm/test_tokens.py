"""Tokens as the real engine counts them: the balancer's learned characters per prompt
token for the kit model lands near what the real tokenizer's `usage` says (not 4), and a
client hanging up right after `[DONE]` is logged as the 200 it got, tokens counted."""

from __future__ import annotations

import random

import aiohttp
import orjson
import pytest

from tests.balancer.conftest import BASE, client, records, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the first waits for the fleet
WORDS = ("the fog rolled over the bay while ferries crossed slowly toward the old piers "
         "and gulls circled above market stalls selling bread fish lemons and coffee to "
         "early commuters who read newspapers about weather trains elections and music").split()


def prose(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    while sum(map(len, out)) + len(out) < chars:
        out.append(rng.choice(WORDS))
    return " ".join(out).capitalize() + "."


async def test_learned_chars_per_token_match_the_real_tokenizer(real_fleet, make_app):
    app = await make_app(real_fleet.addresses)
    c = client(app, timeout=120)
    rng = random.Random(14)
    chars = tokens = 0
    for i in range(6):
        prompt = prose(rng, 600 + 100 * i)
        r = await c.completions.create(model="llama2", prompt=prompt, max_tokens=1)
        chars, tokens = chars + len(prompt), tokens + r.usage.prompt_tokens
    await wait_for(lambda: len(records(app)) == 6, "six access-log lines")
    truth = chars / tokens  # the real tokenizer, as usage reported it
    learned = app.router.tokens.ratio(BASE)
    assert learned == pytest.approx(truth, rel=0.2), (learned, truth)
    assert learned != 4.0 and abs(truth - 4.0) > 0.2 * truth  # not the old assumption
    assert app.registry.get_sample_value("llmtraffic_balancer_chars_per_token",
                                         {"model": BASE}) == learned
    prompt = prose(rng, 900)
    r = await c.completions.create(model="llama2", prompt=prompt, max_tokens=1)
    assert app.router.tokens.estimate(BASE, len(prompt)) == \
        pytest.approx(r.usage.prompt_tokens, rel=0.2)


async def test_hanging_up_right_after_done_is_a_200_with_its_tokens(real_fleet, make_app):
    app = await make_app(real_fleet.addresses)
    body = orjson.dumps({"model": "llama2", "prompt": "Count to ten:", "max_tokens": 8,
                         "stream": True})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        resp = await s.post(f"http://127.0.0.1:{app.port}/v1/completions", data=body,
                            headers={"Host": "test.com", "Content-Type": "application/json"})
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: [DONE]"):
                break
        resp.close()  # at once, as the clients that were logged 499 DC did
    await wait_for(lambda: len(records(app)) == 1, "the access-log line", 60)
    (rec,) = records(app)
    assert rec["response_code"] == 200 and rec.get("response_flags") is None
    assert rec["completion_tokens"] == 8 and rec["prompt_tokens"] > 0
