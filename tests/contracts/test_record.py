"""The balancer's access-log writer rotates by size (rename-and-create, N files kept), and
the exporter following the file while it rotates counts every record exactly once."""

from __future__ import annotations

import pytest

from llmtraffic.balancer.options import BalancerOptions
from llmtraffic.contracts.record import AccessLogWriter, LLMRecord, record_to_json
from llmtraffic.exporter.app import ExporterApp, ExporterOptions


def _rec(i: int) -> LLMRecord:
    return LLMRecord(model=f"m{i % 3}", prompt_tokens=i, completion_tokens=2 * i,
                     response_code=200, request_id=f"r{i}")


def test_rotates_by_size_and_keeps_n_files(tmp_path) -> None:
    path = tmp_path / "access.log"
    line = len(record_to_json(_rec(100))) + 1
    w = AccessLogWriter(str(path), max_bytes=10 * line, keep=2)
    for i in range(100, 150):
        w.write(_rec(i))
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["access.log", "access.log.1", "access.log.2"]  # .3 and older dropped
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 10 * line
    assert path.read_bytes().count(b"\n") == 0  # 50 lines: the 5th rotation left it empty
    assert (tmp_path / "access.log.1").read_bytes().count(b"\n") == 10


def test_never_rotates_by_default_and_refuses_nonsense(tmp_path) -> None:
    w = AccessLogWriter(str(tmp_path / "a.log"))
    for i in range(200):
        w.write(_rec(i))
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["a.log"]
    with pytest.raises(ValueError, match="keep >= 1"):
        AccessLogWriter(str(tmp_path / "b.log"), max_bytes=10, keep=0)
    assert BalancerOptions().access_log_max_bytes == 0
    assert BalancerOptions(access_log_max_bytes=1 << 20, access_log_keep=5).access_log_keep == 5


def _append(path: str, max_bytes: int, first: int) -> None:
    w = AccessLogWriter(path, max_bytes=max_bytes, keep=1000, shared=True)
    for i in range(first, first + 300):
        w.write(_rec(i))
    w.close()


def test_shared_writers_append_whole_lines_and_rotate_once_each_time(tmp_path) -> None:
    """Three processes (the balancer's workers) on one file rotating by size: every line
    whole, none lost or doubled, each rotation done by one of them."""
    import multiprocessing

    import orjson

    path = tmp_path / "access.log"
    line = len(record_to_json(_rec(1000))) + 1  # every line written is this long
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(str(path), 50 * line, 1000 * (k + 1)))
             for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = [orjson.loads(x)["request_id"] for f in tmp_path.iterdir()
           for x in f.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"r{k * 1000 + i}" for k in (1, 2, 3) for i in range(300))
    rotated = [f for f in tmp_path.iterdir() if f.name != "access.log"]
    assert len(rotated) >= 2  # each one full: rotated by one writer, not once by each
    assert all(f.read_bytes().count(b"\n") >= 50 for f in rotated)


async def test_exporter_follows_size_rotation_exactly(tmp_path) -> None:
    path = tmp_path / "access.log"
    path.touch()
    app = ExporterApp(ExporterOptions(access_logs=[str(path)], listen="127.0.0.1:0"))
    w = AccessLogWriter(str(path), max_bytes=4096, keep=3)
    want_prompt: dict[str, float] = {}
    for i in range(1000):
        rec = _rec(i)
        w.write(rec)
        want_prompt[rec.model] = want_prompt.get(rec.model, 0) + i
        if i % 7 == 0:  # the exporter polls while the writer rotates under it
            app.poll()
    w.close()
    app.poll()
    while app.tailer.more:
        app.poll()
    app.tailer.close()
    assert {k[0]: v for k, v in app.counters.prompt.items()} == want_prompt
    assert sum(app.counters.requests.values()) == 1000
    assert app.stats.rotations.get("rename", 0) >= 10
