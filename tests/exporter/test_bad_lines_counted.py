"""Property: whatever lines an access log holds, the exporter's read path (tail, parse,
count, enrich) never raises, and every line is either a record (one enriched line) or counted
once under the reason the parser gives for it."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from llmtraffic.exporter.accesslog import ParseError, make_parser
from llmtraffic.exporter.app import ExporterApp, ExporterOptions

def _dumps(obj: dict) -> bytes:
    """JSON as any writer may produce it: integers past 64 bits (which orjson.dumps cannot
    write) and NaN/Infinity (not valid JSON) included."""
    return json.dumps(obj).encode("utf-8", "surrogatepass")


GOOD = orjson.dumps({"request_model": "m", "request_prompt_tokens": "3",
                     "request_completion_tokens": 4, "response_code": "200"})
LINES = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.dictionaries(st.sampled_from(["request_model", "request_prompt_tokens", "duration",
                                     "response_code", "stream", "model", "x"]),
                    st.none() | st.booleans() | st.integers(-3, 2**70) | st.text(max_size=5)
                    | st.floats(), max_size=5).map(_dumps),
    st.just(GOOD), st.just(b"x" * 70_000), st.just(b"\xff\xfe"), st.just(b"[]"))


def expected(lines: list[bytes]) -> tuple[int, Counter[str]]:
    parser = make_parser()
    good, bad = 0, Counter[str]()
    for line in lines:
        try:
            parser.parse(line)
            good += 1
        except ParseError as e:
            bad[e.reason] += 1
    return good, bad


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES.map(lambda b: b.replace(b"\n", b"").rstrip(b"\r")), min_size=1,
                max_size=40))
def test_every_line_is_a_record_or_counted_by_reason(lines):
    with tempfile.TemporaryDirectory() as d:
        log, enriched = Path(d) / "access.log", Path(d) / "enriched.log"
        log.write_bytes(b"".join(line + b"\n" for line in lines))
        app = ExporterApp(ExporterOptions(access_logs=[str(log)], from_beginning=True,
                                          enriched_log=str(enriched)))
        while app.poll() or app.tailer.more:
            pass
        app.enricher.close()  # type: ignore[union-attr]
        app.tailer.close()
        good, bad = expected(lines)
        assert dict(app.stats.parse_errors) == dict(bad)
        assert set(bad) <= set(ParseError.REASONS)
        assert len(enriched.read_bytes().splitlines()) == good
        assert good + sum(bad.values()) == len(lines) == sum(app.stats.lines.values())
