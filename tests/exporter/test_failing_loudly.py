"""An exporter that fails loudly: a log path that is a FIFO or a device is refused (it used to
hang in open() or read without end), a path that cannot be read, a full disk under the
enriched log, and a pass of the tail loop that raises are each logged, counted, shown on
/health (503) and llmtraffic_exporter_healthy, retried, and recovered from by themselves."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmtraffic.exporter import tail
from llmtraffic.exporter.app import ExporterApp, ExporterOptions

pytestmark = pytest.mark.e2e


def line(i: int) -> bytes:
    return orjson.dumps({"request_id": f"r{i}", "response_code": 200, "model": "m",
                         "prompt_tokens": 1, "completion_tokens": 2}) + b"\n"


async def health(app: ExporterApp) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.port}/health") as r:
            return r.status, await r.text()


async def metric(app: ExporterApp, name: str) -> float:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.port}/metrics") as r:
            text = await r.text()
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name))


async def until(cond, what: str, timeout: float = 30.0) -> None:
    """A hang detector, not a speed assertion."""
    end = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def exporter(tmp_path: Path):
    apps: list[ExporterApp] = []

    async def make(**kw) -> ExporterApp:
        opts = dict(access_logs=[str(tmp_path / "access.log")], listen="127.0.0.1:0",
                    from_beginning=True, poll_interval=0.05)
        opts.update(kw)
        app = ExporterApp(ExporterOptions(**opts))
        await asyncio.wait_for(app.start(), 30)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.stop()


def requests(app: ExporterApp) -> float:
    return sum(app.counters.requests.values())


@pytest.mark.parametrize("kind", ["fifo", "device"])
async def test_a_path_that_is_not_a_regular_file_is_refused_loudly(kind, exporter, tmp_path,
                                                                   caplog):
    path = tmp_path / "access.log"
    if kind == "fifo":
        os.mkfifo(path)  # open() of a FIFO blocks until a writer comes
    else:
        path.symlink_to("/dev/zero")  # a read that never ends
    app = await exporter()
    status, text = await health(app)
    assert status == 503 and "not a regular file" in text
    assert await metric(app, "llmtraffic_exporter_tail_errors_total") == 1
    assert await metric(app, "llmtraffic_exporter_healthy") == 0
    assert caplog.text.count("not a regular file") == 1  # said once, not every pass
    path.unlink()
    path.write_bytes(line(1))  # a regular file now: followed, and healthy again
    await until(lambda: asyncio.sleep(0, requests(app) == 1), "the line counted")
    assert (await health(app))[0] == 200


async def test_a_path_that_cannot_be_read_is_said_and_retried(exporter, tmp_path,
                                                              monkeypatch, caplog):
    path = tmp_path / "access.log"
    path.write_bytes(line(1))
    app = await exporter()
    await until(lambda: asyncio.sleep(0, requests(app) == 1), "the first line")
    real = os.stat

    def stat(p, *a, **kw):  # what chmod 000 on the directory does to a non-root exporter
        if str(p) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real(p, *a, **kw)

    monkeypatch.setattr(tail.os, "stat", stat)
    with path.open("ab") as f:
        f.write(line(2))
    await until(lambda: _is(health(app), 503), "503 on /health")
    status, text = await health(app)
    assert "Permission denied" in text and "access log" in caplog.text
    assert await metric(app, 'llmtraffic_exporter_tail_errors_total{reason="read_error"}') >= 1
    monkeypatch.setattr(tail.os, "stat", real)  # permissions back
    await until(lambda: asyncio.sleep(0, requests(app) == 2), "the line written meanwhile")
    assert (await health(app))[0] == 200


async def _is(answer, status: int) -> bool:
    return (await answer)[0] == status


class FullDisk:
    """A file whose writes fail as on a full disk."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


async def test_a_full_disk_under_the_enriched_log_never_stops_the_counting(exporter,
                                                                           tmp_path, caplog):
    path, enriched = tmp_path / "access.log", tmp_path / "enriched.log"
    path.write_bytes(b"")
    app = await exporter(enriched_log=str(enriched))
    app.enricher._file = FullDisk()  # the disk fills up
    with path.open("ab") as f:
        f.write(line(1) + line(2))
    await until(lambda: asyncio.sleep(0, requests(app) == 2), "both lines counted")
    status, text = await health(app)
    assert status == 503 and "No space left on device" in text
    assert await metric(app, "llmtraffic_exporter_enriched_dropped_total") == 2
    assert caplog.text.count("cannot write the enriched log") == 1
    await asyncio.sleep(1.1)  # space returns; the next line finds the file again
    with path.open("ab") as f:
        f.write(line(3))
    await until(lambda: asyncio.sleep(0, requests(app) == 3), "the third line counted")
    await until(lambda: _is(health(app), 200), "200 on /health")
    app.enricher.flush()
    assert [orjson.loads(x)["request_id"] for x in enriched.read_bytes().splitlines()] == \
        ["r3"]


async def test_a_failing_pass_of_the_tail_loop_is_retried(exporter, tmp_path, caplog):
    path = tmp_path / "access.log"
    path.write_bytes(b"")
    app = await exporter()
    real, failures = app.poll, []

    def poll() -> int:
        if len(failures) < 3:
            failures.append(1)
            raise RuntimeError("a bug")
        return real()

    app.poll = poll  # type: ignore[method-assign]
    with path.open("ab") as f:
        f.write(line(1))
    await until(lambda: asyncio.sleep(0, requests(app) == 1), "the line counted after all")
    assert caplog.text.count("a pass of the tail loop failed (RuntimeError: a bug)") == 1
    assert app.stats.tail_errors == {"read_error": 3}
    assert (await health(app))[0] == 200


# ---- unbounded lines and files -----------------------------------------------------------------
def test_a_line_over_the_limit_is_dropped_and_counted_whatever_its_length(tmp_path):
    """200 MB without a newline, scaled down: a line over max_line_bytes is never held
    whole; it is dropped to its newline and counted as too_long, and the lines around it
    are read."""
    from llmtraffic.exporter.collector import ExporterStats

    path = tmp_path / "access.log"
    path.write_bytes(line(1))
    stats = ExporterStats()
    t = tail.Tailer([str(path)], from_beginning=True, chunk_size=4096, max_line_bytes=8192,
                    stats=stats)
    got = [ln for _, lines in t.read() for ln in lines]
    with path.open("ab") as f:
        for _ in range(64):  # 640 KiB of one line, arriving a chunk at a time
            f.write(b"x" * 10240)
            f.flush()
            got += [ln for _, lines in t.read() for ln in lines]
            assert all(len(x.partial) <= 8192 for x in t.files.values())  # never held whole
        f.write(b"\n" + line(2) + b"y" * 9000 + b"\n" + line(3))
    while True:
        batch = [ln for _, lines in t.read() for ln in lines]
        got += batch
        if not batch and not t.more:
            break
    t.close()
    assert [orjson.loads(x)["request_id"] for x in got] == ["r1", "r2", "r3"]
    assert stats.parse_errors == {"too_long": 2}


def test_a_file_replaced_faster_than_it_is_read_is_signalled(tmp_path, caplog):
    from llmtraffic.exporter.collector import ExporterStats

    path = tmp_path / "access.log"
    path.write_bytes(line(0))
    stats = ExporterStats()
    t = tail.Tailer([str(path)], from_beginning=True, stats=stats)
    t.read()
    for i in range(1, 6):  # deleted and created again before every pass
        path.unlink()
        path.write_bytes(line(i))
        t.read()
    t.close()
    assert stats.tail_errors == {"rotated_between_polls": 4}  # from the second in a row
    assert caplog.text.count("is replaced faster than it is read") == 1
