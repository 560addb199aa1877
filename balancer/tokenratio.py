"""Prompt characters per prompt token, learned per target model from what the engines report
(`usage.prompt_tokens` against the prompt's characters), so the balancer's estimate of a
request's prompt tokens follows the served tokenizer instead of assuming four."""

from __future__ import annotations

from dataclasses import dataclass

from llmtraffic.contracts.families import MAX_LABEL_VALUES
from llmtraffic.contracts.prompt import CHARS_PER_TOKEN, MAX_RATIO, MIN_RATIO
from llmtraffic.contracts.tokens import MAX_REQUEST_TOKENS

#: Prompts shorter than this teach nothing: the chat template's own tokens dominate them.
MIN_PROMPT_CHARS = 200
#: Weight of the newest sample once warm (the first 1/WEIGHT samples are averaged evenly).
WEIGHT = 0.1


@dataclass(slots=True)
class _Average:
    """Moving averages of a model's prompt characters and prompt tokens per request: their
    quotient weighs long prompts more than a mean of per-request ratios would."""

    chars: float
    tokens: float
    samples: int = 1


class TokenRatios:
    """Per target model: `observe(model, chars, tokens)` after each answer whose usage was
    read; `ratio(model)` and `estimate(model, chars)` for the next request. At most
    `max_models` models are learned (model names may come from clients); others keep
    `default`."""

    def __init__(self, default: float = CHARS_PER_TOKEN, max_models: int = MAX_LABEL_VALUES,
                 weight: float = WEIGHT) -> None:
        if not MIN_RATIO <= default <= MAX_RATIO:
            raise ValueError(f"TokenRatios default {default} is outside "
                             f"{MIN_RATIO}..{MAX_RATIO} characters per token")
        if not 0 < weight <= 1:
            raise ValueError(f"TokenRatios weight {weight} must be in (0, 1]")
        self.default = float(default)
        self.max_models = max_models
        self.weight = weight
        self.ignored = 0  # samples refused: garbage counts, or a model past max_models
        self._avg: dict[str, _Average] = {}
        self._ratio: dict[str, float] = {}

    def ratio(self, model: str | None) -> float:
        """Characters per prompt token for `model` (the default until it is learned)."""
        return self._ratio.get(model, self.default)  # type: ignore[arg-type]

    def estimate(self, model: str | None, chars: int) -> int:
        """Prompt tokens of a prompt of `chars` characters sent to `model` (never 0: a
        template adds some); with the default ratio, `contracts.prompt.estimate_tokens`."""
        return int(chars / self.ratio(model)) + 1

    def observe(self, model: str | None, chars: object, tokens: object) -> bool:
        """One answer's `usage.prompt_tokens` for a prompt of `chars` characters; False
        when the sample was ignored (tiny prompt, not a count, or a ratio out of range)."""
        if not (model and _count(chars) and _count(tokens)):
            self.ignored += 1
            return False
        c, t = float(chars), float(tokens)  # type: ignore[arg-type]
        if c < MIN_PROMPT_CHARS or t > MAX_REQUEST_TOKENS or \
                not MIN_RATIO <= c / t <= MAX_RATIO:
            self.ignored += 1
            return False
        avg = self._avg.get(model)
        if avg is None:
            if len(self._avg) >= self.max_models:
                self.ignored += 1
                return False
            avg = self._avg[model] = _Average(c, t)
        else:
            avg.samples += 1
            w = max(self.weight, 1.0 / avg.samples)
            avg.chars += w * (c - avg.chars)
            avg.tokens += w * (t - avg.tokens)
        self._ratio[model] = min(MAX_RATIO, max(MIN_RATIO, avg.chars / avg.tokens))
        return True

    def learned(self) -> dict[str, float]:
        """Model -> learned ratio (a copy; only models with a sample)."""
        return dict(self._ratio)


def _count(v: object) -> bool:
    """A positive integer count (bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
