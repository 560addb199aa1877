"""The pods file (`pods: [{name, address, labels, pool?, namespace?}]`) and pod URLs, read
into `Pod`s the same way by every command."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from llmtraffic.contracts.store import Pod

log = logging.getLogger(__name__)

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
        doc = yaml.safe_load(open(path))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the pods file: {e}") from None
    if not isinstance(doc, dict) or set(doc) != {"pods"}:
        found = ", ".join(f"`{k}:`" for k in doc) if isinstance(doc, dict) and doc else \
            "nothing"
        raise ValueError(f"{path}: a pods file has one key, `pods:` (a list of "
                         f"{{name, address, labels}}); found {found}")
    out = []
    for i, p in enumerate(doc["pods"] or []):
        if not isinstance(p, dict) or "address" not in p:
            raise ValueError(f"{path}: pods[{i}]: each pod needs an `address` (host:port)")
        problem = address_problem(str(p["address"]))
        if problem:
            raise ValueError(f"{path}: pods[{i}]: address {p['address']!r}: {problem}")
        out.append(Pod(name=str(p.get("name", p["address"])), address=str(p["address"]),
                       labels=dict(p.get("labels") or {}), pool=str(p.get("pool", "")),
                       namespace=str(p.get("namespace", "default"))))
    return out


def address_problem(address: str) -> str | None:
    """What is wrong with `host`, `host:port` or `[v6]:port`; None when it is usable."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else rest)
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, None
    if not host:
        return "no host; write host:port, e.g. 10.0.0.5:8000"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "the port must be a number from 1 to 65535"
    return None


def has_port(address: str) -> bool:
    """`host:port` or `[v6]:port`, not a bare host or IPv6 address."""
    if address.startswith("["):
        return "]:" in address
    return ":" in address and address.count(":") == 1


def require_ports(pods: list[Pod], path: str) -> list[Pod]:
    """The pods file read without InferencePools: every address needs its port, and a pod
    without `pool:` is said once (its pod and pool series carry `pool=""`)."""
    for p in pods:
        if not has_port(p.address):
            raise ValueError(f"{path}: pod {p.name} ({p.address}) has no port: without an "
                             "InferencePool to take a target port from, write host:port")
    unpooled = [p.name for p in pods if not p.pool]
    if unpooled:
        log.warning("%s: %d pods have no `pool:` (%s): without InferencePools their pool is "
                    "unknown here, so their pod and pool series carry pool=\"\"; add `pool: "
                    "<InferencePool name>` to each", path, len(unpooled),
                    ", ".join(unpooled[:5]) + (", ..." if len(unpooled) > 5 else ""))
    return pods
