"""Live routing benchmark: real-time simulated pods behind each router in turn (a fresh
fleet per router), the same seeded arrivals, an async streaming client measuring TTFT,
inter-token and end-to-end latency at the client. Figures are in simulated seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llmtraffic.harness.interrupt import run_until_interrupted
from llmtraffic.harness.loadclient import Outcome, replay, summarize
from llmtraffic.harness.podsampler import PodSampler
from llmtraffic.harness.routing import RoutingRun, measure_capacity
from llmtraffic.harness.progress import Progress
from llmtraffic.harness.stack import (Fleet, Stack, start_balancer, start_fleet,
                                      start_vllm_router, vllm_router_binary)
from llmtraffic.simulator.workloads import make_workload

log = logging.getLogger(__name__)

DEFAULT_ROUTERS = ("llmtraffic", "llmtraffic:round-robin", "vllm-router:cache_aware",
                   "vllm-router:power_of_two", "vllm-router:round_robin")
LLMTRAFFIC_POLICIES = ("llm", "round-robin", "random", "least-request")
VLLM_ROUTER_POLICIES = ("random", "round_robin", "cache_aware", "kv_aware", "power_of_two",
                        "consistent_hash", "sticky_least_loaded")


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """`llmtraffic[:policy]` or `vllm-router:policy`."""

    kind: str
    policy: str

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.policy}"

    @classmethod
    def parse(cls, text: str) -> "RouterSpec":
        kind, _, policy = text.partition(":")
        if kind == "llmtraffic":
            policy = policy or "llm"
            if policy not in LLMTRAFFIC_POLICIES:
                raise ValueError(f"router {text!r}: llmtraffic policies are "
                                 f"{', '.join(LLMTRAFFIC_POLICIES)}")
        elif kind == "vllm-router":
            if policy not in VLLM_ROUTER_POLICIES:
                raise ValueError(f"router {text!r}: vllm-router policies are "
                                 f"{', '.join(VLLM_ROUTER_POLICIES)}")
        else:
            raise ValueError(f"router {text!r}: use llmtraffic[:POLICY] or vllm-router:POLICY")
        return cls(kind, policy)


async def _drive(url: str, fleet_urls: list[str], reqs, time_scale: float,
                 name: str, keep: list[Outcome] | None = None) -> dict:
    t0 = time.monotonic()
    arrivals = reqs[-1].arrival / time_scale if reqs else 0.0
    progress = Progress(len(reqs), [name], arrivals)
    ticker = asyncio.create_task(progress.tick())
    try:
        async with PodSampler(list(fleet_urls),
                              interval=max(0.25, 1.0 / time_scale)) as sampler:
            outcomes = await replay(url, reqs, time_scale=time_scale,
                                    on_done=lambda out: progress.done(name, out))
    finally:
        ticker.cancel()
        progress.finish()
    elapsed = time.monotonic() - t0
    if keep is not None:
        keep.extend(outcomes)
    errors = sorted({o.error for o in outcomes if o.error})[:3]
    if errors:
        log.warning("some requests failed, e.g.: %s", errors)
    return {**summarize(outcomes, elapsed, time_scale), **sampler.summary(time_scale)}


def run_router(spec: RouterSpec, workdir: Path, reqs, pods: int, time_scale: float,
               seed: int, fleet: Fleet | None = None,
               profile: str = "llama2-7b-a10", keep: list[Outcome] | None = None
               ) -> tuple[dict, float]:
    """One router on a fresh fleet, or on `fleet` (pods started elsewhere: their caches
    and counters carry over from earlier runs); (figures, router CPU seconds). `keep`
    gets every request's outcome."""
    pool = "bench-pool"
    with Stack(workdir / spec.name.replace(":", "-")) as stack:
        if fleet is None:
            fleet = start_fleet(stack, "pods", pods, pool, time_scale=time_scale, seed=seed,
                                profile=profile)
        if spec.kind == "llmtraffic":
            url = start_balancer(stack, "router", fleet, spec.policy,
                                 access_log=stack.workdir / "access.log")
        else:
            url = start_vllm_router(stack, "router", fleet, spec.policy)
        router = stack.procs[-1]
        figures = run_until_interrupted(_drive(url, list(fleet.urls), reqs, time_scale,
                                               spec.name, keep))
        figures["router_cpu_s"] = router.cpu_seconds()
        figures["pods_cpu_s"] = fleet.proc.cpu_seconds() if fleet.proc else float("nan")
        return figures, figures["router_cpu_s"]


def run_live(workload: str, pods: int, duration: float, routers: Sequence[str],
             workdir: Path, rate: float | None = None, load: float | None = None,
             time_scale: float = 1.0, seed: int = 1,
             profile: str = "llama2-7b-a10", fleet: Fleet | None = None) -> RoutingRun:
    """Every router on the same seeded arrivals; `rate` (simulated req/s) or `load` (a
    fraction of the fleet's capacity measured in virtual time with `profile`). `fleet`:
    pods started elsewhere (e.g. real vLLM), shared by every router in turn."""
    specs = [RouterSpec.parse(r) for r in routers]
    if fleet is not None:
        if time_scale != 1.0:
            raise ValueError("--time-scale applies to the pods this command starts; pods "
                             "from --pods-file run in real time")
        pods = len(fleet.urls)
    if any(s.kind == "vllm-router" for s in specs):
        vllm_router_binary()  # before minutes of measuring, not after
    capacity = pods * measure_capacity(workload, profile, seed)
    if rate is None:
        rate = (load if load is not None else 0.9) * capacity
    reqs = make_workload(workload, rate, duration, seed)
    log.info("%d requests over %.0f simulated s (%.2f req/s, capacity %.2f req/s, "
             "time scale %g)", len(reqs), duration, rate, capacity, time_scale)
    results: dict[str, dict] = {}
    cpu: dict[str, float] = {}
    for spec in specs:
        log.info("router %s ...", spec.name)
        results[spec.name], cpu[spec.name] = run_router(spec, workdir, reqs, pods, time_scale,
                                                        seed, fleet, profile)
        r = results[spec.name]
        log.info("%s: ttft p90 %.3fs, %d ok, %d failed", spec.name, r["ttft_p90_s"],
                 r["completed"], r["failed"])
    return RoutingRun(workload, rate / capacity, pods, duration, seed, capacity, rate,
                      results, cpu)
