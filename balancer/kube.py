"""Kubernetes discovery: list and watch InferencePools (v1alpha1 and v1), InferenceModels,
LLMRoutes and Pods with the official client, and turn them into `ClusterView`s. Watches run
in threads (the client is synchronous); views reach the event loop thread-safely."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import orjson
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from llmtraffic.balancer.config import (ConfigError, Model, Pool, Route, build_resources,
    parse_resource)
from llmtraffic.balancer.discovery import ClusterView, OnChange, assign_pools
from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import counter_family, gauge_family
from llmtraffic.contracts.store import Pod

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class Watched(NamedTuple):
    """One collection the balancer lists and watches (the Role grants exactly these)."""

    group: str  # "" is the core group
    version: str
    resource: str  # plural
    kind: str
    verbs: tuple[str, ...] = ("list", "watch")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def label(self) -> str:
        return f"{self.resource}.{self.group}/{self.version}" if self.group else self.resource


#: Everything KubeDiscovery lists and watches, in its namespace. deploy/balancer/rbac.yaml
#: grants these verbs on these resources and nothing else (tests/deploy checks it).
WATCHED: tuple[Watched, ...] = (
    Watched("inference.networking.x-k8s.io", "v1alpha1", "inferencepools", "InferencePool"),
    Watched("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool"),
    Watched("inference.networking.x-k8s.io", "v1alpha1", "inferencemodels", "InferenceModel"),
    Watched("istio.alibabacloud.com", "v1", "llmroutes", "LLMRoute"),
    Watched("", "v1", "pods", "Pod"),
)


def pod_from_object(obj: dict[str, Any]) -> Pod | None:
    """A routable pod from a Pod object: Running, Ready=True, with a podIP and not being
    deleted; None otherwise. The address has no port: `assign_pools` adds the pool's."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    ip = status.get("podIP")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or ())
    if not ip or not ready:
        return None
    return Pod(meta.get("name", ip), f"[{ip}]" if ":" in ip else ip,
               dict(meta.get("labels") or {}), "", meta.get("namespace") or "default")


def load_api_client(namespace: str | None):
    """(ApiClient, namespace): in-cluster configuration when running in a pod, else the
    kubeconfig (KUBECONFIG or ~/.kube/config). Raises ConfigError when neither exists."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise ImportError("--kubernetes needs the official client: pip install "
                          "'llmtraffic[k8s]'") from None
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
        ns = namespace or _read(SA_NAMESPACE_FILE) or "default"
    except config.ConfigException as incluster:
        try:
            path = os.environ.get("KUBECONFIG") or None  # the client reads it at import
            config.load_kube_config(config_file=path, client_configuration=cfg)
            _, active = config.list_kube_config_contexts(config_file=path)
            ns = namespace or (active or {}).get("context", {}).get("namespace") or "default"
        except (config.ConfigException, OSError, TypeError) as e:
            raise ConfigError(
                f"no Kubernetes configuration: not in a pod ({incluster}) and no usable "
                f"kubeconfig ({e}); run in the cluster with a ServiceAccount "
                "(deploy/balancer) or set KUBECONFIG") from None
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, 2 * len(WATCHED))
    cfg.retries = 0  # the watch loops retry with backoff (and log once per outage)
    return client.ApiClient(cfg), ns


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


@dataclass(slots=True)
class _Collection:
    """The last known objects of one watched collection."""

    spec: Watched
    objects: dict[str, Any] = field(default_factory=dict)  # name -> parsed (or None)
    resource_version: str | None = None
    synced: bool = False
    problem: str | None = None  # the last logged error, to log each problem once


class KubeDiscovery:
    """The `Discovery` protocol over the Kubernetes API. The first `view()` lists every
    collection; `run(on_change)` watches them from there, relists after 410 Gone, and keeps
    the last known state while the API server is unreachable."""

    def __init__(self, namespace: str | None = None, api_client=None, *,
                 watch_timeout: int = 300, backoff: tuple[float, float] = (0.5, 30.0),
                 request_timeout: float = 30.0, absent_retry: float = 60.0) -> None:
        if api_client is None:
            api_client, namespace = load_api_client(namespace)
        from kubernetes import client

        self.namespace = namespace or "default"
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.absent_retry = absent_retry
        self._collections = [_Collection(w) for w in WATCHED]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watches: dict[str, Any] = {}
        self._view = ClusterView(build_resources(()), [])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_change: OnChange | None = None
        self._pending = False
        self._down_since: float | None = None
        self._reached = False
        self._listed = False  # view() lists once; after that the watch threads keep it
        self.errors: dict[str, int] = {}
        self.relists: dict[str, int] = {}

    # ---- Discovery -----------------------------------------------------------------------
    def view(self) -> ClusterView:
        """The current view; the first call lists every collection (blocking)."""
        if not self._listed:
            self._listed = True
            for c in self._collections:
                if not self._try(c, self._list) and self._down_since is not None:
                    break  # unreachable: `run` keeps trying
        if self._loop is None:  # once running, only `_deliver` moves the view on
            self._view = self._build()
        return self._view

    async def run(self, on_change: OnChange) -> None:
        """Watch until cancelled; `on_change(view)` runs on this loop after each change."""
        self._loop, self._on_change = asyncio.get_running_loop(), on_change
        self._listed = True
        self._stop.clear()
        threads = [threading.Thread(target=self._follow, args=(c,), daemon=True,
                                    name=f"kube-{c.spec.label}") for c in self._collections]
        for t in threads:
            t.start()
        self._changed()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            await asyncio.to_thread(self._join, threads)

    def _join(self, threads: list[threading.Thread], patience: float = 5.0) -> None:
        """Stop the open watches (again: one may have started since) until threads exit."""
        deadline = time.monotonic() + patience
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            for w in list(self._watches.values()):
                w.stop()
            for t in threads:
                t.join(0.05)

    @property
    def api_up(self) -> bool:
        return self._reached and self._down_since is None

    def collector(self) -> "DiscoveryCollector":
        return DiscoveryCollector(self)

    # ---- one thread per collection -------------------------------------------------------
    def _follow(self, c: _Collection) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            if not c.synced and not self._try(c, self._list):
                if c.problem != "expired":
                    self._stop.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            if c.problem == "absent":  # not served: look again later
                if not self._stop.wait(self.absent_retry):
                    c.synced = False
                continue
            if not self._try(c, self._watch):
                c.synced = False  # relist: events may have been missed
                if c.problem != "expired":
                    self._stop.wait(delay * random.uniform(0.5, 1.0))

    def _try(self, c: _Collection, step: Callable[[_Collection], None]) -> bool:
        """Run a list or watch step; classify and log its failure. True on success."""
        from kubernetes.client.rest import ApiException

        try:
            step(c)
            return True
        except ApiException as e:
            if self._stop.is_set():
                return False
            if e.status == 410:
                self.relists[c.spec.label] = self.relists.get(c.spec.label, 0) + 1
                c.problem = "expired"
                log.info("%s: watch expired (410 Gone); relisting", c.spec.label)
                return False
            if e.status == 404:
                self._absent(c)
                return True
            self._error(c, f"HTTP {e.status} {e.reason or ''}".strip(), e.status < 500)
            if e.status >= 500:
                self._mark_down(f"HTTP {e.status}")
            return False
        except Exception as e:  # urllib3 connection errors, protocol errors, timeouts
            if self._stop.is_set():
                return False
            self._error(c, f"{type(e).__name__}: {e}", False)
            self._mark_down(type(e).__name__)
            return False

    def _list(self, c: _Collection) -> None:
        s = c.spec
        if s.group:
            resp = self.custom.list_namespaced_custom_object(
                s.group, s.version, self.namespace, s.resource, _preload_content=False,
                _request_timeout=self.request_timeout)
        else:
            resp = self.core.list_namespaced_pod(self.namespace, _preload_content=False,
                                                 _request_timeout=self.request_timeout)
        body = orjson.loads(resp.data)
        objects = {}
        for obj in body.get("items") or ():
            name, parsed = self._parse(s, obj)
            objects[name] = parsed
        with self._lock:
            c.objects = objects
            c.resource_version = (body.get("metadata") or {}).get("resourceVersion")
            c.synced, c.problem = True, None
        self._mark_up()
        self._changed()

    def _watch(self, c: _Collection) -> None:
        """Stream events from the collection's resourceVersion until the server ends the
        watch (timeout); ApiException(410) when that version has expired."""
        from kubernetes import watch

        s = c.spec
        w = watch.Watch()
        self._watches[s.label] = w
        timeout = max(1, int(self.watch_timeout * random.uniform(0.8, 1.0)))
        kw = dict(resource_version=c.resource_version, timeout_seconds=timeout,
                  allow_watch_bookmarks=True,
                  _request_timeout=(self.request_timeout, timeout + self.request_timeout))
        if s.group:
            stream = w.stream(self.custom.list_namespaced_custom_object, s.group, s.version,
                              self.namespace, s.resource, **kw)
        else:
            stream = w.stream(self.core.list_namespaced_pod, self.namespace, **kw)
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                self._event(c, event["type"], event["raw_object"])
        finally:
            self._watches.pop(s.label, None)
            w.stop()
            stream.close()

    def _event(self, c: _Collection, kind: str, obj: dict[str, Any]) -> None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            name, parsed = self._parse(c.spec, obj)
            with self._lock:
                if kind == "DELETED":
                    c.objects.pop(name, None)
                else:
                    c.objects[name] = parsed
                c.resource_version = rv or c.resource_version
            self._changed()
        elif kind == "BOOKMARK" and rv:
            c.resource_version = rv

    def _parse(self, s: Watched, obj: dict[str, Any]) -> tuple[str, Any]:
        name = (obj.get("metadata") or {}).get("name", "")
        if not s.group:
            return name, pod_from_object(obj)
        # The endpoint decides the version (list items may omit apiVersion/kind).
        obj = {**obj, "apiVersion": s.api_version, "kind": s.kind}
        try:
            return name, parse_resource(obj, f"Kubernetes {s.api_version} in namespace "
                                             f"{self.namespace}: ")
        except ConfigError as e:
            log.warning("%s; ignored until it is fixed", e)
            return name, None

    # ---- health --------------------------------------------------------------------------
    def _error(self, c: _Collection, what: str, loud: bool) -> None:
        """Count a failed call; log a refusal (4xx) once per problem at warning level —
        connection failures are logged once per outage by `_mark_down`."""
        self.errors[c.spec.label] = self.errors.get(c.spec.label, 0) + 1
        if c.problem == what:
            return
        c.problem = what
        hint = " (the ServiceAccount needs list and watch on it: deploy/balancer/rbac.yaml)" \
            if what.startswith(("HTTP 401", "HTTP 403")) else ""
        log.log(logging.WARNING if loud else logging.DEBUG, "%s: %s%s; keeping its last "
                "known state", c.spec.label, what, hint)

    def _absent(self, c: _Collection) -> None:
        with self._lock:
            c.objects, c.resource_version, c.synced = {}, None, True
        if c.problem != "absent":
            log.warning("%s is not served by the API server (CRD not installed?); none "
                        "assumed, looking again every %.0f s", c.spec.label, self.absent_retry)
        c.problem = "absent"
        self._mark_up()
        self._changed()

    def _mark_down(self, why: str) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.time()
            pods, pools = len(self._view.pods), len(self._view.resources.pools)
        log.warning("Kubernetes API unreachable since %s (%s); keeping %d pods in %d pools "
                    "until it answers", time.strftime("%H:%M:%S",
                                                      time.localtime(self._down_since)),
                    why, pods, pools)

    def _mark_up(self) -> None:
        with self._lock:
            since, self._down_since, self._reached = self._down_since, None, True
        if since is not None:
            log.warning("Kubernetes API reachable again after %.1f s; resyncing",
                        time.time() - since)

    # ---- views ---------------------------------------------------------------------------
    def _build(self) -> ClusterView:
        with self._lock:
            objects = [o for c in self._collections if c.spec.group
                       for o in c.objects.values()]
            raw_pods = [p for c in self._collections if not c.spec.group
                        for p in c.objects.values() if p is not None]
        resources = build_resources(o for o in objects if isinstance(o, (Pool, Model, Route)))
        return ClusterView(resources, assign_pools(sorted(raw_pods, key=lambda p: p.name),
                                                   resources))

    def _changed(self) -> None:
        """Schedule one rebuild on the loop (coalescing bursts of events)."""
        loop = self._loop
        if loop is None or self._pending:
            return
        self._pending = True
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: we are shutting down
            self._pending = False

    def _deliver(self) -> None:
        self._pending = False
        view = self._build()
        if view == self._view:
            return
        self._view = view
        if self._on_change is not None:
            self._on_change(view)


class DiscoveryCollector(Collector):
    """llmtraffic_discovery_*: whether the API server answers, failed calls and relists."""

    def __init__(self, discovery: KubeDiscovery) -> None:
        self.discovery = discovery

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        d = self.discovery
        yield gauge_family(m.DISCOVERY_API_UP, [((), 1.0 if d.api_up else 0.0)])
        yield counter_family(m.DISCOVERY_ERRORS, (((k,), float(v)) for k, v in
                                            sorted(dict(d.errors).items())))
        yield counter_family(m.DISCOVERY_RELISTS, (((k,), float(v)) for k, v in
                                             sorted(dict(d.relists).items())))
