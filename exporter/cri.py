"""Kubernetes container log files: the CRI format (`<time> stdout|stderr F|P <line>`, partial
`P` lines joined up to their `F`) and Docker's json-file format, recognised per file from its
first line (anything else is a plain access log); the pod, namespace and container a file
belongs to, from kubelet's file names. Only stdout is access log (Envoy writes its own log to
stderr); partial lines still waiting for their end are part of the checkpoint."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field

import orjson

from llmtraffic.exporter.accesslog import DEFAULT_MAX_LINE_BYTES
from llmtraffic.exporter.pipeline import Origin, Pipeline

_CRI = re.compile(rb"^\d{4}-\d\d-\d\dT\S+ (?:stdout|stderr) [PF](?: |$)")
#: /var/log/containers/<pod>_<namespace>_<container>-<container id>.log
_CONTAINERS = re.compile(r"^(?P<pod>[^_]+)_(?P<ns>[^_]+)_(?P<container>.+)-[0-9a-f]{64}\.log$")
#: /var/log/pods/<namespace>_<pod>_<uid>/<container>/<restarts>.log[.<rotated>]
_PODS_DIR = re.compile(r"^(?P<ns>[^_]+)_(?P<pod>[^_]+)_[0-9a-f-]+$")


def origin_of(path: str) -> Origin | None:
    """Pod, namespace and container from a kubelet log path (either layout), else None."""
    m = _CONTAINERS.match(os.path.basename(path))
    if m:
        return Origin(m["pod"], m["ns"], m["container"])
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 3 and re.match(r"^\d+\.log", parts[-1]):
        d = _PODS_DIR.match(parts[-3])
        if d:
            return Origin(d["pod"], d["ns"], parts[-2])
    return None


def detect(line: bytes) -> str:
    """`cri`, `docker` or `plain`, from one line of a file."""
    if _CRI.match(line):
        return "cri"
    if line.startswith(b'{"log":'):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return "plain"
        if type(obj) is dict and isinstance(obj.get("log"), str) and "stream" in obj:
            return "docker"
    return "plain"


@dataclass
class _File:
    kind: str
    origin: Origin | None
    partial: bytes = b""  # a line's parts so far (P lines, or Docker entries without \n)
    overflow: bool = False  # the partial line passed the limit: the rest is dropped


@dataclass
class ContainerLogs:
    """Turns each followed file's raw lines into access-log lines for the pipeline."""

    pipeline: Pipeline
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    files: dict[str, _File] = field(default_factory=dict)

    def feed(self, path: str, lines: list[bytes]) -> None:
        f = self.files.get(path)
        if f is None:
            if not lines:
                return
            kind = detect(lines[0])
            f = self.files[path] = _File(kind, origin_of(path) if kind != "plain" else None)
        if f.kind == "plain":
            self.pipeline.lines(lines)
            return
        out = self._cri(f, lines) if f.kind == "cri" else self._docker(f, lines)
        if out:
            self.pipeline.lines(out, f.origin)

    def _join(self, f: _File, part: bytes, last: bool, out: list[bytes]) -> None:
        if len(f.partial) + len(part) > self.max_line_bytes:  # bounded: the parser says too_long
            f.partial = (f.partial + part)[:self.max_line_bytes + 1]
            f.overflow = True
        elif f.overflow:
            pass
        else:
            f.partial += part
        if last:
            out.append(f.partial)
            f.partial, f.overflow = b"", False

    def _cri(self, f: _File, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for raw in lines:
            parts = raw.split(b" ", 3)
            if len(parts) < 3 or parts[2] not in (b"F", b"P"):
                out.append(raw)  # not a CRI line: the parser counts it
                continue
            if parts[1] != b"stdout":
                continue
            text = parts[3] if len(parts) == 4 else b""
            if parts[2] == b"F" and not f.partial:
                out.append(text)
            else:
                self._join(f, text, parts[2] == b"F", out)
        return out

    def _docker(self, f: _File, lines: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for raw in lines:
            try:
                obj = orjson.loads(raw)
                text, stream = obj["log"], obj.get("stream")
            except (orjson.JSONDecodeError, TypeError, KeyError):
                out.append(raw)
                continue
            if stream != "stdout" or not isinstance(text, str):
                continue
            data = text.encode("utf-8", "surrogatepass")
            last = data.endswith(b"\n")
            data = data.rstrip(b"\r\n") if last else data
            if last and not f.partial:
                out.append(data)
            else:
                self._join(f, data, last, out)
        return out

    # ---- checkpoint --------------------------------------------------------------------
    def state(self) -> dict:
        """Partial lines waiting for their end, per file (kind, bytes as base64)."""
        return {p: {"kind": f.kind, "partial": base64.b64encode(f.partial).decode()}
                for p, f in self.files.items() if f.partial}

    def restore(self, state: dict) -> None:
        for path, saved in state.items():
            f = self.files[path] = _File(saved["kind"], origin_of(path))
            f.partial = base64.b64decode(saved["partial"])
