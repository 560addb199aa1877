"""GIE's own manifests (tests/fixtures/upstream/gie, v0.1 to v1.x, loaded unchanged) and
the shapes ASM documents for LLMRoute v1beta1: every file loads; each scenario resolves the
same through files and through the fake API server serving what each GIE release served; and
`balancer --check` shows the endpoints, ports, targets and priorities they mean."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from llmtraffic.balancer.check import Report, build_report
from llmtraffic.balancer.config import (API_VERSIONS, GIE_ALPHA, GIE_ALPHA2, GIE_V1,
    load_documents, parse_resource)
from llmtraffic.balancer.discovery import StaticDiscovery
from tests.fixtures.fake_apiserver import ASM_ROUTES, RELEASES, FakeApiServer, discovery_for, pod

UPSTREAM = Path(__file__).resolve().parents[1] / "fixtures" / "upstream" / "gie"
MANIFESTS = sorted(UPSTREAM.rglob("*.yaml"))


def rel(path: Path) -> str:
    return str(path.relative_to(UPSTREAM))


@pytest.mark.parametrize("path", MANIFESTS, ids=rel)
def test_every_upstream_manifest_loads(path: Path) -> None:
    """Each document parses; the kinds the balancer reads become resources, the others (CRDs,
    Deployments, RBAC, Gateways, ...) are recognised as not read."""
    docs = load_documents(path)
    assert docs
    for where, doc in docs:
        assert (parse_resource(doc, where) is None) == (doc.get("kind") not in API_VERSIONS)


def objectives_in_the_ga_migration_guide() -> str:
    """The InferenceObjectives of GIE's v1 migration guide: its `kubectl apply` block."""
    text = (UPSTREAM / "v1-docs-2b9e6c0" / "ga-migration.md").read_text()
    block = re.search(r"```yaml\nkubectl apply -f - <<EOF\n(.*?)\nEOF\n```", text, re.S)
    assert block is not None
    return block.group(1)


# ---- scenarios ------------------------------------------------------------------------------
@dataclass
class Scenario:
    """Resource files (upstream, or YAML written here where no upstream file has the
    piece), pods, the GIE releases whose CRDs serve them, and what --check must show."""

    files: list[str]  # paths under UPSTREAM, or YAML text
    pods: list[tuple[str, str | None, dict[str, str]]]  # name, IP, labels
    releases: list[str]
    endpoints: dict[str, list[tuple[str, str, bool]]]  # pool -> (name, address, ready)
    models: dict[str, dict[str, tuple[list[tuple[str, float]], str, int]]] = \
        field(default_factory=dict)  # pool -> model -> ([(target, share)], criticality, prio)
    objectives: dict[str, dict[str, int]] = field(default_factory=dict)
    hosts: dict[str, list[str]] = field(default_factory=dict)  # host -> pools
    namespace: str = "default"
    api_version: dict[str, str] = field(default_factory=dict)  # pool -> apiVersion

    def texts(self) -> list[str]:
        return [f if "\n" in f else (UPSTREAM / f).read_text() for f in self.files]


#: The pool GIE's v0.2+ quick start names (its stored InferenceModels point at it; the stored
#: pool manifest is of an earlier commit and names `my-pool`).
QUICKSTART_POOL = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: vllm-llama3-8b-instruct}
spec: {targetPortNumber: 8000, selector: {app: vllm-llama3-8b-instruct}}
"""
#: The v1 pool GIE's migration guide installs with Helm (no manifest to store).
GA_POOL = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: vllm-llama3-8b-instruct-ga}
spec:
  selector: {matchLabels: {app: vllm-llama3-8b-instruct-ga}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: vllm-llama3-8b-instruct-ga-epp, port: {number: 9002}}
"""
#: GIE's documented InferenceModelRewrite canary (api-types/inferencemodelrewrite), for the
#: GA pool: no stored upstream file holds a rewrite.
REWRITE = """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: food-review-canary}
spec:
  poolRef: {group: inference.networking.k8s.io, name: vllm-llama3-8b-instruct-ga}
  rules:
  - matches: [{model: {type: Exact, value: food-review}}]
    targets: [{modelRewrite: food-review-v1, weight: 90},
              {modelRewrite: food-review-v2, weight: 10}]
  - targets: [{modelRewrite: meta-llama/Llama-3.1-8B-Instruct}]
"""
#: ASM's documented LLMRoute (LLMRoute CRD reference, v1beta1): a header rule and a default
#: rule, both to an external provider; and the same shape with an in-cluster pool beside one.
ASM_DOC_ROUTE = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: dashscope-route}
spec:
  host: dashscope.aliyuncs.com
  rules:
  - name: vip-route
    matches: [{headers: {user-type: {exact: subscriber}}}]
    backendRefs: [{providerHost: dashscope.aliyuncs.com}]
  - backendRefs: [{providerHost: dashscope.aliyuncs.com}]
"""
ASM_MIXED_ROUTE = """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: llama-route}
spec:
  host: llama.example.com
  rules:
  - name: vip-route
    matches: [{headers: {user-type: {exact: subscriber}}}]
    backendRefs: [{providerHost: dashscope.aliyuncs.com}]
  - backendRefs:
    - {backendRef: {group: inference.networking.k8s.io, kind: InferencePool,
                    name: vllm-llama3-8b-instruct-ga}, weight: 90}
    - {providerHost: dashscope.aliyuncs.com, weight: 10}
"""
#: The seed's pool (ASM's guide), the one GIE's v0.1 InferenceModel sample points at.
SEED_POOL = (Path(__file__).resolve().parents[2] / "deploy/seed/inferencepool.yaml").read_text()
V01, V02_05, V1 = ["v0.1"], ["v0.2", "v0.3", "v0.4", "v0.5"], ["v1.0", "v1.1", "v1.2", "v1.3"]

SCENARIOS = {
    "v0.1-hermetic-null-labels": Scenario(
        ["v1alpha1-42b4cbb/inferencepool-with-model-hermetic.yaml"],
        [("vllm-0", "10.0.0.1", {"app": "vllm-llama2-7b-pool"}),
         ("other", "10.0.0.9", {"app": "web"})], V01,
        {"vllm-llama2-7b-pool": [("vllm-0", "10.0.0.1:8000", True)]},
        {"vllm-llama2-7b-pool": {"sql-lora": ([("sql-lora-1fdg2", 100.0)], "Critical", 1)}},
        hosts={"*": ["vllm-llama2-7b-pool"]}, api_version={"vllm-llama2-7b-pool": GIE_ALPHA}),
    "v0.1-model": Scenario(  # (the same metadata.name as the hermetic file's model)
        [SEED_POOL, "v1alpha1-ac02642/inferencemodel.yaml"],
        [("vllm-0", "10.0.0.1", {"app": "vllm-llama2-7b-pool"})], V01,
        {"vllm-llama2-7b-pool": [("vllm-0", "10.0.0.1:8000", True)]},
        {"vllm-llama2-7b-pool": {
            "tweet-summary": ([("tweet-summary-1", 100.0)], "Critical", 1)}}),
    "v0.2-quickstart-pool-null-labels": Scenario(
        ["v1alpha2-11c9130/inferencepool.yaml"],
        [("my-pool-0", "10.0.1.1", {"app": "my-pool"}), ("my-pool-1", "10.0.1.2",
                                                         {"app": "my-pool"})], V02_05,
        {"my-pool": [("my-pool-0", "10.0.1.1:8000", True), ("my-pool-1", "10.0.1.2:8000", True)]},
        {"my-pool": {"*": ([("(as sent)", 100.0)], "Standard", 0)}},
        hosts={"*": ["my-pool"]}, api_version={"my-pool": GIE_ALPHA2}),
    "v0.2-quickstart-models": Scenario(
        [QUICKSTART_POOL, "v1alpha2-4e1b10e/inferencemodel.yaml"],
        [("vllm-0", "10.0.2.1", {"app": "vllm-llama3-8b-instruct"})], V02_05,
        {"vllm-llama3-8b-instruct": [("vllm-0", "10.0.2.1:8000", True)]},
        {"vllm-llama3-8b-instruct": {
            "food-review": ([("food-review-1", 100.0)], "Standard", 0),
            "meta-llama/Llama-3.1-8B-Instruct": (
                [("meta-llama/Llama-3.1-8B-Instruct", 100.0)], "Critical", 1),
            "Qwen/Qwen2.5-1.5B-Instruct": ([("Qwen/Qwen2.5-1.5B-Instruct", 100.0)],
                                           "Critical", 1),
            "google/gemma-3-27b-it": ([("google/gemma-3-27b-it", 100.0)], "Standard", 0)}},
        api_version={"vllm-llama3-8b-instruct": GIE_ALPHA2}),
    "v1.0-conformance": Scenario(
        ["v1-rc4-dbf4439/base.yaml"],
        [("primary-0", "10.0.3.1", {"app": "primary-inference-model-server"}),
         ("primary-1", "10.0.3.2", {"app": "primary-inference-model-server"}),
         ("secondary-0", "10.0.3.3", {"app": "secondary-inference-model-server"})], V1,
        {"primary-inference-pool": [("primary-0", "10.0.3.1:3000", True),
                                    ("primary-1", "10.0.3.2:3000", True)],
         "secondary-inference-pool": [("secondary-0", "10.0.3.3:3000", True)]},
        namespace="gateway-conformance-app-backend",
        api_version={"primary-inference-pool": GIE_V1}),
    "v1.0-objectives-rewrite-and-asm-route": Scenario(
        [GA_POOL, objectives_in_the_ga_migration_guide(), REWRITE, ASM_DOC_ROUTE,
         ASM_MIXED_ROUTE],
        [("ga-0", "10.0.4.1", {"app": "vllm-llama3-8b-instruct-ga"})], ["v1.2", "v1.3"],
        {"vllm-llama3-8b-instruct-ga": [("ga-0", "10.0.4.1:8000", True)]},
        {"vllm-llama3-8b-instruct-ga": {
            "food-review": ([("food-review-v1", 90.0), ("food-review-v2", 10.0)], "Standard", 0),
            "*": ([("meta-llama/Llama-3.1-8B-Instruct", 100.0)], "Standard", 0)}},
        {"vllm-llama3-8b-instruct-ga": {"food-review": 1, "base-model": 2}},
        hosts={"llama.example.com": ["vllm-llama3-8b-instruct-ga"]}),
    "v1.1-multi-port": Scenario(
        ["v1-multi-targetports-istio-24b300a/inferencepool-multiport-excerpt.yaml"],
        [("dp-0", "10.0.5.1", {"app": "inference-workload"})], ["v1.1", "v1.2", "v1.3"],
        {"my-inference-pool": [("dp-0-rank-0", "10.0.5.1:8000", True),
                               ("dp-0-rank-1", "10.0.5.1:8001", True)]},
        api_version={"my-inference-pool": GIE_V1}),
}


def write_pods(tmp_path: Path, s: Scenario) -> str:
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump({"pods": [{"name": n, "address": ip, "labels": labels}
                                             for n, ip, labels in s.pods]}))
    return str(path)


def report_from_files(tmp_path: Path, s: Scenario) -> Report:
    paths = []
    for i, text in enumerate(s.texts()):
        paths.append(tmp_path / f"{i}.yaml")
        paths[-1].write_text(text)
    return build_report(StaticDiscovery([str(p) for p in paths], write_pods(tmp_path, s)).view())


def resolved(report: Report) -> dict:
    """What must not depend on where the resources came from."""
    return {"hosts": {h.host: [p["pool"] for p in h.pools] for h in report.hosts},
            "pools": {p.name: (p.api_version, p.target_ports, p.namespace,
                               [(e.name, e.address, e.ready) for e in p.endpoints],
                               {m.model: ([(t.model, t.share) for t in m.targets],
                                          m.criticality, m.priority) for m in p.models},
                               p.objectives) for p in report.pools}}


def check_expectations(s: Scenario, report: Report) -> None:
    assert report.ok, report.errors
    pools = {p.name: p for p in report.pools}
    for name, eps in s.endpoints.items():
        assert [(e.name, e.address, e.ready) for e in pools[name].endpoints] == eps
    for name, models in s.models.items():
        got = {m.model: ([(t.model, t.share) for t in m.targets], m.criticality, m.priority)
               for m in pools[name].models}
        assert got == models
    for name, objectives in s.objectives.items():
        assert pools[name].objectives == objectives
    for host, want in s.hosts.items():
        assert [[p["pool"] for p in h.pools] for h in report.hosts if h.host == host] == [want]
    for name, api in s.api_version.items():
        assert pools[name].api_version == api


@pytest.mark.parametrize("name", SCENARIOS)
def test_check_shows_what_the_upstream_manifests_mean(name: str, tmp_path: Path) -> None:
    s = SCENARIOS[name]
    check_expectations(s, report_from_files(tmp_path, s))


def kube_report(s: Scenario, release: str) -> Report:
    fake = FakeApiServer(served=RELEASES[release] + ASM_ROUTES).start()
    try:
        for text in s.texts():
            for doc in yaml.safe_load_all(text):
                if doc and doc.get("kind") in API_VERSIONS:
                    fake.apply(doc)  # unchanged: its namespace (or the default) and version
        for n, ip, labels in s.pods:
            fake.apply(pod(n, ip, labels, namespace=s.namespace))
        d = discovery_for(fake, s.namespace)
        return build_report(d.view(), d.problems())
    finally:
        fake.go_away()


@pytest.mark.parametrize("name, release", [(n, r) for n, s in SCENARIOS.items()
                                           for r in s.releases])
async def test_the_fake_api_server_of_each_release_gives_the_same_routing(name: str,
                                                                          release: str,
                                                                          tmp_path: Path) -> None:
    s = SCENARIOS[name]
    kube = await asyncio.to_thread(kube_report, s, release)
    check_expectations(s, kube)
    assert resolved(kube) == resolved(report_from_files(tmp_path, s))


async def test_a_cluster_migrating_from_v1alpha2_to_v1_serves_both_pools() -> None:
    """GIE's migration guide installs the v1 pool beside the v0.x one: both groups are
    watched (each at its newest served version)."""
    s = Scenario([QUICKSTART_POOL, GA_POOL], [
        ("old-0", "10.0.6.1", {"app": "vllm-llama3-8b-instruct"}),
        ("new-0", "10.0.6.2", {"app": "vllm-llama3-8b-instruct-ga"})], [], {})
    fake = FakeApiServer(served=RELEASES["v0.5"] + RELEASES["v1.0"]).start()
    try:
        for text in s.texts():
            fake.apply(yaml.safe_load(text))
        for n, ip, labels in s.pods:
            fake.apply(pod(n, ip, labels))
        report = build_report(await asyncio.to_thread(discovery_for(fake).view))
    finally:
        fake.go_away()
    assert {p.name: (p.api_version, [e.address for e in p.endpoints]) for p in report.pools} == {
        "vllm-llama3-8b-instruct": (GIE_ALPHA2, ["10.0.6.1:8000"]),
        "vllm-llama3-8b-instruct-ga": (GIE_V1, ["10.0.6.2:8000"])}


def test_the_documented_llmroute_is_skipped_with_its_reasons(tmp_path: Path) -> None:
    s = SCENARIOS["v1.0-objectives-rewrite-and-asm-route"]
    report = report_from_files(tmp_path, s)
    skipped = [f"{x['what']}: {x['why']}" for x in report.skipped]
    assert not any("matches on" in x for x in skipped)  # header matches are evaluated
    assert any("dashscope-route" in x and "rule 'vip-route'" in x and "providerHost" in x
               for x in skipped)
    assert any("dashscope-route" in x and "providerHost dashscope.aliyuncs.com" in x
               for x in skipped)
    assert any("LLMRoute 'dashscope-route': no in-cluster InferencePool backend" in x
               for x in skipped)
    assert any("llama-route" in x and "providerHost" in x for x in skipped)
    assert [h.host for h in report.hosts] == ["llama.example.com"]
    assert report.hosts[0].pools == [{"pool": "vllm-llama3-8b-instruct-ga", "weight": 90}]


def test_endpoints_not_ready_are_listed_but_not_routed() -> None:
    s = SCENARIOS["v1.1-multi-port"]
    fake = FakeApiServer(served=RELEASES["v1.3"]).start()
    try:
        fake.apply(yaml.safe_load(s.texts()[0]))
        fake.apply(pod("dp-0", "10.0.5.1", {"app": "inference-workload"}))
        fake.apply(pod("dp-1", "10.0.5.2", {"app": "inference-workload"}, ready=False))
        d = discovery_for(fake)
        view = d.view()
    finally:
        fake.go_away()
    report = build_report(view)
    assert [(e.name, e.address, e.ready) for e in report.pools[0].endpoints] == [
        ("dp-0-rank-0", "10.0.5.1:8000", True), ("dp-0-rank-1", "10.0.5.1:8001", True),
        ("dp-1-rank-0", "10.0.5.2:8000", False), ("dp-1-rank-1", "10.0.5.2:8001", False)]
    assert {p.address for p in view.pods} == {"10.0.5.1:8000", "10.0.5.1:8001"}


def test_every_stored_pool_manifest_is_in_a_scenario() -> None:
    """A new upstream file with an InferencePool must get its expectations here."""
    covered = {f for s in SCENARIOS.values() for f in s.files if "\n" not in f}
    with_pools = {rel(p) for p in MANIFESTS if any(
        d.get("kind") == "InferencePool" for _, d in load_documents(p))}
    assert with_pools <= covered, with_pools - covered


def test_the_scenarios_cover_every_release() -> None:
    assert {r for s in SCENARIOS.values() for r in s.releases} == set(RELEASES)
