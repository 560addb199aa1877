"""The simulator's deterministic tokenizer: one token per 4 characters, so equal text
prefixes give equal token-id prefixes (and so share KV blocks under prefix caching)."""

from __future__ import annotations

import zlib

from llmtraffic.contracts.prompt import CHARS_PER_TOKEN  # the balancer's estimate's ratio


def encode(text: str) -> list[int]:
    """Token ids: crc32 of each 4-character chunk (31 bits). Deterministic across
    processes (unlike `hash(str)`)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) != len(text):  # non-ASCII: chunk characters, not bytes
        return [zlib.crc32(text[i:i + CHARS_PER_TOKEN].encode("utf-8", "surrogatepass"))
                & 0x7FFFFFFF for i in range(0, len(text), CHARS_PER_TOKEN)]
    crc = zlib.crc32
    return [crc(data[i:i + CHARS_PER_TOKEN]) & 0x7FFFFFFF
            for i in range(0, len(data), CHARS_PER_TOKEN)]


def count(text: str) -> int:
    """`len(encode(text))` without encoding."""
    return -(-len(text) // CHARS_PER_TOKEN)
