"""TokenRatios: the characters-per-token learner converges on what the engine reports,
ignores garbage, stays in its range and in its number of models."""

from __future__ import annotations

import random

import pytest

from llmtraffic.balancer.tokenratio import MAX_RATIO, MIN_PROMPT_CHARS, MIN_RATIO, TokenRatios
from llmtraffic.contracts.prompt import estimate_tokens

KIT = "kit"


def test_before_any_sample_the_estimate_is_the_old_four_characters_rule() -> None:
    r = TokenRatios()
    assert r.ratio(KIT) == 4.0 and r.learned() == {}
    for chars in (0, 1, 3, 4, 799, 12_345):
        assert r.estimate(KIT, chars) == estimate_tokens("x" * chars)
    assert r.estimate(None, 400) == 101


@pytest.mark.parametrize("truth", [3.1, 2.2, 0.7])  # prose, code, CJK with the kit tokenizer
def test_converges_on_a_noisy_stream_of_samples(truth: float) -> None:
    rng = random.Random(5)
    r = TokenRatios()
    for _ in range(200):
        chars = rng.randint(300, 3000)
        tokens = max(1, round(chars / truth * rng.uniform(0.9, 1.1)))
        assert r.observe(KIT, chars, tokens)
    assert r.ratio(KIT) == pytest.approx(truth, rel=0.05)
    assert r.estimate(KIT, 3100) == pytest.approx(3100 / truth, rel=0.05)


def test_the_first_samples_count_evenly_then_the_newest_weigh_more() -> None:
    r = TokenRatios(weight=0.1)
    r.observe(KIT, 1000, 500)  # 2.0
    assert r.ratio(KIT) == 2.0
    r.observe(KIT, 1000, 250)  # 4.0: averaged with the first, not 10% of the way
    assert r.ratio(KIT) == pytest.approx(2000 / 750)
    for _ in range(100):  # a tokenizer change is followed
        r.observe(KIT, 1000, 1000)
    assert r.ratio(KIT) == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("chars, tokens", [
    (1000, 0), (1000, -5), (-1000, 5), (1000, None), (None, 300), (1000, 2.5), (1000, "300"),
    (1000, True), (MIN_PROMPT_CHARS - 1, 50),  # a tiny prompt: the template dominates
    (1000, 10**12), (1000, 10_000), (10_000, 10),  # huge, or a ratio out of range
])
def test_garbage_is_ignored(chars: object, tokens: object) -> None:
    r = TokenRatios()
    r.observe(KIT, 1000, 400)
    assert not r.observe(KIT, chars, tokens)
    assert r.ratio(KIT) == 2.5 and r.ignored == 1


def test_the_ratio_stays_in_its_range() -> None:
    r = TokenRatios()
    for chars, tokens in ((1000, 2000), (8000, 1000), (1000, 1999), (8001, 1000)):
        r.observe(KIT, chars, tokens)
        assert MIN_RATIO <= r.ratio(KIT) <= MAX_RATIO
    with pytest.raises(ValueError, match="outside 0.5..8.0"):
        TokenRatios(default=0.1)
    with pytest.raises(ValueError, match="weight"):
        TokenRatios(weight=0)


def test_models_are_bounded_and_kept_apart() -> None:
    r = TokenRatios(max_models=3)
    assert not r.observe("", 1000, 400) and not r.observe(None, 1000, 400)
    for i in range(10):  # model-0's 10 characters per token is out of range: not learned
        r.observe(f"model-{i}", 1000, 100 * (i + 1))
    assert r.learned() == {"model-1": 5.0, "model-2": pytest.approx(1000 / 300),
                           "model-3": 2.5}
    assert r.ratio("model-9") == 4.0  # past the bound: the default
    assert r.observe("model-2", 1000, 500)  # a learned model still learns
