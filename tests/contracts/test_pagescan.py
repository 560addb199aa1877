"""The C scan of vLLM pages (contracts/csrc/pagescan.c, when built) against the Python parser,
page for page: exactly the same PodMetrics (every float to the last bit, -0.0 and NaN
included) on the real vLLM pages, rendered pages, generated and mutated ones (property-based);
and the scan takes the plain pages a vLLM serves rather than leaving them to Python."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtraffic.contracts import vllm
from llmtraffic.contracts.vllm import VllmParseError, parse_metrics, parse_metrics_python
from llmtraffic.simulator.samplepage import vllm_page
from tests.contracts.test_vllm import pages_for_tests
from tests.contracts.test_vllm_fuzz import _EXAMPLES, _PAGES, _mutate, _mutation, _pages

pytestmark = pytest.mark.skipif(vllm._scan is None, reason="contracts._pagescan not built")

REAL = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "vllm").glob("*.txt"))


def outcome(parse, page: bytes) -> str:
    """What `parse` makes of `page`, exactly: repr shows every field, floats to the last bit
    (and -0.0, nan, int vs float); or the error's message."""
    try:
        return repr(parse(page))
    except VllmParseError as e:
        return f"VllmParseError: {e}"


def assert_same(page: bytes) -> None:
    assert outcome(parse_metrics, page) == outcome(parse_metrics_python, page)


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_pages_are_scanned_in_c_to_the_same_metrics(path: Path) -> None:
    page = path.read_bytes()
    assert vllm._scan(page) is not None  # taken, not left to Python
    assert_same(page)


@pytest.mark.parametrize("page", [p.encode() for p in pages_for_tests()] + [
    vllm_page(seed=s, engines=("0", "1", "2")) for s in range(4)])
def test_rendered_pages_are_scanned_in_c_to_the_same_metrics(page: bytes) -> None:
    assert vllm._scan(page) is not None
    assert_same(page)


RUNNING = b'vllm:num_requests_running{engine="0",model_name="m"} '
TTFT = b'vllm:time_to_first_token_seconds_bucket{engine="0",le="%s",model_name="m"} %s'


@pytest.mark.parametrize("lines", [
    [RUNNING + b"-0", TTFT % (b"-0", b"1"), TTFT % (b"0", b"2"), TTFT % (b"0.0", b"-0.0")],
    [TTFT % (b"1", b"1"), TTFT % (b"1.0", b"2"), TTFT % (b"1e0", b"3"), TTFT % (b"+Inf", b"4")],
    [TTFT % (b"NaN", b"1")], [TTFT % (b"1_0", b"1")], [TTFT % (b" 1", b"1")],
    [RUNNING + b"NaN", RUNNING + b"+Inf", RUNNING + b"1e308", RUNNING + b"1e309"],
    [RUNNING + b"0.1", RUNNING + b"0.2", RUNNING + b"123456789012345.5", RUNNING + b".5",
     RUNNING + b"5.", RUNNING + b"-0.000000000000001", RUNNING + b"0x10", RUNNING + b"."],
    [RUNNING + b"1 1700000000000"], [RUNNING + b"1 # {a=\"b\"} 1"], [RUNNING + b" 1"],
    [RUNNING + b"1\r"], [b"  " + RUNNING + b"1"], [b"\t" + RUNNING + b"1"],
    [b'vllm:num_requests_running{model_name="m\\"x"} 1'],
    [b'vllm:num_requests_running{model_name="m",model_name="n"} 1'],
    [b'vllm:num_requests_running{model_name="m",} 1', b"vllm:num_requests_running{} 2"],
    [b'vllm:num_requests_running {model_name="m"} 1'], [b"vllm:num_requests_running\t1"],
    [b"vllm:num_requests_running 1", b"vllm:num_requests_running"],
    [b'vllm:num_requests_running{model_name="\xc3\xa9\xe2\x80\x83"} 1', RUNNING + b"2"],
    [b'vllm:num_requests_running{model_name="\xff"} 1'],
    [b'vllm:num_requests_running{model_name="m", engine="0"} 1'],
    [b'vllm:num_requests_running{model_name="m"engine="0"} 1'],
    [b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,\xc3\xa9",'
     b'waiting_lora_adapters=""} 5', b'vllm:lora_requests_info{max_lora="3",'
     b'running_lora_adapters="b",waiting_lora_adapters="c"} NaN',
     b'vllm:cache_config_info{block_size="16",num_gpu_blocks="1_000"} 1'],
    [b"vllm:kv_cache_usage_perc 0.5", b"vllm:gpu_cache_usage_perc 0.25"],
    [b'vllm:num_requests_waiting_by_reason{reason="deferred"} 3',
     b'vllm:num_requests_waiting_by_reason{reason="capacity"} 4'],
    [b"vllm:request_queue_time_seconds_sum 3", b"vllm:time_in_queue_requests_count 2"],
    [b"# nothing we read", b"process_open_fds 3"], [b"\xef\xbb\xbf" + RUNNING + b"1"],
])
def test_edge_lines_read_the_same(lines: list[bytes]) -> None:
    assert_same(b"\n".join(lines) + b"\n")
    assert_same(b"\n".join(lines))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(st.from_regex(r"[+-]?[0-9]{0,17}(\.[0-9]{0,17})?([eE][+-]?[0-9]{1,3})?", fullmatch=True))
def test_numbers_read_as_float_reads_them(number: str) -> None:
    page = RUNNING + number.encode() + b"\n" + TTFT % (number.encode(), b"1")
    assert_same(page)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_pages())
def test_generated_pages_read_the_same(text: str) -> None:
    assert_same(text.encode())


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page=st.sampled_from(_PAGES), mutations=st.lists(_mutation, min_size=1, max_size=6))
def test_mutated_pages_read_the_same(page: bytes, mutations: list) -> None:
    assert_same(_mutate(page, mutations))


def test_scan_takes_only_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        vllm._scan("vllm:num_requests_running 1")
    m = parse_metrics(bytearray(RUNNING + b"3"))  # the public parser takes any bytes-like
    assert m.running == 3.0 and m.models == ("m",)
