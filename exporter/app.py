"""The exporter process: tail access logs (plain or container log files) and receive them
(Envoy ALS, OTLP) → token counters + enriched log, scrape vLLM pods → store, serve /metrics;
crash-safe through one atomic checkpoint (`--positions`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Annotated

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmtraffic.exporter.accesslog import JSON_FORMATS, FieldMapping, make_parser
from llmtraffic.exporter.collector import ExporterCollector, ExporterStats
from llmtraffic.contracts.tokens import TokenCounters
from llmtraffic.exporter.cri import ContainerLogs
from llmtraffic.exporter.enrich import FLUSH_INTERVAL, Enricher
from llmtraffic.exporter.pipeline import Pipeline
from llmtraffic.exporter.receivers import Receivers
from llmtraffic.contracts.flags import NOT_A_FLAG, Flag, add_flags, from_flags
from llmtraffic.contracts.options import (Listen, MaxLabelValues, PodsFile, ScrapeBudget,
    ScrapeInterval, ScrapeMaxBytes, ScrapeTimeout)
from llmtraffic.contracts.scrape import Scraper
from llmtraffic.contracts.pods import pods_from_file, pods_from_urls, require_ports
from llmtraffic.contracts.serving import parse_listen, stop_event
from llmtraffic.contracts.store import MetricsStore
from llmtraffic.exporter.checkpoint import CHECKPOINT_VERSION, validate_checkpoint
from llmtraffic.exporter.tail import Tailer, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
#: Seconds without a completed pass of the tail loop after which /health says it stalled.
STALL_AFTER = 30.0
MAX_RETRY_PAUSE = 30.0  # the longest pause between two failed passes


class ExporterOptions(BaseModel):
    """The exporter process's options, each declared once; the command line is made from
    them (`contracts.flags`)."""

    model_config = ConfigDict(extra="forbid")

    access_logs: Annotated[list[str], Flag(name="--access-log", metavar="GLOB")] = Field(
        [], description="access-log files or globs to follow, e.g. "
        "/var/log/containers/istio-ingressgateway-*_istio-system_istio-proxy-*.log (container "
        "log files, CRI or Docker json-file, are recognised per file)")
    format: str = Field("json", description=f"{' | '.join(JSON_FORMATS)} | istio-text | "
                        "envoy:'<Envoy format string>' (a gateway's name: its JSON keys)")
    als_listen: Annotated[Listen | None, Flag(metavar="HOST:PORT")] = Field(
        None, description="receive Envoy's gRPC access logs (envoy.access_loggers.http_grpc"
        ", AccessLogService) here, e.g. 0.0.0.0:9001")
    otlp_grpc_listen: Annotated[Listen | None, Flag(metavar="HOST:PORT")] = Field(
        None, description="receive OpenTelemetry logs over gRPC (Envoy's open_telemetry "
        "access logger, an OpenTelemetry Collector) here, e.g. 0.0.0.0:4317")
    otlp_http_listen: Annotated[Listen | None, Flag(metavar="HOST:PORT")] = Field(
        None, description="receive OpenTelemetry logs over HTTP (POST /v1/logs, protobuf or "
        "JSON) here, e.g. 0.0.0.0:4318")
    mapping: str | None = Field(None, description="YAML field mapping (see "
                                "exporter/accesslog.py)")
    pods: Annotated[list[str], Flag(metavar="URL")] = Field(
        [], description="vLLM pod base URLs to scrape, e.g. http://10.0.0.5:8000")
    pods_file: PodsFile
    listen: Listen = Field("0.0.0.0:9100", description="host:port for /metrics and /health")
    enriched_log: Annotated[str | None, Flag(metavar="PATH")] = Field(
        None, description="write enriched JSON lines here ('-' for stdout)")
    positions: Annotated[str | None, Flag(metavar="PATH")] = Field(
        None, description="checkpoint file: positions, counter values and enriched-log "
        "offset, saved atomically; a restart resumes with nothing lost and nothing counted "
        "twice")
    from_beginning: bool = Field(False, description="read files that exist at start from "
                                 "their beginning (default: end)")
    poll_interval: Annotated[float, NOT_A_FLAG] = Field(0.2, gt=0)
    checkpoint_interval: Annotated[float, NOT_A_FLAG] = Field(1.0, ge=0)
    scrape_interval: ScrapeInterval = 1.0  # dashboards only; Prometheus samples at 15 s
    scrape_budget: ScrapeBudget
    scrape_timeout: ScrapeTimeout
    scrape_max_bytes: ScrapeMaxBytes
    dimensions: Annotated[tuple[str, ...], Flag(text=True)] = Field(
        ("model",), description="comma-separated record fields used as token-counter labels "
        "(e.g. model,target_model,pool,lb_policy,response_code)")
    max_line_bytes: Annotated[int, Flag(metavar="BYTES")] = Field(
        1 << 20, ge=1024, description="a longer access-log line is dropped (to its newline) and "
        "counted as the parse error too_long")
    max_label_values: MaxLabelValues

    @field_validator("dimensions", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(d.strip() for d in value.split(",") if d.strip())
        return value


class ExporterApp:
    """In-process exporter: `await app.start()`, `await app.stop()`."""

    def __init__(self, options: ExporterOptions, store: MetricsStore | None = None) -> None:
        self.options = options
        self.stats = ExporterStats()
        self.counters = TokenCounters(options.dimensions, options.max_label_values)
        preset = options.format if options.format in JSON_FORMATS[1:] else "all"
        mapping = FieldMapping.load(options.mapping, preset) if options.mapping else None
        self.parser = make_parser(options.format, mapping)
        self.store = store or MetricsStore()
        pods = pods_from_urls(options.pods)
        if options.pods_file:
            pods += require_ports(pods_from_file(options.pods_file), options.pods_file)
        if pods:
            self.store.set_pods(pods)
        self.tailer = Tailer(options.access_logs, from_beginning=options.from_beginning,
                             max_line_bytes=options.max_line_bytes, stats=self.stats)
        self.enricher = Enricher(self.store, options.enriched_log) \
            if options.enriched_log else None
        self.pipeline = Pipeline(self.parser, self.counters, self.stats, self.enricher)
        self.containers = ContainerLogs(self.pipeline)
        self.receivers = Receivers(self.pipeline, self.stats, als=options.als_listen,
                                   otlp_grpc=options.otlp_grpc_listen,
                                   otlp_http=options.otlp_http_listen)
        self.scraper = Scraper(self.store, interval=options.scrape_interval,
                               timeout=options.scrape_timeout, stats=self.stats,
                               max_bytes=options.scrape_max_bytes,
                               budget=options.scrape_budget) if pods else None
        self.registry = CollectorRegistry()
        self.registry.register(ExporterCollector(self.counters, self.stats, self.store))
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self._last_checkpoint = 0.0
        self._tail_error: str | None = None  # why the last pass of the tail loop failed
        self._passed_at = time.monotonic()  # when a pass last completed
        self.port = 0

    # ---- checkpoint --------------------------------------------------------------------
    def _restore(self) -> None:
        if not self.options.positions:
            return
        data = load_checkpoint(self.options.positions)
        if data is None:
            return
        validate_checkpoint(self.options.positions, data)
        self.counters.restore(data["counters"])
        if self.enricher is not None and "enriched_offset" in data:
            self.enricher.truncate_to(int(data["enriched_offset"]))
        self.tailer.restore(data["positions"])
        self.containers.restore(data.get("containers", {}))
        log.info("resumed from %s", self.options.positions)

    def checkpoint(self) -> None:
        if not self.options.positions:
            return
        if self.enricher is not None:
            self.enricher.flush()
        data = {"version": CHECKPOINT_VERSION, "positions": self.tailer.state(),
                "counters": self.counters.state(), "containers": self.containers.state()}
        if self.enricher is not None:
            data["enriched_offset"] = self.enricher.tell()
        save_checkpoint(self.options.positions, data)
        self._last_checkpoint = time.monotonic()

    # ---- the tail loop -----------------------------------------------------------------
    def poll(self) -> int:
        """Read and count one bounded batch of new lines (the tailer's `max_read_bytes`);
        returns lines handled. `self.tailer.more` says whether more is already waiting."""
        n = 0
        for path, lines in self.tailer.read():
            n += len(lines)
            self.containers.feed(path, lines)
        return n

    async def _tail_loop(self) -> None:
        # Saved once per checkpoint_interval while lines come, and once more when they stop
        # (else the last positions would stay unsaved while the log is idle, and a rotation
        # then and another while we are down would hide the file in between). A pass that
        # fails is said, counted and retried with a growing pause; it never ends the loop.
        unsaved = False  # lines read or a rotation seen since the last checkpoint
        pause = self.options.poll_interval
        while True:
            try:
                rotations = sum(self.stats.rotations.values())
                n = self.poll()
                unsaved = unsaved or n > 0 or sum(self.stats.rotations.values()) != rotations
                if self.options.positions and unsaved and (
                        time.monotonic() - self._last_checkpoint
                        >= self.options.checkpoint_interval):
                    self.checkpoint()
                    unsaved = False
            except Exception as e:  # noqa: BLE001 - the loop must go on, loudly
                self._tail_failed(e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE)
                continue
            if self._tail_error is not None:
                log.info("the tail loop works again (after: %s)", self._tail_error)
                self._tail_error = None
            pause = self.options.poll_interval
            self._passed_at = time.monotonic()
            await asyncio.sleep(0 if n or self.tailer.more else self.options.poll_interval)

    def _tail_failed(self, e: Exception) -> None:
        self.stats.tail_error("read_error")
        error = f"{type(e).__name__}: {e}"
        if error != self._tail_error:
            log.error("a pass of the tail loop failed (%s); retrying, counts wait until it "
                      "works", error, exc_info=not isinstance(e, OSError))
            self._tail_error = error

    def problems(self) -> list[str]:
        """What keeps the exporter from following, counting or writing as it should (empty
        when healthy): /health answers 503 with them, llmtraffic_exporter_healthy is 0."""
        out = [f"tail loop: {self._tail_error}"] if self._tail_error else []
        idle = time.monotonic() - self._passed_at
        if self.options.access_logs and self._tasks and idle > STALL_AFTER:
            out.append(f"tail loop: no pass completed for {idle:.0f} s")
        out += [f"{path}: {why}" for path, why in
                [*self.tailer.refused.items(), *self.tailer.errors.items()]]
        if self.enricher is not None and self.enricher.error:
            out.append(self.enricher.error)
        out += [f"task {t.get_name()} ended: {t.exception()!r}" for t in self._tasks
                if t.done() and not t.cancelled() and t.exception() is not None]
        return out

    def _note_health(self) -> list[str]:
        problems = self.problems()
        self.stats.healthy = not problems
        if self.enricher is not None:
            self.stats.enriched_dropped = self.enricher.dropped
        return problems

    async def _flush_loop(self) -> None:
        """The enriched log reaches the disk at most FLUSH_INTERVAL after a record."""
        assert self.enricher is not None
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.enricher.flush_if_dirty()

    def reopen_logs(self) -> None:
        """SIGHUP: reopen the enriched log (after logrotate moved it); never fatal."""
        if self.enricher is None or self.options.enriched_log == "-":
            log.info("SIGHUP: no enriched log to reopen")
            return
        try:
            self.enricher.reopen()
            log.info("SIGHUP: reopened the enriched log %s", self.options.enriched_log)
        except OSError as e:
            log.error("SIGHUP: cannot reopen the enriched log %s: %s",
                      self.options.enriched_log, e)

    # ---- HTTP --------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        self._note_health()
        return web.Response(body=generate_latest(self.registry),
                            content_type="text/plain", charset="utf-8")

    async def _health(self, request: web.Request) -> web.Response:
        problems = self._note_health()
        if problems:
            return web.Response(status=503, text="".join(f"{p}\n" for p in problems))
        return web.Response(text="ok\n")

    async def start(self) -> None:
        self._restore()
        if not self.tailer.files and self.options.access_logs:
            log.warning("no file matches %s yet; will pick files up when they appear",
                        ", ".join(self.options.access_logs))
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        host, port = parse_listen(self.options.listen)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if self.options.access_logs:
            self._tasks.append(asyncio.create_task(self._tail_loop(), name="tail"))
        if self.scraper is not None:
            self._tasks.append(asyncio.create_task(self.scraper.run(), name="scrape"))
        if self.enricher is not None:
            self._tasks.append(asyncio.create_task(self._flush_loop(), name="flush"))
        await self.receivers.start()
        log.info("exporter listening on %s:%d; following %s; %d pods", host, self.port,
                 ", ".join(self.options.access_logs) or "no logs", len(self.store.pods()))

    async def stop(self) -> None:
        await self.receivers.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self.options.access_logs:
            self.poll()
            while self.tailer.more:
                self.poll()
            self.checkpoint()
        if self.scraper is not None:
            await self.scraper.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.enricher is not None:
            self.enricher.close()
        self.tailer.close()


# ---- command line ------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "exporter", help="tail access logs and scrape vLLM pods into Prometheus series",
        description="Follow Envoy/Istio access logs and expose asm_llm_proxy_prompt_tokens_"
        "total / asm_llm_proxy_completion_tokens_total by model, scrape vLLM pods into "
        "pod/pool gauges, and write an enriched JSON log.")
    add_flags(p, ExporterOptions)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        opts = from_flags(ExporterOptions, args)
        app = ExporterApp(opts)
    except ValueError as e:  # OptionError included
        print(f"llmtraffic exporter: {e}")
        return 2
    if not opts.access_logs and not app.store.pods() and not app.receivers.enabled:
        print("llmtraffic exporter: nothing to do; give --access-log, a receiver "
              "(--als-listen, --otlp-grpc-listen, --otlp-http-listen) and/or --pods")
        return 2
    return asyncio.run(_serve(app))


async def _serve(app: ExporterApp) -> int:
    stop = stop_event(app.reopen_logs)
    try:
        await app.start()
    except (OSError, ValueError) as e:
        print(f"llmtraffic exporter: {e}")
        return 2
    await stop.wait()
    await app.stop()
    return 0
