"""A fake Kubernetes API server for tests: no real API server (nor kind/k3s) can run here, so
this speaks the parts of the real list/watch HTTP protocol the official client uses.

- `GET /api/v1/namespaces/{ns}/pods` and `GET /apis/{group}/{version}/namespaces/{ns}/{plural}`
  list: `{"kind": "<Kind>List", "metadata": {"resourceVersion": "N"}, "items": [...]}`.
- The same paths with `?watch=true&resourceVersion=N` stream chunked JSON lines
  `{"type": "ADDED|MODIFIED|DELETED|ERROR", "object": {...}}`: every event after N, then new
  events as they happen, until `timeoutSeconds`. A version older than the compacted history
  gets one `ERROR` event carrying a `Status` with code 410 (Expired), as etcd compaction does.
- One resourceVersion counter for all objects (etcd's revision); each object carries the
  revision of its last change.
- `expire()` compacts history and ends open watches with the 410 ERROR; `hold()` keeps open
  watches from sending (events queue up, as on a slow link); `go_away()` closes the
  listening socket and cuts open watches mid-stream; `come_back()` listens again on the same
  port with the same state.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

Key = tuple[str, str, str, str]  # (group, version, plural, namespace)

#: Custom resources the fake serves ("group/version/plural"); others answer 404 as a cluster
#: without that CRD does. Pods are always served.
SERVED = ("inference.networking.x-k8s.io/v1alpha1/inferencepools",
          "inference.networking.k8s.io/v1/inferencepools",
          "inference.networking.x-k8s.io/v1alpha1/inferencemodels",
          "istio.alibabacloud.com/v1/llmroutes")


class FakeApiServer:
    def __init__(self, port: int = 0, served: Iterable[str] = SERVED) -> None:
        self.port = port
        self.served = {tuple(api.rsplit("/", 2)) for api in served}  # (group, version, plural)
        self.objects: dict[Key, dict[str, dict]] = {}
        self.history: dict[Key, list[tuple[int, str, dict]]] = {}
        self.compacted: dict[Key, int] = {}  # watches from below this get 410
        self.rv = 100
        self.requests: list[str] = []  # "list <path>" / "watch <path>?rv"
        self.generation = 0  # bumped by expire(): open watches end with 410
        self.held = False
        self.cond = threading.Condition()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.up = False

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> "FakeApiServer":
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self.server, self.port, self.up = server, server.server_address[1], True
        self.thread = threading.Thread(target=server.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def go_away(self) -> None:
        """Stop listening and cut every open watch without ending its stream."""
        with self.cond:
            self.up = False
            self.cond.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def come_back(self) -> None:
        self.start()

    stop = go_away

    # ---- state ---------------------------------------------------------------------------
    def apply(self, obj: dict) -> dict:
        """Create or replace an object (ADDED or MODIFIED) and return the stored copy."""
        key = self._key_of(obj)
        obj = copy.deepcopy(obj)
        name = obj["metadata"]["name"]
        obj["metadata"].setdefault("namespace", key[3])
        with self.cond:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            kind = "MODIFIED" if name in self.objects.setdefault(key, {}) else "ADDED"
            self.objects[key][name] = obj
            self.history.setdefault(key, []).append((self.rv, kind, copy.deepcopy(obj)))
            self.cond.notify_all()
        return obj

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "default") -> None:
        key = self._key_of({"apiVersion": api_version, "kind": kind,
                            "metadata": {"namespace": namespace}})
        with self.cond:
            obj = self.objects.get(key, {}).pop(name)
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.history.setdefault(key, []).append((self.rv, "DELETED", obj))
            self.cond.notify_all()

    def expire(self) -> None:
        """Compact all history (older versions now get 410) and end open watches with an
        ERROR 410 event, so clients must relist."""
        with self.cond:
            for key in set(self.objects) | set(self.history):
                self.compacted[key] = self.rv
                self.history[key] = []
            self.generation += 1
            self.cond.notify_all()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Open watches send nothing inside the block."""
        with self.cond:
            self.held = True
        try:
            yield
        finally:
            with self.cond:
                self.held = False
                self.cond.notify_all()

    def count(self, prefix: str) -> int:
        return sum(1 for r in list(self.requests) if r.startswith(prefix))

    @staticmethod
    def _key_of(obj: dict) -> Key:
        api = obj["apiVersion"]
        group, _, version = api.rpartition("/")
        plural = obj["kind"].lower() + "s"
        return group, version, plural, obj["metadata"].get("namespace") or "default"


def pod(name: str, ip: str | None, labels: dict[str, str], *, ready: bool = True,
        phase: str = "Running", namespace: str = "default") -> dict:
    """A Pod object as the API server returns it (the fields discovery reads)."""
    status: dict[str, Any] = {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "vllm", "image": "vllm"}]}, "status": status}


def _status_410(message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Expired", "code": 410}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate small writes

    def log_message(self, *args) -> None:  # quiet
        pass

    @property
    def fake(self) -> FakeApiServer:
        return self.server.fake  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        key = self._route(url.path)
        if key is None:
            return self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404,
                                    "message": f"the server could not find {url.path}"})
        if q.get("watch") in ("true", "1"):
            self.fake.requests.append(f"watch {url.path}?{q.get('resourceVersion', '')}")
            try:
                return self._watch(key, q)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped watching
                self.close_connection = True
                return None
        self.fake.requests.append(f"list {url.path}")
        with self.fake.cond:
            items = [copy.deepcopy(o) for o in self.fake.objects.get(key, {}).values()]
            rv = self.fake.rv
        kind = "PodList" if key[2] == "pods" else items[0]["kind"] + "List" if items \
            else key[2].capitalize() + "List"
        api = f"{key[0]}/{key[1]}" if key[0] else key[1]
        self._json(200, {"kind": kind, "apiVersion": api,
                         "metadata": {"resourceVersion": str(rv)}, "items": items})

    def _route(self, path: str) -> Key | None:
        parts = path.strip("/").split("/")
        if len(parts) == 5 and parts[:2] == ["api", "v1"] and parts[2] == "namespaces":
            return "", "v1", parts[4], parts[3]
        if len(parts) == 6 and parts[0] == "apis" and parts[3] == "namespaces":
            key = (parts[1], parts[2], parts[5], parts[4])
            return key if key[:3] in self.fake.served else None  # no CRD: 404
        return None

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, key: Key, q: dict[str, str]) -> None:
        fake = self.fake
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 1800)
        since = q.get("resourceVersion") or ""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with fake.cond:
            gen = fake.generation
            if since in ("", "0"):  # "most recent": synthetic ADDED for what exists
                last = fake.rv
                pending = [("ADDED", copy.deepcopy(o)) for o in fake.objects.get(key, {}).values()]
            elif int(since) < fake.compacted.get(key, 0):
                pending, last = None, 0
            else:
                pending, last = [], int(since)
        if pending is None:
            self._chunk({"type": "ERROR", "object": _status_410(
                f"too old resource version: {since} ({fake.compacted[key]})")})
            return self._end()
        while True:
            for kind, obj in pending:
                self._chunk({"type": kind, "object": obj})
            with fake.cond:
                while True:
                    if not fake.up:
                        return self._cut()
                    if fake.generation != gen:
                        break
                    new = [(rv, k, o) for rv, k, o in fake.history.get(key, []) if rv > last]
                    if new and not fake.held:
                        pending = [(k, copy.deepcopy(o)) for _, k, o in new]
                        last = new[-1][0]
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return self._end()
                    fake.cond.wait(min(left, 0.5))
            if fake.generation != gen:
                self._chunk({"type": "ERROR", "object": _status_410(
                    "The resourceVersion for the provided watch is too old.")})
                return self._end()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    def _cut(self) -> None:
        """Drop the connection mid-stream, as a dying API server does."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
