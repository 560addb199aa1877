"""deploy/: every manifest parses; kustomizations reference files that exist (and `kubectl
kustomize` builds them when kubectl is installed); selectors, ports and probes line up;
every container of ours is locked down; the Role grants exactly what balancer/kube.py
watches; the CRDs serve exactly the groups, versions and kinds balancer/config.py reads and
accept what it accepts; the monitoring copies equal their sources."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import jsonschema
import pytest
import yaml

from llmtraffic.balancer.config import (ASM_BETA, ASM_V1, GIE_ALPHA, GIE_ALPHA2, GIE_V1,
    ConfigError, parse_resource)
from llmtraffic.balancer.kube import WATCHED

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OURS = ("balancer",)  # directories whose workloads we own (seed/ is the guide's, unchanged)
#: the ways to collect the mesh gateway's access log: one is applied, never both, and neither
#: is in deploy/kustomization.yaml
ALTERNATIVES = (DEPLOY / "istio", DEPLOY / "node-logs")
#: YAML under deploy/ that configures a program rather than the cluster
NOT_KUBERNETES = (DEPLOY / "monitoring/prometheus", DEPLOY / "envoy",
                  DEPLOY / "istio/meshconfig.yaml")
#: copy in deploy/ -> source it must equal
COPIES = {
    DEPLOY / "monitoring/prometheus/scrape.yml": REPO / "prometheus/scrape.yml",
    **{DEPLOY / "monitoring/prometheus/rules" / p.name: p
       for p in sorted((REPO / "prometheus/rules").glob("*.yml"))},
    **{DEPLOY / "monitoring/dashboards" / p.name: p
       for p in sorted((REPO / "dashboards/k8s").glob("*.yaml"))},
}


Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=None)
def load(path: Path) -> tuple[Any, ...]:
    """The documents of one YAML file (parsed once per run; callers must not mutate)."""
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=Loader) if d is not None)


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def manifest_files() -> list[Path]:
    """Files of Kubernetes objects (not kustomizations, not Prometheus or Envoy configs)."""
    return [p for p in yaml_files() if p.name != "kustomization.yaml"
            and p not in NOT_KUBERNETES and not any(d in p.parents for d in NOT_KUBERNETES)]


def objects(where: Path | None = None) -> list[dict[str, Any]]:
    files = [p for p in manifest_files() if where is None or where in p.parents]
    return [d for p in files for d in load(p)]


def of_kind(kind: str, where: Path | None = None) -> list[dict[str, Any]]:
    return [o for o in objects(where) if o["kind"] == kind]


def our_workloads() -> list[dict[str, Any]]:
    return [o for d in OURS for o in of_kind("Deployment", DEPLOY / d)]


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def port_of(container: dict, ref: int | str) -> dict | None:
    return next((p for p in container.get("ports", ())
                 if ref in (p.get("name"), p["containerPort"])), None)


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def referenced_files(k: Path) -> Iterator[Path]:
    """Every file a kustomization pulls in, following directories."""
    (spec,) = load(k)
    for r in spec.get("resources", ()):
        target = k.parent / r
        if target.is_dir():
            yield target / "kustomization.yaml"
            yield from referenced_files(target / "kustomization.yaml")
        else:
            yield target
    for gen in spec.get("configMapGenerator", ()):
        for f in gen.get("files", ()):
            yield k.parent / f.split("=", 1)[-1]


# ---- parsing and kustomize --------------------------------------------------------------
def test_every_yaml_parses_and_every_object_is_named() -> None:
    assert len(yaml_files()) >= 20
    for p in yaml_files():
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        assert docs and docs == list(load(p)), p
    for o in objects():
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o


@pytest.mark.parametrize("k", kustomizations(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomization_references_exist_under_its_root(k: Path) -> None:
    for f in referenced_files(k):
        assert f.is_file(), f"{k.relative_to(REPO)} references missing {f}"
        assert k.parent in f.resolve().parents, f"{f} is outside {k.parent} (kustomize " \
            "refuses files above the kustomization root)"


def test_every_manifest_is_in_the_top_level_kustomization_or_an_alternative() -> None:
    top = {f.resolve() for f in referenced_files(DEPLOY / "kustomization.yaml")}
    alternatives = [{f.resolve() for f in referenced_files(d / "kustomization.yaml")}
                    for d in ALTERNATIVES]
    assert set(manifest_files()) <= top.union(*alternatives)
    for alt in alternatives:  # the ways to collect the gateway's log are never applied together
        assert not alt & top


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_everything() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.load_all(out.stdout, Loader=Loader) if d]
    top = [d for p in manifest_files() if not any(a in p.parents for a in ALTERNATIVES)
           for d in load(p)]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in built) == \
        sorted([(o["kind"], o["metadata"]["name"]) for o in top] + [
            ("ConfigMap", "llmtraffic-prometheus-config"),
            ("ConfigMap", "llmtraffic-prometheus-rules")])
    maps = {o["metadata"]["name"]: o["data"] for o in built if o["kind"] == "ConfigMap"}
    assert maps["llmtraffic-prometheus-config"] == {
        "prometheus.yml": (REPO / "prometheus/scrape.yml").read_text()}
    assert maps["llmtraffic-prometheus-rules"] == {
        p.name: p.read_text() for p in (REPO / "prometheus/rules").glob("*.yml")}
    ours = [o for o in built if o["kind"] not in ("InferencePool", "InferenceModel",
                                                   "LLMRoute")
            and not o["metadata"]["name"].startswith("vllm-")]
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "llmtraffic"
               for o in ours)


@pytest.mark.parametrize("copy", sorted(COPIES), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_monitoring_copies_equal_their_sources(copy: Path) -> None:
    source = COPIES[copy]
    assert copy.is_file() and copy.read_bytes() == source.read_bytes(), \
        f"deploy copy out of date: cp {source.relative_to(REPO)} {copy.relative_to(REPO)}"


def test_no_copy_is_missing_or_stale() -> None:
    present = {p for p in (DEPLOY / "monitoring").rglob("*") if p.suffix in (".yml", ".yaml")
               and p.name != "kustomization.yaml"}
    assert present == set(COPIES)


# ---- workloads --------------------------------------------------------------------------
def test_selectors_match_pod_template_labels() -> None:
    workloads = of_kind("Deployment") + of_kind("DaemonSet")
    assert {w["metadata"]["name"] for w in workloads} == {
        "llmtraffic-balancer", "llmtraffic-exporter", "llmtraffic-node-exporter",
        "vllm-llama2-7b-pool"}
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), w
    for kind in ("Service", "PodDisruptionBudget"):
        for s in of_kind(kind):
            sel = s["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            matched = [w for w in workloads
                       if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
            assert len(matched) == 1, (kind, s["metadata"]["name"])


def test_balancer_deployment_shape() -> None:
    (w,) = our_workloads()
    assert w["spec"]["replicas"] == 2
    spec = w["spec"]["template"]["spec"]
    (sa,) = of_kind("ServiceAccount", DEPLOY / "balancer")
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is True
    assert [c["name"] for c in containers(w)] == ["balancer", "exporter"]
    assert all(c["image"] == "ghcr.io/llmtraffic/llmtraffic:0.1.0" for c in containers(w))


def test_service_target_ports_are_container_ports() -> None:
    for s in of_kind("Service"):
        (w,) = [w for w in of_kind("Deployment") if s["spec"]["selector"].items()
                <= w["spec"]["template"]["metadata"]["labels"].items()]
        for port in s["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(port_of(c, target) for c in containers(w)), (s["metadata"]["name"],
                                                                     target)


def test_container_args_are_real_flags_and_agree_with_ports_and_volumes() -> None:
    from llmtraffic.cli import build_parser

    parser = build_parser()
    (w,) = our_workloads()
    by_name = {c["name"]: c for c in containers(w)}
    args = {n: parser.parse_args(c["command"][1:] + c.get("args", []))
            for n, c in by_name.items()}
    bal, exp = args["balancer"], args["exporter"]
    assert (bal.command, bal.kubernetes, bal.mode) == ("balancer", True, "proxy")
    assert exp.command == "exporter" and exp.access_log == [bal.access_log]
    assert exp.format == "json"
    for name, listen in (("balancer", bal.listen), ("exporter", exp.listen)):
        host, port = listen.rsplit(":", 1)
        assert host == "0.0.0.0" and port_of(by_name[name], int(port)), (name, listen)
    volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}

    def volume_for(container: str, path: str) -> str:
        mounts = [m for m in by_name[container]["volumeMounts"]
                  if Path(path).is_relative_to(m["mountPath"])]
        assert mounts, (container, path)
        return max(mounts, key=lambda m: len(m["mountPath"]))["name"]

    shared = volume_for("balancer", bal.access_log)
    assert shared == volume_for("exporter", bal.access_log) and "emptyDir" in volumes[shared]
    assert "emptyDir" in volumes[volume_for("exporter", exp.positions)]


def test_prometheus_scrapes_the_balancer_and_not_the_sidecar() -> None:
    """The llmtraffic job keeps pods by app.kubernetes.io/name and the container port
    named `metrics`: exactly the balancer container's (the sidecar repeats its token totals)."""
    (config,) = load(DEPLOY / "monitoring/prometheus/scrape.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "llmtraffic")
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"]
            if r.get("action") == "keep"}
    (w,) = our_workloads()
    name = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    assert re.fullmatch(keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)], name)
    scraped = [(c["name"], p["containerPort"]) for c in containers(w) for p in c["ports"]
               if re.fullmatch(keep[("__meta_kubernetes_pod_container_port_name",)],
                               p["name"])]
    assert scraped == [("balancer", 8080)]


def test_every_container_has_probes_on_its_own_ports_and_requests() -> None:
    for w in of_kind("Deployment") + of_kind("DaemonSet"):
        for c in containers(w):
            for probe in ("livenessProbe", "readinessProbe"):
                get = c[probe]["httpGet"]
                assert port_of(c, get["port"]), (c["name"], probe)
            assert c["resources"]["requests"], c["name"]
    for w in our_workloads():
        for c in containers(w):
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert "memory" in c["resources"].get("limits", {}), c["name"]


async def test_probe_paths_answer_200(tmp_path) -> None:
    """The balancer's probe paths are routes of its app; the exporter, started for real,
    answers its probe paths with 200."""
    from llmtraffic.balancer.discovery import StaticDiscovery
    from llmtraffic.balancer.proxy import BalancerApp, ProxyOptions
    from llmtraffic.exporter.app import ExporterApp, ExporterOptions

    (w,) = our_workloads()
    by_name = {c["name"]: c for c in containers(w)}
    paths = {n: {c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
             for n, c in by_name.items()}
    seed = sorted(str(p) for p in (DEPLOY / "seed").glob("*.yaml"))
    app = BalancerApp(StaticDiscovery(seed), ProxyOptions()).app()
    routes = {r.resource.canonical for r in app.router.routes() if r.method == "GET"}
    assert paths["balancer"] == {"/health", "/ready"} and paths["balancer"] <= routes
    exporter = ExporterApp(ExporterOptions(access_logs=[str(tmp_path / "access.log")],
                                           listen="127.0.0.1:0"))
    await exporter.start()
    try:
        async with aiohttp.ClientSession() as s:
            for path in paths["exporter"]:
                async with s.get(f"http://127.0.0.1:{exporter.port}{path}") as r:
                    assert r.status == 200, path
    finally:
        await exporter.stop()


def test_our_pods_run_locked_down() -> None:
    for w in our_workloads():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert all("hostPath" not in v for v in pod.get("volumes", ()))
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert not sc.get("privileged") and sc.get("runAsNonRoot", True) is True


# ---- RBAC -------------------------------------------------------------------------------
def test_rbac_grants_exactly_what_discovery_lists_and_watches() -> None:
    assert not of_kind("ClusterRole") and not of_kind("ClusterRoleBinding")
    (role,) = of_kind("Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    watched = {(w.group, w.resource, v) for w in WATCHED for v in w.verbs}
    assert granted == watched
    assert {v for _, _, v in granted} == {"list", "watch"}
    (binding,) = of_kind("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    (w,) = our_workloads()
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": w["spec"]["template"][
        "spec"]["serviceAccountName"]}]


# ---- CRDs -------------------------------------------------------------------------------
def crds() -> list[dict]:
    return of_kind("CustomResourceDefinition")


def test_crds_serve_exactly_the_watched_groups_versions_and_kinds() -> None:
    served = set()
    for crd in crds():
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        assert spec["scope"] == "Namespaced"
        assert sum(v["storage"] for v in spec["versions"]) == 1
        served |= {(spec["group"], v["name"], spec["names"]["plural"], spec["names"]["kind"])
                   for v in spec["versions"] if v["served"]}
    assert served == {(w.group, w.version, w.resource, w.kind) for w in WATCHED if w.group}
    assert {f"{g}/{v}" for g, v, _, _ in served} == {GIE_ALPHA, GIE_ALPHA2, GIE_V1, ASM_V1,
                                                      ASM_BETA}


def schema_for(api_version: str, kind: str) -> dict:
    group, version = api_version.split("/")
    for crd in crds():
        if (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind):
            (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            return v["schema"]["openAPIV3Schema"]
    raise AssertionError(f"no CRD for {api_version} {kind}")


V1_POOL = {"apiVersion": GIE_V1, "kind": "InferencePool", "metadata": {"name": "p"},
           "spec": {"selector": {"matchLabels": {"app": "p"}}, "targetPorts": [{"number": 8000}],
                    "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}}
SEED_CRS = [d for p in sorted((DEPLOY / "seed").glob("*.yaml")) for d in load(p)
            if d["kind"] in ("InferencePool", "InferenceModel", "LLMRoute")]
#: The kinds and versions GIE v1.x and ASM's documentation add to the seed's
NEWER_CRS = [
    {**SEED_CRS[0], "apiVersion": GIE_ALPHA2}, {**SEED_CRS[1], "apiVersion": GIE_ALPHA2},
    {"apiVersion": GIE_ALPHA2, "kind": "InferenceObjective", "metadata": {"name": "batch"},
     "spec": {"priority": -1, "poolRef": {"name": "p"}}},
    {"apiVersion": GIE_ALPHA2, "kind": "InferenceModelRewrite", "metadata": {"name": "canary"},
     "spec": {"poolRef": {"name": "p"}, "rules": [
         {"matches": [{"model": {"value": "m"}}],
          "targets": [{"modelRewrite": "m-v1", "weight": 90},
                      {"modelRewrite": "m-v2", "weight": 10}]},
         {"targets": [{"modelRewrite": "base"}]}]}},
    {"apiVersion": ASM_BETA, "kind": "LLMRoute", "metadata": {"name": "mixed"},
     "spec": {"host": "llm.example", "rules": [
         {"name": "vip", "matches": [{"headers": {"user-type": {"exact": "subscriber"}}}],
          "backendRefs": [{"providerHost": "dashscope.aliyuncs.com"}]},
         {"backendRefs": [{"backendRef": {"name": "p"}, "weight": 3},
                          {"providerHost": "dashscope.aliyuncs.com", "weight": 1}]}]}},
]


def _broken(doc: dict, path: str, value: Any) -> dict:
    import copy

    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


REJECTED = [
    _broken(SEED_CRS[0], "spec.criticality", "Urgent"),
    _broken(SEED_CRS[1], "spec.targetPortNumber", 70000),
    _broken(V1_POOL, "spec.targetPorts", []),
    _broken(SEED_CRS[2], "spec.rules", []),
    _broken(NEWER_CRS[3], "spec.rules", [{"targets": []}]),
    _broken(NEWER_CRS[2], "spec.poolRef", {}),
]


@pytest.mark.parametrize("doc", SEED_CRS + [V1_POOL] + NEWER_CRS,
                         ids=lambda d: f"{d['kind']}-{d['apiVersion']}")
def test_the_crd_schemas_and_the_parser_accept_the_same_objects(doc: dict) -> None:
    jsonschema.validate(doc, schema_for(doc["apiVersion"], doc["kind"]))
    assert parse_resource(doc) is not None


@pytest.mark.parametrize("doc", REJECTED, ids=["criticality", "port", "no-ports", "no-rules",
                                               "no-rewrite-targets", "objective-no-pool"])
def test_the_crd_schemas_and_the_parser_reject_the_same_objects(doc: dict) -> None:
    assert [d["kind"] for d in SEED_CRS] == ["InferenceModel", "InferencePool", "LLMRoute"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema_for(doc["apiVersion"], doc["kind"]))
    with pytest.raises(ConfigError):
        parse_resource(doc)


# ---- the gateway's access log, tokens counted once --------------------------------------
def _exporters() -> list[dict]:
    return [w for w in of_kind("Deployment") + of_kind("DaemonSet")
            if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name")
            == "llmtraffic-exporter"]


def test_tokens_are_counted_from_the_exporters_and_nothing_else() -> None:
    """The llmtraffic job scrapes each exporter workload's `metrics` port and drops the
    balancer's asm_llm_proxy_* (metric_relabel_configs join source labels with ';'); the
    balancer's sidecar is not scraped (test above)."""
    (config,) = load(DEPLOY / "monitoring/prometheus/scrape.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "llmtraffic")
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"]
            if r.get("action") == "keep"}
    exporters = _exporters()
    assert {w["kind"] for w in exporters} == {"Deployment", "DaemonSet"}
    for w in exporters:
        name = w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        assert re.fullmatch(keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)], name)
        (c,) = containers(w)
        assert [p["containerPort"] for p in c["ports"] if re.fullmatch(
            keep[("__meta_kubernetes_pod_container_port_name",)], p["name"])] == [9100]
    (drop,) = [r for r in job["metric_relabel_configs"] if r["action"] == "drop"]
    assert drop["source_labels"] == ["component", "__name__"]
    for component, metric, dropped in (
            ("llmtraffic-balancer", "asm_llm_proxy_prompt_tokens_total", True),
            ("llmtraffic-balancer", "asm_llm_proxy_requests_total", True),
            ("llmtraffic-balancer", "llmtraffic_balancer_prompt_tokens_total", False),
            ("llmtraffic-exporter", "asm_llm_proxy_prompt_tokens_total", False)):
        assert bool(re.fullmatch(drop["regex"], f"{component};{metric}")) is dropped


def test_exporter_workloads_take_their_flags_and_the_mesh_points_at_them() -> None:
    from llmtraffic.cli import build_parser
    from llmtraffic.exporter.cri import origin_of

    parser = build_parser()
    args = {w["kind"]: parser.parse_args(containers(w)[0]["command"][1:]
                                         + containers(w)[0]["args"]) for w in _exporters()}
    receiver, node = args["Deployment"], args["DaemonSet"]
    (svc,) = [s for s in of_kind("Service") if s["metadata"]["name"] == "llmtraffic-exporter"]
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert receiver.otlp_grpc_listen.endswith(f":{ports['otlp-grpc']}")
    assert receiver.als_listen.endswith(f":{ports['als']}")
    assert receiver.otlp_http_listen.endswith(f":{ports['otlp-http']}")
    (glob,) = node.access_log
    kubelet_name = ("/var/log/containers/istio-ingressgateway-7d9f-x2k_istio-system_istio-proxy-"
                    + "ab" * 32 + ".log")
    assert Path(kubelet_name).match(glob) and origin_of(kubelet_name).namespace == "istio-system"
    assert node.positions.startswith("/var/lib/llmtraffic-exporter/")
    (mesh,) = load(DEPLOY / "istio/meshconfig.yaml")
    providers = {p["name"]: p for p in mesh["spec"]["meshConfig"]["extensionProviders"]}
    otel, als = providers["llmtraffic-otel"]["envoyOtelAls"], \
        providers["llmtraffic-als"]["envoyHttpAls"]
    assert otel["service"].startswith("llmtraffic-exporter.") and otel["port"] == ports["otlp-grpc"]
    assert als["service"] == otel["service"] and als["port"] == ports["als"]
    (telemetry,) = load(DEPLOY / "istio/telemetry.yaml")
    used = {p["name"] for a in telemetry["spec"]["accessLogging"] for p in a["providers"]}
    assert used <= set(providers)
    assert telemetry["spec"]["selector"]["matchLabels"] == {"istio": "ingressgateway"}


def test_every_otel_label_is_read_by_the_default_mapping() -> None:
    """The attributes Istio sends (the provider's labels) are keys the exporter reads."""
    from llmtraffic.exporter.accesslog import FieldMapping

    (mesh,) = load(DEPLOY / "istio/meshconfig.yaml")
    (otel,) = [p["envoyOtelAls"] for p in mesh["spec"]["meshConfig"]["extensionProviders"]
               if "envoyOtelAls" in p]
    read = {k for keys in FieldMapping.preset().keys.values() for k in keys}
    assert set(otel["logFormat"]["labels"]) <= read


def test_the_node_reader_is_locked_down_but_for_reading_the_node_logs() -> None:
    """Root only to read kubelet's 0640 files: every capability dropped, no escalation,
    read-only root filesystem, /var/log mounted read-only; the one writable host path holds
    the positions."""
    (ds,) = of_kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    (c,) = containers(ds)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and not sc.get("privileged")
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {"varlog": "/var/log", "state": "/var/lib/llmtraffic-exporter"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["varlog"]["readOnly"] is True and not mounts["state"].get("readOnly")
    (receiver,) = [w for w in _exporters() if w["kind"] == "Deployment"]
    rpod = receiver["spec"]["template"]["spec"]
    assert rpod["securityContext"]["runAsNonRoot"] is True
    assert all("hostPath" not in v for v in rpod["volumes"])
    assert containers(receiver)[0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_balancer_rotates_its_access_log_within_its_volume() -> None:
    from llmtraffic.cli import build_parser

    (w,) = our_workloads()
    bal = next(c for c in containers(w) if c["name"] == "balancer")
    args = build_parser().parse_args(bal["command"][1:] + bal["args"])
    volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
    limit = volumes["access-log"]["emptyDir"]["sizeLimit"]
    assert limit.endswith("Gi")
    most = args.access_log_max_bytes * (args.access_log_keep + 1)
    assert 0 < most <= int(limit[:-2]) * 2**30 // 2
