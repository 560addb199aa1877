"""Kubernetes discovery: ask the API server which versions of the GIE and ASM groups it
serves (API discovery), list and watch the newest served version of each resource, and Pods,
with the official client, and turn them into `ClusterView`s. Watches run in threads (the
client is synchronous); views reach the event loop thread-safely."""

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

from llmtraffic.balancer.config import (API_VERSIONS, ConfigError, Skipped, build_resources,
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


def _watched() -> tuple[Watched, ...]:
    out = []
    for kind, api_versions in API_VERSIONS.items():
        for api in api_versions:
            group, version = api.split("/")
            out.append(Watched(group, version, kind.lower() + "s", kind))
    return (*out, Watched("", "v1", "pods", "Pod"))


#: Every collection KubeDiscovery may list and watch in its namespace, newest version first
#: within each (group, resource): it watches the newest one the API server serves.
#: deploy/balancer/rbac.yaml grants these verbs on these resources and nothing else
#: (tests/deploy checks it); API discovery itself needs no grant (system:discovery).
WATCHED: tuple[Watched, ...] = _watched()


def pod_entry(obj: dict[str, Any]) -> Pod | None:
    """A Pod object as discovery keeps it: `ready` when Running, Ready=True and with a podIP
    (the address has no port: `assign_pools` adds the pool's); None when it is being
    deleted or has finished (Succeeded, Failed)."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    phase = status.get("phase")
    if meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
        return None
    ip = status.get("podIP") or ""
    ready = phase == "Running" and bool(ip) and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ())
    return Pod(meta.get("name", ip), f"[{ip}]" if ":" in ip else ip,
               dict(meta.get("labels") or {}), "", meta.get("namespace") or "default", ready)


def pod_from_object(obj: dict[str, Any]) -> Pod | None:
    """A routable pod from a Pod object: Running, Ready=True, with a podIP and not being
    deleted; None otherwise."""
    pod = pod_entry(obj)
    return pod if pod is not None and pod.ready else None


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
    """One resource of one group, at the version API discovery chose, and its last known
    objects."""

    candidates: tuple[Watched, ...]  # the versions we read, newest first
    spec: Watched | None = None  # the version watched; None: the API server serves none
    objects: dict[str, Any] = field(default_factory=dict)  # name -> parsed (or None)
    invalid: dict[str, str] = field(default_factory=dict)  # name -> why it is not used
    resource_version: str | None = None
    synced: bool = False
    problem: str | None = None  # the last logged error, to log each problem once
    moved: threading.Event = field(default_factory=threading.Event)  # `spec` changed

    @property
    def core(self) -> bool:
        """Pods: always served, never discovered."""
        return not self.candidates[0].group

    @property
    def name(self) -> str:
        c = self.candidates[0]
        return f"{c.resource}.{c.group}" if c.group else c.resource


def _collections() -> list[_Collection]:
    by_resource: dict[tuple[str, str], list[Watched]] = {}
    for w in WATCHED:
        by_resource.setdefault((w.group, w.resource), []).append(w)
    out = [_Collection(tuple(ws)) for ws in by_resource.values()]
    for c in out:
        if c.core:
            c.spec = c.candidates[0]
    return out


class KubeDiscovery:
    """The `Discovery` protocol over the Kubernetes API. The first `view()` asks API
    discovery which versions are served and lists each collection at the newest; `run`
    watches them from there, relists after 410 Gone, looks at API discovery again every
    `absent_retry` seconds (and at once when a version answers 404) to follow versions that
    appear or disappear, and keeps the last known state while the API server is
    unreachable."""

    def __init__(self, namespace: str | None = None, api_client=None, *,
                 watch_timeout: int = 300, backoff: tuple[float, float] = (0.5, 30.0),
                 request_timeout: float = 30.0, absent_retry: float = 60.0) -> None:
        if api_client is None:
            api_client, namespace = load_api_client(namespace)
        from kubernetes import client

        self.namespace = namespace or "default"
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.apis = client.ApisApi(api_client)
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.absent_retry = absent_retry
        self._collections = _collections()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rediscover = threading.Event()
        self._discovered = False  # API discovery has answered once
        self._watches: dict[str, Any] = {}
        self._view = ClusterView(build_resources(()), [])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_change: OnChange | None = None
        self._pending = False
        self._down_since: float | None = None
        self._reached = False
        self._listed = False  # view() lists once; after that the watch threads keep it
        self._discovery_problem: str | None = None
        self.errors: dict[str, int] = {}
        self.relists: dict[str, int] = {}

    # ---- Discovery -----------------------------------------------------------------------
    def view(self) -> ClusterView:
        """The current view; the first call asks API discovery and lists every served
        collection (blocking)."""
        if not self._listed:
            self._listed = True
            if self._try_discover():
                for c in self._collections:
                    if c.spec is not None and not self._try(c, self._list) \
                            and self._down_since is not None:
                        break  # unreachable: `run` keeps trying
        if self._loop is None:  # once running, only `_deliver` moves the view on
            self._view = self._build()
            _log_skipped((), self._view.resources.skipped)
        return self._view

    async def run(self, on_change: OnChange) -> None:
        """Watch until cancelled; `on_change(view)` runs on this loop after each change."""
        self._loop, self._on_change = asyncio.get_running_loop(), on_change
        self._listed = True
        self._stop.clear()
        threads = [threading.Thread(target=self._follow, args=(c,), daemon=True,
                                    name=f"kube-{c.name}") for c in self._collections]
        threads.append(threading.Thread(target=self._rediscovering, daemon=True,
                                        name="kube-discovery"))
        for t in threads:
            t.start()
        self._changed()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            self._rediscover.set()
            for c in self._collections:
                c.moved.set()
            await asyncio.to_thread(self._join, threads)

    def _join(self, threads: list[threading.Thread], patience: float = 5.0) -> None:
        """Stop the open watches (again: one may have started since) until threads exit."""
        deadline = time.monotonic() + patience
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            for label in list(self._watches):
                self._interrupt(label)
            for t in threads:
                t.join(0.05)

    @property
    def api_up(self) -> bool:
        return self._reached and self._down_since is None

    def collector(self) -> "DiscoveryCollector":
        return DiscoveryCollector(self)

    def watching(self) -> list[Watched]:
        """The collections watched now (the version API discovery chose for each)."""
        return [c.spec for c in self._collections if c.spec is not None]

    def problems(self) -> list[str]:
        """Why objects in the cluster are not used (invalid), and why the API server could
        not be asked: what `balancer --check` reports as errors."""
        out = [f"{c.spec.label if c.spec else c.name} {name!r}: {why}"
               for c in self._collections for name, why in sorted(c.invalid.items())]
        if self._discovery_problem is not None:
            out.append(f"API discovery: {self._discovery_problem}")
        elif not self.api_up:
            out.append("the Kubernetes API server did not answer")
        return out

    # ---- API discovery -------------------------------------------------------------------
    def _rediscovering(self) -> None:
        """Ask API discovery again every `absent_retry` seconds, and at once when asked to
        (a version answered 404, or discovery has not answered yet)."""
        delay = self.backoff[0]
        if not self._discovered:
            self._rediscover.set()
        while not self._stop.is_set():
            self._rediscover.wait(self.absent_retry)
            self._rediscover.clear()
            if self._stop.is_set():
                return
            if self._try_discover():
                delay = self.backoff[0]
            else:
                self._stop.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff[1])
                self._rediscover.set()

    def _try_discover(self) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            self._discover()
            self._discovery_problem = None
            return True
        except ApiException as e:
            what = f"HTTP {e.status} {e.reason or ''}".strip()
            if what != self._discovery_problem:
                log.warning("Kubernetes API discovery (GET /apis) answered %s; keeping the "
                            "versions watched now", what)
            self._discovery_problem = what
            if e.status >= 500:
                self._mark_down(what)
            return False
        except Exception as e:  # urllib3 connection errors, protocol errors, timeouts
            if not self._stop.is_set():
                self._mark_down(type(e).__name__)
            return False

    def _discover(self) -> None:
        """GET /apis (the groups and their versions), then GET /apis/<group>/<version> for
        each served version we read (its resources); point each collection at the newest
        served version of its resource, or at none."""
        from kubernetes.client.rest import ApiException

        ours = {(w.group, w.version) for w in WATCHED if w.group}
        body = orjson.loads(self.apis.get_api_versions(
            _preload_content=False, _request_timeout=self.request_timeout).data)
        offered = {(g.get("name"), v.get("version")) for g in body.get("groups") or ()
                   for v in g.get("versions") or ()} & ours
        served: set[tuple[str, str, str]] = set()
        for group, version in sorted(offered):
            try:
                resp = self.custom.get_api_resources(group, version, _preload_content=False,
                                                     _request_timeout=self.request_timeout)
            except ApiException as e:
                if e.status == 404:  # gone between the two requests
                    continue
                raise
            served |= {(group, version, r.get("name")) for r in
                       orjson.loads(resp.data).get("resources") or ()}
        self._mark_up()
        moves = []
        for c in self._collections:
            if not c.core:
                spec = next((w for w in c.candidates
                             if (w.group, w.version, w.resource) in served), None)
                if spec != c.spec or not self._discovered:
                    moves.append((c, c.spec, spec))
        first, self._discovered = not self._discovered, True
        for c, old, new in moves:
            self._point(c, new)
        _log_moves(moves, first, self.absent_retry)

    def _point(self, c: _Collection, spec: Watched | None) -> None:
        """Watch `c` at `spec` from now on: its thread relists there (the objects it knows
        stay until then); None empties it."""
        if spec == c.spec:
            return
        old, c.spec = c.spec, spec
        if spec is None:
            with self._lock:
                c.objects, c.invalid, c.resource_version = {}, {}, None
            self._changed()
        with self._lock:
            c.synced = spec is None
        c.moved.set()
        if old is not None:
            self._interrupt(old.label)

    def _interrupt(self, label: str) -> None:
        """End the open watch of `label` now: stop it and shut its response down (when the
        client exposes it), so the thread does not wait for the next event."""
        w = self._watches.get(label)
        if w is None:
            return
        w.stop()
        resp = getattr(w, "_resp", None)  # kubernetes.watch.Watch keeps its open response
        shutdown = getattr(resp, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception:  # already closed
                pass

    # ---- one thread per collection -------------------------------------------------------
    def _follow(self, c: _Collection) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            if c.moved.is_set():
                c.moved.clear()
            if c.spec is None or c.problem == "absent":  # wait for API discovery
                c.moved.wait(self.absent_retry)
                if c.problem == "absent":
                    c.problem = None  # then list again, wherever discovery points
                c.synced = c.spec is None
                continue
            if not c.synced and not self._try(c, self._list):
                if c.problem not in ("expired", "moved"):
                    self._stop.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            if not self._try(c, self._watch):
                c.synced = False  # relist: events may have been missed
                if c.problem not in ("expired", "moved"):
                    self._stop.wait(delay * random.uniform(0.5, 1.0))

    def _try(self, c: _Collection, step: Callable[[_Collection], None]) -> bool:
        """Run a list or watch step; classify and log its failure. True on success."""
        from kubernetes.client.rest import ApiException

        spec = c.spec
        try:
            step(c)
            return not self._moved(c, spec)
        except ApiException as e:
            if self._stop.is_set() or self._moved(c, spec):
                return False
            if e.status == 410:
                self.relists[spec.label] = self.relists.get(spec.label, 0) + 1
                c.problem = "expired"
                log.info("%s: watch expired (410 Gone); relisting", spec.label)
                return False
            if e.status == 404:
                self._absent(c, spec)
                return False
            self._error(c, f"HTTP {e.status} {e.reason or ''}".strip(), e.status < 500)
            if e.status >= 500:
                self._mark_down(f"HTTP {e.status}")
            return False
        except Exception as e:  # urllib3 connection errors, protocol errors, timeouts
            if self._stop.is_set() or self._moved(c, spec):
                return False
            self._error(c, f"{type(e).__name__}: {e}", False)
            self._mark_down(type(e).__name__)
            return False

    def _moved(self, c: _Collection, spec: Watched | None) -> bool:
        """True (and noted) when API discovery pointed `c` elsewhere during a step."""
        if spec == c.spec:
            return False
        c.problem = "moved"
        return True

    def _list(self, c: _Collection) -> None:
        s = c.spec
        assert s is not None
        if s.group:
            resp = self.custom.list_namespaced_custom_object(
                s.group, s.version, self.namespace, s.resource, _preload_content=False,
                _request_timeout=self.request_timeout)
        else:
            resp = self.core.list_namespaced_pod(self.namespace, _preload_content=False,
                                                 _request_timeout=self.request_timeout)
        body = orjson.loads(resp.data)
        objects, invalid = {}, {}
        for obj in body.get("items") or ():
            name, parsed, why = self._parse(s, obj)
            objects[name] = parsed
            if why:
                invalid[name] = why
        with self._lock:
            if c.spec != s:
                return  # moved meanwhile: the new version is listed next
            c.objects, c.invalid = objects, invalid
            c.resource_version = (body.get("metadata") or {}).get("resourceVersion")
            c.synced, c.problem = True, None
        self._mark_up()
        self._changed()

    def _watch(self, c: _Collection) -> None:
        """Stream events from the collection's resourceVersion until the server ends the
        watch (timeout); ApiException(410) when that version has expired."""
        from kubernetes import watch

        s = c.spec
        assert s is not None
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
                if self._stop.is_set() or c.spec != s:
                    break
                self._event(c, s, event["type"], event["raw_object"])
        finally:
            self._watches.pop(s.label, None)
            w.stop()
            stream.close()

    def _event(self, c: _Collection, s: Watched, kind: str, obj: dict[str, Any]) -> None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            name, parsed, why = self._parse(s, obj)
            with self._lock:
                c.invalid.pop(name, None)
                if kind == "DELETED":
                    c.objects.pop(name, None)
                else:
                    c.objects[name] = parsed
                    if why:
                        c.invalid[name] = why
                c.resource_version = rv or c.resource_version
            self._changed()
        elif kind == "BOOKMARK" and rv:
            c.resource_version = rv

    def _parse(self, s: Watched, obj: dict[str, Any]) -> tuple[str, Any, str | None]:
        """(name, parsed object or None, why it is not used)."""
        name = (obj.get("metadata") or {}).get("name", "")
        if not s.group:
            return name, pod_entry(obj), None
        # The endpoint decides the version (list items may omit apiVersion/kind).
        obj = {**obj, "apiVersion": s.api_version, "kind": s.kind}
        try:
            return name, parse_resource(obj, f"Kubernetes {s.api_version} in namespace "
                                             f"{self.namespace}: "), None
        except ConfigError as e:
            log.warning("%s; ignored until it is fixed", e)
            return name, None, str(e)

    # ---- health --------------------------------------------------------------------------
    def _error(self, c: _Collection, what: str, loud: bool) -> None:
        """Count a failed call; log a refusal (4xx) once per problem at warning level —
        connection failures are logged once per outage by `_mark_down`."""
        label = c.spec.label if c.spec else c.name
        self.errors[label] = self.errors.get(label, 0) + 1
        if c.problem == what:
            return
        c.problem = what
        hint = " (the ServiceAccount needs list and watch on it: deploy/balancer/rbac.yaml)" \
            if what.startswith(("HTTP 401", "HTTP 403")) else ""
        log.log(logging.WARNING if loud else logging.DEBUG, "%s: %s%s; keeping its last "
                "known state", label, what, hint)

    def _absent(self, c: _Collection, spec: Watched) -> None:
        """`spec` answered 404: that version went away. API discovery is asked again now and
        points the collection at another version or at none; its objects stay until then."""
        if c.problem != "absent":
            log.warning("%s answered 404 (no longer served?); looking at API discovery "
                        "again", spec.label)
        c.problem = "absent"
        self._mark_up()
        self._rediscover.set()

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
        with self._lock:  # logged inside: no other thread reports "up" before it is said
            since, self._down_since, self._reached = self._down_since, None, True
            if since is not None:
                log.warning("Kubernetes API reachable again after %.1f s; resyncing",
                            time.time() - since)

    # ---- views ---------------------------------------------------------------------------
    def _build(self) -> ClusterView:
        with self._lock:
            objects = [o for c in self._collections if not c.core
                       for o in c.objects.values() if o is not None]
            raw_pods = sorted((p for c in self._collections if c.core
                               for p in c.objects.values() if p is not None),
                              key=lambda p: p.name)
        resources = build_resources(objects)
        return ClusterView(resources, assign_pools([p for p in raw_pods if p.ready], resources),
                           assign_pools([p for p in raw_pods if not p.ready], resources))

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
        _log_skipped(self._view.resources.skipped, view.resources.skipped)
        self._view = view
        if self._on_change is not None:
            self._on_change(view)


def _log_skipped(before: list[Skipped] | tuple, now: list[Skipped]) -> None:
    """Log what the cluster's objects leave to the mesh, once: entries new in `now`."""
    for s in now:
        if s not in before:
            log.log(logging.WARNING if s.warn else logging.INFO, "%s", s)


def _log_moves(moves: list[tuple[_Collection, Watched | None, Watched | None]], first: bool,
               every: float) -> None:
    """Say which versions are watched: all of them the first time, then each change."""
    if first:
        watched = [new.label for _, _, new in moves if new is not None]
        absent = [c.name for c, _, new in moves if new is None]
        log.info("Kubernetes API discovery: watching %s; not served: %s (looked at again "
                 "every %g s)", ", ".join(watched) or "none", ", ".join(absent) or "none",
                 every)
        return
    for c, old, new in moves:
        if new is None:
            log.warning("%s is no longer served by the API server: its objects are gone",
                        old.label if old else c.name)
        elif old is None:
            log.warning("%s is now served: watching it", new.label)
        else:
            log.warning("%s: now watching %s (the newest served version; was %s)", c.name,
                        new.version, old.version)


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
