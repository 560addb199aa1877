"""Enriched access log: each record becomes one JSON line with canonical LLM fields and the
pod/pool it went to (resolved from the store's membership), ready for Loki or Fluent Bit.
Credentials are never copied: the output is built from LLMRecord fields only. A file that
cannot be written (a full disk) never stops the counting: its lines are dropped and counted,
the error said once, and writing resumes by itself when the file can be written again."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO

import orjson

from llmtraffic.contracts.record import LLMRecord
from llmtraffic.contracts.store import MetricsStore

#: Record fields copied as they are (besides the computed ones below).
COPIED = ("start_time", "request_id", "method", "path", "protocol", "response_code",
          "response_flags", "authority", "upstream_host", "upstream_cluster",
          "downstream_remote_address", "route_name", "user_agent", "bytes_received",
          "bytes_sent", "model", "target_model", "prompt_tokens", "completion_tokens",
          "ttft_ms", "duration_ms", "stream", "pool", "pod", "lb_policy", "pick_reason",
          "criticality", "source_pod", "source_namespace", "source_container")
#: Longest time an enriched line waits in the buffer (the exporter flushes this often).
FLUSH_INTERVAL = 0.5
#: Seconds between two attempts to write again after a write failed.
RETRY_INTERVAL = 1.0

log = logging.getLogger(__name__)


def enrich(rec: LLMRecord, store: MetricsStore | None) -> dict:
    """The enriched fields of one record."""
    out = {k: v for k in COPIED if (v := getattr(rec, k)) is not None}
    total = rec.total_tokens
    if total is None and rec.prompt_tokens is not None and rec.completion_tokens is not None:
        total = rec.prompt_tokens + rec.completion_tokens
    if total is not None:
        out["total_tokens"] = total
    if (rec.completion_tokens and rec.duration_ms is not None
            and rec.duration_ms > (rec.ttft_ms or 0.0)):
        decode_s = (rec.duration_ms - (rec.ttft_ms or 0.0)) / 1000
        out["tokens_per_s"] = round(rec.completion_tokens / decode_s, 3)
    if store is not None and rec.upstream_host:
        pod = store.pod(rec.upstream_host)
        if pod is not None:
            out["pod"] = pod.name
            out["namespace"] = pod.namespace
            if pod.pool:
                out["pool"] = pod.pool
    out["llm"] = rec.model is not None
    return out


class Enricher:
    """Writes enriched lines to a file (appending) or stdout ("-"), tracking the byte
    offset so a checkpoint can make the output exactly-once across crashes."""

    def __init__(self, store: MetricsStore | None, path: str = "-") -> None:
        self.store = store
        self.path = path
        self._file: IO[bytes]
        self.dirty = False  # written and not flushed yet
        self.dropped = 0  # lines lost to write errors
        self.error: str | None = None  # why the file cannot be written now
        self._failed_at = 0.0
        self._unflushed = 0  # lines written since the last flush
        if path == "-":
            self._file = sys.stdout.buffer
            self._offset = 0
        else:
            self._file = open(path, "ab")
            self._offset = self._file.tell()

    def write(self, rec: LLMRecord) -> None:
        if self.error is not None and not self._recover():
            self.dropped += 1
            return
        line = orjson.dumps(enrich(rec, self.store)) + b"\n"
        try:
            self._file.write(line)
        except OSError as e:
            self._fail(e, self._unflushed + 1)
            return
        self._offset += len(line)
        self._unflushed += 1
        self.dirty = True

    def flush(self) -> None:
        if self.error is not None:
            return
        try:
            self._file.flush()
            if self.path != "-":
                os.fsync(self._file.fileno())
        except OSError as e:
            self._fail(e, self._unflushed)
            return
        self._unflushed = 0
        self.dirty = False

    def _fail(self, e: OSError, lost: int) -> None:
        """A write failed: the lines not on disk are dropped; retried every RETRY_INTERVAL."""
        self.dropped += lost
        self._unflushed, self.dirty = 0, False
        self.error = f"cannot write the enriched log {self.path}: {e.strerror or e}"
        self._failed_at = time.monotonic()
        log.error("%s; enriched lines are dropped (llmtraffic_exporter_enriched_dropped_total)"
                  " until it can be written again; the token counters go on", self.error)
        if self.path != "-":
            try:
                self._file.close()  # what was buffered is lost with the failed write
            except OSError:
                pass

    def _recover(self) -> bool:
        now = time.monotonic()
        if now - self._failed_at < RETRY_INTERVAL:
            return False
        self._failed_at = now
        if self.path != "-":
            try:
                self._file = open(self.path, "ab")
            except OSError:
                return False
            self._offset = self._file.tell()
        log.info("writing the enriched log %s again (%d lines were dropped)", self.path,
                 self.dropped)
        self.error = None
        return True

    def flush_if_dirty(self) -> None:
        """Flush what was written since the last flush (called every FLUSH_INTERVAL)."""
        if self.dirty:
            self.flush()

    def tell(self) -> int:
        return self._offset

    def truncate_to(self, offset: int) -> None:
        """Drop what was written after `offset` (lines a crash wrote past the checkpoint)."""
        if self.path == "-":
            return
        self._file.flush()
        size = os.path.getsize(self.path)
        if offset < size:
            os.truncate(self.path, offset)
        self._file.seek(0, os.SEEK_END)
        self._offset = min(offset, size)

    def reopen(self) -> None:
        """After logrotate moved the file (SIGHUP): go on in a file at `path`."""
        if self.path == "-" or self.error is not None:
            return
        self.flush()
        self._file.close()
        self._file = open(self.path, "ab")
        self._offset = self._file.tell()

    def close(self) -> None:
        self.flush()
        if self.path != "-" and self.error is None:
            self._file.close()
