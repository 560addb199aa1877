"""The access-log record every component speaks: `LLMRecord` (one request as a gateway logged
it), and the one writer whose JSON lines the balancer emits and the exporter reads back.

LLMRecord is a msgspec Struct (slots, no GC tracking, made in C), so the exporter's JSON decoder
can fill records as it parses; records compare by their fields, whatever their (sub)class."""

from __future__ import annotations

import os
import threading
from typing import IO, Any

import msgspec
import orjson
from msgspec.structs import astuple

MAX_INT = 2**53  # larger counts are corrupt data, not traffic


class LLMRecord(msgspec.Struct, gc=False):
    """One request as a gateway logged it. Durations in milliseconds."""

    start_time: str | None = None
    method: str | None = None
    path: str | None = None
    protocol: str | None = None
    response_code: int | None = None
    response_flags: str | None = None
    duration_ms: float | None = None
    upstream_service_time_ms: float | None = None
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    bytes_received: int | None = None
    bytes_sent: int | None = None
    downstream_remote_address: str | None = None
    route_name: str | None = None
    model: str | None = None
    target_model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    ttft_ms: float | None = None
    stream: bool | None = None
    pool: str | None = None
    pod: str | None = None
    lb_policy: str | None = None
    pick_reason: str | None = None
    criticality: str | None = None
    # the Kubernetes pod, namespace and container whose log held the record (container log
    # files, OTLP resource attributes); not the vLLM pod it went to (`pod`)
    source_pod: str | None = None
    source_namespace: str | None = None
    source_container: str | None = None

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, LLMRecord):
            return NotImplemented
        return astuple(self)[:_N] == astuple(other)[:_N]

    def __ne__(self, other: Any) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]  # mutable


FIELD_NAMES: tuple[str, ...] = LLMRecord.__struct_fields__
_N = len(FIELD_NAMES)
INT_FIELDS = {"response_code", "bytes_received", "bytes_sent", "prompt_tokens",
              "completion_tokens", "total_tokens"}
FLOAT_FIELDS = {"duration_ms", "upstream_service_time_ms", "ttft_ms"}
BOOL_FIELDS = {"stream"}

#: Keys our own balancer writes (record_to_json) for each field.
LLMTRAFFIC_KEYS: dict[str, str] = {
    **{f: f for f in FIELD_NAMES},
    "duration_ms": "duration", "upstream_service_time_ms": "upstream_service_time",
}


def record_to_json(record: LLMRecord) -> bytes:
    """One JSON line (no newline) with Istio-compatible keys plus our LLM fields; the
    `llmtraffic` mapping reads it back exactly. There is no field for credentials."""
    out = {}
    for f in FIELD_NAMES:
        v = getattr(record, f)
        if v is not None:
            out[LLMTRAFFIC_KEYS[f]] = v
    return orjson.dumps(out)


class AccessLogWriter:
    """Appends one JSON line per record to a file (or stdout when path is None/'-').

    With `max_bytes`, a file that reached it is renamed to `path.1` (`path.1` to `path.2`,
    ..., `path.<keep>` deleted) and a new one started: rename-and-create, which the exporter
    follows, finishing the renamed file first.

    Each line is one unbuffered write to a file opened for appending, so several processes
    (`shared`: the balancer's workers) append whole lines to one file; they then measure the
    file itself, rotate under a lock on its directory, and follow a rotation another did."""

    def __init__(self, path: str | None, max_bytes: int = 0, keep: int = 3,
                 shared: bool = False) -> None:
        self.path = None if path in (None, "-") else path
        self.shared = shared and self.path is not None and max_bytes > 0
        if max_bytes < 0 or keep < 1:
            raise ValueError(f"access log {path}: max_bytes must be >= 0 (0: never rotate) "
                             f"and keep >= 1 (got {max_bytes}, {keep})")
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._file: IO[bytes] = self._open()
        self._size = self._file.tell() if self.path is not None else 0

    def _open(self) -> IO[bytes]:
        if self.path is None:
            import sys
            return sys.stdout.buffer
        return open(self.path, "ab", buffering=0)

    def write(self, record: LLMRecord) -> None:
        line = record_to_json(record) + b"\n"
        with self._lock:
            if self.shared:
                self._follow()
            self._file.write(line)
            if self.path is None:
                self._file.flush()
                return
            self._size += len(line)
            if self.shared:
                self._size = os.fstat(self._file.fileno()).st_size  # every writer's lines
            if self.max_bytes and self._size >= self.max_bytes:
                self._rotate_shared() if self.shared else self._rotate()

    def _follow(self) -> None:
        """Another process rotated the file (path is a new file, or none yet): append to
        the new one."""
        assert self.path is not None
        try:
            moved = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            moved = True
        if moved:
            self._file.close()
            self._file = self._open()
            self._size = self._file.tell()

    def _rotate_shared(self) -> None:
        """Rotate once among several writers: under an exclusive lock on the directory,
        whoever still finds the full file at `path` rotates; the others follow."""
        import fcntl

        assert self.path is not None
        fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._follow()
            if os.fstat(self._file.fileno()).st_size >= self.max_bytes:
                self._rotate()
        finally:
            os.close(fd)  # and the lock with it

    def _rotate(self) -> None:
        """path -> path.1 -> ... -> path.<keep> (the oldest dropped); a new path."""
        assert self.path is not None
        self._file.close()
        for i in range(self.keep - 1, 0, -1):
            older = f"{self.path}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._file = self._open()
        self._size = 0

    def reopen(self) -> None:
        """After logrotate moved the file (SIGHUP)."""
        with self._lock:
            if self.path is not None:
                self._file.close()
                self._file = self._open()
                self._size = self._file.tell()

    def close(self) -> None:
        with self._lock:
            if self.path is not None:
                self._file.close()
