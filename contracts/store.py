"""The seam between exporter and balancer: latest `PodMetrics` per pod, pool membership,
and the balancer's in-flight counts. The exporter writes it; the balancer reads snapshots."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

#: Metrics older than this (seconds) are stale: the balancer falls back to in-flight counts.
DEFAULT_STALE_AFTER_S = 2.0


@dataclass(slots=True, frozen=True)
class Pod:
    """One serving endpoint as discovery sees it."""

    name: str
    address: str  # "host:port"
    labels: Mapping[str, str] = field(default_factory=dict)
    pool: str = ""  # InferencePool name ("" when not in any pool)
    namespace: str = "default"
    ready: bool = True


@dataclass(slots=True)
class Histogram:
    """Cumulative Prometheus histogram: `buckets` are upper bounds (last is +Inf)."""

    buckets: tuple[float, ...]
    counts: tuple[float, ...]  # cumulative, same length as buckets
    sum: float = 0.0
    count: float = 0.0


@dataclass(slots=True)
class PodMetrics:
    """What one scrape of a vLLM pod's /metrics says (V1 and legacy names folded together)."""

    running: float = 0.0
    waiting: float = 0.0
    #: Of `waiting`, requests deferred by a transient constraint (no free LoRA slot for
    #: their adapter): `vllm:num_requests_waiting_by_reason{reason="deferred"}`; 0 on
    #: engines that do not publish it.
    waiting_deferred: float = 0.0
    swapped: float = 0.0
    kv_usage: float = 0.0  # 0..1
    running_adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    max_lora: int = 0
    prefix_queries: float = 0.0  # tokens, counter
    prefix_hits: float = 0.0  # tokens, counter
    prompt_tokens: float = 0.0  # counter
    generation_tokens: float = 0.0  # counter
    preemptions: float = 0.0  # counter
    ttft: Histogram | None = None
    queue_time: Histogram | None = None
    block_size: int = 0
    num_gpu_blocks: int = 0
    models: tuple[str, ...] = ()  # model_name label values seen
    legacy: bool = False  # True when the page used V0 names
    bad_lines: int = 0  # malformed lines of the families read, skipped by the parser


@dataclass(slots=True)
class PodState:
    """One pod in a snapshot: membership, its latest metrics (may be None) and in-flight counts.

    Treat it as read-only: the store hands the same object to every snapshot until the
    pod's entry changes."""

    pod: Pod
    metrics: PodMetrics | None
    scraped_at: float | None  # clock time of the last good scrape
    last_error: str | None
    inflight: int  # requests sent by this balancer and not yet finished
    sent_since_scrape: int  # requests sent since `metrics` were taken
    fresh: bool  # metrics present and younger than the store's stale_after
    #: Waiting requests, counting what was sent since the last scrape (in-flight
    #: accounting), and at least the requests this balancer has in flight there beyond
    #: what the page says is running (a pod is judged by what it does: one whose page says
    #: it is idle while it holds our requests is queueing them); with stale or missing
    #: metrics the in-flight count alone.
    queue: float = field(init=False, repr=False, compare=False)
    #: KV-cache usage 0..1 from fresh metrics, else 0.
    kv_usage: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # derived once here, not on every read: policies read them for every pod per pick.
        # A page whose waiting count or KV usage is not a number >= 0 (NaN, -1, inf) is
        # not trusted: the pod is judged by its in-flight count, as when stale.
        m = self.metrics
        if self.fresh and m is not None and 0.0 <= m.waiting < math.inf \
                and 0.0 <= m.kv_usage < math.inf:
            queued = m.waiting + self.sent_since_scrape
            held = self.inflight - (m.running if 0.0 <= m.running < math.inf else 0.0)
            self.queue = queued if queued >= held else held
            self.kv_usage = m.kv_usage
        else:
            self.queue = float(self.inflight)
            self.kv_usage = 0.0

    @property
    def name(self) -> str:
        return self.pod.name

    @property
    def address(self) -> str:
        return self.pod.address


@dataclass(slots=True, frozen=True)
class Snapshot:
    """An immutable view of the store at `now`; what a policy sees."""

    now: float
    pods: tuple[PodState, ...]
    #: The pools the pods belong to, when the store knows (lets `in_pool` skip the scan
    #: when every pod is in the one pool asked for).
    pools: frozenset[str] | None = None
    #: Changes whenever which pods are present, ready or failing changes (the store's
    #: `health_version`); None when unknown. Lets a policy keep what it derives from the
    #: usable set (round-robin's ring) across picks instead of rebuilding it per pick.
    version: int | None = None

    def by_address(self) -> dict[str, PodState]:
        return {p.pod.address: p for p in self.pods}

    def in_pool(self, pool: str) -> tuple[PodState, ...]:
        if self.pools is not None and len(self.pools) == 1 and pool in self.pools:
            return self.pods
        return tuple([p for p in self.pods if p.pod.pool == pool])


@dataclass(slots=True, eq=False)  # hashed by identity: the store keeps a set of changed entries
class _Entry:
    pod: Pod
    metrics: PodMetrics | None = None
    scraped_at: float | None = None
    last_error: str | None = None
    errors: int = 0
    missed: int = 0  # scrapes failed in a row since the last good one
    inflight: int = 0
    sent_since_scrape: int = 0
    state: PodState | None = None  # the last PodState handed out; None once anything changed
    slot: int = 0  # position in the store's list of states


class MetricsStore:
    """Thread-safe map address -> latest pod state.

    Time is passed in by the caller (`now`), never read here, so the same store works in
    real time and in the virtual-time cluster simulator."""

    def __init__(self, stale_after: float = DEFAULT_STALE_AFTER_S) -> None:
        self.stale_after = stale_after
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped on every membership change
        self.models_version = 0  # bumped when a pod's reported model names change
        #: bumped on every membership change and whenever a pod starts or stops failing
        #: (its `last_error` set or cleared): what `filters.usable` depends on
        self.health_version = 0
        # what `snapshot` hands out, kept between calls: the states in membership order,
        # the entries changed since (rebuilt then), and when some fresh pod turns stale
        self._states: list[PodState | None] = []
        self._dirty: set[_Entry] = set()
        self._stale_at = math.inf
        self._built_at = -math.inf  # `now` of the last rebuild (a clock going back redoes all)
        self._pools: frozenset[str] = frozenset()

    # --- membership (discovery writes) ---------------------------------------------------
    def set_pods(self, pods: Iterable[Pod]) -> None:
        """Replace membership; metrics and in-flight counts of pods that stay are kept."""
        with self._lock:
            new: dict[str, _Entry] = {}
            for pod in pods:
                old = self._entries.get(pod.address)
                if old is not None:
                    old.pod = pod
                    old.state = None
                    new[pod.address] = old
                else:
                    new[pod.address] = _Entry(pod)
            self._entries = new
            self.generation += 1
            self.health_version += 1
            for k, e in enumerate(new.values()):
                e.slot = k
            self._states = [None] * len(new)
            self._dirty = set(new.values())
            self._pools = frozenset(e.pod.pool for e in new.values())

    def pods(self) -> list[Pod]:
        with self._lock:
            return [e.pod for e in self._entries.values()]

    def pod(self, address: str) -> Pod | None:
        e = self._entries.get(address)
        return e.pod if e is not None else None

    # --- metrics (scraper writes) --------------------------------------------------------
    def update(self, address: str, metrics: PodMetrics, now: float) -> None:
        """Record a good scrape; requests sent before it are now inside its numbers."""
        with self._lock:
            e = self._entries.get(address)
            if e is None:
                return
            if e.metrics is None or e.metrics.models != metrics.models:
                self.models_version += 1
            e.metrics = metrics
            e.scraped_at = now
            if e.last_error is not None:
                self.health_version += 1
            e.last_error = None
            e.missed = 0
            e.sent_since_scrape = 0
            e.state = None
            self._dirty.add(e)

    def mark_error(self, address: str, error: str, now: float) -> bool:
        """Record a failed scrape; True when it takes the pod out of rotation.

        One timeout right after a good scrape is forgiven: a loaded vLLM API server misses a
        scrape now and then (19-25 per pod in 28 minutes were seen), and its last metrics
        still age into staleness (`stale_after`). A second timeout in a row, a pod never
        scraped, or any other error (refused, HTTP error, garbage) counts at once."""
        with self._lock:
            e = self._entries.get(address)
            if e is None:
                return False
            e.errors += 1
            e.missed += 1
            if error == "timeout" and e.missed == 1 and e.metrics is not None:
                return False
            if e.last_error is None:
                self.health_version += 1
            e.last_error = error
            e.state = None
            self._dirty.add(e)
            return True

    def scrape_errors(self, address: str) -> int:
        e = self._entries.get(address)
        return e.errors if e is not None else 0

    # --- in-flight accounting (balancer writes) -----------------------------------------
    def acquire(self, address: str) -> None:
        """A request was sent to `address`."""
        with self._lock:
            e = self._entries.get(address)
            if e is not None:
                e.inflight += 1
                e.sent_since_scrape += 1
                e.state = None
                self._dirty.add(e)

    def release(self, address: str) -> None:
        """A request to `address` finished (any outcome)."""
        with self._lock:
            e = self._entries.get(address)
            if e is not None and e.inflight > 0:
                e.inflight -= 1
                e.state = None
                self._dirty.add(e)

    def inflight(self, address: str) -> int:
        e = self._entries.get(address)
        return e.inflight if e is not None else 0

    # --- reading -------------------------------------------------------------------------
    def snapshot(self, now: float) -> Snapshot:
        """Every pod's state at `now`. Only entries changed since the last snapshot are
        rebuilt (all of them once some pod's metrics may have turned stale); the others
        are handed out again as the same objects."""
        with self._lock:
            stale_after, states = self.stale_after, self._states
            if now >= self._stale_at or now < self._built_at:
                self._dirty.update(self._entries.values())
                self._stale_at = math.inf  # recomputed exactly from every entry below
            if self._dirty:
                stale_at = self._stale_at
                for e in self._dirty:
                    fresh = (e.metrics is not None and e.scraped_at is not None
                             and e.last_error is None and now - e.scraped_at <= stale_after)
                    st = e.state
                    if st is None or st.fresh is not fresh:
                        st = e.state = PodState(e.pod, e.metrics, e.scraped_at, e.last_error,
                                                e.inflight, e.sent_since_scrape, fresh)
                    if fresh:  # an early bound when a pod was re-scraped: only costs a rescan
                        stale_at = min(stale_at, e.scraped_at + stale_after)  # type: ignore
                    states[e.slot] = st
                self._dirty.clear()
                self._stale_at, self._built_at = stale_at, now
            return Snapshot(now, tuple(states), self._pools,  # type: ignore[arg-type]
                            self.health_version)

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})
