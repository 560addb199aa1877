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
#: Smaller bodies are first screened by byte counts (cheaper than measuring them).
SMALL_BYTES = 64 << 10
_QUOTE, _COMMA, _BACKSLASH = 0x22, 0x2C, 0x5C
#: Up to this many strings, the bytes inside them are counted string by string.
FEW_STRINGS = 4096


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


def measure(raw: bytes, containers_limit: int, values_limit: int | None = None) -> Shape:
    """The shape of `raw` (JSON or not: the parse that follows judges the syntax). Counting
    stops at the first budget exceeded: past `containers_limit`, `containers` may be a
    lower bound and `values` is -1; past either, `depth` is -1; with no more containers
    than MAX_DEPTH, `depth` is their number (an upper bound)."""
    a = np.frombuffer(raw, np.uint8)
    backslash = a == _BACKSLASH
    if backslash.any():  # escaped backslashes, then escaped quotes: no quote is left in a
        if np.count_nonzero(backslash[:-1] & backslash[1:]):  # string (each replaced only
            raw = raw.replace(b"\\\\", b"")  # where there is one: a bytes scan is slow)
            a = np.frombuffer(raw, np.uint8)
            backslash = a == _BACKSLASH
        if np.count_nonzero(backslash[:-1] & (a[1:] == _QUOTE)):
            raw = raw.replace(b'\\"', b"")
            a = np.frombuffer(raw, np.uint8)
    quotes = np.flatnonzero(a == _QUOTE)
    folded = a | 0x20  # [ ] -> { }
    opening = folded == 0x7B
    opens = _outside(opening, quotes, containers_limit)
    if opens > containers_limit:
        return Shape(opens, -1, -1)
    values_cap = values_limit if values_limit is not None else a.size
    values = _outside(a == _COMMA, quotes, values_cap - opens) + opens
    if values > values_cap:
        return Shape(opens, values, -1)
    if opens <= MAX_DEPTH:  # no deeper than its containers: depth is not needed
        return Shape(opens, values, opens)
    brackets = opening | (folded == 0x7D)
    if quotes.size and quotes.size <= 2 * FEW_STRINGS:  # blank the strings out
        for start, end in zip(quotes[0::2], [*quotes[1::2], a.size]):
            brackets[start:end] = False
        where = np.flatnonzero(brackets)
    else:  # brackets with an even number of quotes before them
        where = np.flatnonzero(brackets)
        if quotes.size:
            where = where[(np.searchsorted(quotes, where) & 1) == 0]
    step = (a[where] & 0x02).astype(np.int8) - 1  # [ { have bit 1 set: +1; ] } -1
    return Shape(opens, values, int(np.cumsum(step, dtype=np.int32).max()))


def _outside(mask: np.ndarray, quotes: np.ndarray, limit: int) -> int:
    """How many set bytes of `mask` lie outside strings (from an odd quote to the next);
    a lower bound when that is already over `limit`."""
    total = int(np.count_nonzero(mask))
    if not total or not quotes.size:
        return total
    starts, ends = quotes[0::2], quotes[1::2]
    if starts.size > ends.size:  # an unfinished string runs to the end
        ends = np.append(ends, mask.size)
    at_least = total - int((ends - starts).sum())  # not even every string byte is one
    if at_least > limit:
        return at_least
    if starts.size <= FEW_STRINGS:
        return total - sum(int(np.count_nonzero(mask[s:e])) for s, e in zip(starts, ends))
    where = np.flatnonzero(mask)
    return int(np.count_nonzero((np.searchsorted(quotes, where) & 1) == 0))


def refusal(raw: bytes, limits: BodyLimits) -> tuple[int, str] | None:
    """(status, reason) for a body nested deeper than MAX_DEPTH or holding more arrays and
    objects or values than `limits` allow; None when it may be parsed. Byte counts decide
    first for small bodies: most are not measured at all."""
    if len(raw) < SMALL_BYTES:  # byte counts decide for most bodies: no measuring
        brackets = raw.count(b"[") + raw.count(b"{")
        if brackets <= MAX_DEPTH and raw.count(b",") + brackets <= limits.values:
            return None
    shape = measure(raw, limits.containers, limits.values)
    if shape.containers > limits.containers:
        return 413, (f"request body holds more than {limits.containers} arrays and objects "
                     "(--max-json-containers)")
    if shape.values > limits.values:
        return 413, f"request body holds more than {limits.values} values (--max-json-values)"
    if shape.depth > MAX_DEPTH:
        return 400, f"request body is nested deeper than {MAX_DEPTH} levels"
    return None
