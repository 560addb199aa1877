"""The live load client: replays a workload's seeded arrivals against one OpenAI-compatible
endpoint as streaming completions and measures TTFT, inter-token latency and end-to-end
latency at the client. Tokens are counted from the stream's `usage` (asked for with
`stream_options.include_usage`): a real vLLM packs several tokens into one SSE event under
load. Times are reported in simulated seconds (wall × time_scale)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import aiohttp
import orjson

from llmtraffic.simulator.workloads import WorkloadRequest
from llmtraffic.simulator.cluster import quantile


@dataclass(slots=True)
class Outcome:
    """One request as the client saw it (seconds of wall time)."""

    index: int
    model: str
    status: int = 0  # HTTP status; 0 when the connection failed
    start: float = 0.0  # event-loop time it was sent
    ttft: float | None = None
    e2e: float | None = None
    tokens: int = 0  # completion tokens: the stream's usage, else one per event
    events: int = 0  # SSE events carrying text (a real vLLM packs several tokens in one)
    prompt_tokens: int = 0  # from usage
    cached_tokens: int = 0  # of them, prefix-cache hits (usage.prompt_tokens_details)
    usage: bool = False  # the stream carried a usage object
    last_event: float | None = None  # seconds from the request to its last text event
    gaps: list[float] = field(default_factory=list)  # between text events
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def request_body(w: WorkloadRequest) -> dict:
    """Exactly `output_len` tokens (ignore_eos), so every router serves the same work."""
    return {"model": w.model, "prompt": w.prompt, "max_tokens": w.output_len,
            "stream": True, "ignore_eos": True, "temperature": 0,
            "stream_options": {"include_usage": True}}


async def _one(session: aiohttp.ClientSession, url: str, w: WorkloadRequest,
               headers: dict[str, str], timeout: float) -> Outcome:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = Outcome(w.index, w.model, start=t0)
    last = t0
    try:
        async with session.post(url, data=orjson.dumps(request_body(w)), headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            out.status = r.status
            if r.status != 200:
                out.error = (await r.text())[:300]
                return out
            async for line in r.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    out.e2e = loop.time() - t0
                    break
                if payload.startswith(b'{"error"'):
                    out.error = payload.decode(errors="replace")[:300]
                    break
                if b'"usage":{' in payload:
                    _read_usage(out, payload)
                if b'"text":""' in payload or b'"choices":[]' in payload:
                    continue
                now = loop.time()
                if out.ttft is None:
                    out.ttft = now - t0
                else:
                    out.gaps.append(now - last)
                last = now
                out.last_event = now - t0
                out.events += 1
            if out.e2e is None and out.error is None:
                out.error = "stream ended without [DONE]"
            if not out.usage:
                out.tokens = out.events  # a server that sends no usage: one per event
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        out.error = f"{type(e).__name__}: {e}"
    return out


def _read_usage(out: Outcome, payload: bytes) -> None:
    """Take the token counts of a chunk's `usage` object (the final one of the stream)."""
    try:
        usage = orjson.loads(payload).get("usage") or {}
        out.tokens = int(usage.get("completion_tokens") or 0)
        out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        out.cached_tokens = int((usage.get("prompt_tokens_details") or {})
                                .get("cached_tokens") or 0)
        out.usage = True
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        pass


def tpot(out: Outcome) -> float | None:
    """Mean seconds per output token after the first (from the first to the last text
    event), or None with fewer than two tokens."""
    if out.ttft is None or out.last_event is None or out.tokens < 2:
        return None
    return (out.last_event - out.ttft) / (out.tokens - 1)


async def replay(base_url: str, workload: Sequence[WorkloadRequest], *, time_scale: float = 1.0,
                 host: str | None = None, timeout: float = 600.0,
                 on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Send each request at its arrival time (÷ time_scale) and wait for all of them."""
    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Content-Type": "application/json"}
    if host:
        headers["Host"] = host
    loop = asyncio.get_running_loop()
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as session:
        start = loop.time()
        tasks: list[asyncio.Task[Outcome]] = []
        try:
            for w in workload:
                delay = start + w.arrival / time_scale - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(_one(session, url, w, headers, timeout))
                if on_done is not None:
                    task.add_done_callback(lambda t: on_done(t.result())
                                           if not t.cancelled() else None)
                tasks.append(task)
            return list(await asyncio.gather(*tasks))
        finally:  # cancelled: end every request before the session closes
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def summarize(outcomes: Sequence[Outcome], duration: float, time_scale: float) -> dict:
    """Client-side figures in simulated seconds (the keys of the routing benchmark)."""
    ok = [o for o in outcomes if o.ok]
    s = time_scale
    ttft = [o.ttft * s for o in ok if o.ttft is not None]
    e2e = [o.e2e * s for o in ok if o.e2e is not None]
    gaps = [g * s for o in ok for g in o.gaps]
    per_token = [t * s for t in map(tpot, ok) if t is not None]
    events = sum(o.events for o in ok)
    return {
        "ttft_p50_s": quantile(ttft, 0.5), "ttft_p90_s": quantile(ttft, 0.9),
        "ttft_p99_s": quantile(ttft, 0.99), "e2e_p90_s": quantile(e2e, 0.9),
        "itl_p50_s": quantile(gaps, 0.5), "itl_p90_s": quantile(gaps, 0.9),
        "tpot_p50_s": quantile(per_token, 0.5), "tpot_p90_s": quantile(per_token, 0.9),
        "tokens_per_event": sum(o.tokens for o in ok) / events if events else math.nan,
        "throughput_tok_s": sum(o.tokens for o in outcomes) / (duration * s)
        if duration > 0 else math.nan,
        "completed": len(ok), "shed": sum(1 for o in outcomes if o.status == 429),
        "failed": sum(1 for o in outcomes if not o.ok and o.status != 429),
    }
