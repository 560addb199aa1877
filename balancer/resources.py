"""The resources the balancer routes by, normalized over every API version: pools, models
(InferenceModel, or what an InferenceModelRewrite makes of a model name), objectives,
routes, and what was skipped and why; `Resources` holds them with the lookups."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Mapping

#: InferenceModel criticality as an InferenceObjective priority (higher is served first; a
#: negative priority is shed when the pool is saturated, as Sheddable is).
CRITICALITY_PRIORITY = {"Critical": 1, "Standard": 0, "Sheddable": -1}


def criticality_of(priority: int) -> str:
    """The criticality a priority behaves as: > 0 Critical, 0 Standard, < 0 Sheddable."""
    return "Critical" if priority > 0 else "Sheddable" if priority < 0 else "Standard"


@dataclass(slots=True, frozen=True)
class Pool:
    """An InferencePool of any API version."""

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
    """A model name clients send and what it becomes in one pool: the weighted targets, the
    criticality and the priority. `kind` says which object made it (InferenceModel,
    InferenceModelRewrite, or "" for a name passed through unchanged)."""

    name: str  # metadata.name of the object
    namespace: str
    model_name: str
    criticality: str
    pool: str
    targets: tuple[tuple[str, int], ...]  # (target model, weight)
    priority: int = 0
    kind: str = "InferenceModel"

    def pick_target(self, rng: random.Random) -> str:
        """A target model by weight; the model itself when no targets are listed."""
        return weighted_choice(self.targets, rng) if self.targets else self.model_name


def weighted_choice(pairs: tuple[tuple[str, int], ...], rng: random.Random) -> str:
    """One name of the non-empty (name, weight) `pairs`, drawn with probability
    weight / total (one `rng.random()` draw)."""
    x = rng.random() * sum(w for _, w in pairs)
    for name, w in pairs:
        x -= w
        if x < 0:
            return name
    return pairs[-1][0]


@dataclass(slots=True, frozen=True)
class Objective:
    """An InferenceObjective: requests naming it (header `x-gateway-inference-objective`)
    take its priority."""

    name: str
    namespace: str
    pool: str
    priority: int = 0
    skipped: tuple[Skipped, ...] = ()  # fields read but not used


@dataclass(slots=True, frozen=True)
class RewriteRule:
    """One rule of an InferenceModelRewrite: the model names it matches exactly (none: every
    model) and the weighted targets (none: the model is kept)."""

    models: tuple[str, ...]
    targets: tuple[tuple[str, int], ...]


@dataclass(slots=True, frozen=True)
class Rewrite:
    """An InferenceModelRewrite: ordered rules for one pool; an older rewrite
    (`created`, metadata.creationTimestamp) wins over a newer one."""

    name: str
    namespace: str
    pool: str
    rules: tuple[RewriteRule, ...]
    created: str = ""


@dataclass(slots=True, frozen=True)
class HeaderMatch:
    """One `headers` entry of an LLMRoute match (an Istio StringMatch): `kind` is exact,
    prefix or regex (the whole value), or present (an empty StringMatch)."""

    name: str  # lower case
    kind: str
    value: str = ""
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def test(self, headers: Mapping[str, str]) -> bool:
        v = headers.get(self.name)
        if v is None:
            return False
        if self.kind == "exact":
            return v == self.value
        if self.kind == "prefix":
            return v.startswith(self.value)
        if self.kind == "regex":
            return self.pattern is not None and self.pattern.fullmatch(v) is not None
        return True

    def __str__(self) -> str:
        return f"{self.name} present" if self.kind == "present" else \
            f"{self.name} {self.kind} {self.value!r}"


@dataclass(slots=True, frozen=True)
class RouteRule:
    """One rule of an LLMRoute: it takes a request when any of its `matches` does (each a
    set of header conditions, all of which must hold) or, with no matches, every request;
    it sends it to `pools` by weight. `external` are its providerHost backends (the mesh
    serves them, llmtraffic does not)."""

    name: str
    matches: tuple[tuple[HeaderMatch, ...], ...]
    pools: tuple[tuple[str, int], ...]
    external: tuple[str, ...] = ()

    def takes(self, headers: Mapping[str, str]) -> bool:
        return not self.matches or any(all(h.test(headers) for h in m) for m in self.matches)

    def describe(self) -> str:
        """Its condition as text: `every request`, or the matches joined by `or`."""
        if not self.matches:
            return "every request"
        return " or ".join(" and ".join(map(str, m)) for m in self.matches)


@dataclass(slots=True, frozen=True)
class Route:
    """An LLMRoute: requests for `host` go to the pools of its first rule that takes them
    (by weight). `pools` lists every in-cluster backend of its rules; `skipped` says which
    backends or rules llmtraffic leaves to the mesh (external providers, match conditions
    on source labels or gateways)."""

    name: str
    namespace: str
    host: str
    gateways: tuple[str, ...]
    pools: tuple[tuple[str, int], ...]
    skipped: tuple[Skipped, ...] = ()
    rules: tuple[RouteRule, ...] = ()

    def rule_for(self, headers: Mapping[str, str]) -> RouteRule | None:
        """The first rule that takes a request with these headers; None when none does."""
        return next((r for r in self.rules if r.takes(headers)), None)


@dataclass(slots=True, frozen=True)
class Skipped:
    """Something read but not routed by, and why (for the log and `balancer --check`);
    `warn` when it changes what a request does (logged as a warning, else at info level)."""

    what: str
    why: str
    warn: bool = False

    def __str__(self) -> str:
        return f"{self.what}: {self.why}"


@dataclass(slots=True)
class Resources:
    """Every pool, model, objective, rewrite and route the balancer serves, with lookups."""

    pools: dict[str, Pool] = field(default_factory=dict)
    models: dict[tuple[str, str], Model] = field(default_factory=dict)  # (pool, modelName)
    routes: dict[str, Route] = field(default_factory=dict)  # host (lower case) -> route
    objectives: dict[tuple[str, str], Objective] = field(default_factory=dict)  # (pool, name)
    rewrites: list[Rewrite] = field(default_factory=list)  # oldest first
    skipped: list[Skipped] = field(default_factory=list)
    #: (pool, model name) -> what a rewrite rule naming it exactly makes of it
    rewritten: dict[tuple[str, str], Model] = field(default_factory=dict, repr=False)
    #: pool -> the first rewrite rule matching every model
    catch_all: dict[str, Model] = field(default_factory=dict, repr=False)

    def pool_for_host(self, host: str | None) -> Pool | None:
        """A pool serving `host` (port ignored): its route's first in-cluster backend. With
        no LLMRoutes at all, the only pool serves every host; None when nothing matches."""
        if not self.routes:
            return self.only_pool()
        route = self.route_for_host(host)
        if route is None:
            return None
        return self.pools.get(route.pools[0][0])

    def only_pool(self) -> Pool | None:
        """The pool that serves every host when there is no LLMRoute: the only one."""
        return next(iter(self.pools.values())) if len(self.pools) == 1 else None

    def route_for_host(self, host: str | None) -> Route | None:
        """The LLMRoute of `host` (port ignored, case folded), else the `*` route."""
        name = (host or "").rsplit(":", 1)[0].lower() if not (host or "").startswith("[") \
            else (host or "").lower()
        return self.routes.get(name) or self.routes.get("*")

    def model(self, pool: str, model_name: str) -> Model | None:
        return self.models.get((pool, model_name))

    def models_in(self, pool: str) -> list[Model]:
        return [m for (p, _), m in self.models.items() if p == pool]

    def resolve(self, pool: str, model_name: str) -> Model | None:
        """What a request for `model_name` in `pool` becomes: its InferenceModel, else the
        rewrite rule naming it exactly, else the pool's rewrite rule for every model (oldest
        rewrite first, then rule order); None when none applies."""
        found = self.models.get((pool, model_name)) or self.rewritten.get((pool, model_name))
        if found is not None:
            return found
        generic = self.catch_all.get(pool)
        return None if generic is None else replace(
            generic, model_name=model_name, targets=generic.targets or ((model_name, 1),))

    def objective(self, pool: str, name: str) -> Objective | None:
        return self.objectives.get((pool, name))

    def with_objective(self, model: Model, objective: str) -> Model:
        """`model` with the priority of its pool's InferenceObjective `objective`; unchanged
        when the pool has none by that name (GIE then keeps the default)."""
        o = self.objectives.get((model.pool, objective))
        if o is None:
            return model
        return replace(model, priority=o.priority, criticality=criticality_of(o.priority))

    def index_rewrites(self) -> None:
        """Fill `rewritten` and `catch_all` from `rewrites` (oldest first): the first rule
        to claim a model name keeps it, as GIE resolves conflicts."""
        self.rewrites.sort(key=lambda r: r.created)  # stable: equal times keep their order
        self.rewritten, self.catch_all = {}, {}
        for rw in self.rewrites:
            for rule in rw.rules:
                model = Model(rw.name, rw.namespace, "", "Standard", rw.pool, rule.targets,
                              0, "InferenceModelRewrite")
                if not rule.models:
                    self.catch_all.setdefault(rw.pool, model)
                for name in rule.models:
                    self.rewritten.setdefault((rw.pool, name), replace(
                        model, model_name=name, targets=rule.targets or ((name, 1),)))

    def check(self) -> list[str]:
        """References that point nowhere (warnings: a pool may arrive later in a cluster)."""
        out = []
        refs = [("InferenceModel", m.name, m.pool) for m in self.models.values()]
        refs += [("InferenceObjective", o.name, o.pool) for o in self.objectives.values()]
        refs += [("InferenceModelRewrite", r.name, r.pool) for r in self.rewrites]
        for kind, name, pool in refs:
            if pool not in self.pools:
                out.append(f"{kind} {name!r}: poolRef {pool!r} names no InferencePool")
        for r in self.routes.values():
            for p, _ in r.pools:
                if p not in self.pools:
                    out.append(f"LLMRoute {r.name!r}: backendRef {p!r} names no InferencePool")
        return out
