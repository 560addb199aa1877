"""TokenCounters with the C tally (contracts/csrc/records.c, when built) against the pure
Python loop, record for record: the same counters, histograms (sums to the last bit), label
overflow, rejected usage and records without tokens, whatever the records (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from llmtraffic.contracts.record import LLMRecord
from llmtraffic.contracts.tokens import MAX_REQUEST_TOKENS, TokenCounters, native_tally

pytestmark = pytest.mark.skipif(native_tally is None, reason="contracts._records not built")

TOKENS = st.none() | st.integers(0, 5000) | st.sampled_from(
    [0, MAX_REQUEST_TOKENS, MAX_REQUEST_TOKENS + 1, 2**70, True])
SECONDS = st.none() | st.floats(0, 1e7, allow_nan=False) | st.sampled_from([0.0, 1, 10**20])
RECORDS = st.builds(
    LLMRecord, model=st.sampled_from([None, "", "a", "b", "c", "d", "e", 5]),
    response_code=st.sampled_from([None, 200, 404, 429, 503, True, 2**70]),
    prompt_tokens=TOKENS, completion_tokens=TOKENS, total_tokens=st.none() | st.just(3),
    ttft_ms=SECONDS, duration_ms=SECONDS)


def counted(native: bool, batches: list[list[LLMRecord]], cap: int) -> tuple:
    c = TokenCounters(max_values_per_label=cap, native=native)
    bare = [c.observe_many(batch) for batch in batches]
    return c.state(), bare


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(RECORDS, max_size=12), max_size=5), st.sampled_from([2, 100]))
def test_the_c_tally_counts_as_python_does(batches, cap) -> None:
    assert counted(True, batches, cap) == counted(False, batches, cap)


def test_the_c_tally_takes_the_common_record() -> None:
    c = TokenCounters()
    common = LLMRecord(model="a", response_code=200, prompt_tokens=5, completion_tokens=7,
                       duration_ms=1200.0, ttft_ms=80.0)
    c.observe(common)  # the first of a model makes its entry and histograms in Python
    assert native_tally([common] * 3, 0, c._keys, [], [], MAX_REQUEST_TOKENS) == 3
    assert native_tally([LLMRecord(model="a", response_code=404)], 0, c._keys, [], [],
                        MAX_REQUEST_TOKENS) == 0  # a 404 counts as `unknown`: Python
