"""`llmtraffic balancer --check`: what the balancer will do with what it loaded — hosts to
pools (each LLMRoute rule's match and weighted pools), pools to endpoints (address:port, ready
or not), model names to weighted targets with criticality and priority, the admission queue,
and what was skipped and why — as a table or JSON, and whether anything is wrong (exit 1),
like `nginx -t`."""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, TextIO

import orjson

from llmtraffic.balancer.config import ConfigError
from llmtraffic.balancer.discovery import ClusterView, Discovery
from llmtraffic.balancer.options import BalancerOptions
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.balancer.resources import Model, Pool, Resources, RouteRule, criticality_of
from llmtraffic.balancer.router import OBJECTIVE_HEADER

WIDTH = 100  # the table fits a terminal this wide


@dataclass(slots=True)
class Endpoint:
    name: str
    address: str  # "ip:port"; "" when the pod has no IP yet
    ready: bool


@dataclass(slots=True)
class Target:
    model: str
    weight: int
    share: float  # percent of the requests for the model


@dataclass(slots=True)
class ModelRoute:
    """One model name clients may send to a pool and what it becomes."""

    model: str  # "*" for every other model
    targets: list[Target]
    criticality: str
    priority: int
    source: str  # "InferenceModel <name>", "InferenceModelRewrite <name>", or "passed through"


@dataclass(slots=True)
class PoolReport:
    name: str
    namespace: str
    api_version: str
    selector: dict[str, str]
    target_ports: list[int]
    failure_mode: str
    endpoints: list[Endpoint]
    models: list[ModelRoute]
    objectives: dict[str, int]  # InferenceObjective name -> priority


@dataclass(slots=True)
class HostRoute:
    host: str  # "*" when no LLMRoute exists and the only pool serves every host
    route: str  # the LLMRoute's name ("" without one)
    pools: list[dict[str, Any]]  # {"pool", "weight"}: every pool its rules send to
    #: the route's rules in order: {"rule", "when", "pools": [{"pool", "weight", "share"}],
    #: "external": [providerHost]}; a request no rule takes gets 404
    rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class QueueReport:
    """The admission queue: `max_queued` 0 when there is none."""

    policy: str
    max_queued: int
    timeout_s: float
    queue_threshold: float
    kv_threshold: float
    retry_after_s: float


@dataclass(slots=True)
class Report:
    """The resolved routing; `ok` is False when `errors` is not empty."""

    hosts: list[HostRoute] = field(default_factory=list)
    pools: list[PoolReport] = field(default_factory=list)
    queue: QueueReport | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"what", "why"}
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> bytes:
        return orjson.dumps({"ok": self.ok, **asdict(self)},
                            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


# ---- building -------------------------------------------------------------------------------
def build_report(view: ClusterView, errors: list[str] | tuple[str, ...] = (),
                 options: BalancerOptions | None = None) -> Report:
    """The report of one view; `errors` come from discovery (invalid objects, no answer);
    `options`, when given, the admission queue's settings."""
    res = view.resources
    report = Report(errors=list(errors), queue=_queue(options) if options else None)
    report.skipped = [{"what": s.what, "why": s.why} for s in res.skipped]
    report.warnings = res.check()
    report.hosts = _hosts(res)
    members = [*view.pods, *view.unready]
    for pool in sorted(res.pools.values(), key=lambda p: p.name):
        eps = sorted((Endpoint(p.name, p.address, p.ready) for p in members
                      if p.pool == pool.name), key=lambda e: (e.name, e.address))
        report.pools.append(PoolReport(
            pool.name, pool.namespace, pool.api_version, dict(pool.selector),
            list(pool.target_ports), pool.failure_mode, eps, _models(res, pool),
            {o.name: o.priority for (p, _), o in sorted(res.objectives.items()) if p == pool.name}))
        if not any(e.ready for e in eps):
            report.warnings.append(f"InferencePool {pool.name!r}: no ready endpoint (its "
                                   f"selector {_labels(pool.selector)} matches no ready pod): "
                                   "its requests get 503")
    if not res.pools:
        report.errors.append("no InferencePool found: nothing can be routed")
    elif not res.routes and len(res.pools) > 1:
        report.warnings.append(f"{len(res.pools)} InferencePools and no LLMRoute: every "
                               "request gets 404 (add an LLMRoute per host)")
    return report


def _hosts(res: Resources) -> list[HostRoute]:
    if not res.routes:
        only = next(iter(res.pools)) if len(res.pools) == 1 else None
        return [HostRoute("*", "", [{"pool": only, "weight": 1}])] if only else []
    return [HostRoute(host, r.name, [{"pool": p, "weight": w} for p, w in r.pools],
                      [_rule(x) for x in r.rules])
            for host, r in sorted(res.routes.items())]


def _rule(r: RouteRule) -> dict[str, Any]:
    total = sum(w for _, w in r.pools) or 1
    return {"rule": r.name, "when": r.describe(), "external": list(r.external),
            "pools": [{"pool": p, "weight": w, "share": round(100.0 * w / total, 1)}
                      for p, w in r.pools]}


def _queue(o: BalancerOptions) -> QueueReport:
    cfg = o.policy_config or PolicyConfig()
    size = o.max_queued if o.policy == "llm" else 0  # only the llm policy judges saturation
    return QueueReport(o.policy, size, o.queue_timeout, cfg.queue_threshold, cfg.kv_threshold,
                       cfg.retry_after_s)


def _models(res: Resources, pool: Pool) -> list[ModelRoute]:
    """Every model name the pool answers: InferenceModels, then rewrite rules, then the
    catch-all rule ("*"); a pool with no InferenceModel and no catch-all passes any other
    name through as sent."""
    named = {m.model_name: m for m in res.models_in(pool.name)}
    for (p, name), m in res.rewritten.items():
        if p == pool.name:
            named.setdefault(name, m)
    out = [_route(name, m) for name, m in sorted(named.items())]
    generic = res.catch_all.get(pool.name)
    if generic is not None:
        out.append(_route("*", generic))
    elif not res.models_in(pool.name):
        out.append(ModelRoute("*", [Target("(as sent)", 1, 100.0)], "Standard", 0,
                              "passed through"))
    return out


def _route(name: str, m: Model) -> ModelRoute:
    targets = m.targets or (((name if name != "*" else "(as sent)"), 1),)
    total = sum(w for _, w in targets) or 1
    return ModelRoute(name, [Target(t, w, round(100.0 * w / total, 1)) for t, w in targets],
                      m.criticality, m.priority, f"{m.kind} {m.name}")


def _labels(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(none)"


# ---- the table ------------------------------------------------------------------------------
def render_table(report: Report, width: int = WIDTH) -> str:
    """A plain-text report no wider than `width` columns."""
    lines = [*_summary(report), ""]
    lines += ["HOSTS"] + [x for h in report.hosts for x in _host_lines(h)]
    if not report.hosts:
        lines.append("  (none)")
    if report.queue is not None:
        lines += ["", "ADMISSION QUEUE"] + [f"  {x}" for x in _queue_lines(report.queue)]
    for p in report.pools:
        lines += ["", f"POOL {p.name}  [{p.api_version}, namespace {p.namespace}]",
                  f"  selector {_labels(p.selector)}; target ports "
                  f"{', '.join(map(str, p.target_ports))}; failure mode {p.failure_mode}"]
        lines += _table(["ENDPOINT", "ADDRESS", "READY"],
                        [[e.name, e.address or "(no IP yet)", "yes" if e.ready else "no"]
                         for e in p.endpoints] or [["(none)", "", ""]], width)
        rows = []
        for m in p.models:
            for i, t in enumerate(m.targets):
                rows.append([m.model if i == 0 else "", t.model, f"{t.share:g}%",
                             m.criticality if i == 0 else "", str(m.priority) if i == 0 else "",
                             m.source if i == 0 else ""])
        lines += _table(["MODEL", "TARGET", "SHARE", "CRITICALITY", "PRIORITY", "FROM"],
                        rows, width)
        if p.objectives:
            lines += _table([f"OBJECTIVE ({OBJECTIVE_HEADER})", "PRIORITY", "BEHAVES AS"],
                            [[n, str(v), criticality_of(v)] for n, v in p.objectives.items()],
                            width)
    for title, items in (("SKIPPED", [f"{s['what']}: {s['why']}" for s in report.skipped]),
                         ("WARNINGS", report.warnings), ("ERRORS", report.errors)):
        if items:
            lines += ["", title]
            lines += [w for x in items for w in textwrap.wrap(
                x, width, initial_indent="  ", subsequent_indent="    ",
                break_on_hyphens=False)]
    return "\n".join(_fit(line, width) for line in lines) + "\n"


def _host_lines(h: HostRoute) -> list[str]:
    """The host and its pools; then its route's rules, unless one rule sends every request
    to one pool."""
    out = [f"  {h.host} -> " + ", ".join(
        f"{p['pool']}" + (f" (weight {p['weight']})" if len(h.pools) > 1 else "")
        for p in h.pools) + (f"   [LLMRoute {h.route}]" if h.route else "   [no LLMRoute: "
                             "the only pool serves every host]")]
    if len(h.rules) > 1 or any(r["when"] != "every request" or len(r["pools"]) != 1
                               or r["external"] for r in h.rules):
        out += [x for r in h.rules for x in textwrap.wrap(
            f"rule {r['rule']}: {r['when']} -> {_rule_to(r)}", WIDTH, initial_indent="    ",
            subsequent_indent="      ", break_on_hyphens=False)]
        out.append("    (first rule that matches; none: 404)")
    return out


def _rule_to(r: dict[str, Any]) -> str:
    to = [f"{p['pool']} ({p['share']:g}%)" if len(r["pools"]) > 1 else p["pool"]
          for p in r["pools"]]
    if r["external"] and not to:
        return ", ".join(f"providerHost {x}" for x in r["external"]) + \
            " (the mesh's; 404 here)"
    return ", ".join(to) + "".join(f"; providerHost {x}: the mesh's" for x in r["external"])


def _queue_lines(q: QueueReport) -> list[str]:
    if not q.max_queued:
        why = "--max-queued 0" if q.policy == "llm" else \
            f"policy {q.policy} does not judge saturation"
        return [f"off ({why}): requests are scheduled at once; with the llm policy, "
                "negative priority is shed (429) when the pool is saturated"]
    return [f"no pod with queue <= {q.queue_threshold:g} and KV cache <= "
            f"{q.kv_threshold:g}: priority >= 0 waits, negative gets 429",
            f"at most {q.max_queued} waiting over all pools, {q.timeout_s:g} s each; highest "
            "priority first, FIFO within one",
            f"queue full: 429; waited {q.timeout_s:g} s: 503 (Retry-After "
            f"{max(1, round(q.retry_after_s))})"]


def _summary(r: Report) -> list[str]:
    eps = [e for p in r.pools for e in p.endpoints]
    return [f"llmtraffic balancer --check: {'OK' if r.ok else 'FAILED'}",
            f"{len(r.hosts)} hosts, {len(r.pools)} pools, {len(eps)} endpoints "
            f"({sum(e.ready for e in eps)} ready), {sum(len(p.models) for p in r.pools)} "
            f"model routes; {len(r.skipped)} skipped, {len(r.warnings)} warnings, "
            f"{len(r.errors)} errors"]


def _table(header: list[str], rows: list[list[str]], width: int) -> list[str]:
    """Indented columns sized to their content; the last column takes what is left."""
    cols = list(zip(header, *rows))
    sizes = [max(len(x) for x in col) for col in cols]
    budget = width - 2 - 2 * (len(sizes) - 1)
    while sum(sizes) > budget and max(sizes[:-1] or [0]) > 12:  # shrink the widest column
        i = max(range(len(sizes) - 1), key=sizes.__getitem__)
        sizes[i] -= 1
    out = []
    for row in [header, *rows]:
        cells = [_fit(c, n).ljust(n) for c, n in zip(row, sizes)]
        out.append(_fit(("  " + "  ".join(cells)).rstrip(), width))
    return out


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


# ---- the command ----------------------------------------------------------------------------
def run_check(make_discovery: Callable[[], Discovery], output: str, out: TextIO,
              options: BalancerOptions | None = None) -> int:
    """Load through `make_discovery`, print the report as `output` ("table" or "json") and
    return the exit status: 0 when nothing is wrong, 1 otherwise. `options`: the front
    end's, for the admission queue's settings."""
    try:
        discovery = make_discovery()
        view = discovery.view()
    except (ConfigError, ImportError) as e:
        report = Report(errors=[str(e)])
    else:
        problems = getattr(discovery, "problems", None)
        report = build_report(view, problems() if problems is not None else (), options)
    out.write(report.to_json().decode() if output == "json" else render_table(report))
    return 0 if report.ok else 1
