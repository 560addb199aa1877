"""Fixtures for the Prometheus tests: loopback HTTP servers standing in for pods' /metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

Page = Callable[[], bytes]


class MetricsServer:
    """Serves `page()` on every GET (any path) at 127.0.0.1:port until closed."""

    def __init__(self, page: Page) -> None:
        outer = self
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.paths.append(self.path)
                body = page()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def metrics_server() -> Iterator[Callable[[Page], MetricsServer]]:
    servers: list[MetricsServer] = []

    def start(page: Page) -> MetricsServer:
        servers.append(MetricsServer(page))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
