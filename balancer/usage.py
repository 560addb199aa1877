"""What one routed request leaves in its `LLMRecord`, shared by the HTTP proxy and the ext_proc
picker: the routing fields of a decision, token usage from a JSON body or from SSE lines
(TTFT included), and dropping the usage-only event the balancer asked for itself."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import orjson

from llmtraffic.balancer.router import Decision
from llmtraffic.contracts.record import MAX_INT, LLMRecord


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, reused within it


def now_iso() -> str:
    """UTC now as Envoy's %START_TIME% prints it: 2026-01-02T03:04:05.678Z."""
    global _second
    t = time.time()
    s = int(t)
    if s != _second[0]:
        _second = (s, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)))
    return f"{_second[1]}.{int((t - s) * 1000):03d}Z"


def new_request_id() -> str:
    """A random request id in UUID4's form (as `str(uuid.uuid4())`, at a fifth of its
    cost): for a request that came without X-Request-Id."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def describe(rec: LLMRecord, d: Decision) -> None:
    """The routing fields of `d` into `rec`."""
    rec.model = d.request.model
    rec.target_model = d.request.target_model
    rec.pool = d.pool.name
    rec.upstream_cluster = d.pool.name
    rec.criticality = d.model.criticality
    rec.stream = d.stream
    rec.pick_reason = d.pick.reason


def text_of(event: dict[str, Any]) -> bool:
    """True when a stream event carries generated text (completions or chat)."""
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta.get("content"):
            return True
    return False


def apply_usage(rec: LLMRecord, usage: Any) -> None:
    """OpenAI `usage` counts into `rec` (anything that is not a count is ignored). A count
    beyond what a record holds (MAX_INT) is kept as MAX_INT, so the access-log line stays
    readable and the exporter, like the balancer, refuses to count it
    (`contracts.tokens.counted_usage`)."""
    if not isinstance(usage, dict):
        return
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        v = usage.get(field)
        if isinstance(v, float) and v.is_integer():  # 2**64 reads as a float (orjson)
            v = int(min(v, MAX_INT))
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            setattr(rec, field, min(v, MAX_INT))


def usage_from_json(rec: LLMRecord, data: bytes) -> None:
    """Usage of a whole (non-streamed) JSON answer; a body that is not JSON is ignored."""
    try:
        apply_usage(rec, orjson.loads(data).get("usage"))
    except (orjson.JSONDecodeError, AttributeError):
        pass


class SseTap:
    """Reads an OpenAI SSE stream line by line (lines as split at b"\\n", newline kept):
    notes TTFT and usage in `rec`, sees `[DONE]`, and with `drop_usage` tells the caller to
    drop the usage-only event (and its blank separator line) that the balancer requested
    for itself through `stream_options.include_usage`."""

    def __init__(self, rec: LLMRecord, t0: float, drop_usage: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rec = rec
        self.t0 = t0
        self.drop_usage = drop_usage
        self.clock = clock
        self.done = False  # `data: [DONE]` seen
        self.chunks = 0  # data events passed on
        self.choices = False  # some event carried a choice (an answer, if an empty one)
        self.final = False  # the usage-only event that ends a stream (before [DONE]) seen
        self._skip_blank = False

    @property
    def complete(self) -> bool:
        """The pod's whole answer was seen: its usage-only last event, or `[DONE]`."""
        return self.final or self.done

    def events_in(self, data: bytes) -> int | None:
        """How many data events `data` holds when it may go on untouched, whole lines that
        start at a line start (the caller's LineBuffer holds no tail) and carry nothing to
        note or drop: the first text was seen, no usage, no [DONE]. None: read it line by
        line with `keep`. (A JSON string holds no raw newline, so each event is one
        b"\\ndata:" or the leading b"data:".)"""
        if self.rec.ttft_ms is None or self._skip_blank or not data.endswith(b"\n") \
                or b'"usage"' in data or b"[DONE]" in data:
            return None
        return data.count(b"\ndata:") + data.startswith(b"data:")

    def keep(self, line: bytes) -> bool:
        """Whether `line` goes on to the client."""
        rec = self.rec
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
            elif rec.ttft_ms is None or b'"usage"' in payload:
                try:
                    ev = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    ev = None
                if isinstance(ev, dict):
                    self.choices = self.choices or bool(ev.get("choices"))
                    if rec.ttft_ms is None and text_of(ev):
                        rec.ttft_ms = round((self.clock() - self.t0) * 1000, 3)
                    if ev.get("usage"):
                        apply_usage(rec, ev["usage"])
                        if not ev.get("choices"):
                            self.final = True
                            if self.drop_usage:  # the usage chunk we asked for ourselves
                                self._skip_blank = True
                                return False
            self.chunks += 1
        elif self._skip_blank and not line.strip():
            self._skip_blank = False
            return False
        return True


class LineBuffer:
    """Bytes arriving in arbitrary chunks -> whole lines (newline kept); the unfinished tail
    waits for the next chunk or `flush()`. Bounded: a tail longer than `max_line` is given
    out as it is (an SSE event that long is not ours to parse)."""

    def __init__(self, max_line: int = 1 << 20) -> None:
        self.max_line = max_line
        self._tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._tail + data
        cut = buf.rfind(b"\n") + 1
        self._tail = buf[cut:]
        lines = [part + b"\n" for part in buf[:cut - 1].split(b"\n")] if cut else []
        if len(self._tail) > self.max_line:
            lines.append(self._tail)
            self._tail = b""
        return lines

    @property
    def pending(self) -> bool:
        """Part of a line is waiting for the rest."""
        return bool(self._tail)

    def flush(self) -> list[bytes]:
        tail, self._tail = self._tail, b""
        return [tail] if tail else []


class SseRelay:
    """A pod's SSE bytes, piece by piece as they arrive, to what goes on to the client:
    through `tap`, within `max_events` data events and `max_bytes` bytes. A piece of whole
    lines with nothing to note or drop passes as it is (`SseTap.events_in`); any other is
    split into lines. Past a cap, `failure` says so and nothing more passes."""

    def __init__(self, tap: SseTap, max_events: int, max_bytes: int) -> None:
        self.tap, self.max_events, self.max_bytes = tap, max_events, max_bytes
        self.passed = 0  # bytes handed on so far
        self.failure: str | None = None
        self._split = LineBuffer()

    def piece(self, data: bytes, ended: bool) -> bytes:
        """What of `data` goes on (maybe b""); `ended`: the pod's answer ends with it."""
        if self.failure is not None:
            return b""
        tap = self.tap
        if not ended and not self._split.pending:
            events = tap.events_in(data)
            if events is not None and tap.chunks + events <= self.max_events and \
                    self.passed + len(data) <= self.max_bytes:
                tap.chunks += events
                self.passed += len(data)
                return data
        split = self._split
        out: list[bytes] = []
        size = 0
        for line in split.feed(data) + split.flush() if ended else split.feed(data):
            if not tap.keep(line):
                continue
            if tap.chunks > self.max_events or self.passed + size + len(line) > self.max_bytes:
                self.failure = (f"the stream went past {self.max_events} events or "
                                f"{self.max_bytes} bytes (max_tokens x n + 64, "
                                "--max-response-bytes)")
                break
            out.append(line)
            size += len(line)
        self.passed += size
        return out[0] if len(out) == 1 else b"".join(out)
