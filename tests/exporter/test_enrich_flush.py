"""The enriched log reaches the disk while the exporter runs (at most FLUSH_INTERVAL after a
record, without --positions), not only at exit."""

from __future__ import annotations

import asyncio

import orjson

from llmtraffic.exporter.app import ExporterApp, ExporterOptions
from llmtraffic.exporter.enrich import FLUSH_INTERVAL


async def test_enriched_lines_are_on_disk_while_running(tmp_path) -> None:
    assert FLUSH_INTERVAL <= 1.0
    log, out = tmp_path / "access.log", tmp_path / "enriched.log"
    log.touch()
    app = ExporterApp(ExporterOptions(access_logs=[str(log)], listen="127.0.0.1:0",
                                      enriched_log=str(out), poll_interval=0.05))
    await app.start()
    try:
        with open(log, "ab") as fh:
            for i in range(5):
                fh.write(orjson.dumps({"request_model": "m", "request_prompt_tokens": i}) + b"\n")
        for _ in range(200):  # the file is read by another open, as Loki's agent would
            if out.exists() and out.read_bytes().count(b"\n") == 5:
                break
            await asyncio.sleep(0.05)
        assert out.read_bytes().count(b"\n") == 5
        assert not app.enricher.dirty
    finally:
        await app.stop()
