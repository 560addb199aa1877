"""The balancer's resources as pydantic models: InferencePool (GIE v1alpha1 and v1),
InferenceModel and ASM's LLMRoute, loaded from YAML files into one `Resources` view.

Errors name the file, the document and the field:
`pool.yaml: document 2 (InferencePool 'x'): spec.targetPortNumber: ...`."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GIE_ALPHA = "inference.networking.x-k8s.io/v1alpha1"
GIE_V1 = "inference.networking.k8s.io/v1"
ASM_V1 = "istio.alibabacloud.com/v1"
Criticality = Literal["Critical", "Standard", "Sheddable"]


class ConfigError(ValueError):
    """A resource file that cannot be used; the message says where and what to do."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Metadata(_Spec):
    name: str = Field(min_length=1)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)


# ---- InferencePool ------------------------------------------------------------------------
class ExtensionRef(_Spec):
    group: str = ""
    kind: str = "Service"
    name: str
    port: int | None = Field(None, alias="portNumber")
    failure_mode: Literal["FailOpen", "FailClose"] = Field("FailClose", alias="failureMode")


class PoolSpecAlpha(_Spec):
    """v1alpha1: `selector` is a plain label map, one `targetPortNumber`."""

    selector: dict[str, str] = Field(min_length=1)
    target_port_number: int = Field(alias="targetPortNumber", ge=1, le=65535)
    extension_ref: ExtensionRef | None = Field(None, alias="extensionRef")


class LabelSelector(_Spec):
    match_labels: dict[str, str] = Field(alias="matchLabels", min_length=1)


class Port(_Spec):
    number: int = Field(ge=1, le=65535)


class EndpointPickerRef(_Spec):
    group: str = ""
    kind: str = "Service"
    name: str
    port: Port | None = None
    failure_mode: Literal["FailOpen", "FailClose"] = Field("FailClose", alias="failureMode")


class PoolSpecV1(_Spec):
    """v1 (GA): `selector.matchLabels`, a list of `targetPorts`."""

    selector: LabelSelector
    target_ports: list[Port] = Field(alias="targetPorts", min_length=1, max_length=8)
    endpoint_picker_ref: EndpointPickerRef | None = Field(None, alias="endpointPickerRef")


# ---- InferenceModel -----------------------------------------------------------------------
class TargetModel(_Spec):
    name: str = Field(min_length=1)
    weight: int | None = Field(None, ge=0, le=1_000_000)


class PoolRef(_Spec):
    group: str = "inference.networking.x-k8s.io"
    kind: str = "InferencePool"
    name: str = Field(min_length=1)


class ModelSpec(_Spec):
    model_name: str = Field(alias="modelName", min_length=1)
    criticality: Criticality = "Standard"
    target_models: list[TargetModel] = Field(default_factory=list, alias="targetModels",
                                             max_length=10)
    pool_ref: PoolRef = Field(alias="poolRef")

    @model_validator(mode="after")
    def _weights_on_all_or_none(self) -> "ModelSpec":
        given = [t.weight is not None for t in self.target_models]
        if any(given) and not all(given):
            raise ValueError("targetModels: set `weight` on every target or on none")
        if all(given) and self.target_models and sum(t.weight or 0 for t in
                                                     self.target_models) == 0:
            raise ValueError("targetModels: weights add up to 0; give at least one a "
                             "positive weight")
        return self


# ---- LLMRoute -----------------------------------------------------------------------------
class BackendRef(_Spec):
    group: str = "inference.networking.x-k8s.io"
    kind: str = "InferencePool"
    name: str = Field(min_length=1)


class BackendRefEntry(_Spec):
    backend_ref: BackendRef = Field(alias="backendRef")
    weight: int = Field(1, ge=0)


class RouteRule(_Spec):
    backend_refs: list[BackendRefEntry] = Field(alias="backendRefs", min_length=1)


class RouteSpec(_Spec):
    gateways: list[str] = Field(default_factory=list)
    host: str = Field(min_length=1)
    rules: list[RouteRule] = Field(min_length=1)


# ---- normalized view ----------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Pool:
    """An InferencePool of either API version."""

    name: str
    namespace: str
    selector: dict[str, str]
    target_ports: tuple[int, ...]
    api_version: str
    failure_mode: str = "FailClose"

    @property
    def target_port(self) -> int:
        return self.target_ports[0]

    def selects(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector.items())


@dataclass(slots=True, frozen=True)
class Model:
    """An InferenceModel: the name clients send, its criticality, and the weighted split."""

    name: str  # metadata.name
    namespace: str
    model_name: str
    criticality: str
    pool: str
    targets: tuple[tuple[str, int], ...]  # (target model, weight)

    def pick_target(self, rng: random.Random) -> str:
        """A target model by weight; the model itself when no targets are listed."""
        if not self.targets:
            return self.model_name
        total = sum(w for _, w in self.targets)
        x = rng.random() * total
        for name, w in self.targets:
            x -= w
            if x < 0:
                return name
        return self.targets[-1][0]


@dataclass(slots=True, frozen=True)
class Route:
    """An LLMRoute: requests for `host` go to `pools` (by weight)."""

    name: str
    namespace: str
    host: str
    gateways: tuple[str, ...]
    pools: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class Resources:
    """Every pool, model and route the balancer serves, with lookups."""

    pools: dict[str, Pool] = field(default_factory=dict)
    models: dict[tuple[str, str], Model] = field(default_factory=dict)  # (pool, modelName)
    routes: dict[str, Route] = field(default_factory=dict)  # host (lower case) -> route

    def pool_for_host(self, host: str | None) -> Pool | None:
        """The pool serving `host` (port ignored). With no LLMRoutes at all, the only pool
        serves every host; None when nothing matches."""
        if not self.routes:
            return next(iter(self.pools.values())) if len(self.pools) == 1 else None
        name = (host or "").rsplit(":", 1)[0].lower() if not (host or "").startswith("[") \
            else (host or "").lower()
        route = self.routes.get(name) or self.routes.get("*")
        if route is None:
            return None
        return self.pools.get(route.pools[0][0])

    def model(self, pool: str, model_name: str) -> Model | None:
        return self.models.get((pool, model_name))

    def models_in(self, pool: str) -> list[Model]:
        return [m for (p, _), m in self.models.items() if p == pool]

    def check(self) -> list[str]:
        """References that point nowhere (warnings: a pool may arrive later in a cluster)."""
        out = []
        for m in self.models.values():
            if m.pool not in self.pools:
                out.append(f"InferenceModel {m.name!r}: poolRef {m.pool!r} names no "
                           "InferencePool")
        for r in self.routes.values():
            for p, _ in r.pools:
                if p not in self.pools:
                    out.append(f"LLMRoute {r.name!r}: backendRef {p!r} names no InferencePool")
        return out


# ---- loading ------------------------------------------------------------------------------
def _where(e: ValidationError, root: str) -> str:
    """Each error as `root.field.path: message` (the path as written in the YAML)."""
    parts = []
    for err in e.errors():
        loc = ".".join([root, *(str(x) for x in err["loc"])])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_resource(doc: dict[str, Any], where: str = "") -> Pool | Model | Route | None:
    """One Kubernetes-style object -> Pool / Model / Route; None for kinds we do not read.
    Raises ConfigError naming `where`, the kind, the object and the field."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind not in ("InferencePool", "InferenceModel", "LLMRoute"):
        return None
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"),
                                                                     dict) else "?"
    prefix = f"{where}{kind} {name!r}"
    try:
        meta = Metadata.model_validate(doc.get("metadata") or {})
    except ValidationError as e:
        raise ConfigError(f"{prefix}: {_where(e, 'metadata')}") from None
    try:
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            raise ConfigError(f"{prefix}: `spec` is missing or not a mapping")
        if kind == "InferencePool":
            return _pool(meta, spec, api, prefix)
        if kind == "InferenceModel":
            s = ModelSpec.model_validate(spec)
            return Model(meta.name, meta.namespace, s.model_name, s.criticality,
                         s.pool_ref.name,
                         tuple((t.name, 1 if t.weight is None else t.weight)
                               for t in s.target_models))
        s = RouteSpec.model_validate(spec)
        pools = tuple((b.backend_ref.name, b.weight) for r in s.rules for b in r.backend_refs
                      if b.backend_ref.kind == "InferencePool")
        if not pools:
            raise ConfigError(f"{prefix}: spec.rules: no backendRef of kind InferencePool")
        return Route(meta.name, meta.namespace, s.host.lower(), tuple(s.gateways), pools)
    except ValidationError as e:
        raise ConfigError(f"{prefix}: {_where(e, 'spec')}") from None


def _pool(meta: Metadata, spec: dict, api: str | None, prefix: str) -> Pool:
    if api == GIE_V1:
        s = PoolSpecV1.model_validate(spec)
        fm = s.endpoint_picker_ref.failure_mode if s.endpoint_picker_ref else "FailClose"
        return Pool(meta.name, meta.namespace, dict(s.selector.match_labels),
                    tuple(p.number for p in s.target_ports), GIE_V1, fm)
    if api in (GIE_ALPHA, "inference.networking.x-k8s.io/v1alpha2", None):
        a = PoolSpecAlpha.model_validate(spec)
        fm = a.extension_ref.failure_mode if a.extension_ref else "FailClose"
        return Pool(meta.name, meta.namespace, dict(a.selector), (a.target_port_number,),
                    api or GIE_ALPHA, fm)
    raise ConfigError(f"{prefix}: apiVersion {api!r} is not supported; use {GIE_ALPHA} or "
                      f"{GIE_V1}")


def load_documents(path: str | Path) -> list[tuple[str, dict]]:
    """(where, document) for each mapping in a multi-document YAML file."""
    p = Path(path)
    try:
        docs = list(yaml.safe_load_all(p.read_text()))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    out = []
    for i, d in enumerate(docs, 1):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: document {i}: expected a mapping with kind/apiVersion, "
                              f"got {type(d).__name__}")
        if d.get("kind") == "List" and isinstance(d.get("items"), list):
            out += [(f"{p}: document {i} item {j}: ", x) for j, x in enumerate(d["items"], 1)]
        else:
            out.append((f"{p}: document {i} ", d))
    return out


def build_resources(objects: Iterable[Pool | Model | Route | None]) -> Resources:
    """Index parsed objects; a second object with the same key replaces the first."""
    res = Resources()
    for o in objects:
        if isinstance(o, Pool):
            res.pools[o.name] = o
        elif isinstance(o, Model):
            res.models[(o.pool, o.model_name)] = o
        elif isinstance(o, Route):
            res.routes[o.host] = o
    return res


def load_resources(paths: Iterable[str | Path]) -> Resources:
    """Every InferencePool, InferenceModel and LLMRoute in the files (other kinds, such as
    the seed's Deployment and Service, are skipped)."""
    objects = []
    for path in paths:
        for where, doc in load_documents(path):
            objects.append(parse_resource(doc, where))
    res = build_resources(objects)
    if not res.pools:
        raise ConfigError("no InferencePool found in " + ", ".join(str(p) for p in paths)
                          + ": give at least one (e.g. deploy/seed/inferencepool.yaml)")
    return res
