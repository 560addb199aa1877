"""Enriched access log: each record becomes one JSON line with canonical LLM fields and the
pod/pool it went to (resolved from the store's membership), ready for Loki or Fluent Bit.
Credentials are never copied: the output is built from LLMRecord fields only."""

from __future__ import annotations

import os
import sys
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
        if path == "-":
            self._file = sys.stdout.buffer
            self._offset = 0
        else:
            self._file = open(path, "ab")
            self._offset = self._file.tell()

    def write(self, rec: LLMRecord) -> None:
        line = orjson.dumps(enrich(rec, self.store)) + b"\n"
        self._file.write(line)
        self._offset += len(line)
        self.dirty = True

    def flush(self) -> None:
        self._file.flush()
        if self.path != "-":
            os.fsync(self._file.fileno())
        self.dirty = False

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
        if self.path == "-":
            return
        self._file.flush()
        self._file.close()
        self._file = open(self.path, "ab")
        self._offset = self._file.tell()

    def close(self) -> None:
        self._file.flush()
        if self.path != "-":
            self._file.close()
