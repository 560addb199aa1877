"""`bench routing --grid`: every policy over loads × pods × workloads × reporting seeds in
virtual time, spread over processes; one table per workload whose cells hold the llm policy's
ratios to the goals on every seed, each policy's failures, and which goals the cell misses."""

from __future__ import annotations

import json
import math
import multiprocessing
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.harness.capacity import Capacity, fleet_capacity
from llmtraffic.harness.routing import ORACLE, run_policy
from llmtraffic.simulator.cluster import ClusterConfig
from llmtraffic.simulator.workloads import make_workload

LOADS = (0.5, 0.7, 0.9, 1.0)
PODS = (2, 4, 8, 16)
WORKLOADS = ("seed-lora", "shared-prefix", "mixed", "multi-turn")
POLICIES = ("round-robin", "least-request", "llm", ORACLE)
#: The llm policy's weights were tuned on these seeds (balancer/policy/settings.py); the
#: grid reports on others.
TUNING_SEEDS = range(1, 17)
REPORTING_SEEDS = (201, 202, 203)
#: The goals of a cell: llm's TTFT p90 within this of the greedy oracle's, no worse than
#: least-request's, and throughput no less than round-robin's (all as printed, 2 decimals).
ORACLE_GOAL = 1.15
#: The full grid's simulated seconds of arrivals per run: this over the pod count (at least
#: MIN_DURATION), so a run holds about the same number of requests at any fleet size
#: (~1,000 x load on seed-lora) and the grid fits an hour of a 2-core machine.
POD_SECONDS = 720.0
MIN_DURATION = 45.0


def grid_duration(pods: int) -> float:
    """Simulated seconds of arrivals per run on `pods` pods (the full grid's default)."""
    return max(MIN_DURATION, POD_SECONDS / pods)

#: `--quick`: one small cell per workload, for tests.
QUICK = {"loads": (0.9,), "pods": (2,), "seeds": (201,), "duration": 20.0}


@dataclass(frozen=True, slots=True)
class Cell:
    workload: str
    pods: int
    load: float


@dataclass(frozen=True, slots=True)
class Task:
    """One policy on one seed of one cell (what a worker process runs)."""

    cell: Cell
    seed: int
    policy: str
    rate: float
    duration: float
    profile: str
    policy_config: PolicyConfig | None = None

    def cost(self) -> float:
        """Rough relative CPU cost (the oracle's grows with the pods it races)."""
        return self.rate * self.duration * (self.cell.pods if self.policy == ORACLE else 1.0)


@dataclass(slots=True)
class Grid:
    """Results: per cell, per seed, per policy, the policy's report (as a dict)."""

    loads: Sequence[float]
    pods: Sequence[int]
    workloads: Sequence[str]
    seeds: Sequence[int]
    durations: dict[int, float]  # by pod count
    profile: str
    capacities: dict[tuple[str, int], Capacity]
    results: dict[Cell, dict[int, dict[str, dict]]] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    jobs: int = 1

    def as_dict(self) -> dict:
        return {"tuning_seeds": f"{TUNING_SEEDS[0]}-{TUNING_SEEDS[-1]}",
                "reporting_seeds": list(self.seeds),
                "duration_s": {str(n): d for n, d in self.durations.items()},
                "profile": self.profile, "wall_s": self.wall_s, "cpu_s": self.cpu_s,
                "jobs": self.jobs,
                "capacity_rps": {f"{w}/{n}": c.rps for (w, n), c in self.capacities.items()},
                "cells": [{"workload": c.workload, "pods": c.pods, "load": c.load,
                           "seeds": {str(s): r for s, r in by_seed.items()}}
                          for c, by_seed in self.results.items()]}


def _run_task(task: Task) -> tuple[Task, dict, float]:
    reqs = make_workload(task.cell.workload, task.rate, task.duration, task.seed)
    cfg = ClusterConfig(pods=task.cell.pods, profile=task.profile, seed=task.seed)
    report, cpu = run_policy(task.policy, reqs, task.duration, cfg, task.policy_config)
    return task, report, cpu


def run_grid(loads: Sequence[float] = LOADS, pods: Sequence[int] = PODS,
             workloads: Sequence[str] = WORKLOADS, seeds: Sequence[int] = REPORTING_SEEDS,
             duration: float | None = None, profile: str = "llama2-7b-a10",
             policy_config: PolicyConfig | None = None, jobs: int = 1,
             progress: Callable[[int, int], None] | None = None,
             checkpoint: Path | None = None) -> Grid:
    """Every policy of POLICIES on every cell and seed, `jobs` processes at a time; the
    offered rate of a cell is its load × the fleet's stored capacity (harness/capacity.py),
    the same for every seed. `duration` is every run's (default: `grid_duration`). Each
    finished run is appended to `checkpoint` (JSON lines), and runs found there with the
    same parameters are not run again: a grid that was stopped resumes."""
    overlap = set(seeds) & set(TUNING_SEEDS)
    if overlap:
        raise ValueError(f"reporting seeds {sorted(overlap)} are tuning seeds (1-16): the "
                         "llm weights were tuned on those; choose others, e.g. 201,202,203")
    caps = {(w, n): fleet_capacity(w, n, profile) for w in workloads for n in pods}
    durations = {n: duration or grid_duration(n) for n in pods}
    grid = Grid(loads, pods, workloads, seeds, durations, profile, caps, jobs=jobs)
    tasks = [Task(Cell(w, n, load), s, p, load * caps[w, n].rps, durations[n], profile,
                  policy_config)
             for w in workloads for n in pods for load in loads for s in seeds
             for p in POLICIES]
    # cell by cell, the cheapest first: a grid stopped early has its finished cells whole
    order = {c: (sum(t.cost() for t in tasks if t.cell == c), i)
             for i, c in enumerate(dict.fromkeys(t.cell for t in tasks))}
    tasks.sort(key=lambda t: order[t.cell])
    saved = _read_checkpoint(checkpoint)
    pending = []
    for task in tasks:
        found = saved.get(_task_key(task))
        if found is None:
            pending.append(task)
            continue
        report, cpu = found
        grid.results.setdefault(task.cell, {}).setdefault(task.seed, {})[task.policy] = report
        grid.cpu_s += cpu
    tasks = pending
    out = open(checkpoint, "a") if checkpoint else None
    t0 = time.monotonic()
    if jobs <= 1:
        outcomes = map(_run_task, tasks)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=8)
        outcomes = pool.imap_unordered(_run_task, tasks)
    try:
        for done, (task, report, cpu) in enumerate(outcomes, 1):
            grid.results.setdefault(task.cell, {}).setdefault(task.seed, {})[task.policy] = report
            grid.cpu_s += cpu
            if out:
                out.write(json.dumps({"key": _task_key(task), "report": report, "cpu": cpu})
                          + "\n")
                out.flush()
            if progress:
                progress(done, len(tasks))
    finally:
        if pool is not None:
            pool.terminate()
        if out:
            out.close()
    grid.wall_s = time.monotonic() - t0
    return grid


def _task_key(task: Task) -> str:
    """What makes a run the same run (for the checkpoint)."""
    config = task.policy_config.model_dump(mode="json") if task.policy_config else None
    return json.dumps([task.cell.workload, task.cell.pods, task.cell.load, task.seed,
                       task.policy, task.rate, task.duration, task.profile, config],
                      sort_keys=True)


def _read_checkpoint(path: Path | None) -> dict[str, tuple[dict, float]]:
    """Finished runs saved in `path` (none when it does not exist)."""
    if path is None or not path.exists():
        return {}
    saved = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            saved[row["key"]] = (row["report"], row["cpu"])
        except (ValueError, KeyError, TypeError):
            if n < len(lines):  # a last line cut short is expected
                raise ValueError(f"{path}:{n}: not a grid checkpoint line; delete the file "
                                 "to start the grid afresh") from None
    return saved


# ---- the table ---------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float:
    """a / b where either may be inf (a policy whose failures reach the percentile's tail):
    both inf is 1 (alike), only a inf is inf, only b inf is 0."""
    if math.isinf(a) and math.isinf(b):
        return 1.0
    if math.isinf(a) or math.isinf(b):
        return math.inf if math.isinf(a) else 0.0
    return a / b if b > 0 else math.nan


def _gmean(values: Sequence[float]) -> float:
    if any(math.isnan(v) for v in values) or not values:
        return math.nan
    if any(math.isinf(v) for v in values):
        return math.inf
    if any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _num(v: float) -> str:
    """A ratio in 5 columns."""
    if math.isnan(v):
        return f"{'-':>5}"
    if math.isinf(v):
        return f"{'inf':>5}"
    return f"{v:5.2f}" if v < 10 else f"{v:5.1f}" if v < 100 else f"{v:5.0f}"


@dataclass(frozen=True, slots=True)
class CellFigures:
    """The llm policy's ratios on each seed (then their geometric mean) and the failures
    (shed + unfinished, summed over seeds) of each policy."""

    vs_oracle: list[float]
    vs_least: list[float]
    throughput_vs_rr: list[float]
    failures: dict[str, int]

    def misses(self) -> str:
        """O: p90 over 1.15x the greedy oracle's; L: over least-request's; T: throughput
        under round-robin's (each on the geometric mean over seeds, as printed)."""
        out = ""
        out += "O" if round(self.vs_oracle[-1], 2) > ORACLE_GOAL else ""
        out += "L" if round(self.vs_least[-1], 2) > 1.0 else ""
        out += "T" if round(self.throughput_vs_rr[-1], 2) < 1.0 else ""
        return out


def cell_figures(by_seed: dict[int, dict[str, dict]]) -> CellFigures:
    seeds = sorted(by_seed)

    def ratios(policy: str, ref: str, key: str) -> list[float]:
        per_seed = [_ratio(by_seed[s][policy][key], by_seed[s][ref][key]) for s in seeds]
        return per_seed + [_gmean(per_seed)]
    p90 = "ttft_p90_failed_s"
    return CellFigures(ratios("llm", ORACLE, p90), ratios("llm", "least-request", p90),
                       ratios("llm", "round-robin", "throughput_tok_s"),
                       {p: sum(by_seed[s][p]["shed"] + by_seed[s][p]["failed"] for s in seeds)
                        for p in POLICIES})


SHORT = {"round-robin": "rr", "least-request": "lr", "llm": "llm", ORACLE: "go"}


def format_grid(grid: Grid) -> str:
    """One table per workload, each line at most 100 columns."""
    seeds = ",".join(map(str, grid.seeds))
    n = len(grid.seeds) + 1
    group = 5 * n
    legend = (f"tuning seeds {TUNING_SEEDS[0]}-{TUNING_SEEDS[-1]}, reporting seeds {seeds}; "
              "simulated s of arrivals per run: "
              + ", ".join(f"{n} pods {d:.0f}" for n, d in grid.durations.items())
              + f"; profile {grid.profile}. "
              "TTFT p90 counts each shed or unfinished request as a failure (TTFT inf). "
              "Each group: every seed, then the geometric mean (gm). fail: shed + unfinished "
              f"over the seeds, {'/'.join(SHORT[p] for p in POLICIES)}. miss: O llm p90 > "
              f"{ORACLE_GOAL}x {ORACLE}'s, L llm p90 > least-request's, T llm throughput < "
              "round-robin's (geometric means, as printed). "
              f"{ORACLE} (go) is a greedy per-request heuristic with clairvoyance, not a "
              "bound: llm can beat it.")
    lines = textwrap.wrap(legend, 100, break_on_hyphens=False)
    for w in grid.workloads:
        caps = ", ".join(f"{n} pods {grid.capacities[w, n].rps:.2f}" for n in grid.pods)
        source = grid.capacities[w, grid.pods[0]].source
        lines += [""] + textwrap.wrap(f"{w}: capacity req/s {caps} ({source})", 100) + [
                  f"{'':9} |{'llm p90 / ' + SHORT[ORACLE] + ' p90':^{group}} |"
                  f"{'llm p90 / lr p90':^{group}} |{'throughput llm/rr':^{group}} | "
                  f"{'fail rr/lr/llm/go':<17} miss",
                  f"{'pods load':9} |" + " |".join(
                      "".join(f"{s:>5}" for s in grid.seeds) + f"{'gm':>5}" for _ in range(3))
                  + " |"]
        for pods in grid.pods:
            for load in grid.loads:
                by_seed = grid.results.get(Cell(w, pods, load))
                if not by_seed or not _whole(grid, by_seed):
                    continue  # not run (or not all of it): a stopped grid
                f = cell_figures(by_seed)
                fail = "/".join(str(f.failures[p]) for p in POLICIES)
                lines.append(f"{pods:>4} {load:>4.1f} |" + " |".join(
                    "".join(_num(v) for v in vals)
                    for vals in (f.vs_oracle, f.vs_least, f.throughput_vs_rr))
                    + f" | {fail:<17} {f.misses()}")
    runs = sum(len(r) for by_seed in grid.results.values() for r in by_seed.values())
    lines += ["", f"{runs} runs in "
              f"{grid.wall_s / 60:.1f} min wall ({grid.cpu_s / 60:.1f} CPU-min) on "
              f"{grid.jobs} process(es)"]
    return "\n".join(lines)


def _whole(grid: Grid, by_seed: dict) -> bool:
    """Whether a cell's runs are all there: every seed, every policy (a stopped grid
    leaves cells part run)."""
    return len(by_seed) >= len(grid.seeds) and all(
        len(runs) >= len(POLICIES) for runs in by_seed.values())


def missed_cells(grid: Grid) -> list[str]:
    """'workload pods load: misses' for every cell that misses a goal."""
    out = []
    order = {w: i for i, w in enumerate(grid.workloads)}
    for cell, by_seed in sorted(grid.results.items(),
                                key=lambda c: (order.get(c[0].workload, 0), c[0].pods, c[0].load)):
        if not _whole(grid, by_seed):
            continue
        m = cell_figures(by_seed).misses()
        if m:
            out.append(f"{cell.workload} {cell.pods} pods load {cell.load}: {m}")
    return out
