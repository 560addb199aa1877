"""Small pieces of `balancer/usage.py` the access log depends on."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from llmtraffic.balancer.usage import now_iso


def test_now_iso_is_envoys_start_time_format_and_current():
    before = datetime.now(timezone.utc)
    stamps = [now_iso() for _ in range(2000)]  # crosses whole seconds sometimes: reuse path
    after = datetime.now(timezone.utc)
    for s in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s), s
        t = datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert before - timedelta(milliseconds=1) <= t <= after
    assert stamps == sorted(stamps)


def test_a_new_request_id_is_a_random_uuid4():
    import uuid

    from llmtraffic.balancer.usage import new_request_id

    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in ids:
        u = uuid.UUID(rid)
        assert str(u) == rid and u.version == 4 and u.variant == uuid.RFC_4122
