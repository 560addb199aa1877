"""Fleet capacity per (profile, workload, pods): measured once, on a calibration seed that is
neither a tuning nor a reporting seed, and kept in `capacity.json` beside this module, so that
every seed of `bench routing` runs at the same offered rate for a given load."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.simulator.cluster import Cluster, ClusterConfig, quantile
from llmtraffic.simulator.profile import Profile, get_profile
from llmtraffic.simulator.workloads import WorkloadRequest, make_workload

log = logging.getLogger(__name__)

CAPACITY_FILE = Path(__file__).resolve().with_name("capacity.json")
#: The llm policy is tuned on seeds 1-16 and reported on 201-203 (`bench routing --grid`);
#: capacity is measured on neither.
CALIBRATION_SEED = 1000
#: Requests queued per pod: a long saturating run (at ~1.5 requests/s a pod on seed-lora,
#: several simulated minutes).
BACKLOG_PER_POD = 600
#: What regenerates the file (also stored in it).
COMMAND = ("llmtraffic bench capacity --profile llama2-7b-a10 "
           "--workload seed-lora,shared-prefix,mixed,multi-turn --pods 2,4,8,16")
METHOD = (f"A backlog of {BACKLOG_PER_POD} requests per pod (the workload's first requests "
          f"on calibration seed {CALIBRATION_SEED}, in order, all queued at time 0) dealt "
          "round-robin over a virtual-time fleet; capacity is the completion rate between the "
          "10th and the 90th percentile completion (no routing advantage: each pod sees the "
          "workload's mix).")


@dataclass(frozen=True, slots=True)
class Capacity:
    """Requests/s a fleet serves on a workload when saturated, and where the figure is from."""

    rps: float
    source: str


def completion_rate(finished: Sequence[float]) -> float:
    """Completions per second between the 10th and the 90th percentile completion time
    (the ramp-up and the drain left out); NaN for fewer than two distinct times."""
    times = sorted(finished)
    lo, hi = quantile(times, 0.1), quantile(times, 0.9)
    return int(0.8 * len(times)) / (hi - lo) if hi > lo else math.nan


def backlog(workload: str, count: int, seed: int = CALIBRATION_SEED) -> list[WorkloadRequest]:
    """The first `count` requests of `workload` (from a run long enough to hold them, so a
    multi-turn conversation keeps its turns), all arriving at time 0, in order."""
    rate = 10.0
    reqs: list[WorkloadRequest] = []
    duration = count / rate * 1.5
    while len(reqs) < count:
        reqs = make_workload(workload, rate, duration, seed)
        duration *= 2
    return [WorkloadRequest(r.index, 0.0, r.model, r.prompt, r.max_tokens, r.output_len,
                            r.criticality, r.group) for r in reqs[:count]]


def measure_fleet_capacity(workload: str, pods: int, profile: str | Profile = "llama2-7b-a10",
                           seed: int = CALIBRATION_SEED,
                           per_pod: int = BACKLOG_PER_POD) -> float:
    """Requests/s `pods` pods serve on `workload` when saturated (see METHOD)."""
    reqs = backlog(workload, per_pod * pods, seed)
    cfg = ClusterConfig(pods=pods, profile=profile, seed=seed, drain=1e7)
    cluster = Cluster(cfg, lambda replica: make_policy("round-robin", seed=seed))
    cluster.run(reqs, 1.0)
    finished = [s.finished_at for s in cluster.requests if s.finished_at is not None]
    return completion_rate(finished)


def stored_capacity(workload: str, pods: int, profile: str | Profile = "llama2-7b-a10",
                    path: Path = CAPACITY_FILE) -> Capacity | None:
    """The capacity stored for (profile, workload, pods), or None when there is none."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        rps = data["capacity_rps"].get(get_profile(profile).name, {}).get(workload, {}) \
            .get(str(pods))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{path.name}: not a capacity file ({e}); regenerate it with "
                         f"`{COMMAND}`") from None
    if rps is None:
        return None
    return Capacity(float(rps), f"{path.name}, calibration seed {data['calibration_seed']}")


def fleet_capacity(workload: str, pods: int, profile: str | Profile = "llama2-7b-a10",
                   path: Path = CAPACITY_FILE) -> Capacity:
    """The stored capacity, or (for a fleet the file does not hold) one measured now by the
    same method, with a warning naming the command that stores it."""
    stored = stored_capacity(workload, pods, profile, path)
    if stored is not None:
        return stored
    name = get_profile(profile).name
    log.warning("no stored capacity for %s, %s, %d pods in %s: measuring it now (to store "
                "it: llmtraffic bench capacity --profile %s --workload %s --pods %d)",
                name, workload, pods, path.name, name, workload, pods)
    return Capacity(measure_fleet_capacity(workload, pods, profile),
                    f"measured now, calibration seed {CALIBRATION_SEED}")


def write_capacities(profile: str, workloads: Sequence[str], pods: Sequence[int],
                     path: Path = CAPACITY_FILE) -> dict[str, dict[str, float]]:
    """Measure every (workload, pods) of `profile` and merge them into the file."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({"method": METHOD, "command": COMMAND, "calibration_seed": CALIBRATION_SEED,
                 "backlog_per_pod": BACKLOG_PER_POD})
    table = data.setdefault("capacity_rps", {}).setdefault(get_profile(profile).name, {})
    for w in workloads:
        for n in pods:
            table.setdefault(w, {})[str(n)] = round(measure_fleet_capacity(w, n, profile), 4)
            log.info("%s, %s, %d pods: %.3f req/s", profile, w, n, table[w][str(n)])
    path.write_text(json.dumps(data, indent=2) + "\n")
    return table
