"""Static discovery: pool membership from each InferencePool's selector, the pool's target
port for addresses without one, pods in no pool left out, and pods-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtraffic.balancer.config import ConfigError, load_resources
from llmtraffic.balancer.discovery import StaticDiscovery, assign_pools
from llmtraffic.contracts.store import Pod
from tests.balancer.conftest import POOL, SEED_FILES

TWO_POOLS = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferencePool
metadata: {name: alpha}
spec:
  selector: {app: llm, tier: gpu}
  targetPortNumber: 8000
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: beta}
spec:
  selector: {matchLabels: {app: small}}
  targetPorts: [{number: 9000}, {number: 9001}]
"""


@pytest.fixture
def two_pools(tmp_path: Path) -> str:
    path = tmp_path / "pools.yaml"
    path.write_text(TWO_POOLS)
    return str(path)


def by_name(pods: list[Pod]) -> dict[str, Pod]:
    return {p.name: p for p in pods}


def test_membership_comes_from_selectors(two_pools):
    res = load_resources([two_pools])
    pods = assign_pools([
        Pod("a1", "10.0.0.1", {"app": "llm", "tier": "gpu", "extra": "x"}),
        Pod("a-partial", "10.0.0.2", {"app": "llm"}),  # lacks tier=gpu
        Pod("b1", "10.0.0.3", {"app": "small"}),
        Pod("none", "10.0.0.4", {"app": "web"}),
        Pod("unlabelled", "10.0.0.5"),
    ], res)
    got = by_name(pods)
    assert set(got) == {"a1", "b1-rank-0", "b1-rank-1"}  # beta has two target ports
    assert got["a1"].pool == "alpha" and got["b1-rank-1"].pool == "beta"


def test_address_without_port_takes_the_pools_target_port(two_pools):
    res = load_resources([two_pools])
    got = by_name(assign_pools([
        Pod("a1", "10.0.0.1", {"app": "llm", "tier": "gpu"}),
        Pod("a2", "10.0.0.2:8123", {"app": "llm", "tier": "gpu"}),
        Pod("b1", "vllm-b1.ns.svc", {"app": "small"}),
        Pod("b6", "fd00::6", {"app": "small"}),
        Pod("b7", "[fd00::7]", {"app": "small"}),
        Pod("b8", "[fd00::8]:9100", {"app": "small"}),
    ], res))
    assert got["a1"].address == "10.0.0.1:8000"
    assert got["a2"].address == "10.0.0.2:8123"  # an explicit port wins
    # v1: one endpoint per target port, each its own entry (scraped on its own port)
    assert (got["b1-rank-0"].address, got["b1-rank-1"].address) == \
        ("vllm-b1.ns.svc:9000", "vllm-b1.ns.svc:9001")
    assert (got["b6-rank-0"].address, got["b6-rank-1"].address) == \
        ("[fd00::6]:9000", "[fd00::6]:9001")
    assert got["b7-rank-1"].address == "[fd00::7]:9001"
    assert got["b8"].address == "[fd00::8]:9100"  # an explicit port: that endpoint only


def test_an_explicit_pool_wins_over_labels(two_pools):
    res = load_resources([two_pools])
    got = by_name(assign_pools([
        Pod("pinned", "10.0.0.9", {"app": "llm", "tier": "gpu"}, pool="beta"),
        Pod("pinned-nowhere", "10.0.0.10", {"app": "llm", "tier": "gpu"}, pool="gamma"),
    ], res))
    assert set(got) == {"pinned-rank-0", "pinned-rank-1"}
    assert got["pinned-rank-0"].pool == "beta"
    assert got["pinned-rank-0"].address == "10.0.0.9:9000"


def test_static_discovery_with_the_seed_and_a_pods_file(tmp_path):
    pods_file = tmp_path / "pods.yaml"
    pods_file.write_text(f"""
pods:
- {{name: vllm-0, address: 10.1.0.1, labels: {{app: {POOL}}}}}
- {{name: vllm-1, address: "10.1.0.2:8001", labels: {{app: {POOL}}}}}
- {{name: grafana, address: 10.1.0.3, labels: {{app: grafana}}}}
""")
    extra = Pod("vllm-2", "10.1.0.4", {"app": POOL})
    d = StaticDiscovery(SEED_FILES, pods_file=str(pods_file), pods=[extra])
    view = d.view()
    assert list(view.resources.pools) == [POOL]
    got = {p.name: (p.address, p.pool) for p in view.pods}
    assert got == {"vllm-0": ("10.1.0.1:8000", POOL), "vllm-1": ("10.1.0.2:8001", POOL),
                   "vllm-2": ("10.1.0.4:8000", POOL)}


async def test_static_discovery_reports_no_changes():
    d = StaticDiscovery(SEED_FILES, pods=[Pod("vllm-0", "10.1.0.1", {"app": POOL})])
    seen = []
    await d.run(seen.append)  # returns: files do not change under a running balancer
    assert seen == [] and d.view().pods[0].address == "10.1.0.1:8000"


def test_no_pods_at_all_is_allowed():
    assert StaticDiscovery(SEED_FILES).view().pods == []


def test_pods_matching_no_pool_are_an_error_when_none_match():
    with pytest.raises(ConfigError) as e:
        StaticDiscovery(SEED_FILES, pods=[Pod("web", "10.0.0.1", {"app": "web"})])
    msg = str(e.value)
    assert "none of the 1 pods" in msg and f"app': '{POOL}" in msg


def test_pods_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="absent.yaml: pods file not found"):
        StaticDiscovery(SEED_FILES, pods_file=str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("pods:\n- {name: vllm-0, labels: {app: x}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: pods\[0\].*address"):
        StaticDiscovery(SEED_FILES, pods_file=str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("pods: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        StaticDiscovery(SEED_FILES, pods_file=str(broken))
