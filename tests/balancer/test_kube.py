"""KubeDiscovery against a fake API server, driven by the real `kubernetes` client.

No API server can run here (no kind, k3s or envtest), so `fake_apiserver.FakeApiServer`
speaks the real list/watch HTTP protocol on 127.0.0.1 — lists with a resourceVersion,
chunked watch streams of ADDED/MODIFIED/DELETED events, ERROR events with a 410 Status after
compaction, 404 for a CRD that is not installed, and connections cut mid-stream — and the
official client (CoreV1Api, CustomObjectsApi, watch.Watch) talks to it over HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from llmtraffic.balancer.config import GIE_ALPHA, GIE_ALPHA2, GIE_V1, ConfigError
from llmtraffic.balancer.discovery import ClusterView
from llmtraffic.balancer.kube import KubeDiscovery, pod_entry, pod_from_object
from llmtraffic.contracts.store import Pod
from tests.fixtures.fake_apiserver import (RELEASES, SERVED, FakeApiServer, discovery_for,
    pod, use_kubeconfig)

SEED = Path(__file__).resolve().parents[2] / "deploy" / "seed"
POOL = "vllm-llama2-7b-pool"
APP = {"app": POOL}
CR_KINDS = ("InferencePool", "InferenceModel", "LLMRoute")


def seed_objects() -> list[dict]:
    return [d for p in sorted(SEED.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
            if d and d["kind"] in CR_KINDS]


@pytest.fixture
def fake():
    f = FakeApiServer().start()
    yield f
    f.go_away()


class Running:
    """`KubeDiscovery.run` as a task, recording each view it delivers."""

    def __init__(self, d: KubeDiscovery) -> None:
        self.d = d
        self.views: list[ClusterView] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Running":
        self.task = asyncio.create_task(self.d.run(self.views.append))
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def last(self) -> ClusterView:
        return self.views[-1] if self.views else self.d.view()

    def addresses(self) -> set[str]:
        return {p.address for p in self.last.pods}

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, f"timed out waiting for {what}; last view: " \
                f"{sorted(self.addresses())}"
            await asyncio.sleep(0.01)


#: Collections the default fake (SERVED) has watched: its four custom resources and pods.
SEED_WATCHED = len(SERVED) + 1


async def watching(fake: FakeApiServer, n: int = SEED_WATCHED, since: int | None = None) -> None:
    """Until `n` more watch requests than `since` (default: now) have reached the fake."""
    start = fake.count("watch") if since is None else since
    end = time.monotonic() + 5
    while fake.count("watch") < start + n:
        assert time.monotonic() < end, fake.requests
        await asyncio.sleep(0.01)


def exposition(d: KubeDiscovery) -> str:
    reg = CollectorRegistry()
    reg.register(d.collector())
    return generate_latest(reg).decode()


# ---- pods -------------------------------------------------------------------------------
@pytest.mark.parametrize("obj, routable", [
    (pod("a", "10.0.0.1", APP), True),
    (pod("a", "10.0.0.1", APP, ready=False), False),
    (pod("a", None, APP), False),
    (pod("a", "10.0.0.1", APP, phase="Pending"), False),
    (pod("a", "10.0.0.1", APP, phase="Succeeded"), False),
    ({**pod("a", "10.0.0.1", APP), "status": {"phase": "Running", "podIP": "10.0.0.1"}}, False),
])
def test_only_running_ready_pods_with_an_ip_are_routable(obj, routable) -> None:
    assert (pod_from_object(obj) is not None) is routable


def test_terminating_pods_are_not_routable_and_ipv6_is_bracketed() -> None:
    gone = pod("a", "10.0.0.1", APP)
    gone["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert pod_from_object(gone) is None
    assert pod_from_object(pod("a", "fd00::1", APP)).address == "[fd00::1]"


# ---- discovery --------------------------------------------------------------------------

def apply_seed(fake) -> None:
    """The seed's InferencePool, InferenceModel and LLMRoute, as a cluster would hold them."""
    for obj in seed_objects():
        fake.apply(obj)


async def test_initial_list_builds_the_view_from_the_seed_and_ready_pods(fake) -> None:
    apply_seed(fake)
    fake.apply(pod("vllm-0", "10.0.0.1", APP))
    fake.apply(pod("vllm-1", "10.0.0.2", APP, ready=False))
    fake.apply(pod("vllm-2", None, APP, phase="Pending"))
    fake.apply(pod("other", "10.0.0.9", {"app": "something-else"}))
    d = discovery_for(fake)
    view = await asyncio.to_thread(d.view)
    res = view.resources
    assert list(res.pools) == [POOL]
    assert res.pools[POOL].target_port == 8000 and res.pools[POOL].api_version == GIE_ALPHA
    assert res.pools[POOL].selector == APP
    model = res.model(POOL, "tweet-summary")
    assert model is not None and model.criticality == "Critical"
    assert model.targets == (("tweet-summary", 100),)
    assert res.pool_for_host("test.com:80").name == POOL
    assert view.pods == [Pod("vllm-0", "10.0.0.1:8000", APP, POOL, "default")]
    assert sorted(r for r in fake.requests if r.startswith("list")) == sorted(f"list {p}" for p in (
        "/apis/inference.networking.x-k8s.io/v1alpha1/namespaces/default/inferencepools",
        "/apis/inference.networking.k8s.io/v1/namespaces/default/inferencepools",
        "/apis/inference.networking.x-k8s.io/v1alpha1/namespaces/default/inferencemodels",
        "/apis/istio.alibabacloud.com/v1/namespaces/default/llmroutes",
        "/api/v1/namespaces/default/pods"))
    assert "llmtraffic_discovery_api_up 1.0" in exposition(d)


async def test_pods_joining_and_leaving_change_membership(fake) -> None:
    apply_seed(fake)
    fake.apply(pod("vllm-0", "10.0.0.1", APP))
    fake.apply(pod("vllm-1", "10.0.0.2", APP, ready=False))
    d = discovery_for(fake)
    d.view()
    async with Running(d) as r:
        await watching(fake)
        fake.apply(pod("vllm-1", "10.0.0.2", APP))  # becomes ready
        await r.until(lambda: r.addresses() == {"10.0.0.1:8000", "10.0.0.2:8000"}, "ready")
        fake.apply(pod("vllm-0", "10.0.0.1", APP, ready=False))  # becomes unready
        await r.until(lambda: r.addresses() == {"10.0.0.2:8000"}, "unready")
        fake.apply(pod("vllm-2", "10.0.0.3", APP))
        fake.delete("v1", "Pod", "vllm-1")
        await r.until(lambda: r.addresses() == {"10.0.0.3:8000"}, "deleted")
        fake.apply(pod("vllm-2", "10.0.0.3", {"app": "elsewhere"}))  # relabelled away
        await r.until(lambda: r.addresses() == set(), "relabelled")
        n = len(r.views)
        fake.apply(pod("unrelated", "10.0.0.7", {"app": "elsewhere"}))
        fake.apply(pod("vllm-9", "10.0.0.9", APP))
        await r.until(lambda: r.addresses() == {"10.0.0.9:8000"}, "new pod")
        assert all(v.pods != r.views[i - 1].pods for i, v in enumerate(r.views) if i)
        assert len(r.views) == n + 1  # unchanged membership delivers nothing


async def test_resource_changes_and_an_invalid_object(fake, caplog) -> None:
    apply_seed(fake)
    fake.apply(pod("vllm-0", "10.0.0.1", APP))
    d = discovery_for(fake)
    d.view()
    async with Running(d) as r:
        await watching(fake)
        pool = next(o for o in seed_objects() if o["kind"] == "InferencePool")
        pool["spec"]["targetPortNumber"] = 8001
        fake.apply(pool)
        await r.until(lambda: r.addresses() == {"10.0.0.1:8001"}, "new target port")
        fake.apply({"apiVersion": GIE_ALPHA, "kind": "InferenceModel",
                    "metadata": {"name": "bad"},
                    "spec": {"modelName": "bad", "criticality": "Urgent",
                             "poolRef": {"name": POOL}}})
        fake.apply({"apiVersion": GIE_ALPHA, "kind": "InferenceModel",
                    "metadata": {"name": "sql"},
                    "spec": {"modelName": "sql-lora", "poolRef": {"name": POOL}}})
        await r.until(lambda: r.last.resources.model(POOL, "sql-lora") is not None, "model")
        assert r.last.resources.model(POOL, "bad") is None
        assert any("InferenceModel 'bad'" in m and "criticality" in m
                   for m in caplog.messages)
        fake.delete("istio.alibabacloud.com/v1", "LLMRoute", "test-llm-route")
        await r.until(lambda: not r.last.resources.routes, "route deleted")


async def test_expired_watch_relists_and_converges(fake) -> None:
    apply_seed(fake)
    fake.apply(pod("vllm-0", "10.0.0.1", APP))
    fake.apply(pod("vllm-1", "10.0.0.2", APP))
    d = discovery_for(fake)
    d.view()
    async with Running(d) as r:
        await watching(fake)
        lists, watches = fake.count("list"), fake.count("watch")
        with fake.hold():  # these events never reach the open watches...
            fake.delete("v1", "Pod", "vllm-0")
            fake.apply(pod("vllm-2", "10.0.0.3", APP))
            fake.expire()  # ...which end with ERROR 410; only a relist shows them
        await r.until(lambda: r.addresses() == {"10.0.0.2:8000", "10.0.0.3:8000"}, "relist")
        await r.until(lambda: fake.count("list") >= lists + SEED_WATCHED, "all relisted")
        assert d.relists["pods"] >= 1 and d.api_up
        assert 'llmtraffic_discovery_relists_total{resource="pods"}' in exposition(d)
        await watching(fake, since=watches)  # watching again from the relisted version
        fake.apply(pod("vllm-3", "10.0.0.4", APP))
        await r.until(lambda: "10.0.0.4:8000" in r.addresses(), "watch after relist")


async def test_a_watch_from_a_compacted_version_gets_410_and_relists(fake) -> None:
    apply_seed(fake)
    d = discovery_for(fake)
    d.view()  # lists at version N...
    fake.apply(pod("vllm-0", "10.0.0.1", APP))
    fake.expire()  # ...which is compacted before the first watch starts
    async with Running(d) as r:
        await r.until(lambda: r.addresses() == {"10.0.0.1:8000"}, "relist")
        assert d.relists["pods"] == 1


async def test_api_server_gone_keeps_the_last_view_and_says_so(fake, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llmtraffic.balancer.kube")
    apply_seed(fake)
    fake.apply(pod("vllm-0", "10.0.0.1", APP))
    d = discovery_for(fake)
    d.view()
    async with Running(d) as r:
        await watching(fake)
        fake.go_away()
        await r.until(lambda: not d.api_up, "api down")
        await r.until(lambda: sum(d.errors.values()) >= 2 * SEED_WATCHED, "retries")
        assert r.addresses() == {"10.0.0.1:8000"} and d.view().pods == r.last.pods
        text = exposition(d)
        assert "llmtraffic_discovery_api_up 0.0" in text
        assert 'llmtraffic_discovery_errors_total{resource="pods"}' in text
        down = [m for m in caplog.messages if "unreachable since" in m]
        assert len(down) == 1 and "keeping 1 pods in 1 pools" in down[0]

        fake.apply(pod("vllm-1", "10.0.0.2", APP))  # happens while we cannot see it
        fake.come_back()
        await r.until(lambda: r.addresses() == {"10.0.0.1:8000", "10.0.0.2:8000"}, "resync")
        assert d.api_up and "llmtraffic_discovery_api_up 1.0" in exposition(d)
        assert sum("reachable again" in m for m in caplog.messages) == 1
        assert sum("unreachable since" in m for m in caplog.messages) == 1


async def test_unreachable_at_start_gives_an_empty_view_then_catches_up(fake) -> None:
    fake.go_away()
    d = discovery_for(fake)
    view = await asyncio.to_thread(d.view)
    assert view.pods == [] and not view.resources.pools and not d.api_up
    apply_seed(fake)
    fake.apply(pod("vllm-0", "10.0.0.1", APP))
    async with Running(d) as r:
        fake.come_back()
        await r.until(lambda: r.addresses() == {"10.0.0.1:8000"}, "first sync")


async def test_v1_pools(fake) -> None:
    fake.apply({"apiVersion": GIE_V1, "kind": "InferencePool",
                "metadata": {"name": "ga-pool"},
                "spec": {"selector": {"matchLabels": {"app": "ga"}},
                         "targetPorts": [{"number": 9000}, {"number": 9001}],
                         "endpointPickerRef": {"name": "llmtraffic-balancer",
                                               "port": {"number": 9002},
                                               "failureMode": "FailOpen"}}})
    fake.apply(pod("ga-0", "10.0.1.1", {"app": "ga"}))
    d = discovery_for(fake)
    view = d.view()
    pool = view.resources.pools["ga-pool"]
    assert (pool.api_version, pool.target_ports, pool.failure_mode) == \
        (GIE_V1, (9000, 9001), "FailOpen")
    assert [(p.name, p.address, p.pool) for p in view.pods] == [  # one per target port
        ("ga-0-rank-0", "10.0.1.1:9000", "ga-pool"), ("ga-0-rank-1", "10.0.1.1:9001", "ga-pool")]
    async with Running(d) as r:
        await watching(fake)
        fake.apply(pod("ga-1", "10.0.1.2", {"app": "ga"}))
        await r.until(lambda: r.addresses() == {"10.0.1.1:9000", "10.0.1.1:9001",
                                                "10.0.1.2:9000", "10.0.1.2:9001"}, "v1 pod")


async def test_a_crd_that_is_not_installed_is_empty_not_an_outage(caplog) -> None:
    caplog.set_level(logging.INFO, logger="llmtraffic.balancer.kube")
    fake = FakeApiServer(served=[s for s in SERVED if "k8s.io/v1/" not in s and
                                 "llmroutes" not in s]).start()
    try:
        for obj in seed_objects():
            if obj["kind"] != "LLMRoute":
                fake.apply(obj)
        fake.apply(pod("vllm-0", "10.0.0.1", APP))
        d = discovery_for(fake)
        view = d.view()
        assert [p.address for p in view.pods] == ["10.0.0.1:8000"] and d.api_up
        said = [m for m in caplog.messages if "not served" in m]
        assert len(said) == 1 and "llmroutes.istio.alibabacloud.com" in said[0]
        assert "inferencepools.inference.networking.k8s.io," in said[0]
        assert not any(r.startswith("list /apis/istio") for r in fake.requests)  # not tried
        async with Running(d) as r:
            await watching(fake, 3)
            fake.apply(pod("vllm-1", "10.0.0.2", APP))
            await r.until(lambda: len(r.addresses()) == 2, "pods still watched")
            gets = fake.count("get /apis")
            await r.until(lambda: fake.count("get /apis") > gets, "discovery asked again")
            assert sum("not served" in m for m in caplog.messages) == 1  # ...said once
    finally:
        fake.go_away()


# ---- API discovery: the newest served version, followed while running ---------------------
X = "inference.networking.x-k8s.io"


def lists_of(fake: FakeApiServer) -> set[str]:
    """The collections listed so far, as "group/version/plural"."""
    return {"/".join(r.split("/")[2:4] + [r.rsplit("/", 1)[1]]) for r in fake.requests
            if r.startswith("list /apis/")}


async def test_the_newest_served_version_is_watched() -> None:
    fake = FakeApiServer(served=[f"{X}/v1alpha1/inferencepools", f"{X}/v1alpha2/inferencepools",
                                 f"{X}/v1alpha1/inferencemodels"]).start()
    try:
        apply_seed(fake)  # stored at v1alpha1; the CRD serves it at both versions
        fake.apply(pod("vllm-0", "10.0.0.1", APP))
        d = discovery_for(fake)
        view = d.view()
        assert lists_of(fake) == {f"{X}/v1alpha2/inferencepools", f"{X}/v1alpha1/inferencemodels"}
        assert view.resources.pools[POOL].api_version == GIE_ALPHA2
        assert [p.address for p in view.pods] == ["10.0.0.1:8000"]
        assert {w.label for w in d.watching()} == {
            f"inferencepools.{X}/v1alpha2", f"inferencemodels.{X}/v1alpha1", "pods"}
        assert "get /apis" in fake.requests and f"get /apis/{X}/v1alpha2" in fake.requests
    finally:
        fake.go_away()


async def test_a_version_appearing_and_disappearing_while_running(caplog) -> None:
    caplog.set_level(logging.INFO, logger="llmtraffic.balancer.kube")
    pools_v1 = f"{X}/v1alpha1/inferencepools"
    fake = FakeApiServer(served=[pools_v1, f"{X}/v1alpha1/inferencemodels"]).start()
    try:
        apply_seed(fake)
        fake.apply(pod("vllm-0", "10.0.0.1", APP))
        d = discovery_for(fake)
        d.view()
        async with Running(d) as r:
            await watching(fake, 3)
            fake.serve([pools_v1, f"{X}/v1alpha2/inferencepools", f"{X}/v1alpha1/inferencemodels"])
            await r.until(lambda: r.last.resources.pools[POOL].api_version == GIE_ALPHA2,
                          "switch to v1alpha2")
            assert all(POOL in v.resources.pools for v in r.views)  # no gap while switching
            assert any("now watching v1alpha2" in m for m in caplog.messages)
            fake.serve([pools_v1, f"{X}/v1alpha1/inferencemodels"])  # v1alpha2 withdrawn
            await r.until(lambda: r.last.resources.pools[POOL].api_version == GIE_ALPHA,
                          "back to v1alpha1")
            fake.serve([f"{X}/v1alpha1/inferencemodels"])  # the pool CRD is gone
            await r.until(lambda: not r.last.resources.pools and not r.addresses(), "no pool")
            assert any("no longer served" in m for m in caplog.messages)
            fake.serve([pools_v1, f"{X}/v1alpha1/inferencemodels"])
            await r.until(lambda: r.addresses() == {"10.0.0.1:8000"}, "served again")
            assert d.api_up
    finally:
        fake.go_away()


async def test_objectives_rewrites_and_unready_pods() -> None:
    fake = FakeApiServer(served=RELEASES["v1.3"]).start()
    try:
        fake.apply({"apiVersion": GIE_V1, "kind": "InferencePool",
                    "metadata": {"name": "dp", "labels": None},  # null labels read as none
                    "spec": {"selector": {"matchLabels": {"app": "dp"}},
                             "targetPorts": [{"number": 3000}, {"number": 3002},
                                             {"number": 3004}],
                             "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}})
        fake.apply({"apiVersion": GIE_ALPHA2, "kind": "InferenceObjective",
                    "metadata": {"name": "batch"},
                    "spec": {"priority": -1, "poolRef": {"name": "dp"}}})
        fake.apply({"apiVersion": GIE_ALPHA2, "kind": "InferenceModelRewrite",
                    "metadata": {"name": "canary"},
                    "spec": {"poolRef": {"name": "dp"}, "rules": [
                        {"matches": [{"model": {"value": "m"}}],
                         "targets": [{"modelRewrite": "m-v1", "weight": 90},
                                     {"modelRewrite": "m-v2", "weight": 10}]}]}})
        fake.apply({"apiVersion": GIE_ALPHA2, "kind": "InferenceObjective",
                    "metadata": {"name": "broken"}, "spec": {"priority": "high"}})
        fake.apply(pod("dp-0", "10.0.2.1", {"app": "dp"}))
        fake.apply(pod("dp-1", "10.0.2.2", {"app": "dp"}, ready=False))
        fake.apply(pod("dp-2", None, {"app": "dp"}, phase="Pending"))
        d = discovery_for(fake)
        view = d.view()
        res = view.resources
        assert res.objective("dp", "batch").priority == -1
        assert res.resolve("dp", "m").targets == (("m-v1", 90), ("m-v2", 10))
        assert [p.address for p in view.pods] == ["10.0.2.1:3000", "10.0.2.1:3002",
                                                  "10.0.2.1:3004"]
        assert [(p.name, p.address, p.ready) for p in view.unready] == [
            ("dp-1-rank-0", "10.0.2.2:3000", False), ("dp-1-rank-1", "10.0.2.2:3002", False),
            ("dp-1-rank-2", "10.0.2.2:3004", False), ("dp-2", "", False)]
        assert [p for p in d.problems() if "'broken'" in p and "priority" in p]
        assert f"list /apis/{X}/v1alpha1/namespaces/default/inferencepoolimports" \
            not in fake.requests  # served, but not a kind the balancer reads
    finally:
        fake.go_away()


def test_pods_are_kept_ready_or_not_until_they_finish() -> None:
    assert pod_entry(pod("a", "10.0.0.1", APP)).ready
    assert not pod_entry(pod("a", "10.0.0.1", APP, ready=False)).ready
    assert pod_entry(pod("a", None, APP, phase="Pending")).address == ""
    assert pod_entry(pod("a", "10.0.0.1", APP, phase="Succeeded")) is None


async def test_the_proxy_exposes_discovery_health(fake) -> None:
    from llmtraffic.balancer.proxy import BalancerApp, ProxyOptions

    apply_seed(fake)
    app = BalancerApp(discovery_for(fake), ProxyOptions())
    assert "llmtraffic_discovery_api_up 1.0" in generate_latest(app.registry).decode()


def test_kubeconfig_is_used_outside_a_cluster(fake, tmp_path, monkeypatch) -> None:
    use_kubeconfig(fake, tmp_path / "config", monkeypatch, "team")
    d = KubeDiscovery()
    assert d.namespace == "team"
    d.view()
    assert "list /api/v1/namespaces/team/pods" in fake.requests


def test_no_configuration_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no Kubernetes configuration.*KUBECONFIG"):
        KubeDiscovery()
