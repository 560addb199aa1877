"""prometheus/scrape.yml made runnable without a Kubernetes API server: every
`kubernetes_sd_configs` (role: pod) block becomes a `file_sd_configs` block whose targets
carry the `__meta_kubernetes_pod_*` labels Kubernetes discovery would give the listed pods,
so a local Prometheus (demo, end-to-end tests, Debian's promtool, which is built without
Kubernetes discovery) runs the real relabel rules unchanged."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
SCRAPE_CONFIG = REPO / "prometheus" / "scrape.yml"
RULES_DIR = REPO / "prometheus" / "rules"


@dataclass(frozen=True, slots=True)
class LocalPod:
    """A process on this machine standing in for a Kubernetes pod."""
    name: str
    namespace: str = "default"
    ip: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    #: container port name -> port number (a pod role target per port, as in Kubernetes)
    ports: dict[str, int] = field(default_factory=dict)
    phase: str = "Running"


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pod: LocalPod) -> list[dict[str, Any]]:
    """The target groups Kubernetes pod discovery yields for `pod` (one per container port;
    one bare-IP target when the pod declares none)."""
    meta = {
        "__meta_kubernetes_namespace": pod.namespace,
        "__meta_kubernetes_pod_name": pod.name,
        "__meta_kubernetes_pod_ip": pod.ip,
        "__meta_kubernetes_pod_phase": pod.phase,
        "__meta_kubernetes_pod_ready": "true" if pod.phase == "Running" else "false",
    }
    for key, value in pod.labels.items():
        meta[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
    for key, value in pod.annotations.items():
        meta[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = value
        meta[f"__meta_kubernetes_pod_annotationpresent_{_sanitize(key)}"] = "true"
    if not pod.ports:
        return [{"targets": [pod.ip], "labels": meta}]
    return [{"targets": [f"{pod.ip}:{port}"],
             "labels": {**meta, "__meta_kubernetes_pod_container_port_name": name,
                        "__meta_kubernetes_pod_container_port_number": str(port),
                        "__meta_kubernetes_pod_container_port_protocol": "TCP"}}
            for name, port in pod.ports.items()]


def _selected(pod: LocalPod, sd: dict[str, Any]) -> bool:
    names = (sd.get("namespaces") or {}).get("names")
    return not names or pod.namespace in names


def localize(config_text: str, pods: list[LocalPod], sd_dir: Path, *,
             scrape_interval: str | None = None, evaluation_interval: str | None = None,
             rules_dir: Path | None = RULES_DIR) -> str:
    """Return `config_text` with Kubernetes pod discovery replaced by file discovery of
    `pods` (files written under `sd_dir`), rule files pointing at `rules_dir` (None drops
    them) and, if given, shorter scrape/evaluation intervals."""
    config = yaml.safe_load(config_text)
    sd_dir.mkdir(parents=True, exist_ok=True)
    glob = config.setdefault("global", {})
    if scrape_interval:
        glob["scrape_interval"] = scrape_interval
        glob["scrape_timeout"] = scrape_interval
    if evaluation_interval:
        glob["evaluation_interval"] = evaluation_interval
    if rules_dir is None:
        config.pop("rule_files", None)
    else:
        config["rule_files"] = [str(Path(rules_dir).resolve() / Path(p).name)
                                for p in config.get("rule_files", [])]
    for job in config.get("scrape_configs", []):
        sds = job.pop("kubernetes_sd_configs", None)
        if sds is None:
            continue
        groups: list[dict[str, Any]] = []
        for sd in sds:
            if sd.get("role") != "pod":
                raise ValueError(f"job {job['job_name']!r}: only role: pod can be localized, "
                                 f"got role: {sd.get('role')!r}")
            groups += [g for pod in pods if _selected(pod, sd) for g in pod_targets(pod)]
        path = sd_dir / f"{_sanitize(job['job_name'])}.json"
        path.write_text(json.dumps(groups, indent=1))
        # absolute: Prometheus reads it relative to its working directory, not the config's
        job["file_sd_configs"] = [{"files": [str(path.resolve())], "refresh_interval": "1s"}]
    return yaml.safe_dump(config, sort_keys=False)
