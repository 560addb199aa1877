"""The pods file (`pods: [{name, address, labels, pool?, namespace?}]`) and pod URLs, read
into `Pod`s the same way by every command."""

from __future__ import annotations

import yaml

from llmtraffic.contracts.store import Pod


def pods_from_urls(urls: list[str]) -> list[Pod]:
    out = []
    for u in urls:
        addr = u.split("://", 1)[-1].rstrip("/")
        out.append(Pod(name=addr, address=addr))
    return out


def pods_from_file(path: str) -> list[Pod]:
    """The balancer's pods file: `pods: [{name, address, labels, pool?, namespace?}]`."""
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
