"""Small pieces of `balancer/usage.py` the access log depends on."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from llmtraffic.balancer.usage import now_iso


def test_now_iso_is_envoys_start_time_format_and_current():
    before = datetime.now(timezone.utc)
    stamps = [now_iso() for _ in range(2000)]  # crosses whole seconds sometimes: reuse path
    after = datetime.now(timezone.utc)
    for s in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s), s
        t = datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert before - timedelta(milliseconds=1) <= t <= after
    assert stamps == sorted(stamps)


def test_a_new_request_id_is_a_random_uuid4():
    import uuid

    from llmtraffic.balancer.usage import new_request_id

    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in ids:
        u = uuid.UUID(rid)
        assert str(u) == rid and u.version == 4 and u.variant == uuid.RFC_4122


# ---- the SSE relay: pieces passed whole give what line-by-line reading gives ----------------
def _sse_stream(events: int, usage: bool) -> bytes:
    import orjson

    out = [b"data: " + orjson.dumps({"choices": [{"index": 0, "text": ""}]}) + b"\n\n"]
    for i in range(events):  # text that looks like SSE inside a JSON string stays one event
        text = f"tok{i} data: [DONE] \"usage\"" if i == 3 else f"tok{i} "
        out.append(b"data: " + orjson.dumps({"choices": [{"index": 0, "text": text}]})
                   + b"\n\n")
    if usage:
        out.append(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":'
                   + str(events).encode() + b',"total_tokens":' + str(7 + events).encode()
                   + b"}}\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _relayed(pieces: list[bytes], drop_usage: bool, max_events: int = 10**6,
             max_bytes: int = 10**9, whole_ok: bool = True):
    from llmtraffic.balancer.usage import SseRelay, SseTap
    from llmtraffic.contracts.record import LLMRecord

    ticks = iter(range(1, 10**6))
    rec = LLMRecord()
    tap = SseTap(rec, 0.0, drop_usage, clock=lambda: float(next(ticks)))
    counted = tap.events_in

    def events_in(data: bytes) -> int | None:
        n = counted(data) if whole_ok else None
        WHOLE[0] += n is not None
        return n

    tap.events_in = events_in  # type: ignore[method-assign]
    relay = SseRelay(tap, max_events, max_bytes)
    sent = b"".join(relay.piece(p, i == len(pieces) - 1) for i, p in enumerate(pieces))
    return sent, (tap.chunks, tap.done, tap.choices, tap.final, rec.ttft_ms,
                  rec.completion_tokens, relay.failure, relay.passed)


WHOLE = [0]  # pieces passed whole, so a test can see the fast path was taken


def test_the_relay_passes_whole_pieces_as_line_by_line_reading_would():
    import random

    rng = random.Random(7)
    WHOLE[0] = 0
    for usage in (True, False):
        stream = _sse_stream(20, usage)
        for drop in (True, False):
            for _ in range(200):
                cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 8)))
                # half the cuts fall on an event's end, as a pod's writes usually do
                ends = [m.end() for m in re.finditer(rb"\n\n", stream)][:-1]
                cuts = sorted(set(cuts[: len(cuts) // 2] + rng.sample(ends, 3)))
                pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
                fast = _relayed(pieces, drop)
                assert fast == _relayed(pieces, drop, whole_ok=False)
                assert fast[1][:3] == (22 + (usage and not drop), True, True)  # [DONE] too
                if usage and drop:
                    assert b'"usage"' not in fast[0].replace(b'\\"usage\\"', b"")
                    assert fast[1][5] == 20
    assert WHOLE[0] > 500  # most runs passed some pieces whole


def test_the_relay_stops_at_its_caps_where_line_by_line_reading_does():
    stream = _sse_stream(20, True)
    events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
    pieces = [b"".join(events[i:i + 4]) for i in range(0, len(events), 4)]
    WHOLE[0] = 0
    for caps in ({"max_events": 9}, {"max_bytes": 700}):
        fast = _relayed(pieces, True, **caps)
        assert fast == _relayed(pieces, True, whole_ok=False, **caps)
        assert fast[1][6] and "went past" in fast[1][6]
        assert fast[1][0] <= caps.get("max_events", 10**6) + 1
        assert fast[1][7] <= caps.get("max_bytes", 10**9)
    assert WHOLE[0] > 0
