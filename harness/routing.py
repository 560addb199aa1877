"""Routing-quality benchmark in virtual time: the same seeded workload through each policy
on a fresh simulated fleet, at a load given as a fraction of the fleet's measured capacity."""

from __future__ import annotations

import json
import logging
import math
import statistics
import textwrap
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.balancer.policy.request import Policy
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.harness.capacity import completion_rate, fleet_capacity
from llmtraffic.simulator.workloads import BASE_MODEL, WorkloadRequest, make_workload
from llmtraffic.simulator.cluster import Cluster, ClusterConfig
from llmtraffic.simulator.engine import Engine, EngineConfig, SimRequest
from llmtraffic.simulator.profile import Profile, get_profile
from llmtraffic.simulator import tokenizer

log = logging.getLogger(__name__)

#: The oracle is a greedy per-request heuristic with clairvoyance (exact engine state, true
#: output lengths), not a bound: `simulator.cluster.OraclePolicy`. "oracle" still names it.
ORACLE = "greedy-oracle"
POLICIES = ("round-robin", "random", "least-request", "llm", ORACLE)
ALIASES = {"oracle": ORACLE}


def policy_name(name: str) -> str:
    """The policy's display name (`oracle` is `greedy-oracle`); errors list the choices."""
    name = ALIASES.get(name, name)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)} "
                         f"(or oracle for {ORACLE})")
    return name


@dataclass(slots=True)
class RoutingRun:
    workload: str
    load: float
    pods: int
    duration: float
    seed: int
    capacity_rps: float
    rate_rps: float
    policies: dict[str, dict]
    cpu_seconds: dict[str, float]
    capacity_source: str = ""  # where capacity_rps is from (the stored file, ...)

    def as_dict(self) -> dict:
        return {"workload": self.workload, "load": self.load, "pods": self.pods,
                "duration_s": self.duration, "seed": self.seed,
                "capacity_rps": self.capacity_rps, "capacity_source": self.capacity_source,
                "rate_rps": self.rate_rps, "policies": self.policies,
                "cpu_seconds": self.cpu_seconds}


def measure_capacity(workload: str, profile: str | Profile = "llama2-7b-a10", seed: int = 1,
                     sample: int = 400, engine_overrides: dict | None = None) -> float:
    """Requests/s one pod sustains on `workload`: a backlog of `sample` requests from the
    workload's mix is served by one engine; the completion rate between the 10th and 90th
    percentile completions is its capacity (no routing advantage such as cross-request
    prefix locality beyond what one pod sees in the mix)."""
    prof = get_profile(profile)
    engine = Engine(EngineConfig.from_profile(prof, **(engine_overrides or {})), prof, seed=seed)
    reqs = make_workload(workload, rate=1000.0, duration=sample / 1000.0 * 1.2, seed=seed)[:sample]
    for w in reqs:
        adapter = None if w.model == BASE_MODEL else w.model
        ids = tokenizer.encode(w.prompt, prof.chars_per_token)
        engine.add_request(SimRequest(request_id=str(w.index), prompt_ids=ids,
                                      max_tokens=w.max_tokens, arrival=0.0, adapter=adapter,
                                      output_len=w.output_len), 0.0)
    now = 0.0
    finished: list[float] = []
    while engine.has_work():
        res = engine.step(now)
        now += res.duration
        finished.extend(now for o in res.outputs if o.finished)
        if res.duration <= 0 and not res.outputs:
            break
    return completion_rate(finished)


def policy_factory(name: str, seed: int, config: PolicyConfig | None = None
                   ) -> Callable[[int], Policy] | str:
    """What `Cluster` takes for policy `name` (`config` is the llm policy's)."""
    if policy_name(name) == ORACLE:
        return "oracle"
    return lambda replica: make_policy(name, config if name == "llm" else None,
                                       seed=seed * 100 + replica)


def run_policy(name: str, reqs: Sequence[WorkloadRequest], duration: float, cfg: ClusterConfig,
               policy_config: PolicyConfig | None = None) -> tuple[dict, float]:
    """One policy over `reqs` on a fresh fleet: its report (as a dict) and CPU seconds."""
    t0 = time.process_time()
    report = Cluster(cfg, policy_factory(name, cfg.seed, policy_config)).run(reqs, duration)
    cpu = time.process_time() - t0
    log.info("%s: ttft p90 %.3fs, throughput %.0f tok/s (%.1fs CPU)", name,
             report.ttft_p90_s, report.throughput_tok_s, cpu)
    return report.as_dict(), cpu


def run_routing(workload: str, pods: int = 4, load: float = 0.9,
                policies: Sequence[str] = ("round-robin", "least-request", "llm", ORACLE),
                duration: float = 600.0, seed: int = 1, scrape_interval: float = 0.1,
                replicas: int = 1, profile: str = "llama2-7b-a10",
                capacity_rps: float | None = None,
                policy_config: PolicyConfig | None = None) -> RoutingRun:
    """Every policy on the same seeded arrivals at `load` × the fleet's capacity (the stored
    one for the fleet and workload, `harness/capacity.json`, unless `capacity_rps` is given)."""
    names = [policy_name(p) for p in policies]
    source = "given"
    if capacity_rps is None:
        cap = fleet_capacity(workload, pods, profile)
        capacity_rps, source = cap.rps, cap.source
    rate = load * capacity_rps
    reqs = make_workload(workload, rate, duration, seed)
    results: dict[str, dict] = {}
    cpu: dict[str, float] = {}
    for name in names:
        cfg = ClusterConfig(pods=pods, profile=profile, scrape_interval=scrape_interval,
                            replicas=replicas, seed=seed)
        results[name], cpu[name] = run_policy(name, reqs, duration, cfg, policy_config)
    return RoutingRun(workload, load, pods, duration, seed, capacity_rps, rate, results, cpu,
                      source)


def seed_summary(runs: Sequence[RoutingRun]) -> dict[str, dict[str, dict]]:
    """Per workload and policy, over the runs' seeds: geometric means of TTFT p90 and p99,
    and the geometric-mean ratio of p90 to `oracle`'s and to `round-robin`'s on the same
    seed (when those policies ran), with the worst single-seed ratio to oracle."""
    out: dict[str, dict[str, dict]] = {}
    by_workload: dict[str, list[RoutingRun]] = {}
    for run in runs:
        by_workload.setdefault(run.workload, []).append(run)
    for workload, group in by_workload.items():
        table: dict[str, dict] = {}
        for name in group[0].policies:
            p90 = [r.policies[name]["ttft_p90_s"] for r in group]
            row = {"seeds": [r.seed for r in group], "ttft_p90_s_gmean": _gmean(p90),
                   "ttft_p99_s_gmean": _gmean([r.policies[name]["ttft_p99_s"]
                                               for r in group]),
                   "ttft_p90_s_per_seed": p90,
                   "shed_per_seed": [r.policies[name].get("shed", 0) for r in group],
                   "unfinished_per_seed": [r.policies[name].get("failed", 0) for r in group]}
            for ref in (ORACLE, "round-robin"):
                if ref in group[0].policies and ref != name:
                    ratios = [r.policies[name]["ttft_p90_s"] / r.policies[ref]["ttft_p90_s"]
                              for r in group]
                    key = "oracle" if ref == ORACLE else ref  # the JSON's key since before
                    row[f"p90_vs_{key}_gmean"] = _gmean(ratios)
                    if ref == ORACLE:
                        row["p90_vs_oracle_worst"] = max(ratios)
                        row["p90_vs_oracle_per_seed"] = ratios
            table[name] = row
        out[workload] = table
    return out


def _gmean(values: Sequence[float]) -> float:
    """Geometric mean; NaN when some value is not a positive finite number."""
    if not values or not all(x > 0 and math.isfinite(x) for x in values):
        return math.nan
    return statistics.geometric_mean(values)


def format_seed_summary(summary: dict[str, dict[str, dict]]) -> str:
    lines = []
    for workload, table in summary.items():
        seeds = ",".join(map(str, next(iter(table.values()))["seeds"]))
        lines.append(f"workload={workload} over seeds {seeds} (geometric means; shed and "
                     "unfinished: totals over the seeds, left out of the percentiles)")
        lines.append(f"{'policy':<16}{'ttft_p90_s':>12}{'ttft_p99_s':>12}"
                     f"{'p90/oracle':>12}{'worst':>8}{'p90/rr':>9}{'shed':>7}{'unfin':>7}")
        for name, row in table.items():
            def cell(key: str, width: int) -> str:
                v = row.get(key)
                return f"{v:>{width}.2f}" if v is not None else f"{'-':>{width}}"
            lines.append(f"{name:<16}{row['ttft_p90_s_gmean']:>12.3f}"
                         f"{row['ttft_p99_s_gmean']:>12.3f}{cell('p90_vs_oracle_gmean', 12)}"
                         f"{cell('p90_vs_oracle_worst', 8)}{cell('p90_vs_round-robin_gmean', 9)}"
                         f"{sum(row['shed_per_seed']):>7}{sum(row['unfinished_per_seed']):>7}")
            lines += textwrap.wrap("p90 per seed: " + " ".join(
                f"{v:.3f}" for v in row["ttft_p90_s_per_seed"]), 100,
                initial_indent=" " * 16, subsequent_indent=" " * 30)
    return "\n".join(lines)


def write_json(runs: Sequence[RoutingRun], path: str,
               summary: dict[str, dict[str, dict]] | None = None) -> None:
    data = runs[0].as_dict() if len(runs) == 1 else {"runs": [r.as_dict() for r in runs]}
    if summary:
        data["summary"] = summary
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
