"""A simulated pod over real HTTP with the `openai` SDK as client: completions and chat,
streaming and not, adapters, every error status, and /metrics checked name by name, label
by label and bucket by bucket against vLLM's (FACTS.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts import vllm as v
from llmtraffic.simulator.server import call_in_fleet, run_fleet_in_thread
from llmtraffic.simulator.workloads import SEED_ADAPTERS

BASE = "meta-llama/Llama-2-7b-hf"
LORAS = {a: f"/adapters/{a}" for a in SEED_ADAPTERS}


@pytest.fixture(scope="module")
def pod():
    with run_fleet_in_thread(1, time_scale=20, lora_modules=LORAS, max_loras=2) as fleet:
        yield fleet.servers[0]


@pytest.fixture(scope="module")
def client(pod):
    return openai.OpenAI(base_url=pod.url + "/v1", api_key="unused", max_retries=0)


def post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def families(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_completion_non_streaming_has_usage(client):
    r = client.completions.create(model=BASE, prompt="Write as if you were a critic: San "
                                  "Francisco", max_tokens=12, extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == 22  # 44 characters / 2 (the profile's tokenizer)
    assert r.usage.total_tokens == 34
    assert len(r.choices[0].text.split()) == 12


def test_chat_streaming_with_usage_counts_every_chunk(client):
    stream = client.chat.completions.create(
        model="tweet-summary", messages=[{"role": "user", "content": "summarise this"}],
        max_tokens=9, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 9
    assert chunks[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9


def test_streaming_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.completions.create(model=BASE, prompt="hi", max_tokens=4,
                                            stream=True))
    assert all(c.choices for c in chunks)
    assert 1 <= len(chunks) <= 4


def test_eos_makes_some_requests_stop_early(client):
    reasons = {client.completions.create(model=BASE, prompt=f"q{i}", max_tokens=400)
               .choices[0].finish_reason for i in range(12)}
    assert "stop" in reasons


def test_stop_string_ends_the_completion(client):
    r = client.completions.create(model=BASE, prompt="x", max_tokens=50, stop=["real"],
                                  extra_body={"ignore_eos": True})
    assert "real" not in r.choices[0].text
    assert r.choices[0].finish_reason == "stop"


def test_models_lists_base_and_adapters(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {BASE, *SEED_ADAPTERS}
    assert models["sql-lora"].model_extra["parent"] == BASE


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": "x"}', 400, "model"),
    (b'{"model": "meta-llama/Llama-2-7b-hf"}', 400, "prompt"),
    (b'{"model": "meta-llama/Llama-2-7b-hf", "prompt": "x", "max_tokens": 0}', 400,
     "max_tokens"),
    (b'{"model": "meta-llama/Llama-2-7b-hf", "prompt": "x", "max_tokens": "9"}', 400,
     "max_tokens"),
    (b'{"model": "meta-llama/Llama-2-7b-hf", "prompt": "x", "stop": 5}', 400, "stop"),
    (b'{"model": "gpt-9", "prompt": "x"}', 404, "model"),
])
def test_errors_are_openai_shaped(pod, body, status, param):
    code, err = post(pod.url + "/v1/completions", body)
    assert code == status
    assert set(err["error"]) >= {"message", "type", "code"}
    assert err["error"]["code"] == status and err["error"]["param"] == param
    assert err["error"]["message"]


def test_chat_errors_and_unknown_path(pod, client):
    code, err = post(pod.url + "/v1/chat/completions",
                     b'{"model": "meta-llama/Llama-2-7b-hf", "messages": []}')
    assert code == 400 and err["error"]["param"] == "messages"
    code, err = post(pod.url + "/v1/embeddings", b"{}")
    assert code == 404 and "/v1/completions" in err["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    too_long = "word " * 5000
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=BASE, prompt=too_long)
    # and the pod still serves
    assert client.completions.create(model=BASE, prompt="ok", max_tokens=1).usage


def hist_buckets(fam) -> list[float]:
    return [float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")]


def test_metrics_v1_names_types_labels_buckets(pod, client):
    client.completions.create(model=BASE, prompt="warm up", max_tokens=3)
    fams = families(pod.url)
    expect_types = {
        v.NUM_REQUESTS_RUNNING: "gauge", v.NUM_REQUESTS_WAITING: "gauge",
        v.KV_CACHE_USAGE: "gauge", v.LORA_REQUESTS_INFO: "gauge", v.CACHE_CONFIG_INFO: "gauge",
        v.PREFIX_CACHE_QUERIES: "counter", v.PREFIX_CACHE_HITS: "counter",
        v.PROMPT_TOKENS: "counter", v.GENERATION_TOKENS: "counter",
        v.REQUEST_SUCCESS: "counter", v.NUM_PREEMPTIONS: "counter",
        v.TTFT: "histogram", v.INTER_TOKEN_LATENCY: "histogram",
        v.TIME_PER_OUTPUT_TOKEN: "histogram", v.E2E_LATENCY: "histogram",
        v.QUEUE_TIME: "histogram", v.INFERENCE_TIME: "histogram", v.PREFILL_TIME: "histogram",
        v.DECODE_TIME: "histogram", v.REQUEST_PROMPT_TOKENS: "histogram",
        v.REQUEST_GENERATION_TOKENS: "histogram", v.REQUEST_MAX_TOKENS: "histogram",
        v.ITERATION_TOKENS: "histogram"}
    for name, kind in expect_types.items():
        assert name in fams, name
        assert fams[name].type == kind, name
    for name in (v.NUM_REQUESTS_RUNNING, v.KV_CACHE_USAGE, v.PROMPT_TOKENS, v.TTFT):
        for s in fams[name].samples:
            if s.name.endswith("_created"):
                continue
            assert s.labels["model_name"] == BASE and s.labels["engine"] == "0", s
    assert {s.name for s in fams[v.PROMPT_TOKENS].samples} >= {"vllm:prompt_tokens_total"}
    assert {s.labels["finished_reason"] for s in fams[v.REQUEST_SUCCESS].samples} >= {
        "stop", "length", "abort"}
    assert hist_buckets(fams[v.TTFT]) == [*v.TTFT_BUCKETS, float("inf")]
    assert hist_buckets(fams[v.INTER_TOKEN_LATENCY]) == [*v.TOKEN_LATENCY_BUCKETS, float("inf")]
    for name in (v.E2E_LATENCY, v.QUEUE_TIME, v.PREFILL_TIME):
        assert hist_buckets(fams[name]) == [*v.REQUEST_LATENCY_BUCKETS, float("inf")]
    assert hist_buckets(fams[v.ITERATION_TOKENS]) == [*map(float, v.ITERATION_TOKENS_BUCKETS),
                                                      float("inf")]
    assert hist_buckets(fams[v.REQUEST_PROMPT_TOKENS])[:6] == [1, 2, 5, 10, 20, 50]
    info = fams[v.LORA_REQUESTS_INFO].samples
    assert len(info) == 1
    assert set(info[0].labels) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
    assert info[0].labels["max_lora"] == "2"
    assert abs(info[0].value - time.time()) < 3600
    cache = fams[v.CACHE_CONFIG_INFO].samples[0]
    assert cache.value == 1 and cache.labels["block_size"] == "16"
    assert int(cache.labels["num_gpu_blocks"]) == pod.config.num_gpu_blocks


def test_metrics_legacy_names():
    with run_fleet_in_thread(1, time_scale=20, metrics_version="legacy") as fleet:
        c = openai.OpenAI(base_url=fleet.urls[0] + "/v1", api_key="x", max_retries=0)
        c.completions.create(model=BASE, prompt="hello " * 30, max_tokens=5)
        fams = families(fleet.urls[0])
    for name, kind in {v.LEGACY_GPU_CACHE_USAGE: "gauge", v.LEGACY_CPU_CACHE_USAGE: "gauge",
                       v.LEGACY_NUM_REQUESTS_SWAPPED: "gauge",
                       v.LEGACY_AVG_PROMPT_THROUGHPUT: "gauge",
                       v.LEGACY_AVG_GENERATION_THROUGHPUT: "gauge",
                       v.LEGACY_PREFIX_CACHE_QUERIES: "counter",
                       v.LEGACY_TIME_PER_OUTPUT_TOKEN: "histogram",
                       v.NUM_REQUESTS_RUNNING: "gauge", v.TTFT: "histogram",
                       v.PROMPT_TOKENS: "counter", v.LORA_REQUESTS_INFO: "gauge"}.items():
        assert fams[name].type == kind, name
    assert v.KV_CACHE_USAGE not in fams and v.PREFIX_CACHE_QUERIES not in fams
    assert fams[v.LEGACY_AVG_GENERATION_THROUGHPUT].samples[0].value > 0


def test_lora_info_lists_adapters_as_vllm_0_32_does(pod):
    """max_loras=2, three adapters at once: as on real vLLM 0.32 (tests/fixtures/vllm/
    busy.txt), running_ and waiting_lora_adapters carry the same list, the two adapters
    that run in the order they started, and the third, waiting for a slot, is in neither:
    only num_requests_waiting_by_reason{reason="deferred"} counts it."""
    import concurrent.futures as cf
    c = openai.OpenAI(base_url=pod.url + "/v1", api_key="x", max_retries=0)

    def go(model):
        return c.completions.create(model=model, prompt="p", max_tokens=200,
                                    extra_body={"ignore_eos": True})

    adapters = ("sql-lora", "tweet-summary", "sql-lora-1")
    with cf.ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(go, m) for m in adapters]
        seen = None
        for _ in range(200):
            fams = families(pod.url)
            newest = max(fams[v.LORA_REQUESTS_INFO].samples, key=lambda s: s.value)
            running = [a for a in newest.labels["running_lora_adapters"].split(",") if a]
            deferred = {s.labels["reason"]: s.value
                        for s in fams[v.NUM_REQUESTS_WAITING_BY_REASON].samples}["deferred"]
            if len(running) == 2 and deferred == 1:
                seen = newest.labels  # adapters arrive one by one; wait for both slots
                break
            time.sleep(0.02)
        [f.result(30) for f in futs]
    assert seen is not None
    assert seen["waiting_lora_adapters"] == seen["running_lora_adapters"]
    listed = seen["running_lora_adapters"].split(",")
    assert len(listed) == 2 and set(listed) < set(adapters)


def test_metrics_move_under_overload():
    import concurrent.futures as cf
    with run_fleet_in_thread(1, time_scale=20, max_num_seqs=4, num_gpu_blocks=64) as fleet:
        c = openai.OpenAI(base_url=fleet.urls[0] + "/v1", api_key="x", max_retries=0)

        def go(i):
            return c.completions.create(model=BASE, prompt=f"{i} " + "long prompt " * 30,
                                        max_tokens=60, extra_body={"ignore_eos": True})

        peak_wait = peak_kv = 0.0
        with cf.ThreadPoolExecutor(12) as ex:
            futs = [ex.submit(go, i) for i in range(12)]
            while not all(f.done() for f in futs):
                f = families(fleet.urls[0])
                peak_wait = max(peak_wait, f[v.NUM_REQUESTS_WAITING].samples[0].value)
                peak_kv = max(peak_kv, f[v.KV_CACHE_USAGE].samples[0].value)
                time.sleep(0.02)
            assert all(f.result().usage.completion_tokens == 60 for f in futs)
        after = families(fleet.urls[0])
    assert peak_wait > 0
    assert peak_kv > 0.3
    assert after[v.KV_CACHE_USAGE].samples[0].value == 0.0
    assert after[v.NUM_REQUESTS_RUNNING].samples[0].value == 0.0


def test_client_disconnect_mid_stream_frees_kv():
    import http.client
    with run_fleet_in_thread(1, time_scale=5) as fleet:
        server = fleet.servers[0]
        conn, resp = start_long_stream(server)
        for _ in range(3):
            resp.readline()
        assert server.engine.stats().kv_usage > 0
        conn.sock.close()  # the client goes away mid-stream
        conn.close()
        assert_aborted_and_freed(server)


def test_write_to_a_vanished_client_is_quiet_and_frees_kv(monkeypatch, caplog):
    """The client's connection dies under a write, before aiohttp's connection_lost can
    cancel the handler: the next write raises ClientConnectionResetError. The request is
    aborted in the engine (its KV blocks come back) and only a debug line is logged."""
    import logging
    import http.client
    from aiohttp import web

    write = web.StreamResponse.write
    writes = 0

    async def dying_write(self, data):
        nonlocal writes
        writes += 1
        if writes == 3:  # the socket breaks: transport closing, connection_lost pending
            self._req.transport.abort()
        return await write(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", dying_write)
    caplog.set_level(logging.DEBUG)
    with run_fleet_in_thread(1, time_scale=5) as fleet:
        server = fleet.servers[0]
        conn, resp = start_long_stream(server)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()  # the stream ends at the cut
        conn.close()
        assert_aborted_and_freed(server)
    assert writes >= 3
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    assert any(r.name == "llmtraffic.simulator.server" and r.levelno == logging.DEBUG
               and "went away" in r.getMessage() for r in caplog.records)


def test_stopped_pod_cuts_streams_and_refuses(pod):
    with run_fleet_in_thread(2, time_scale=20) as fleet:
        call_in_fleet(fleet, fleet.servers[0].stop())
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(fleet.urls[0] + "/health", timeout=2)
        with urllib.request.urlopen(fleet.urls[1] + "/health", timeout=2) as r:
            assert r.status == 200


def test_sim_command_prints_urls_serves_and_stops_on_sigint(port_pair):
    port = port_pair
    proc = subprocess.Popen([sys.executable, "-m", "llmtraffic", "sim", "--pods", "2",
                             "--base-port", str(port), "--time-scale", "20",
                             "--seed-adapters"],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert f"http://127.0.0.1:{port}" in lines[0]
        assert f"http://127.0.0.1:{port + 1}" in lines[1] and "adapters=10" in lines[1]
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port + 1}/v1", api_key="x",
                          max_retries=0)
        assert c.completions.create(model="sql-lora", prompt="x", max_tokens=2).usage
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0


def assert_aborted_and_freed(server) -> None:
    """The one request was aborted and every KV block came back (polls up to ~4 s)."""
    for _ in range(200):
        if server.engine.stats().kv_usage == 0 and not server.engine.has_work():
            break
        time.sleep(0.02)
    st = server.engine.stats()
    assert st.kv_usage == 0 and st.num_running == 0
    assert st.finished.get("abort") == 1


def start_long_stream(server):
    """A streaming request of 2,000 tokens over a plain socket the test can cut."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/v1/completions", body=json.dumps({
        "model": BASE, "prompt": "x " * 400, "max_tokens": 2000, "stream": True,
        "ignore_eos": True}), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()
