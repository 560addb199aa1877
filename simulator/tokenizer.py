"""The simulator's deterministic tokenizer: one token per `chars_per_token` characters (4 by
default; a measured profile gives its real tokenizer's ratio), so equal text prefixes give
equal token-id prefixes (and so share KV blocks under prefix caching)."""

from __future__ import annotations

import math
import zlib

from llmtraffic.contracts.prompt import CHARS_PER_TOKEN  # the balancer's estimate's ratio


def _bounds(length: int, chars_per_token: float) -> list[int]:
    """Token start offsets: token k starts at floor(k × chars_per_token)."""
    n = math.ceil(length / chars_per_token)
    return [int(k * chars_per_token) for k in range(n)] + [length]


def encode(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> list[int]:
    """Token ids: crc32 of each chunk of `chars_per_token` characters (31 bits; chunks start
    at whole multiples of the ratio, so a fractional ratio mixes chunk sizes). Deterministic
    across processes (unlike `hash(str)`)."""
    if chars_per_token <= 0:
        raise ValueError(f"chars_per_token must be positive, got {chars_per_token}")
    crc = zlib.crc32
    step = int(chars_per_token)
    if step != chars_per_token:
        cuts = _bounds(len(text), chars_per_token)
        return [crc(text[a:b].encode("utf-8", "surrogatepass")) & 0x7FFFFFFF
                for a, b in zip(cuts, cuts[1:])]
    data = text.encode("utf-8", "surrogatepass")
    if len(data) != len(text):  # non-ASCII: chunk characters, not bytes
        return [crc(text[i:i + step].encode("utf-8", "surrogatepass")) & 0x7FFFFFFF
                for i in range(0, len(text), step)]
    return [crc(data[i:i + step]) & 0x7FFFFFFF for i in range(0, len(data), step)]


def count(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """`len(encode(text, chars_per_token))` without encoding."""
    return math.ceil(len(text) / chars_per_token)
