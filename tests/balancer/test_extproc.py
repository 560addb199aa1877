"""The ext_proc endpoint picker against simulated vLLM pods. No Envoy binary can run here, so
the test client plays Envoy through the real `envoy.service.ext_proc.v3` stubs: it sends
the ProcessingRequest messages Envoy would send (request headers, buffered body, response
headers, streamed response body), applies the picker's header and body mutations, and
really POSTs the mutated body to the endpoint named in `x-gateway-destination-endpoint` as
an ORIGINAL_DST cluster would. deploy/envoy/envoy.yaml is checked against Envoy's protos
and against what the picker emits and the exporter reads."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmtraffic.balancer import extproc
from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.extproc import DESTINATION, ExtProcOptions, ExtProcServer
from llmtraffic.balancer.policy.llm import PolicyConfig
from llmtraffic.exporter.accesslog import FieldMapping, JsonLineParser
from llmtraffic.contracts.record import LLMRecord
from llmtraffic.contracts.store import Pod
from llmtraffic.simulator.server import SEED_ADAPTERS, run_fleet_in_thread

ROOT = Path(__file__).resolve().parents[2]
SEED = sorted(glob.glob(str(ROOT / "deploy" / "seed" / "*.yaml")))
ENVOY_YAML = ROOT / "deploy" / "envoy" / "envoy.yaml"
POOL = "vllm-llama2-7b-pool"
STEP4 = {"model": "tweet-summary", "prompt": "Write as if you were a critic: San Francisco",
         "max_tokens": 100, "temperature": 0}
SPLIT = ("tweet-summary-1", "tweet-summary-2")
EXTRA_MODELS = f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {{name: summarizer}}
spec:
  modelName: summarizer
  criticality: Standard
  poolRef: {{name: {POOL}}}
  targetModels:
  - {{name: {SPLIT[0]}, weight: 50}}
  - {{name: {SPLIT[1]}, weight: 50}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {{name: batch-summary}}
spec:
  modelName: batch-summary
  criticality: Sheddable
  poolRef: {{name: {POOL}}}
  targetModels:
  - {{name: tweet-summary-3, weight: 100}}
"""
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet():
    with run_fleet_in_thread(2, time_scale=50, max_loras=4,
                             lora_modules={a: f"/adapters/{a}" for a in SEED_ADAPTERS}) as f:
        yield f


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> list[str]:
    extra = tmp_path_factory.mktemp("cfg") / "models.yaml"
    extra.write_text(EXTRA_MODELS)
    return SEED + [str(extra)]


@contextlib.asynccontextmanager
async def picker(configs: list[str], addresses: list[str], log_path: Path,
                 policy_config: PolicyConfig | None = None, **options):
    pods = [Pod(name=f"vllm-{i}", address=a, labels={"app": POOL})
            for i, a in enumerate(addresses)]
    server = ExtProcServer(
        StaticDiscovery(configs, pods=pods),
        ExtProcOptions(listen="127.0.0.1:0", health_listen="127.0.0.1:0", seed=7,
                       access_log=str(log_path), scrape_interval=0.05,
                       policy_config=policy_config, **options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# ---- the client that plays Envoy -------------------------------------------------------------
def headers(pairs: dict[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode())
                                       for k, v in pairs.items()])


def merge_metadata(into: dict[str, dict], resp: pb.ProcessingResponse) -> None:
    """As Envoy does: each namespace's fields merged into what earlier answers set."""
    if resp.HasField("dynamic_metadata"):
        for ns, fields in json_format.MessageToDict(resp.dynamic_metadata).items():
            into.setdefault(ns, {}).update(fields)


def apply_headers(hs: dict[str, str], common: pb.CommonResponse) -> None:
    for opt in common.header_mutation.set_headers:
        hs[opt.header.key.lower()] = opt.header.raw_value.decode() or opt.header.value
    for k in common.header_mutation.remove_headers:
        hs.pop(k.lower(), None)


@dataclass
class Exchange:
    """What the client (and the pod) saw of one request through the picker."""

    immediate: pb.ImmediateResponse | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    sent_body: bytes = b""  # what went to the pod
    destination: str | None = None
    status: int = 0
    upstream: bytes = b""  # what the pod answered
    client: bytes = b""  # what the client got after the picker's mutations
    metadata: dict[str, dict] = field(default_factory=dict)


class FakeEnvoy:
    """Envoy's ext_proc filter with request body BUFFERED (or FULL_DUPLEX_STREAMED) and
    response body STREAMED, then an ORIGINAL_DST cluster keyed on the picker's header."""

    def __init__(self, port: int, http: aiohttp.ClientSession) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.ExternalProcessorStub(self.channel)
        self.http = http

    async def close(self) -> None:
        await self.channel.close()

    async def send(self, body: dict[str, Any] | bytes, path: str = "/v1/completions",
                   host: str = "test.com", chunk: int = 41, duplex: bool = False,
                   use_fallback: bool = False, extra: dict[str, str] | None = None
                   ) -> Exchange:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        ex = Exchange()
        ex.request_headers = {":method": "POST", ":path": path, ":authority": host,
                              ":scheme": "http", "content-type": "application/json",
                              "content-length": str(len(raw)), "x-request-id": "req-1",
                              **(extra or {})}
        call = self.stub.Process()
        first = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
            headers=headers(ex.request_headers)))
        first.attributes[extproc.ATTRIBUTES].update(
            {"request.protocol": "HTTP/1.1", "source.address": "10.0.0.9:51000"})
        if duplex:
            first.protocol_config.request_body_mode = \
                processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
            first.protocol_config.response_body_mode = \
                processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
        await call.write(first)
        if duplex:  # the picker answers nothing before the whole body is there
            half = len(raw) // 2
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(body=raw[:half])))
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=raw[half:], end_of_stream=True)))
        resp = await call.read()
        merge_metadata(ex.metadata, resp)
        if resp.WhichOneof("response") == "immediate_response":
            ex.immediate = resp.immediate_response
            assert await call.read() == grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            return ex
        assert resp.WhichOneof("response") == "request_headers"
        apply_headers(ex.request_headers, resp.request_headers.response)
        if duplex:
            sent = b""
            while True:
                resp = await call.read()
                merge_metadata(ex.metadata, resp)
                streamed = resp.request_body.response.body_mutation.streamed_response
                sent += streamed.body
                if streamed.end_of_stream:
                    break
            ex.sent_body = sent
        else:
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=raw, end_of_stream=True)))
            resp = await call.read()
            merge_metadata(ex.metadata, resp)
            if resp.WhichOneof("response") == "immediate_response":
                ex.immediate = resp.immediate_response
                assert await call.code() == grpc.StatusCode.OK
                return ex
            common = resp.request_body.response
            apply_headers(ex.request_headers, common)
            ex.sent_body = common.body_mutation.body \
                if common.body_mutation.WhichOneof("mutation") == "body" else raw
        assert int(ex.request_headers["content-length"]) == len(ex.sent_body)
        ex.destination = ex.request_headers[DESTINATION]
        served = None
        if use_fallback:  # as a list-aware LB does when the pick fails: next in the list
            served = ex.destination = ex.metadata["envoy.lb"][DESTINATION].split(",")[1]
        await self._upstream(call, ex, path, chunk, duplex, served)
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        # the picker finished (and logged) before the stream's status arrives
        assert await call.code() == grpc.StatusCode.OK
        return ex

    async def _upstream(self, call, ex: Exchange, path: str, chunk: int, duplex: bool,
                        served: str | None) -> None:
        """The ORIGINAL_DST cluster: POST to the header's address, relay the answer."""
        async with self.http.post(f"http://{ex.destination}{path}", data=ex.sent_body,
                                  headers={"Content-Type": "application/json"}) as up:
            ex.status = up.status
            rh = {":status": str(up.status),
                  "content-type": up.headers.get("Content-Type", "")}
            if "Content-Length" in up.headers:
                rh["content-length"] = up.headers["Content-Length"]
            msg = pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=headers(rh)))
            if served:  # GIE: Envoy reports the endpoint it used
                msg.metadata_context.filter_metadata[extproc.LB_NAMESPACE].update(
                    {extproc.SERVED: served})
            await call.write(msg)
            resp = await call.read()
            assert resp.WhichOneof("response") == "response_headers"
            async for piece in up.content.iter_chunked(chunk):
                ex.upstream += piece
                ex.client += await self._body_chunk(call, ex, piece, False, duplex)
        ex.client += await self._body_chunk(call, ex, b"", True, duplex)

    async def _body_chunk(self, call, ex: Exchange, piece: bytes, eos: bool,
                          duplex: bool) -> bytes:
        await call.write(pb.ProcessingRequest(response_body=pb.HttpBody(
            body=piece, end_of_stream=eos)))
        resp = await call.read()
        merge_metadata(ex.metadata, resp)
        assert resp.WhichOneof("response") == "response_body"
        mutation = resp.response_body.response.body_mutation
        if duplex:
            assert mutation.streamed_response.end_of_stream == eos
            return mutation.streamed_response.body
        return mutation.body if mutation.WhichOneof("mutation") == "body" else piece


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


def log_lines(path: Path) -> list[LLMRecord]:
    parser = JsonLineParser(FieldMapping.preset("llmtraffic"))
    return [parser.parse(line) for line in path.read_bytes().splitlines()]


def sse_events(data: bytes) -> list[bytes]:
    return [line[5:].strip() for line in data.split(b"\n") if line.startswith(b"data:")]


# ---- requests --------------------------------------------------------------------------------
async def test_completion_picked_forwarded_and_counted(fleet, configs, tmp_path, http):
    log = tmp_path / "access.log"
    async with picker(configs, fleet.addresses, log) as server:
        envoy = FakeEnvoy(server.port, http)
        ex = await envoy.send(STEP4)
        await envoy.close()
        assert ex.destination in fleet.addresses
        assert ex.sent_body == orjson.dumps(STEP4)  # nothing to rewrite: body untouched
        endpoints = ex.metadata["envoy.lb"][DESTINATION].split(",")
        assert endpoints[0] == ex.destination
        assert sorted(endpoints) == sorted(fleet.addresses)  # pick, then the fallback
        assert ex.status == 200 and ex.client == ex.upstream
        usage = orjson.loads(ex.upstream)["usage"]
        llm = ex.metadata["llmtraffic"]
        assert llm["model"] == llm["target_model"] == "tweet-summary"
        assert llm["pool"] == POOL and llm["criticality"] == "Critical"
        assert (llm["prompt_tokens"], llm["completion_tokens"]) == \
            (usage["prompt_tokens"], usage["completion_tokens"])
        reg = server.core.registry
        # counted once: the gateway's token series are the exporter's, not each replica's
        assert reg.get_sample_value("asm_llm_proxy_prompt_tokens_total",
                                    {"model": "tweet-summary"}) is None
        assert reg.get_sample_value("llmtraffic_balancer_completion_tokens_total",
                                    {"pool": POOL, "model": "tweet-summary",
                                     "lb_policy": "llm"}) == usage["completion_tokens"]
        assert server.core.store.inflight(ex.destination) == 0
    [rec] = log_lines(log)
    assert (rec.method, rec.path, rec.authority, rec.request_id) == \
        ("POST", "/v1/completions", "test.com", "req-1")
    assert rec.response_code == 200 and rec.response_flags is None
    assert rec.upstream_host == ex.destination and rec.pod.startswith("vllm-")
    assert (rec.model, rec.pool, rec.stream) == ("tweet-summary", POOL, False)
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == \
        (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    assert rec.bytes_received == len(ex.sent_body) and rec.bytes_sent == len(ex.client)
    assert (rec.protocol, rec.downstream_remote_address) == ("HTTP/1.1", "10.0.0.9:51000")


async def test_served_fallback_takes_the_in_flight_slot(fleet, configs, tmp_path, http):
    log = tmp_path / "access.log"
    async with picker(configs, fleet.addresses, log) as server:
        envoy = FakeEnvoy(server.port, http)
        ex = await envoy.send({**STEP4, "max_tokens": 5}, use_fallback=True)
        await envoy.close()
        assert ex.status == 200 and ex.destination != ex.request_headers[DESTINATION]
        assert [server.core.store.inflight(a) for a in fleet.addresses] == [0, 0]
    [rec] = log_lines(log)
    assert rec.upstream_host == ex.destination
    assert rec.pod == f"vllm-{fleet.addresses.index(ex.destination)}"


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_stream_usage_counted_and_injected_event_dropped(fleet, configs, tmp_path, http,
                                                              client_wants_usage):
    log = tmp_path / "access.log"
    body = {**STEP4, "max_tokens": 30, "stream": True}
    if client_wants_usage:
        body["stream_options"] = {"include_usage": True}
    async with picker(configs, fleet.addresses, log) as server:
        envoy = FakeEnvoy(server.port, http)
        ex = await envoy.send(body, chunk=37)  # chunk edges fall inside SSE lines
        await envoy.close()
    sent = orjson.loads(ex.sent_body)
    assert sent["stream_options"]["include_usage"] is True
    assert ex.status == 200
    upstream, client = sse_events(ex.upstream), sse_events(ex.client)
    usage_events = [e for e in upstream if e != b"[DONE]" and orjson.loads(e).get("usage")]
    assert len(usage_events) == 1
    if client_wants_usage:
        assert ex.client == ex.upstream
    else:
        assert client == [e for e in upstream if e not in usage_events]
        assert ex.client.count(b"\n\n") == ex.upstream.count(b"\n\n") - 1
    assert client[-1] == b"[DONE]"
    usage = orjson.loads(usage_events[0])["usage"]
    [rec] = log_lines(log)
    assert (rec.prompt_tokens, rec.completion_tokens) == \
        (usage["prompt_tokens"], usage["completion_tokens"]) and usage["completion_tokens"] > 0
    assert rec.stream is True and rec.ttft_ms is not None and rec.response_flags is None
    assert ex.metadata["llmtraffic"]["completion_tokens"] == usage["completion_tokens"]
    assert rec.bytes_sent == len(ex.client)


async def test_full_duplex_streamed_chat(fleet, configs, tmp_path, http):
    """GIE's mode: the picker answers headers and body once the body is whole, and streams
    every response chunk back."""
    log = tmp_path / "access.log"
    body = {"model": "tweet-summary", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "Summarize: San Francisco fog"}]}
    async with picker(configs, fleet.addresses, log) as server:
        envoy = FakeEnvoy(server.port, http)
        ex = await envoy.send(body, path="/v1/chat/completions", duplex=True)
        await envoy.close()
    assert ex.destination in fleet.addresses and ex.status == 200
    assert orjson.loads(ex.sent_body)["messages"] == body["messages"]
    assert sse_events(ex.client)[-1] == b"[DONE]"
    assert b'"usage"' not in ex.client and b'"usage"' in ex.upstream
    [rec] = log_lines(log)
    assert rec.completion_tokens and rec.path == "/v1/chat/completions"


async def test_weighted_split_rewrites_model(fleet, configs, tmp_path, http):
    async with picker(configs, fleet.addresses, tmp_path / "access.log") as server:
        envoy = FakeEnvoy(server.port, http)
        seen = set()
        for _ in range(6):
            ex = await envoy.send({**STEP4, "model": "summarizer", "max_tokens": 5})
            sent = orjson.loads(ex.sent_body)
            assert sent["model"] in SPLIT and sent["prompt"] == STEP4["prompt"]
            assert ex.metadata["llmtraffic"]["target_model"] == sent["model"]
            assert ex.metadata["llmtraffic"]["model"] == "summarizer"
            assert ex.status == 200  # the pod serves the adapter it was sent
            seen.add(sent["model"])
        await envoy.close()
    assert seen == set(SPLIT)  # seeded: both halves of the split in six draws


async def test_unknown_model_and_host_get_immediate_404(fleet, configs, tmp_path, http):
    log = tmp_path / "access.log"
    async with picker(configs, fleet.addresses, log) as server:
        envoy = FakeEnvoy(server.port, http)
        ex = await envoy.send({**STEP4, "model": "no-such-model"})
        other = await envoy.send(STEP4, host="elsewhere.example")
        # a misconfigured filter: STREAMED request bodies reach the router before a pick
        call = envoy.stub.Process()
        first = pb.ProcessingRequest(request_headers=pb.HttpHeaders(
            headers=headers({":method": "POST", ":path": "/v1/completions"})))
        first.protocol_config.request_body_mode = processing_mode_pb2.ProcessingMode.STREAMED
        await call.write(first)
        streamed = (await call.read()).immediate_response
        await envoy.close()
        assert streamed.status.code == 500 and b"BUFFERED" in streamed.body
    for e, words in ((ex, "no-such-model"), (other, "elsewhere.example")):
        assert e.immediate is not None and e.immediate.status.code == 404
        hs = {o.header.key: o.header.raw_value.decode() for o in e.immediate.headers.set_headers}
        assert hs["content-type"] == "application/json"
        err = orjson.loads(e.immediate.body)["error"]
        assert err["code"] == 404 and words in err["message"]
    assert [r.response_code for r in log_lines(log)] == [404, 404, 500]


async def test_the_objective_header_reaches_the_router(fleet, configs, tmp_path, http):
    async with picker(configs, fleet.addresses, tmp_path / "access.log") as server:
        seen = []
        decide = server.core.router.decide

        def spy(host, body, chat, objective=None, *rest):
            seen.append(objective)
            return decide(host, body, chat, objective, *rest)

        server.core.router.decide = spy
        envoy = FakeEnvoy(server.port, http)
        await envoy.send({**STEP4, "max_tokens": 2},
                         extra={"x-gateway-inference-objective": "interactive"})
        await envoy.send({**STEP4, "max_tokens": 2})
        await envoy.close()
    assert seen == ["interactive", None]


async def test_sheddable_on_saturated_pool_gets_429(fleet, configs, tmp_path, http):
    """Thresholds 0: one running request on every pod saturates the pool. No admission
    queue (GIE without flow control): the Critical request is scheduled at once."""
    cfg = PolicyConfig(queue_threshold=0, kv_threshold=0, retry_after_s=3)
    hog = {"model": "tweet-summary", "prompt": "hold the pod", "max_tokens": 3000,
           "ignore_eos": True, "stream": True}
    async with picker(configs, fleet.addresses, tmp_path / "access.log", cfg,
                      max_queued=0) as server:
        hogs = [await http.post(f"http://{a}/v1/completions", json=hog)
                for a in fleet.addresses]
        try:
            deadline = time.monotonic() + 20
            while not all(p.fresh and p.kv_usage > 0
                          for p in server.core.store.snapshot(time.monotonic()).pods):
                assert time.monotonic() < deadline, "the scraper never saw the pods busy"
                await asyncio.sleep(0.02)
            envoy = FakeEnvoy(server.port, http)
            shed = await envoy.send({**STEP4, "model": "batch-summary"})
            critical = await envoy.send({**STEP4, "max_tokens": 5})
            await envoy.close()
        finally:
            for h in hogs:
                h.close()
        shed_total = server.core.registry.get_sample_value(
            "llmtraffic_balancer_shed_total",
            {"pool": POOL, "model": "batch-summary", "reason": "shed"})
    assert shed.immediate is not None and shed.immediate.status.code == 429
    hs = {o.header.key: o.header.raw_value.decode() for o in shed.immediate.headers.set_headers}
    assert hs["retry-after"] == "3"
    assert orjson.loads(shed.immediate.body)["error"]["type"] == "rate_limit_error"
    assert shed_total == 1
    assert critical.immediate is None and critical.status == 200  # Critical still served


async def test_no_pods_503_and_health(fleet, configs, tmp_path, http):
    async with picker(configs, [], tmp_path / "empty.log") as empty, \
            picker(configs, fleet.addresses, tmp_path / "access.log") as server:
        envoy = FakeEnvoy(empty.port, http)
        ex = await envoy.send(STEP4)
        await envoy.close()
        assert ex.immediate is not None and ex.immediate.status.code == 503
        assert orjson.loads(ex.immediate.body)["error"]["type"] == "service_unavailable"
        assert await health_status(empty.health_port, "") == "NOT_SERVING"
        assert await health_status(server.health_port, "liveness") == "SERVING"
        for service in ("", extproc.EXT_PROC_SERVICE, "readiness"):
            assert await health_status(server.health_port, service, wait=True) == "SERVING"


async def health_status(port: int, service: str, wait: bool = False) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + 10
        while True:
            r = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
            if not wait or name == "SERVING" or time.monotonic() > deadline:
                return name
            await asyncio.sleep(0.05)


async def test_get_without_body_and_stream_closed_early(fleet, configs, tmp_path):
    log = tmp_path / "access.log"
    async with picker(configs, fleet.addresses, log) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.ExternalProcessorStub(ch)
            call = stub.Process()
            await call.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(
                headers=headers({":method": "GET", ":path": "/v1/models",
                                 ":authority": "test.com"}), end_of_stream=True)))
            resp = await call.read()
            hs: dict[str, str] = {}
            apply_headers(hs, resp.request_headers.response)
            assert hs[DESTINATION] in fleet.addresses
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            # a picked request whose stream Envoy drops before any response
            call = stub.Process()
            await call.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(
                headers=headers({":method": "POST", ":path": "/v1/completions",
                                 ":authority": "test.com"}))))
            await call.read()
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=orjson.dumps(STEP4), end_of_stream=True)))
            resp = await call.read()
            hs = {}
            apply_headers(hs, resp.request_body.response)
            picked = hs[DESTINATION]
            assert server.core.store.inflight(picked) == 1
            call.cancel()
            deadline = time.monotonic() + 10
            while server.core.store.inflight(picked):
                assert time.monotonic() < deadline, "in-flight slot never released"
                await asyncio.sleep(0.02)
    get, dropped = log_lines(log)
    assert get.path == "/v1/models" and get.pool == POOL
    assert dropped.response_flags == "DC" and dropped.model == "tweet-summary"


# ---- the Envoy bootstrap example -----------------------------------------------------------
def envoy_doc() -> dict:
    return yaml.safe_load(ENVOY_YAML.read_text())


def test_envoy_yaml_parses_as_envoy_bootstrap():
    """Every typed_config resolves to Envoy's own message types (xds-protos)."""
    import envoy.extensions.access_loggers.file.v3.file_pb2  # noqa: F401
    import envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2  # noqa: F401
    import envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2  # noqa: F401
    import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
    import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401,E501
    import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    json_format.ParseDict(envoy_doc(), bootstrap_pb2.Bootstrap())


def _hcm(doc: dict) -> dict:
    [listener] = doc["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_envoy_yaml_wires_the_picker():
    doc = envoy_doc()
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    hcm = _hcm(doc)
    filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
    ext = filters["envoy.filters.http.ext_proc"]
    mode = ext["processing_mode"]
    assert (mode["request_body_mode"], mode["response_body_mode"]) == ("BUFFERED", "STREAMED")
    assert ext["failure_mode_allow"] is False
    assert set(ext["metadata_options"]["receiving_namespaces"]["untyped"]) == \
        {extproc.LB_NAMESPACE, extproc.LLM_NAMESPACE}
    picker_cluster = clusters[ext["grpc_service"]["envoy_grpc"]["cluster_name"]]
    endpoint = picker_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 9002
    assert endpoint["health_check_config"]["port_value"] == 9003
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    picked = clusters[routes[0]["route"]["cluster"]]
    assert routes[0]["match"]["headers"][0]["name"] == DESTINATION
    assert picked["type"] == "ORIGINAL_DST" and picked["lb_policy"] == "CLUSTER_PROVIDED"
    assert picked["original_dst_lb_config"] == {"use_http_header": True,
                                                "http_header_name": DESTINATION}
    strip = filters["envoy.filters.http.header_mutation"]["mutations"]["request_mutations"]
    assert {"remove": DESTINATION} in strip
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.header_mutation") < \
        names.index("envoy.filters.http.ext_proc") < names.index("envoy.filters.http.router")


METADATA = re.compile(r"^%DYNAMIC_METADATA\(([^:)]+):([^:)]+)\)%$")


def access_log_format() -> dict[str, str]:
    [logger] = _hcm(envoy_doc())["access_log"]
    return logger["typed_config"]["log_format"]["json_format"]


def test_envoy_access_log_keys_are_read_by_the_exporter():
    known = {k for keys in FieldMapping.preset().keys.values() for k in keys}
    fmt = access_log_format()
    assert set(fmt) <= known, f"keys the exporter does not map: {set(fmt) - known}"
    used = {METADATA.match(v).groups() for v in fmt.values() if METADATA.match(v)}
    assert {ns for ns, _ in used} == {extproc.LLM_NAMESPACE}
    assert {k for _, k in used} == set(extproc.LLM_METADATA_KEYS)


async def test_envoy_access_log_line_from_picker_metadata(fleet, configs, tmp_path, http):
    """Render envoy.yaml's JSON format as Envoy would from a real exchange's dynamic
    metadata; the exporter's parser reads back what the picker logged itself."""
    log = tmp_path / "access.log"
    async with picker(configs, fleet.addresses, log) as server:
        envoy = FakeEnvoy(server.port, http)
        ex = await envoy.send({**STEP4, "model": "summarizer", "stream": True})
        await envoy.close()
    envoy_values = {"%RESPONSE_CODE%": ex.status, "%REQ(:AUTHORITY)%": "test.com",
                    "%UPSTREAM_HOST%": ex.destination}
    line = {}
    for key, command in access_log_format().items():
        m = METADATA.match(command)
        line[key] = ex.metadata.get(m.group(1), {}).get(m.group(2)) if m \
            else envoy_values.get(command)
    envoy_rec = JsonLineParser().parse(orjson.dumps(line))
    [own] = log_lines(log)
    for f in ("model", "target_model", "pool", "pod", "criticality", "stream", "lb_policy",
              "pick_reason", "prompt_tokens", "completion_tokens", "total_tokens",
              "response_code", "upstream_host", "authority"):
        assert getattr(envoy_rec, f) == getattr(own, f), f
    assert envoy_rec.model == "summarizer" and envoy_rec.completion_tokens > 0
    assert envoy_rec.ttft_ms == pytest.approx(own.ttft_ms)
