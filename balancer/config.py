"""The balancer's resources as pydantic models: InferencePool (GIE v1alpha1, v1alpha2, v1),
InferenceModel, InferenceObjective, InferenceModelRewrite and ASM's LLMRoute (v1, v1beta1),
loaded from YAML files into one `Resources` view (`balancer.resources`).

Errors name the file, the document and the field:
`pool.yaml: document 2 (InferencePool 'x'): spec.targetPortNumber: ...`."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmtraffic.balancer.resources import (CRITICALITY_PRIORITY, HeaderMatch, Model,
    Objective, Pool, Resources, Rewrite, RewriteRule, Route, RouteRule, Skipped)

__all__ = ["ConfigError", "Model", "Objective", "Pool", "Resources", "Rewrite", "Route",
           "Skipped", "build_resources", "load_documents", "load_resources", "parse_resource"]

log = logging.getLogger(__name__)

GIE_ALPHA = "inference.networking.x-k8s.io/v1alpha1"
GIE_ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"
GIE_V1 = "inference.networking.k8s.io/v1"
ASM_V1 = "istio.alibabacloud.com/v1"
ASM_BETA = "istio.alibabacloud.com/v1beta1"
Criticality = Literal["Critical", "Standard", "Sheddable"]

#: Every kind the balancer reads, at the apiVersions it reads, newest first within each API
#: group: Kubernetes discovery watches the newest of them the API server serves.
API_VERSIONS: dict[str, tuple[str, ...]] = {
    "InferencePool": (GIE_V1, GIE_ALPHA2, GIE_ALPHA),
    "InferenceModel": (GIE_ALPHA2, GIE_ALPHA),
    "InferenceObjective": (GIE_ALPHA2,),
    "InferenceModelRewrite": (GIE_ALPHA2,),
    "LLMRoute": (ASM_V1, ASM_BETA),
}


class ConfigError(ValueError):
    """A resource file that cannot be used; the message says where and what to do."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """A field written as null (`labels:` with nothing after it, which Kubernetes
        accepts) reads as not given: maps and lists are then empty."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class Metadata(_Spec):
    name: str = Field(min_length=1)
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str = Field("", alias="creationTimestamp")


# ---- InferencePool ------------------------------------------------------------------------
class ExtensionRef(_Spec):
    group: str = ""
    kind: str = "Service"
    name: str
    port: int | None = Field(None, alias="portNumber")
    failure_mode: Literal["FailOpen", "FailClose"] = Field("FailClose", alias="failureMode")


class PoolSpecAlpha(_Spec):
    """v1alpha1 and v1alpha2: `selector` is a plain label map, one `targetPortNumber`."""

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


# ---- InferenceModel, InferenceObjective, InferenceModelRewrite ----------------------------
def _weights_on_all_or_none(weights: list[int | None], field_name: str) -> None:
    given = [w is not None for w in weights]
    if any(given) and not all(given):
        raise ValueError(f"{field_name}: set `weight` on every target or on none")
    if weights and all(given) and sum(w or 0 for w in weights) == 0:
        raise ValueError(f"{field_name}: weights add up to 0; give at least one a positive "
                         "weight")


def _weighted(pairs: Iterable[tuple[str, int | None]]) -> tuple[tuple[str, int], ...]:
    """(target, weight) with an unset weight as 1 (targets without weights split evenly)."""
    return tuple((name, 1 if w is None else w) for name, w in pairs)


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
    def _check_weights(self) -> "ModelSpec":
        _weights_on_all_or_none([t.weight for t in self.target_models], "targetModels")
        return self


class ObjectiveSpec(_Spec):
    """InferenceObjective (GIE >= v1.0): a priority for the requests that name it. Its
    release candidates wrote a `criticality` instead (read as the matching priority) and
    some had `targetModels` (not read: an InferenceModelRewrite splits traffic)."""

    priority: int | None = None  # unset reads as 0
    criticality: Criticality | None = None
    pool_ref: PoolRef = Field(alias="poolRef")
    target_models: list[dict[str, Any]] = Field(default_factory=list, alias="targetModels")


class ModelMatch(_Spec):
    type: Literal["Exact"] = "Exact"
    value: str = Field(min_length=1)


class RewriteMatch(_Spec):
    model: ModelMatch


class RewriteTarget(_Spec):
    model_rewrite: str = Field(alias="modelRewrite", min_length=1)
    weight: int | None = Field(None, ge=1, le=1_000_000)


class RewriteRuleSpec(_Spec):
    matches: list[RewriteMatch] = Field(default_factory=list)  # none: every model
    targets: list[RewriteTarget] = Field(default_factory=list, min_length=1)  # none: kept

    @model_validator(mode="after")
    def _check_weights(self) -> "RewriteRuleSpec":
        _weights_on_all_or_none([t.weight for t in self.targets], "targets")
        return self


class RewriteSpec(_Spec):
    """InferenceModelRewrite (GIE >= v1.2): rules mapping model names to weighted targets."""

    pool_ref: PoolRef = Field(alias="poolRef")
    rules: list[RewriteRuleSpec]


# ---- LLMRoute -----------------------------------------------------------------------------
class BackendRef(_Spec):
    group: str = "inference.networking.x-k8s.io"
    kind: str = "InferencePool"
    name: str = Field(min_length=1)


class BackendRefEntry(_Spec):
    """v1: `backendRef`; v1beta1 also `providerHost` (an external model provider)."""

    backend_ref: BackendRef | None = Field(None, alias="backendRef")
    provider_host: str | None = Field(None, alias="providerHost", min_length=1)
    weight: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _one_destination(self) -> "BackendRefEntry":
        if (self.backend_ref is None) == (self.provider_host is None):
            raise ValueError("give either `backendRef` or `providerHost`")
        return self


class StringMatch(_Spec):
    """Istio's StringMatch: one of exact, prefix, regex; none given means "present"."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "StringMatch":
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of exact, prefix, regex (got {', '.join(given)})")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"regex {self.regex!r} does not compile: {e}") from None
        return self

    def header(self, name: str) -> HeaderMatch:
        for kind in ("exact", "prefix", "regex"):
            v = getattr(self, kind)
            if v is not None:
                return HeaderMatch(name.lower(), kind, v,
                                   re.compile(v) if kind == "regex" else None)
        return HeaderMatch(name.lower(), "present")


class RequestMatch(_Spec):
    """LLMRequestMatch: header conditions (all must hold); sourceLabels and gateways, which
    only the mesh can judge, are kept to say why such a rule is left to it."""

    headers: dict[str, StringMatch] = Field(default_factory=dict)
    source_labels: dict[str, str] = Field(default_factory=dict, alias="sourceLabels")
    gateways: list[str] = Field(default_factory=list)
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def unjudged(self) -> list[str]:
        """The condition kinds llmtraffic cannot evaluate (it does not see the client's
        labels or which gateway a request came through), by their YAML names."""
        out = ["sourceLabels"] if self.source_labels else []
        out += ["gateways"] if self.gateways else []
        return out + sorted(self.model_extra or {})


class RouteRuleSpec(_Spec):
    name: str = ""
    matches: list[RequestMatch] = Field(default_factory=list)
    backend_refs: list[BackendRefEntry] = Field(alias="backendRefs", min_length=1)


class RouteSpec(_Spec):
    gateways: list[str] = Field(default_factory=list)
    host: str = Field(min_length=1)
    rules: list[RouteRuleSpec] = Field(min_length=1)


# ---- loading ------------------------------------------------------------------------------
def _where(e: ValidationError, root: str) -> str:
    """Each error as `root.field.path: message` (the path as written in the YAML)."""
    parts = []
    for err in e.errors():
        loc = ".".join([root, *(str(x) for x in err["loc"])])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


Parsed = Pool | Model | Objective | Rewrite | Route


def parse_resource(doc: dict[str, Any], where: str = "") -> Parsed | None:
    """One Kubernetes-style object -> its normalized form; None for kinds we do not read.
    Raises ConfigError naming `where`, the kind, the object and the field."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind not in API_VERSIONS:
        return None
    meta_doc = doc.get("metadata")
    name = meta_doc.get("name", "?") if isinstance(meta_doc, dict) else "?"
    prefix = f"{where}{kind} {name!r}"
    if api is not None and api not in API_VERSIONS[kind]:
        raise ConfigError(f"{prefix}: apiVersion {api!r} is not supported; use "
                          + " or ".join(API_VERSIONS[kind]))
    try:
        meta = Metadata.model_validate(meta_doc or {})
    except ValidationError as e:
        raise ConfigError(f"{prefix}: {_where(e, 'metadata')}") from None
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError(f"{prefix}: `spec` is missing or not a mapping")
    try:
        return _PARSERS[kind](meta, spec, api or API_VERSIONS[kind][-1], prefix)
    except ValidationError as e:
        raise ConfigError(f"{prefix}: {_where(e, 'spec')}") from None


def _pool(meta: Metadata, spec: dict, api: str, prefix: str) -> Pool:
    if api == GIE_V1:
        s = PoolSpecV1.model_validate(spec)
        fm = s.endpoint_picker_ref.failure_mode if s.endpoint_picker_ref else "FailClose"
        return Pool(meta.name, meta.namespace, dict(s.selector.match_labels),
                    tuple(p.number for p in s.target_ports), GIE_V1, fm)
    a = PoolSpecAlpha.model_validate(spec)
    fm = a.extension_ref.failure_mode if a.extension_ref else "FailClose"
    return Pool(meta.name, meta.namespace, dict(a.selector), (a.target_port_number,), api, fm)


def _model(meta: Metadata, spec: dict, api: str, prefix: str) -> Model:
    s = ModelSpec.model_validate(spec)
    return Model(meta.name, meta.namespace, s.model_name, s.criticality, s.pool_ref.name,
                 _weighted((t.name, t.weight) for t in s.target_models),
                 CRITICALITY_PRIORITY[s.criticality])


def _objective(meta: Metadata, spec: dict, api: str, prefix: str) -> Objective:
    s = ObjectiveSpec.model_validate(spec)
    priority = s.priority if s.priority is not None else \
        CRITICALITY_PRIORITY[s.criticality or "Standard"]
    skipped = (Skipped(f"InferenceObjective {meta.name!r}", "spec.targetModels is not read "
                       "(a GIE v1.0 release-candidate field): split traffic with an "
                       "InferenceModelRewrite", True),) if s.target_models else ()
    return Objective(meta.name, meta.namespace, s.pool_ref.name, priority, skipped)


def _rewrite(meta: Metadata, spec: dict, api: str, prefix: str) -> Rewrite:
    s = RewriteSpec.model_validate(spec)
    rules = tuple(RewriteRule(tuple(m.model.value for m in r.matches),
                              _weighted((t.model_rewrite, t.weight) for t in r.targets))
                  for r in s.rules)
    return Rewrite(meta.name, meta.namespace, s.pool_ref.name, rules, meta.creation_timestamp)


def _route(meta: Metadata, spec: dict, api: str, prefix: str) -> Route:
    """The route's rules in order, each with its header matches and InferencePool backends;
    external providers (`providerHost`), other kinds of backend and rules matching on what
    only the mesh sees (sourceLabels, gateways) are left to the mesh and listed."""
    s = RouteSpec.model_validate(spec)
    what = f"LLMRoute {meta.name!r}"
    rules, skipped, others = [], [], 0
    for i, rule in enumerate(s.rules):
        name = rule.name or f"rules[{i}]"
        label = f"{what} rule {rule.name!r}" if rule.name else f"{what} rules[{i}]"
        unjudged = sorted({k for m in rule.matches for k in m.unjudged()})
        if unjudged:
            skipped.append(Skipped(label, f"matches on {', '.join(unjudged)}, which only the "
                                   "mesh can evaluate: the rule is left to the mesh", True))
            continue
        pools, external = [], []
        for b in rule.backend_refs:
            if b.provider_host is not None:
                external.append(b.provider_host)
                skipped.append(Skipped(label, f"providerHost {b.provider_host} is an external "
                                       "model provider; llmtraffic serves in-cluster "
                                       "InferencePools"))
            elif b.backend_ref is not None and b.backend_ref.kind == "InferencePool":
                pools.append((b.backend_ref.name, b.weight))
            elif b.backend_ref is not None:
                others += 1
                skipped.append(Skipped(label, f"backendRef {b.backend_ref.kind} "
                                       f"{b.backend_ref.name!r} is not an InferencePool", True))
        matches = tuple(tuple(sm.header(h) for h, sm in m.headers.items())
                        for m in rule.matches)
        rules.append(RouteRule(name, matches, tuple(p for p in pools if p[1] > 0),
                               tuple(external)))
    every: dict[str, int] = {}  # each pool once, with its first rule's weight
    for r in rules:
        for p, w in r.pools:
            every.setdefault(p, w)
    if not every and others:
        raise ConfigError(f"{prefix}: spec.rules: no backendRef of kind InferencePool")
    return Route(meta.name, meta.namespace, s.host.lower(), tuple(s.gateways),
                 tuple(every.items()), tuple(skipped), tuple(rules))


_PARSERS = {"InferencePool": _pool, "InferenceModel": _model,
            "InferenceObjective": _objective, "InferenceModelRewrite": _rewrite,
            "LLMRoute": _route}


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


def build_resources(objects: Iterable[Parsed | None]) -> Resources:
    """Index parsed objects; a second object with the same key replaces the first. A route
    left with no InferencePool backend serves nothing and is listed in `skipped`."""
    res = Resources()
    rewrites: dict[str, Rewrite] = {}
    for o in objects:
        if isinstance(o, Pool):
            res.pools[o.name] = o
        elif isinstance(o, Model):
            res.models[(o.pool, o.model_name)] = o
        elif isinstance(o, Objective):
            res.objectives[(o.pool, o.name)] = o
            res.skipped += o.skipped
        elif isinstance(o, Rewrite):
            rewrites[o.name] = o
        elif isinstance(o, Route):
            res.skipped += o.skipped
            if o.pools:
                res.routes[o.host] = o
            else:
                res.skipped.append(Skipped(f"LLMRoute {o.name!r}", f"no in-cluster "
                                           f"InferencePool backend for host {o.host}: the "
                                           "route is left to the mesh",
                                           any(x.warn for x in o.skipped)))
    res.rewrites = list(rewrites.values())
    res.index_rewrites()
    return res


def load_resources(paths: Iterable[str | Path]) -> Resources:
    """Every resource the balancer reads in the files; other kinds (such as the seed's
    Deployment and Service) are listed once per file in `skipped` and the log."""
    paths = list(paths)
    objects, unread = [], []
    for path in paths:
        kinds: Counter[str] = Counter()
        for where, doc in load_documents(path):
            parsed = parse_resource(doc, where)
            if parsed is None:
                kinds[str(doc.get("kind") or "(no kind)")] += 1
            objects.append(parsed)
        if kinds:
            unread.append(Skipped(str(path), "not read (kinds llmtraffic does not route by): "
                                  + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))))
    res = build_resources(objects)
    res.skipped[:0] = unread
    for s in res.skipped:
        log.log(logging.WARNING if s.warn else logging.INFO, "%s", s)
    if not res.pools:
        raise ConfigError("no InferencePool found in " + ", ".join(str(p) for p in paths)
                          + ": give at least one (e.g. deploy/seed/inferencepool.yaml)")
    return res
