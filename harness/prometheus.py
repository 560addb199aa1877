"""A local Prometheus server (Debian's `prometheus` binary) for the demo and the end-to-end
tests: write a config, start it on a loopback port, wait until ready, query its HTTP API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from llmtraffic.harness.child import stop_child


class PrometheusError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_binary(name: str = "prometheus") -> str:
    path = shutil.which(name)
    if path is None:
        raise PrometheusError(
            f"`{name}` is not on the PATH. Install it with `apt-get install prometheus` "
            "(scripts/test does this for the test suite).")
    return path


class PrometheusAPI:
    """Queries against a Prometheus server's HTTP API at `url`."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def api(self, path: str, **params: Any) -> Any:
        qs = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{qs}", timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector."""
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float,
                    step: float) -> list[dict[str, Any]]:
        """Range query (unix seconds); returns the result matrix."""
        return self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step:g}")["result"]

    def wait_for(self, expr: str, timeout: float = 30.0,
                 predicate: Any = lambda result: bool(result)) -> list[dict[str, Any]]:
        """Poll `expr` until `predicate(result)` holds; raise with the last result if not."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise PrometheusError(f"{expr!r} did not satisfy the condition in {timeout}s: {result}")

    def targets_health(self) -> dict[str, str]:
        data = self.api("targets")
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}


class PrometheusServer(PrometheusAPI):
    """`with PrometheusServer(workdir, config_text) as prom: prom.query('up')`."""

    def __init__(self, workdir: Path, config_text: str, port: int | None = None,
                 extra_files: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir).resolve()  # the server runs inside it
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.config_path = self.workdir / "prometheus.yml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, text in (extra_files or {}).items():
            (self.workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.workdir / name).write_text(text)
        self.config_path.write_text(config_text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [find_binary(), f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-lifecycle", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}: "
                                      f"{self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout}s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 10)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
