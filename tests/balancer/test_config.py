"""Resource files: the seed's YAML loads unchanged, GIE v1 pools load, and every error names
the file, the document and the field."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import yaml

from llmtraffic.balancer.config import (GIE_ALPHA, GIE_V1, ConfigError, Model, load_documents,
                             load_resources, parse_resource)
from tests.balancer.conftest import POOL, SEED_DIR, SEED_FILES

ROUTE = """
apiVersion: istio.alibabacloud.com/v1
kind: LLMRoute
metadata: {name: r}
spec:
  host: Test.COM
  rules: [{backendRefs: [{backendRef: {name: p}}]}]
"""


def write(tmp_path: Path, text: str, name: str = "res.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(tmp_path: Path, text: str, name: str = "res.yaml") -> str:
    with pytest.raises(ConfigError) as e:
        load_resources([write(tmp_path, text, name)])
    return str(e.value)


# ---- the seed -----------------------------------------------------------------------------
def test_seed_files_load_unchanged():
    assert {Path(p).name for p in SEED_FILES} >= {"inferencepool.yaml", "inferencemodel.yaml",
                                                  "llmroute.yaml", "vllm-deployment.yaml"}
    res = load_resources(SEED_FILES)  # the Service and Deployment are skipped, not errors
    assert list(res.pools) == [POOL]
    pool = res.pools[POOL]
    assert pool.selector == {"app": POOL}
    assert pool.target_ports == (8000,) and pool.target_port == 8000
    assert pool.api_version == GIE_ALPHA
    model = res.model(POOL, "tweet-summary")
    assert model is not None
    assert (model.name, model.criticality, model.pool) == ("inferencemodel-sample", "Critical",
                                                           POOL)
    assert model.targets == (("tweet-summary", 100),)
    route = res.routes["test.com"]
    assert route.gateways == ("llm-inference-gateway",)
    assert route.pools == ((POOL, 1),)
    assert res.check() == []


def test_seed_route_serves_its_host_only():
    res = load_resources(SEED_FILES)
    assert res.pool_for_host("test.com").name == POOL
    assert res.pool_for_host("TEST.com:80").name == POOL  # case and port do not matter
    assert res.pool_for_host("other.com") is None
    assert res.pool_for_host(None) is None


def test_seed_deployment_labels_match_the_pool_selector():
    docs = list(yaml.safe_load_all((SEED_DIR / "vllm-deployment.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert load_resources(SEED_FILES).pools[POOL].selects(labels)


# ---- GIE v1 ------------------------------------------------------------------------------
def test_v1_pool_with_match_labels_and_target_ports(tmp_path):
    path = write(tmp_path, """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: v1pool, namespace: llm}
spec:
  selector:
    matchLabels: {app: vllm, tier: gpu}
  targetPorts: [{number: 8001}, {number: 8002}]
  endpointPickerRef: {name: epp, port: {number: 9002}, failureMode: FailOpen}
""" + "---" + ROUTE.replace("name: p}", "name: v1pool}"))
    res = load_resources([path])
    pool = res.pools["v1pool"]
    assert pool.api_version == GIE_V1
    assert pool.namespace == "llm"
    assert pool.selector == {"app": "vllm", "tier": "gpu"}
    assert pool.target_ports == (8001, 8002) and pool.target_port == 8001
    assert pool.failure_mode == "FailOpen"
    assert pool.selects({"app": "vllm", "tier": "gpu", "x": "y"})
    assert not pool.selects({"app": "vllm"})
    assert res.pool_for_host("test.com").name == "v1pool"


def test_v1_pool_with_an_alpha_style_selector_names_match_labels(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: v1pool}
spec:
  selector: {app: vllm}
  targetPorts: [{number: 8000}]
""", "v1.yaml")
    assert "v1.yaml" in msg and "document 1" in msg and "'v1pool'" in msg
    assert "selector.matchLabels" in msg


def test_v1_pool_without_target_ports(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: v1pool}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: []
""")
    assert "targetPorts" in msg


# ---- errors name the file, the document and the field ------------------------------------
def test_missing_target_port_number(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferencePool
metadata: {name: good}
spec: {selector: {app: a}, targetPortNumber: 8000}
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferencePool
metadata: {name: broken}
spec:
  selector: {app: b}
""", "pools.yaml")
    assert "pools.yaml" in msg
    assert "document 2" in msg
    assert "InferencePool 'broken'" in msg
    assert "spec.targetPortNumber" in msg


def test_target_port_out_of_range(tmp_path):
    msg = error_of(tmp_path, """
kind: InferencePool
apiVersion: inference.networking.x-k8s.io/v1alpha1
metadata: {name: p}
spec: {selector: {app: a}, targetPortNumber: 70000}
""")
    assert "spec.targetPortNumber" in msg and "65535" in msg


def test_weights_on_some_targets_but_not_all(tmp_path):
    msg = error_of(tmp_path, f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferencePool
metadata: {{name: p}}
spec: {{selector: {{app: a}}, targetPortNumber: 8000}}
---
# a comment between documents
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {{name: half-weighted}}
spec:
  modelName: m
  poolRef: {{name: p}}
  targetModels:
  - {{name: a, weight: 10}}
  - {{name: b}}
""", "models.yaml")
    assert "models.yaml" in msg
    assert "document 3" in msg
    assert "InferenceModel 'half-weighted'" in msg
    assert "targetModels" in msg and "weight" in msg


def test_weights_adding_up_to_zero(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {name: zero}
spec:
  modelName: m
  poolRef: {name: p}
  targetModels: [{name: a, weight: 0}, {name: b, weight: 0}]
""")
    assert "'zero'" in msg and "add up to 0" in msg


def test_unknown_criticality_names_the_field(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {name: urgent}
spec: {modelName: m, criticality: Urgent, poolRef: {name: p}}
""")
    assert "InferenceModel 'urgent'" in msg
    assert "spec.criticality" in msg and "Sheddable" in msg


def test_unknown_api_version(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v9
kind: InferencePool
metadata: {name: future}
spec: {selector: {app: a}, targetPortNumber: 8000}
""", "future.yaml")
    assert "future.yaml" in msg and "document 1" in msg and "'future'" in msg
    assert "inference.networking.x-k8s.io/v9" in msg
    assert GIE_V1 in msg and GIE_ALPHA in msg  # says what to use instead


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    msg = error_of(tmp_path, "kind: InferencePool\nspec: {selector: [unclosed\n", "bad.yaml")
    assert "bad.yaml" in msg and "not valid YAML" in msg
    assert "line 2" in msg or "line 3" in msg


def test_a_document_that_is_not_a_mapping(tmp_path):
    msg = error_of(tmp_path, "- just\n- a list\n", "list.yaml")
    assert "list.yaml" in msg and "document 1" in msg and "mapping" in msg


def test_missing_spec_and_missing_name(tmp_path):
    msg = error_of(tmp_path, "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
                   "kind: InferencePool\nmetadata: {name: nospec}\n")
    assert "'nospec'" in msg and "spec" in msg
    msg = error_of(tmp_path, "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
                   "kind: InferencePool\nmetadata: {}\nspec: {selector: {a: b}, "
                   "targetPortNumber: 1}\n")
    assert "metadata.name" in msg


def test_route_without_an_inference_pool_backend(tmp_path):
    msg = error_of(tmp_path, ROUTE.replace("backendRef: {name: p}",
                                           "backendRef: {kind: Service, name: svc}"))
    assert "LLMRoute 'r'" in msg and "backendRef" in msg and "InferencePool" in msg


def test_missing_file_and_no_pool(tmp_path):
    with pytest.raises(ConfigError, match="absent.yaml: cannot read"):
        load_resources([str(tmp_path / "absent.yaml")])
    msg = error_of(tmp_path, ROUTE, "route-only.yaml")
    assert "no InferencePool found" in msg and "route-only.yaml" in msg


# ---- what loads ---------------------------------------------------------------------------
def test_list_kind_items_and_other_kinds(tmp_path):
    path = write(tmp_path, """
apiVersion: v1
kind: List
items:
- apiVersion: inference.networking.x-k8s.io/v1alpha1
  kind: InferencePool
  metadata: {name: p}
  spec: {selector: {app: a}, targetPortNumber: 8000}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
""")
    assert list(load_resources([path]).pools) == ["p"]
    assert parse_resource({"kind": "Service", "apiVersion": "v1"}) is None


def test_dangling_references_are_warnings(tmp_path):
    path = write(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferencePool
metadata: {name: p}
spec: {selector: {app: a}, targetPortNumber: 8000}
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {name: orphan}
spec: {modelName: m, poolRef: {name: elsewhere}}
""" + "---" + ROUTE.replace("name: p}", "name: nowhere}"))
    warnings = load_resources([path]).check()
    assert any("orphan" in w and "elsewhere" in w for w in warnings)
    assert any("'r'" in w and "nowhere" in w for w in warnings)


def test_hosts_without_routes():
    one = load_resources([SEED_DIR / "inferencepool.yaml"])
    assert one.pool_for_host("anything.example").name == POOL  # the only pool serves all


def test_weighted_targets_split_by_weight():
    m = Model("mix", "default", "mix", "Standard", "p",
              (("a", 3), ("b", 1), ("never", 0)))
    rng = random.Random(1)
    picks = [m.pick_target(rng) for _ in range(4000)]
    assert "never" not in picks
    assert 0.72 < picks.count("a") / len(picks) < 0.78
    plain = Model("m", "default", "m", "Standard", "p", ())
    assert plain.pick_target(rng) == "m"


def test_targets_without_weights_split_evenly(tmp_path):
    path = write(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {name: even}
spec:
  modelName: even
  poolRef: {name: p}
  targetModels: [{name: a}, {name: b}]
""")
    (where, doc), = load_documents(path)
    model = parse_resource(doc, where)
    assert isinstance(model, Model) and model.targets == (("a", 1), ("b", 1))


# ---- GIE v1 kinds, ASM v1beta1, nulls, and what is not read --------------------------------
POOL_P = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferencePool
metadata: {name: p}
spec: {selector: {app: a}, targetPortNumber: 8000}
---
"""


def test_null_maps_and_lists_read_as_empty(tmp_path):
    res = load_resources([write(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferencePool
metadata: {name: p, labels: null, namespace: null}
spec: {selector: {app: a}, targetPortNumber: 8000, extensionRef: null}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: m}
spec: {modelName: m, targetModels: null, criticality: null, poolRef: {name: p}}
""")])
    assert res.pools["p"].namespace == "default" and res.pools["p"].api_version == \
        "inference.networking.x-k8s.io/v1alpha2"
    m = res.model("p", "m")
    assert (m.targets, m.criticality, m.priority) == ((), "Standard", 0)


def test_objective_priority_or_its_release_candidates_criticality(tmp_path):
    path = write(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: explicit}
spec: {priority: -3, criticality: Critical, poolRef: {name: p}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: rc}
spec: {criticality: Sheddable, poolRef: {name: p}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: unset}
spec: {poolRef: {name: p}, targetModels: [{name: t, weight: 1}]}
""")
    got = {o.name: o for o in (parse_resource(d, w) for w, d in load_documents(path))}
    assert {n: o.priority for n, o in got.items()} == {"explicit": -3, "rc": -1, "unset": 0}
    assert "targetModels is not read" in str(got["unset"].skipped[0])


def test_rewrite_precedence_exact_then_oldest_then_rule_order(tmp_path):
    res = load_resources([write(tmp_path, POOL_P + """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: newer, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  poolRef: {name: p}
  rules:
  - matches: [{model: {value: a}}]
    targets: [{modelRewrite: a-newer}]
  - targets: [{modelRewrite: fallback-newer}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: older, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  poolRef: {name: p}
  rules:
  - targets: [{modelRewrite: fallback-older}]
  - matches: [{model: {value: a}}, {model: {value: b}}]
    targets: [{modelRewrite: a-older, weight: 3}, {modelRewrite: a-older-2, weight: 1}]
  - matches: [{model: {value: b}}]
    targets: [{modelRewrite: b-second-rule}]
""")])
    assert res.resolve("p", "a").targets == (("a-older", 3), ("a-older-2", 1))
    assert res.resolve("p", "b").targets == (("a-older", 3), ("a-older-2", 1))
    other = res.resolve("p", "anything")
    assert (other.targets, other.model_name, other.name) == ((("fallback-older", 1),),
                                                             "anything", "older")
    assert res.resolve("elsewhere", "a") is None


def test_a_rewrite_rule_with_no_targets_is_refused(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: empty}
spec: {poolRef: {name: p}, rules: [{targets: []}]}
""")
    assert "InferenceModelRewrite 'empty'" in msg and "spec.rules.0.targets" in msg


def test_objective_at_an_unknown_version_names_the_ones_read(tmp_path):
    msg = error_of(tmp_path, """
apiVersion: inference.networking.k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: typo}
spec: {poolRef: {name: p}}
""")
    assert "'typo'" in msg and "inference.networking.x-k8s.io/v1alpha2" in msg


def test_provider_hosts_and_mesh_only_match_rules_are_skipped_once_with_the_reason(
        tmp_path, caplog):
    """Header matches are evaluated (the rule is kept); sourceLabels and gateways only the
    mesh can judge (the rule is left to it)."""
    caplog.set_level(logging.INFO, logger="llmtraffic.balancer.config")
    path = write(tmp_path, POOL_P + """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: r}
spec:
  host: llm.example
  rules:
  - name: vip
    matches: [{headers: {user-type: {exact: subscriber}}}]
    backendRefs: [{backendRef: {name: p}}]
  - name: sidecar
    matches: [{sourceLabels: {app: sleep}}, {gateways: [mesh]}]
    backendRefs: [{backendRef: {name: p}}]
  - backendRefs: [{providerHost: dashscope.aliyuncs.com}, {backendRef: {name: p}, weight: 2}]
---
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: external-only}
spec:
  host: dashscope.aliyuncs.com
  rules: [{backendRefs: [{providerHost: dashscope.aliyuncs.com}]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: y}
""")
    res = load_resources([path])
    route = res.routes["llm.example"]
    assert [(r.name, r.describe(), r.pools, r.external) for r in route.rules] == [
        ("vip", "user-type exact 'subscriber'", (("p", 1),), ()),
        ("rules[2]", "every request", (("p", 2),), ("dashscope.aliyuncs.com",))]
    assert route.pools == (("p", 1),)  # each pool once
    assert "dashscope.aliyuncs.com" not in res.routes  # nothing in-cluster to serve it
    said = caplog.messages
    assert sum("providerHost dashscope.aliyuncs.com" in m and "'r'" in m for m in said) == 1
    assert not any("rule 'vip'" in m for m in said)
    assert sum("rule 'sidecar'" in m and "matches on gateways, sourceLabels" in m
               for m in said) == 1
    assert sum("'external-only': no in-cluster InferencePool" in m for m in said) == 1
    assert [m for m in said if "not read" in m] == [
        f"{path}: not read (kinds llmtraffic does not route by): ConfigMap x1, HTTPRoute x1"]


def test_a_backend_ref_needs_a_name_or_a_provider_host_not_both(tmp_path):
    msg = error_of(tmp_path, ROUTE.replace("backendRef: {name: p}",
                                           "backendRef: {name: p}, providerHost: x.com"))
    assert "LLMRoute 'r'" in msg and "providerHost" in msg
