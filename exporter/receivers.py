"""The servers the pushed access logs arrive on, started and stopped together: Envoy's ALS and
OTLP/gRPC on gRPC servers (one server when they share an address), OTLP/HTTP on aiohttp."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from aiohttp import web

from llmtraffic.contracts.serving import parse_listen
from llmtraffic.exporter.collector import ExporterStats
from llmtraffic.exporter.pipeline import Pipeline

log = logging.getLogger(__name__)
GRACE_S = 2.0  # streams in flight get this long when the exporter stops


def _receiver(name: str) -> ModuleType:
    """exporter.als or exporter.otlp, whose protos come with the `receivers` extra."""
    try:
        return importlib.import_module(f"llmtraffic.exporter.{name}")
    except ImportError as e:
        raise OSError(f"the {name} receiver needs {e.name}: pip install "
                      "'llmtraffic[receivers]' (grpcio, xds-protos, opentelemetry-proto)") from None


class Receivers:
    """`await start()`; `ports` then holds the bound port of each receiver given."""

    def __init__(self, pipeline: Pipeline, stats: ExporterStats, *, als: str | None = None,
                 otlp_grpc: str | None = None, otlp_http: str | None = None) -> None:
        self.pipeline = pipeline
        self.stats = stats
        self.listen = {k: v for k, v in (("als", als), ("otlp_grpc", otlp_grpc),
                                         ("otlp_http", otlp_http)) if v}
        self.ports: dict[str, int] = {}
        self._grpc: list[Any] = []  # grpc.aio.Server
        self._http: web.AppRunner | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    async def start(self) -> None:
        by_address: dict[str, list[str]] = {}
        for name in ("als", "otlp_grpc"):
            if name in self.listen:
                by_address.setdefault(self.listen[name], []).append(name)
        for address, names in by_address.items():
            import grpc  # with the receivers extra

            server = grpc.aio.server()
            for name in names:
                _receiver("als" if name == "als" else "otlp").add_to_server(
                    server, self.pipeline, self.stats.received)
            host, port = parse_listen(address)
            bound = server.add_insecure_port(f"{host}:{port}")
            if not bound:
                raise OSError(f"cannot listen on {address} for {' and '.join(names)}")
            await server.start()
            self._grpc.append(server)
            for name in names:
                self.ports[name] = bound
        if "otlp_http" in self.listen:
            host, port = parse_listen(self.listen["otlp_http"])
            self._http = web.AppRunner(_receiver("otlp").http_app(self.pipeline,
                                                                  self.stats.received),
                                       access_log=None)
            await self._http.setup()
            site = web.TCPSite(self._http, host, port, reuse_address=True)
            await site.start()
            self.ports["otlp_http"] = site._server.sockets[0].getsockname()[1]  # type: ignore
        for name, port in self.ports.items():
            log.info("receiving %s access logs on port %d", name, port)

    async def stop(self) -> None:
        for server in self._grpc:
            await server.stop(GRACE_S)
        self._grpc.clear()
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
