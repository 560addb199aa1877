"""A prompt's size in tokens where no tokenizer is at hand: about four characters of English
per token (Llama-2's SentencePiece averages that; so does OpenAI's rule of thumb)."""

from __future__ import annotations

CHARS_PER_TOKEN = 4
#: The range a characters-per-token ratio may take. Real tokenizers give about 3-4 for English
#: prose, 2 for code, 0.7 for CJK text; a ratio outside it is a broken or lying report.
MIN_RATIO = 0.5
MAX_RATIO = 8.0


def estimate_tokens(text: str) -> int:
    """The balancer's estimate of a prompt's tokens (never 0: the chat template adds some)."""
    return len(text) // CHARS_PER_TOKEN + 1
