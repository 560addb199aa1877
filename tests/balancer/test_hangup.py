"""A client that hangs up after it had the whole streamed answer is not a 499 DC (the proxy
and the ext_proc picker log the pod's 200 and count the tokens); one that leaves mid-stream
still is. And the balancer's prompt-token estimate follows the usage the pods report."""

from __future__ import annotations

import aiohttp
import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.extproc import ExtProcOptions, ExtProcServer
from tests.balancer.conftest import BASE, POOL, SEED_FILES, client, records, seed_pods, wait_for
from tests.balancer.test_extproc import headers, log_lines

pytestmark = pytest.mark.e2e


async def _stream_then_hang_up(port: int, after: bytes, **extra) -> list[bytes]:
    """POST a streamed completion, read lines until one starts with `after`, hang up."""
    body = orjson.dumps({"model": "llama2", "prompt": "hi", "max_tokens": 5, "stream": True,
                         **extra})
    got = []
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        resp = await s.post(f"http://127.0.0.1:{port}/v1/completions", data=body,
                            headers={"Host": "test.com", "Content-Type": "application/json"})
        assert resp.status == 200
        async for line in resp.content:
            got.append(line)
            if line.startswith(after):
                break
        resp.close()  # the connection is dropped, as a client that is done
    return got


@pytest.mark.parametrize("wants_usage", [False, True])
async def test_hanging_up_right_after_done_is_the_pods_200(fakes, make_app, wants_usage):
    pod = await fakes(answer="linger")  # the pod ends its body 5 s after [DONE]
    app = await make_app([pod.address])
    extra = {"stream_options": {"include_usage": True}} if wants_usage else {}
    got = await _stream_then_hang_up(app.port, b"data: [DONE]", **extra)
    assert (b'"usage"' in b"".join(got)) == wants_usage
    await wait_for(lambda: len(records(app)) == 1, "the access-log line")
    (rec,) = records(app)
    assert rec["response_code"] == 200 and rec.get("response_flags") is None
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (3, 1)
    assert rec["bytes_sent"] == len(b"".join(got)) + 1  # and the blank line after [DONE]
    reg = app.registry
    assert reg.get_sample_value("llmtraffic_balancer_requests_total", {
        "pool": POOL, "model": "llama2", "target_model": BASE, "lb_policy": "llm",
        "response_code": "200"}) == 1
    assert reg.get_sample_value("llmtraffic_balancer_completion_tokens_total", {
        "pool": POOL, "model": "llama2", "lb_policy": "llm"}) == 1


async def test_leaving_mid_stream_is_still_499_dc(fakes, make_app):
    pod = await fakes(answer="slow-stream")
    app = await make_app([pod.address])
    await _stream_then_hang_up(app.port, b"data: {")
    await wait_for(lambda: len(records(app)) == 1, "the access-log line")
    (rec,) = records(app)
    assert (rec["response_code"], rec["response_flags"]) == (499, "DC")


@pytest.mark.parametrize("whole", [True, False])
async def test_ext_proc_stream_closed_after_the_whole_answer_is_not_dc(fakes, tmp_path, whole):
    """Envoy closes the ext_proc stream without the body's end_of_stream (its client left):
    after the answer's usage and [DONE] that is the pod's 200, before them a DC."""
    pod = await fakes()
    log = tmp_path / "access.log"
    server = ExtProcServer(StaticDiscovery(SEED_FILES, pods=seed_pods([pod.address])),
                           ExtProcOptions(listen="127.0.0.1:0", health_listen="127.0.0.1:0",
                                          seed=7, access_log=str(log), scrape_interval=0.05))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process()
            await call.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(
                headers=headers({":method": "POST", ":path": "/v1/completions",
                                 ":authority": "test.com"}))))
            await call.read()
            body = {"model": "tweet-summary", "prompt": "hi", "max_tokens": 5, "stream": True}
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=orjson.dumps(body), end_of_stream=True)))
            await call.read()
            await call.write(pb.ProcessingRequest(response_headers=pb.HttpHeaders(
                headers=headers({":status": "200", "content-type": "text/event-stream"}))))
            await call.read()
            chunk = b'data: {"choices": [{"index": 0, "text": "ok"}]}\n\n'
            if whole:
                chunk += (b'data: {"choices": [], "usage": {"prompt_tokens": 3, '
                          b'"completion_tokens": 1, "total_tokens": 4}}\n\ndata: [DONE]\n\n')
            await call.write(pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk)))
            await call.read()
            call.cancel()
            await wait_for(lambda: log.exists() and log.read_bytes().count(b"\n") == 1,
                           "the access-log line")
    finally:
        await server.stop()
    (rec,) = log_lines(log)
    if whole:
        assert (rec.response_code, rec.response_flags) == (200, None)
        assert (rec.prompt_tokens, rec.completion_tokens) == (3, 1)
    else:
        assert (rec.response_code, rec.response_flags) == (200, "DC")


async def test_prompt_token_estimate_follows_the_pods_usage(fakes, make_app):
    pod = await fakes()
    app = await make_app([pod.address])
    seen: list[int] = []
    pick = app.router.policy.pick

    def spy(request, snapshot):
        seen.append(request.prompt_tokens)
        return pick(request, snapshot)

    app.router.policy.pick = spy  # type: ignore[method-assign]
    prompt = "x" * 600
    pod.usage = {"prompt_tokens": 200, "completion_tokens": 1, "total_tokens": 201}
    c = client(app)
    for _ in range(3):
        await c.completions.create(model="llama2", prompt=prompt, max_tokens=1)
    await wait_for(lambda: len(records(app)) == 3, "three access-log lines")
    assert seen[0] == 151  # 600 characters at the default 4 per token
    assert app.router.tokens.ratio(BASE) == 3.0  # 600 characters, 200 tokens
    await c.completions.create(model="llama2", prompt=prompt, max_tokens=1)
    assert seen[-1] == 201
    assert app.registry.get_sample_value("llmtraffic_balancer_chars_per_token",
                                         {"model": BASE}) == 3.0
    # chat messages are learned too; several prompts (usage counts them all) are not
    pod.usage = {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}
    await c.completions.create(model="llama2", prompt=[prompt, prompt], max_tokens=1)
    await wait_for(lambda: len(records(app)) == 5, "five access-log lines")
    assert app.router.tokens.ratio(BASE) == 3.0
    await c.chat.completions.create(model="llama2", max_tokens=1, messages=[
        {"role": "user", "content": prompt}])
    await wait_for(lambda: len(records(app)) == 6, "six access-log lines")
    assert app.router.tokens.ratio(BASE) > 3.0  # "user: " + 600 + "\n" at 100 tokens
