"""A request body's shape measured before it is parsed: arrays and objects, values and
nesting depth outside strings, in a few vectorised passes over the bytes (numpy, which lets
go of the GIL), so a hostile body is refused before it costs a JSON parse of millions of
values; and the budgets (`BodyLimits`) it is held to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Deepest nesting of objects and arrays accepted (orjson writes at most 254 levels back;
#: OpenAI request bodies, tool schemas included, need far fewer).
MAX_DEPTH = 64
#: Bodies at least this large are measured off the event loop (in a thread).
OFF_LOOP_BYTES = 1 << 20
_QUOTE, _COMMA = 0x22, 0x2C


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What one request body may hold (the options `--max-json-containers`,
    `--max-json-values`, `--max-prompts`, `--max-messages`)."""

    containers: int = 16384
    values: int = 262144
    prompts: int = 2048
    messages: int = 4096


@dataclass(frozen=True, slots=True)
class Shape:
    """Counted outside strings: `containers` arrays and objects, `values` items and members
    (commas plus containers, an upper bound), `depth` the deepest nesting."""

    containers: int
    values: int
    depth: int


def measure(raw: bytes, containers_limit: int) -> Shape:
    """The shape of `raw` (JSON or not: the parse that follows judges the syntax). The depth
    is measured only when `containers_limit` is kept (else -1)."""
    if b"\\" in raw:  # escaped backslashes, then escaped quotes: no quote is left in a string
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    a = np.frombuffer(raw, np.uint8)
    folded = a | 0x20  # [ ] -> { }
    bracket = (folded == 0x7B) | (folded == 0x7D)
    comma = a == _COMMA
    quote = a == _QUOTE
    if quote.any():  # inside a string: an odd number of quotes before (parity of a cumsum)
        outside = (np.cumsum(quote, dtype=np.uint8) & 1) == 0
        bracket &= outside
        comma &= outside
    where = np.flatnonzero(bracket)
    step = (a[where] & 0x02).astype(np.int8) - 1  # [ { have bit 1 set: +1; ] } -1
    opens = int(np.count_nonzero(step > 0))
    values = int(np.count_nonzero(comma)) + opens
    if opens > containers_limit or not where.size:
        return Shape(opens, values, -1 if where.size else 0)
    return Shape(opens, values, int(np.cumsum(step, dtype=np.int32).max()))


def refusal(raw: bytes, limits: BodyLimits) -> tuple[int, str] | None:
    """(status, reason) for a body nested deeper than MAX_DEPTH or holding more arrays and
    objects or values than `limits` allow; None when it may be parsed. Byte counts decide
    first: most bodies are not measured at all."""
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets <= MAX_DEPTH and raw.count(b",") + brackets <= limits.values:
        return None
    shape = measure(raw, limits.containers)
    if shape.containers > limits.containers:
        return 413, (f"request body holds more than {limits.containers} arrays and objects "
                     "(--max-json-containers)")
    if shape.values > limits.values:
        return 413, f"request body holds more than {limits.values} values (--max-json-values)"
    if shape.depth > MAX_DEPTH:
        return 400, f"request body is nested deeper than {MAX_DEPTH} levels"
    return None
