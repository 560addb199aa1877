"""Security of the proxy: bearer auth on requests and on /metrics; no Authorization, API key
or cookie in the access log, in the exporter's enriched log written from it, in /metrics or in
the process logs, whatever the request's fate; model-label cardinality capped on both sides."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.exporter.app import ExporterApp, ExporterOptions
from tests.balancer.conftest import BASE, SEED_DIR, records
from tests.fixtures.fakepod import FakePod

pytestmark = pytest.mark.e2e

API_KEY = "sk-live-0a1b2c3d4e5f"
METRICS_TOKEN = "mt-9f8e7d6c5b4a"
#: header -> a secret value of its own, so a leak names its source
SECRETS = {"Cookie": "session=ck-4242deadbeef", "X-Api-Key": "xk-1337c0ffee",
           "Proxy-Authorization": "Basic cHJveHk6cGEtc2VjcmV0", "X-Goog-Api-Key": "gk-77aa"}
WRONG_KEY = "sk-wrong-55aa66bb"
BODY = b'{"model": "tweet-summary", "prompt": "hi", "max_tokens": 1}'


@pytest.fixture
async def pod():
    p = await FakePod(BASE).start()
    yield p
    await p.stop()


async def exporter_over(access_log: str, tmp_path: Path, lines: int,
                        max_label_values: int = 200) -> ExporterApp:
    """An exporter that has read `lines` lines of the balancer's access log."""
    app = ExporterApp(ExporterOptions(access_logs=[access_log], from_beginning=True,
                                      listen="127.0.0.1:0", poll_interval=0.02,
                                      enriched_log=str(tmp_path / "enriched.log"),
                                      max_label_values=max_label_values))
    await app.start()
    for _ in range(500):
        if sum(app.stats.lines.values()) >= lines:
            break
        await asyncio.sleep(0.02)
    assert sum(app.stats.lines.values()) == lines
    return app


async def test_no_secret_reaches_any_log(pod, make_app, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    app = await make_app([pod.address], api_key=API_KEY, metrics_token=METRICS_TOKEN)
    base = f"http://127.0.0.1:{app.port}"
    good = {"Host": "test.com", "Authorization": f"Bearer {API_KEY}", **SECRETS}
    seen: list[int] = []
    async with aiohttp.ClientSession() as s:
        async def post(body: bytes, path: str = "/v1/completions", **headers: str) -> None:
            async with s.post(base + path, data=body, headers=headers) as r:
                await r.read()
                seen.append(r.status)

        await post(BODY, **good)  # served
        await post(b'{"model": "tweet-summary", "prompt": "hi", "max_tokens": 2, '
                   b'"stream": true}', **good)  # streamed
        await post(BODY, **{**good, "Authorization": f"Bearer {WRONG_KEY}"})  # 401
        await post(BODY, **{k: v for k, v in good.items() if k != "Authorization"})  # 401
        await post(b'{"model": "tweet-summary", "prompt": ', **good)  # 400
        await post(b'{"model": "no-such-model", "prompt": "hi"}', **good)  # 404
        await post(BODY, **{**good, "Cookie": "big=" + "c" * 9000})  # 400 from the parser
        await post(BODY, **{**good, "Authorization": f"Bearer {API_KEY}" + "k" * 9000})
        async with s.get(base + "/v1/models", headers=good) as r:
            seen.append(r.status)
        async with s.get(base + "/metrics", headers={**SECRETS,
                                                     "Authorization": f"Bearer {WRONG_KEY}"}) as r:
            seen.append(r.status)
        async with s.get(base + "/metrics",
                         headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as r:
            seen.append(r.status)
            exposition = await r.text()
    assert seen == [200, 200, 401, 401, 400, 404, 400, 400, 200, 401, 200]
    assert pod.requests == 2
    access = Path(app.options.access_log).read_text()  # type: ignore[arg-type]
    assert [x["response_code"] for x in records(app)] == [200, 200, 401, 401, 400, 404]

    exporter = await exporter_over(app.options.access_log, tmp_path, 6)  # type: ignore[arg-type]
    await exporter.stop()
    enriched = (tmp_path / "enriched.log").read_text()
    assert len(enriched.splitlines()) == 6
    secrets = [API_KEY, METRICS_TOKEN, WRONG_KEY, *SECRETS.values(), "ck-4242", "kkkkkkkk",
               "cccccccc"]
    for where, text in (("access log", access), ("enriched log", enriched),
                        ("/metrics", exposition), ("process logs", caplog.text)):
        for secret in secrets:
            assert secret not in text, f"{secret!r} in the {where}"
    for where, text in (("access log", access), ("enriched log", enriched)):
        for name in ("authorization", "cookie", "api_key", "api-key", "bearer"):
            assert name not in text.lower(), f"{name!r} in the {where}"


async def test_metrics_need_the_bearer_token_when_set(pod, make_app):
    app = await make_app([pod.address], metrics_token=METRICS_TOKEN)
    url = f"http://127.0.0.1:{app.port}/metrics"
    async with aiohttp.ClientSession() as s:
        for headers, want in (({}, 401), ({"Authorization": METRICS_TOKEN}, 401),
                              ({"Authorization": f"Basic {METRICS_TOKEN}"}, 401),
                              ({"Authorization": f"Bearer {WRONG_KEY}"}, 401),
                              ({"Authorization": f"Bearer {METRICS_TOKEN}"}, 200),
                              ({"Authorization": f"bearer  {METRICS_TOKEN} "}, 200)):
            async with s.get(url, headers=headers) as r:
                assert r.status == want, headers
                if want == 401:
                    assert (await r.json())["error"]["type"] == "authentication_error"
        # requests need no key when only /metrics has one
        async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", data=BODY,
                          headers={"Host": "test.com"}) as r:
            assert r.status == 200


def model_labels(text: str, sample: str) -> set[str]:
    return {s.labels["model"] for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == sample}


async def test_model_label_cardinality_is_capped(pod, make_app, tmp_path):
    """A pool without InferenceModels serves whatever its pods serve: every name is routed
    (a 404's name would take no slot at all: tests/balancer/test_poison.py)."""
    cap = 5
    passthrough = [str(SEED_DIR / f) for f in ("inferencepool.yaml", "llmroute.yaml")]
    app = await make_app([pod.address], max_label_values=cap, configs=passthrough)
    names = [f"model-{i}" for i in range(40)] + ["tweet-summary"]
    async with aiohttp.ClientSession() as s:
        for name in names:
            async with s.post(f"http://127.0.0.1:{app.port}/v1/completions",
                              data=f'{{"model": "{name}", "prompt": "hi"}}'.encode(),
                              headers={"Host": "test.com"}) as r:
                assert r.status == 200
        async with s.get(f"http://127.0.0.1:{app.port}/metrics") as r:
            text = await r.text()
    for sample in ("llmtraffic_balancer_requests_total",):
        got = model_labels(text, sample)
        assert len(got) == cap + 1 and "other" in got, (sample, got)
    overflow = {s.labels["label"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "llmtraffic_exporter_label_overflow_total"}
    assert overflow == {"model": len(names) - cap}

    # the exporter reading the same access log caps its own series the same way
    exporter = await exporter_over(app.options.access_log, tmp_path,  # type: ignore[arg-type]
                                   len(names), max_label_values=cap)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{exporter.port}/metrics") as r:
                got = model_labels(await r.text(), "asm_llm_proxy_requests_total")
    finally:
        await exporter.stop()
    assert len(got) == cap + 1 and "other" in got
