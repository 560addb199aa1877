"""The pods file (`pods: [{name, address, labels, pool?, namespace?}]`) and pod URLs, read
into `Pod`s the same way by every command."""

from __future__ import annotations

from pathlib import Path

import yaml

from llmtraffic.contracts.store import Pod

#: What `--pods-file` means, to every command that takes it.
PODS_FILE_HELP = (
    "YAML `pods: [{name, address, labels, pool?}]`. A pod's pool is its `pool`, else the "
    "first InferencePool whose selector matches its labels; an address without a port "
    "takes that pool's target port (a command that reads no InferencePools, the exporter, "
    "needs host:port)")


def pods_from_urls(urls: list[str]) -> list[Pod]:
    out = []
    for u in urls:
        addr = u.split("://", 1)[-1].rstrip("/")
        out.append(Pod(name=addr, address=addr))
    return out


def pods_from_file(path: str) -> list[Pod]:
    """The pods file: `pods: [{name, address, labels, pool?, namespace?}]`; ValueError
    names the file (and the entry) when it cannot be read or an entry lacks an address."""
    if not Path(path).exists():
        raise ValueError(f"{path}: pods file not found; give a YAML file with "
                         "`pods: [{name, address, labels}]`")
    try:
        doc = yaml.safe_load(open(path)) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the pods file: {e}") from None
    out = []
    for i, p in enumerate(doc.get("pods") or []):
        if not isinstance(p, dict) or "address" not in p:
            raise ValueError(f"{path}: pods[{i}]: each pod needs an `address` (host:port)")
        out.append(Pod(name=str(p.get("name", p["address"])), address=str(p["address"]),
                       labels=dict(p.get("labels") or {}), pool=str(p.get("pool", "")),
                       namespace=str(p.get("namespace", "default"))))
    return out


def has_port(address: str) -> bool:
    """`host:port` or `[v6]:port`, not a bare host or IPv6 address."""
    if address.startswith("["):
        return "]:" in address
    return ":" in address and address.count(":") == 1


def require_ports(pods: list[Pod], path: str) -> list[Pod]:
    """The pods file read without InferencePools: every address needs its port."""
    for p in pods:
        if not has_port(p.address):
            raise ValueError(f"{path}: pod {p.name} ({p.address}) has no port: without an "
                             "InferencePool to take a target port from, write host:port")
    return pods
