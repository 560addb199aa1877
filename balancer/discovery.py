"""Discovery: which pools, models, routes and pods exist. One Protocol, two sources — a
static pods file plus resource YAML here, the Kubernetes API in `balancer.kube` — both
resolving pool membership from each InferencePool's selector exactly as a cluster does."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Protocol

from llmtraffic.balancer.config import ConfigError, Pool, Resources, load_resources
from llmtraffic.contracts.pods import has_port, pods_from_file
from llmtraffic.contracts.store import Pod

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ClusterView:
    """Everything the balancer routes over at one moment."""

    resources: Resources
    pods: list[Pod] = field(default_factory=list)  # pool members, addresses with ports
    #: pool members that exist but are not ready (not routed; `balancer --check` lists them)
    unready: list[Pod] = field(default_factory=list)


OnChange = Callable[[ClusterView], None]


class Discovery(Protocol):
    """A source of `ClusterView`s: `view()` now, and `run(on_change)` until cancelled."""

    def view(self) -> ClusterView: ...

    async def run(self, on_change: OnChange) -> None: ...


def assign_pools(pods: Iterable[Pod], resources: Resources) -> list[Pod]:
    """Pool members among `pods`, one endpoint per (pod, target port): a pod joins the first
    pool (by name) whose selector its labels match (an explicit `pool` in the pods file
    wins). An address with a port is that one endpoint; an address without one is an
    endpoint on each of the pool's target ports, named `<pod>-rank-<i>` when the pool has
    several. Pods in no pool are left out (logged at debug level)."""
    pools = sorted(resources.pools.values(), key=lambda p: p.name)
    out = []
    for pod in pods:
        matches = [p for p in pools if (p.name == pod.pool if pod.pool else
                                        p.selects(dict(pod.labels)))]
        if not matches:
            log.debug("pod %s (%s) matches no InferencePool selector; not routed",
                      pod.name, pod.address)
            continue
        if len(matches) > 1:
            log.warning("pod %s matches pools %s; it serves %s only", pod.name,
                        ", ".join(p.name for p in matches), matches[0].name)
        out += endpoints(pod, matches[0])
    return out


def endpoints(pod: Pod, pool: Pool) -> list[Pod]:
    """`pod` as members of `pool`: itself when its address has a port (or when it has no
    address yet: a pod without an IP, listed but never routed), else one endpoint per target
    port (each its own entry in the store, scraped on its own port)."""
    if not pod.address or has_port(pod.address):
        return [replace(pod, pool=pool.name)]
    if len(pool.target_ports) == 1:
        return [replace(pod, pool=pool.name, address=_with_port(pod.address,
                                                                 pool.target_port))]
    return [replace(pod, name=f"{pod.name}-rank-{i}", pool=pool.name,
                    address=_with_port(pod.address, port))
            for i, port in enumerate(pool.target_ports)]


def _with_port(address: str, port: int) -> str:
    """`host:port`; a bare IPv6 address is bracketed (`[fd00::1]:8000`)."""
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"{address}:{port}"


class StaticDiscovery:
    """Resources from YAML files and pods from a pods file:
    `pods: [{name: vllm-0, address: "127.0.0.1:8001", labels: {app: ...}}]`."""

    def __init__(self, config_paths: list[str], pods_file: str | None = None,
                 pods: Iterable[Pod] = ()) -> None:
        self.config_paths = list(config_paths)
        self.pods_file = pods_file
        self._extra = list(pods)
        self._view = self._load()

    def _load(self) -> ClusterView:
        resources = load_resources(self.config_paths)
        for warning in resources.check():
            log.warning("%s", warning)
        raw = list(self._extra)
        if self.pods_file:
            try:
                raw += pods_from_file(self.pods_file)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        pods = assign_pools(raw, resources)
        if raw and not pods:
            raise ConfigError(
                f"none of the {len(raw)} pods matches an InferencePool selector ("
                + "; ".join(f"{p.name}: {p.selector}" for p in resources.pools.values())
                + "): check the pods' labels")
        return ClusterView(resources, pods)

    def view(self) -> ClusterView:
        return self._view

    async def run(self, on_change: OnChange) -> None:
        """Files do not change under a running balancer: nothing to report after `view()`."""

