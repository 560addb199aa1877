"""A prompt's size in tokens where no tokenizer is at hand: about four characters of English
per token (Llama-2's SentencePiece averages that; so does OpenAI's rule of thumb)."""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """The balancer's estimate of a prompt's tokens (never 0: the chat template adds some)."""
    return len(text) // CHARS_PER_TOKEN + 1
