"""The pieces every balancer front end (the HTTP proxy, the ext_proc picker) wires the same
way: store, policy, router, scraper, stats, token counters and access log; membership from
discovery; and the one place a finished request's record goes."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from prometheus_client import CollectorRegistry

from llmtraffic.balancer.admission import Admission
from llmtraffic.balancer.bodyshape import BodyLimits
from llmtraffic.balancer.breaker import CircuitBreaker
from llmtraffic.balancer.discovery import ClusterView, Discovery
from llmtraffic.balancer.options import BalancerOptions
from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.balancer.router import Router
from llmtraffic.balancer.stats import BalancerCollector, BalancerStats, admission_families
from llmtraffic.contracts.families import FamiliesCollector
from llmtraffic.contracts.record import AccessLogWriter, LLMRecord
from llmtraffic.contracts.scrape import ScrapeCounts, Scraper, scrape_families
from llmtraffic.contracts.store import MetricsStore
from llmtraffic.contracts.tokens import TokenCounters, overflow_family, rejected_family

log = logging.getLogger(__name__)

#: Seconds a pod must hoard requests before it is ejected (a burst just sent may not have
#: reached it when it was scraped).
OUTLIER_PERSISTS = 1.0


class BalancerCore:
    """`start()` scrapes once and then keeps scraping and following discovery;
    `stop()` ends that; `close()` closes the access log (after the front end drained).
    `shared_log`: other processes (the proxy's workers) append to the same access log."""

    def __init__(self, discovery: Discovery, options: BalancerOptions | None = None,
                 store: MetricsStore | None = None, shared_log: bool = False) -> None:
        o = options or BalancerOptions()
        self.discovery = discovery
        self.store = store or MetricsStore()
        self.policy = make_policy(o.policy, o.policy_config, o.seed)
        warning = self.policy.startup_warning()
        if warning:
            log.warning("%s", warning)
        self.breaker = CircuitBreaker(o.breaker_failures, o.breaker_cooldown)
        self.outlier_excess = o.outlier_inflight_excess
        self._excess_since: dict[str, float] = {}  # address -> since when it hoards
        #: address -> requests held there now -> when they were sent (RequestLifecycle)
        self.held: dict[str, dict[object, float]] = {}
        self.body_limits = BodyLimits(o.max_json_containers, o.max_json_values,
                                      o.max_prompts, o.max_messages)
        view = discovery.view()
        self.router = Router(view.resources, self.store, self.policy, seed=o.seed,
                             breaker=self.breaker)
        self.apply(view)
        self.admission = self._admission(o)
        self.stats = BalancerStats(self.policy.name, o.max_label_values)
        self.scrape_counts = ScrapeCounts()
        self.counters = TokenCounters(max_values_per_label=o.max_label_values)
        self.registry = CollectorRegistry()
        self.registry.register(FamiliesCollector(self._families))
        self.registry.register(BalancerCollector(self.stats, self.store, self._models,
                                                 self.breaker, self.router.tokens.learned))
        if hasattr(discovery, "collector"):  # KubeDiscovery: llmtraffic_discovery_*
            self.registry.register(discovery.collector())
        self.access_log_path = o.access_log
        self.access_log = AccessLogWriter(o.access_log, o.access_log_max_bytes,
                                          o.access_log_keep, shared_log) \
            if o.access_log else None
        self.scraper = Scraper(self.store, interval=o.scrape_interval,
                               timeout=o.scrape_timeout, stats=self.scrape_counts,
                               max_bytes=o.scrape_max_bytes, budget=o.scrape_budget)
        self._tasks: list[asyncio.Task] = []

    def _admission(self, o: BalancerOptions) -> Admission | None:
        """The admission queue, for the policy that judges saturation (llm; the others do
        what a Service does) unless --max-queued is 0; the router then raises Saturated."""
        if o.policy != "llm" or o.max_queued == 0:
            return None
        cfg = getattr(self.policy, "config", None) or PolicyConfig()
        self.router.admission = Admission(
            o.max_queued, o.queue_timeout, self.router.pool_has_room, cfg.queue_threshold,
            cfg.kv_threshold, poll=o.scrape_interval, max_label_values=o.max_label_values,
            retry_after=cfg.retry_after_s)
        return self.router.admission

    def _families(self):
        """Label overflow and scrape outcomes. Each fact is counted by one process: the
        gateway's token series (asm_llm_proxy_*) and the pod/pool gauges come from the
        exporter alone; a balancer replica's own traffic is its llmtraffic_balancer_* series
        (BalancerCollector), which sum to the truth over any number of replicas."""
        yield overflow_family(self.counters)
        yield rejected_family(self.counters)
        yield from scrape_families(self.scrape_counts)
        if self.admission is not None:
            yield from admission_families(self.admission)

    def apply(self, view: ClusterView) -> None:
        """A new membership: pods into the store, resources into the router."""
        before = {p.address for p in self.store.pods()}
        self.store.set_pods(view.pods)
        self.router.resources = view.resources
        gone = before - {p.address for p in view.pods}
        self.policy.forget(gone)
        self.breaker.forget(gone)
        log.info("routing %d pods in %d pools (%s)", len(view.pods), len(view.resources.pools),
                 ", ".join(sorted(view.resources.pools)))

    def _models(self) -> list[tuple[str, str]]:
        """(pool, model name) of every InferenceModel served."""
        return [(m.pool, m.model_name) for m in self.router.resources.models.values()]

    def ready_pods(self) -> int:
        """Pods with fresh metrics now."""
        return sum(1 for p in self.store.snapshot(time.monotonic()).pods if p.fresh)

    async def start(self) -> None:
        await self.scraper.scrape_once()
        self._tasks = [asyncio.create_task(self.scraper.run(), name="scrape"),
                       asyncio.create_task(self.discovery.run(self.apply), name="discovery"),
                       asyncio.create_task(self._judge_outliers(), name="outliers")]

    async def _judge_outliers(self) -> None:
        while True:
            await asyncio.sleep(self.scraper.interval)
            self.judge_outliers(time.monotonic())

    def judge_outliers(self, now: float) -> list[str]:
        """Eject every pod that has held, for OUTLIER_PERSISTS seconds on end, more of this
        balancer's requests (sent before its last scrape) than its own fresh metrics claim
        it runs or queues (a black hole: it accepts and never answers while its page says
        idle). Returns the addresses ejected now."""
        out, excess = [], {}
        for st in self.store.snapshot(now).pods:
            m, held = st.metrics, self.held.get(st.address)
            if not st.fresh or m is None or not held or st.scraped_at is None:
                continue
            # ours, sent well before its last scrape (a page may be a scrape timeout old
            # when it lands): the page must count each as running or waiting
            before = st.scraped_at - self.scraper.timeout
            seen = sum(1 for sent in held.values() if sent < before)
            claimed = m.running + m.waiting
            if not 0 <= claimed < math.inf:
                claimed = 0.0
            probing = self.breaker.probing(st.address)  # its probe alone decides
            if seen - claimed < (1 if probing else self.outlier_excess):
                continue
            since = excess[st.address] = self._excess_since.get(st.address, now)
            if now - since < OUTLIER_PERSISTS:
                continue
            why = (f"{seen} requests of ours in flight there for {now - since:.1f} s, its "
                   f"metrics claim {claimed:g} running or waiting")
            if self.breaker.failed(st.address, now, why) if probing else \
                    self.breaker.eject(st.address, now, why):
                out.append(st.address)
        self._excess_since = excess
        return out

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.admission is not None:
            self.admission.close()
        await self.scraper.close()

    def reopen_logs(self) -> None:
        """SIGHUP: reopen the access log (after logrotate moved it); never fatal."""
        if self.access_log is None:
            log.info("SIGHUP: no access log to reopen")
            return
        try:
            self.access_log.reopen()
            log.info("SIGHUP: reopened the access log %s", self.access_log_path)
        except OSError as e:
            log.error("SIGHUP: cannot reopen the access log %s: %s", self.access_log_path, e)

    def close(self) -> None:
        if self.access_log is not None:
            self.access_log.close()

    def log(self, rec: LLMRecord) -> None:
        """One finished request (any outcome): stats, token counters, access-log line."""
        self.stats.observe(rec)
        self.counters.observe(rec)
        if self.access_log is not None:
            try:
                self.access_log.write(rec)
            except OSError as e:  # a full disk must not fail the request
                log.error("cannot write the access log %s: %s", self.access_log_path, e)
