"""`balancer --check`'s report: a table no wider than 100 columns or JSON, exit 0 when the
routing is usable and 1 (with the reason) when it is not, whatever the source."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from llmtraffic.balancer.check import WIDTH, run_check
from llmtraffic.balancer.config import ConfigError
from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.options import BalancerOptions
from tests.balancer.conftest import POOL, SEED_FILES
from tests.fixtures.fake_apiserver import (RELEASES, FakeApiServer, discovery_for, pod,
    use_kubeconfig)

PODS = f"""
pods:
- {{name: vllm-0, address: 10.1.0.1, labels: {{app: {POOL}}}}}
- {{name: vllm-with-a-rather-long-name-that-needs-room-0, address: "10.1.0.2:8001",
   labels: {{app: {POOL}}}}}
"""


def check(make, output: str = "table") -> tuple[int, str]:
    out = io.StringIO()
    return run_check(make, output, out), out.getvalue()


@pytest.fixture
def pods_file(tmp_path: Path) -> str:
    path = tmp_path / "pods.yaml"
    path.write_text(PODS)
    return str(path)


def test_the_seed_as_a_table(pods_file: str) -> None:
    status, text = check(lambda: StaticDiscovery(SEED_FILES, pods_file))
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == "llmtraffic balancer --check: OK"
    assert max(len(line) for line in lines) <= WIDTH
    assert "test.com -> vllm-llama2-7b-pool" in text
    assert "10.1.0.1:8000" in text and "10.1.0.2:8001" in text
    row = next(line for line in lines if line.lstrip().startswith("tweet-summary"))
    assert row.split()[:6] == ["tweet-summary", "tweet-summary", "100%", "Critical", "1",
                               "InferenceModel"]
    assert "SKIPPED" in text and "Deployment x1, Service x1" in text


def test_the_seed_as_json(pods_file: str) -> None:
    status, text = check(lambda: StaticDiscovery(SEED_FILES, pods_file), "json")
    report = json.loads(text)
    assert status == 0 and report["ok"] is True and report["errors"] == []
    assert report["hosts"] == [{"host": "test.com", "route": "test-llm-route",
                                "pools": [{"pool": POOL, "weight": 1}],
                                "rules": [{"rule": "rules[0]", "when": "every request",
                                           "external": [], "pools": [
                                               {"pool": POOL, "weight": 1, "share": 100.0}]}]}]
    assert report["queue"] is None  # no front end's options given
    (pool,) = report["pools"]
    assert [(e["address"], e["ready"]) for e in pool["endpoints"]] == [
        ("10.1.0.1:8000", True), ("10.1.0.2:8001", True)]
    assert pool["models"] == [{"model": "tweet-summary", "criticality": "Critical",
                               "priority": 1, "source": "InferenceModel inferencemodel-sample",
                               "targets": [{"model": "tweet-summary", "weight": 100,
                                            "share": 100.0}]}]


def test_a_broken_file_fails_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\n"
                   "metadata: {name: p}\nspec: {selector: {app: a}, targetPortNumber: 0}\n")
    status, text = check(lambda: StaticDiscovery([str(bad)]))
    assert status == 1
    assert "FAILED" in text.splitlines()[0]
    assert "bad.yaml" in text and "spec.targetPortNumber" in text


def test_a_pool_without_ready_pods_is_a_warning_not_an_error() -> None:
    status, text = check(lambda: StaticDiscovery(SEED_FILES))
    assert status == 0
    assert "no ready endpoint" in text and "(none)" in text


def test_an_error_from_the_source_fails() -> None:
    def boom():
        raise ConfigError("give --config FILE… or --kubernetes")

    status, text = check(boom, "json")
    assert status == 1 and json.loads(text)["errors"] == ["give --config FILE… or --kubernetes"]


def test_kubernetes_invalid_objects_and_an_unreachable_api_fail() -> None:
    fake = FakeApiServer(served=RELEASES["v1.0"]).start()
    try:
        fake.apply({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                    "metadata": {"name": "ga"}, "spec": {"selector": {"matchLabels": {
                        "app": "ga"}}, "targetPorts": [{"number": 8000}]}})
        fake.apply(pod("ga-0", "10.0.0.1", {"app": "ga"}))
        status, text = check(lambda: discovery_for(fake))
        assert status == 0 and "10.0.0.1:8000" in text
        fake.apply({"apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                    "kind": "InferenceObjective", "metadata": {"name": "bad"},
                    "spec": {"priority": 1}})
        status, text = check(lambda: discovery_for(fake))
        assert status == 1 and "'bad'" in text and "poolRef" in text
    finally:
        fake.go_away()
    status, text = check(lambda: discovery_for(fake))
    assert status == 1 and "did not answer" in text


def test_the_command_with_files_and_with_kubernetes(capsys, pods_file, tmp_path,
                                                    monkeypatch) -> None:
    from llmtraffic.cli import main

    assert main(["balancer", "--check", "--config", *SEED_FILES, "--pods-file",
                 pods_file]) == 0
    assert capsys.readouterr().out.startswith("llmtraffic balancer --check: OK\n")
    assert main(["balancer", "--check", "--output", "json", "--config", *SEED_FILES]) == 0
    assert json.loads(capsys.readouterr().out)["pools"][0]["endpoints"] == []
    assert main(["balancer", "--check"]) == 1  # nothing to load
    assert "--config" in capsys.readouterr().out

    fake = FakeApiServer(served=RELEASES["v1.3"]).start()
    try:
        fake.apply({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                    "metadata": {"name": "ga", "namespace": "team"},
                    "spec": {"selector": {"matchLabels": {"app": "ga"}},
                             "targetPorts": [{"number": 3000}, {"number": 3002}]}})
        fake.apply(pod("ga-0", "10.0.0.1", {"app": "ga"}, namespace="team"))
        use_kubeconfig(fake, tmp_path / "kubeconfig", monkeypatch, "team")
        assert main(["balancer", "--check", "--kubernetes", "--output", "json"]) == 0
    finally:
        fake.go_away()
    (pool,) = json.loads(capsys.readouterr().out)["pools"]
    assert [e["address"] for e in pool["endpoints"]] == ["10.0.0.1:3000", "10.0.0.1:3002"]


ROUTES = f"""
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {{name: split}}
spec:
  host: split.example
  rules:
  - name: vip
    matches: [{{headers: {{user-type: {{exact: subscriber}}}}}}]
    backendRefs: [{{providerHost: dashscope.aliyuncs.com}}]
  - backendRefs:
    - {{backendRef: {{name: {POOL}}}, weight: 3}}
    - {{backendRef: {{name: other}}, weight: 1}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {{name: other}}
spec: {{selector: {{app: other}}, targetPortNumber: 8000}}
"""


def test_route_rules_pool_weights_and_the_queue_are_shown(pods_file: str,
                                                          tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    files = SEED_FILES + [str(routes)]
    out = io.StringIO()
    status = run_check(lambda: StaticDiscovery(files, pods_file), "table", out,
                       BalancerOptions(max_queued=7, queue_timeout=30))
    text = out.getvalue()
    assert status == 0 and max(len(line) for line in text.splitlines()) <= WIDTH
    assert "rule vip: user-type exact 'subscriber' -> providerHost dashscope.aliyuncs.com" \
        in text
    assert f"rule rules[1]: every request -> {POOL} (75%), other (25%)" in text
    assert "ADMISSION QUEUE" in text and "at most 7 waiting over all pools, 30 s each" in text
    out = io.StringIO()
    run_check(lambda: StaticDiscovery(files, pods_file), "json", out,
              BalancerOptions(policy="round-robin"))
    report = json.loads(out.getvalue())
    assert report["queue"]["max_queued"] == 0  # round-robin does not judge saturation
    (split,) = [h for h in report["hosts"] if h["host"] == "split.example"]
    assert [(r["rule"], r["when"], r["external"]) for r in split["rules"]] == [
        ("vip", "user-type exact 'subscriber'", ["dashscope.aliyuncs.com"]),
        ("rules[1]", "every request", [])]
    assert split["rules"][1]["pools"] == [{"pool": POOL, "weight": 3, "share": 75.0},
                                          {"pool": "other", "weight": 1, "share": 25.0}]
