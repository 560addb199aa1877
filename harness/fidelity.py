"""`llmtraffic bench fidelity`: one seeded workload through real engines (each policy in turn,
behind the balancer) and through the simulator with the engines' measured profile, side by
side with the ratio sim/real per figure; and the steps from the seed's A10 model to the CPU
engine in virtual time, which show where a large simulated llm-vs-round-robin gap goes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

from llmtraffic.harness.engines import warm_up
from llmtraffic.harness.hostload import HostLoad
from llmtraffic.harness.live import RouterSpec, run_router
from llmtraffic.harness.routing import measure_capacity, policy_factory
from llmtraffic.harness.stack import Fleet
from llmtraffic.simulator.cluster import Cluster, ClusterConfig
from llmtraffic.simulator.profile import Profile, StepFit, get_profile
from llmtraffic.simulator.workloads import WorkloadRequest, make_workload

POLICIES = ("llm", "round-robin")
#: The balancer's scrape interval in both worlds (`run_router` starts it with this one).
SCRAPE_INTERVAL_S = 0.1
#: Figures compared, with how the table names them; "lower" is better for all but hits.
FIGURES = (("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p90_s", "TTFT p90 (s)"),
           ("throughput_tok_s", "throughput (tok/s)"), ("prefix_hit_rate", "prefix hit rate"),
           ("preemptions", "preemptions"))
HIGHER_IS_BETTER = {"throughput_tok_s", "prefix_hit_rate"}
GOAL = 0.25  # each figure within 25% of the real engine's


@dataclass
class Fidelity:
    """One run: the figures per policy on the real engines and in the simulator."""

    workload: str
    pods: int
    rate: float
    duration: float
    seed: int
    profile: str
    engine: str
    real: dict[str, dict] = field(default_factory=dict)
    sim: dict[str, dict] = field(default_factory=dict)
    #: How contended the host was during each policy's real run against the profile's
    #: calibration (1 = the same, 2 = twice: other work on a shared machine), and the
    #: simulator again for each policy with the profile's times scaled by its run's.
    speeds: list[float] = field(default_factory=list)
    sim_scaled: dict[str, dict] = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)  # explain(): the A10-to-CPU ladder

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def salted(reqs: Sequence[WorkloadRequest], salt: str) -> list[WorkloadRequest]:
    """The same requests with `salt` before every prompt: a run on pods that served an
    earlier run finds none of its prefixes cached (prompts that shared a prefix still do)."""
    return [replace(w, prompt=salt + w.prompt) for w in reqs]


def new_salt(rng: random.Random) -> str:
    return f"[{rng.getrandbits(32):08x}] "


def capacity(workload: str, profile: Profile, pods: int, seed: int) -> float:
    """Requests/s `pods` pods of `profile` sustain on `workload`: one pod's, times the pods,
    less what pods sharing one host's cores take from each other."""
    one = measure_capacity(workload, profile, seed)
    return pods * one / (1.0 + profile.host_contention * (pods - 1))


def run_real(fleet: Fleet, reqs: Sequence[WorkloadRequest], workdir: Path, seed: int,
             profile: Profile, policies: Sequence[str] = POLICIES,
             say: Callable[[str], None] = print) -> tuple[dict[str, dict], list[float]]:
    """Each policy in turn behind the balancer on `fleet`, prompts salted per run. How
    contended the host was during each run (`HostLoad`), against `profile`'s calibration,
    is its speed. Returns (figures per policy, speeds)."""
    rng = random.Random()  # the salt must differ from any earlier run on these pods
    then = profile.calibration.get("host_stretch", math.nan)
    warm_up(fleet.urls)  # the first policy must not pay the adapters' first use
    out, speeds = {}, []
    for name in policies:
        say(f"real engines, policy {name}: {len(reqs)} requests")
        with HostLoad() as host:
            figures, _ = run_router(RouterSpec("llmtraffic", name), workdir, salted(
                reqs, new_salt(rng)), len(fleet.urls), 1.0, seed, fleet)
        out[name] = figures
        speeds.append(host.stretch / then if then and then == then else math.nan)
        say(f"  the host ran CPU work {host.stretch:.2f}x its CPU time ({speeds[-1]:.2f}x as "
            "slow as at calibration)")
    return out, speeds


def slower(profile: Profile, factor: float) -> Profile:
    """`profile` on a host `factor` times as slow: every measured time scaled."""
    if factor != factor or profile.step_fit is None:
        return profile
    fit = StepFit(*(getattr(profile.step_fit, f.name) * factor
                    for f in fields(StepFit)))
    return replace(profile, name=f"{profile.name} x{factor:.2f}", step_fit=fit,
                   frontend_s=profile.frontend_s * factor,
                   lora_load_cold_s=profile.lora_load_cold_s * factor)


def run_sim_scaled(profile: Profile, speeds: Sequence[float],
                   reqs: Sequence[WorkloadRequest], pods: int, duration: float, seed: int,
                   policies: Sequence[str] = POLICIES) -> dict[str, dict]:
    """Each policy in the simulator with the profile scaled by its own real run's speed
    (nothing for a policy whose speed is unknown)."""
    return {name: run_sim(slower(profile, speed), reqs, pods, duration, seed, [name])[name]
            for name, speed in zip(policies, speeds) if speed == speed}


def run_sim(profile: Profile, reqs: Sequence[WorkloadRequest], pods: int, duration: float,
            seed: int, policies: Sequence[str] = POLICIES) -> dict[str, dict]:
    """Each policy in virtual time on `pods` pods of `profile`, prompts salted alike."""
    reqs = salted(reqs, new_salt(random.Random(seed)))
    out = {}
    for name in policies:
        cfg = ClusterConfig(pods=pods, profile=profile, scrape_interval=SCRAPE_INTERVAL_S,
                            seed=seed)
        r = Cluster(cfg, policy_factory(name, seed)).run(reqs, duration)
        figures = r.as_dict()
        # as the client measures it: every token over the time the last one took
        figures["throughput_tok_s"] = r.output_tokens / r.last_finish_s \
            if r.last_finish_s > 0 else math.nan
        out[name] = figures
    return out


# ---- where the simulator's large gap goes ---------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One rung of the ladder: a model of the engine and the load it runs."""

    label: str
    profile: Profile
    workload: str
    pods: int
    load: float
    duration: float


def ladder(cpu: Profile, workload: str, pods: int, load: float, duration: float
           ) -> list[Step]:
    """From the README's claim (the seed's A10 model) to the measured CPU engine, one
    change at a time, each at the same fraction of its own capacity."""
    a10 = get_profile("llama2-7b-a10")
    steps = [Step("A10 model, seed-lora, 4 pods, load 0.9 (README)", a10, "seed-lora", 4,
                  0.9, 600.0),
             Step(f"A10 model, {workload}, {pods} pods, load {load:.2f}", a10, workload,
                  pods, load, duration)]
    p = replace(a10, name="a10+cpu-steps", step_fit=cpu.step_fit)
    steps.append(Step("+ CPU step times (measured)", p, workload, pods, load, duration))
    p = replace(p, name="a10+cpu-kv", kv_blocks=cpu.kv_blocks, block_size=cpu.block_size)
    steps.append(Step(f"+ {cpu.kv_blocks} KV blocks of {cpu.block_size} tokens", p,
                      workload, pods, load, duration))
    p = replace(p, name="a10+cpu-limits", max_num_seqs=cpu.max_num_seqs,
                max_model_len=cpu.max_model_len, max_loras=cpu.max_loras,
                max_cpu_loras=cpu.max_cpu_loras, chars_per_token=cpu.chars_per_token,
                lora_load_cold_s=cpu.lora_load_cold_s, lora_load_warm_s=cpu.lora_load_warm_s)
    steps.append(Step(f"+ {cpu.max_num_seqs} seqs, {cpu.chars_per_token:.1f} chars/token",
                      p, workload, pods, load, duration))
    steps.append(Step(f"+ pods sharing the cores, {cpu.frontend_s * 1e3:.0f} ms outside the "
                      f"engine (= {cpu.name})", cpu, workload, pods, load, duration))
    return steps


def explain(steps: Sequence[Step], seed: int) -> list[dict]:
    """round-robin's TTFT p50/p90 over llm's at each rung, in virtual time."""
    rows = []
    for s in steps:
        rate = s.load * capacity(s.workload, s.profile, s.pods, seed)
        reqs = make_workload(s.workload, rate, s.duration, seed)
        sim = run_sim(s.profile, reqs, s.pods, s.duration, seed)
        llm, rr = sim["llm"], sim["round-robin"]
        rows.append({"step": s.label, "rate_rps": rate,
                     "llm_ttft_p90_s": llm["ttft_p90_s"], "rr_ttft_p90_s": rr["ttft_p90_s"],
                     "rr_over_llm_p50": _ratio(rr["ttft_p50_s"], llm["ttft_p50_s"]),
                     "rr_over_llm_p90": _ratio(rr["ttft_p90_s"], llm["ttft_p90_s"])})
    return rows


# ---- the table ----------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float:
    if a == 0 and b == 0:
        return 1.0
    return a / b if b else math.inf


def _cell(value: float, key: str) -> str:
    if value != value:
        return "-"
    if key == "prefix_hit_rate":
        return f"{value:.1%}"
    if key == "preemptions":
        return f"{value:.0f}"
    if key == "throughput_tok_s":
        return f"{value:.1f}"
    return f"{value:.3f}"


def _ratio_cell(sim: float, real: float) -> str:
    """sim/real, `*` when more than GOAL away from 1, `-` without a real figure."""
    if real != real or sim != sim:
        return "-"
    ratio = _ratio(sim, real)
    return f"{ratio:.2f}" + ("*" if abs(ratio - 1.0) > GOAL else " ")


def better(policy_a: dict, policy_b: dict, key: str) -> str:
    """Which of two policies' figures is better: "a", "b" or "=" (within 2%)."""
    a, b = policy_a[key], policy_b[key]
    if a != a or b != b or abs(a - b) <= 0.02 * max(abs(a), abs(b)):
        return "="
    return "a" if (a > b) == (key in HIGHER_IS_BETTER) else "b"


def format_fidelity(f: Fidelity) -> str:
    """The side-by-side table (at most 100 columns), the policies' order on both, and the
    ladder when it was run. `*` marks a ratio more than 25% away from 1."""
    runs = ", ".join(f"{name} {x:.2f}x" for name, x in zip(f.real, f.speeds))
    lines = [f"bench fidelity: {f.workload}, {f.pods} pods, {f.rate:.2f} req/s for "
             f"{f.duration:.0f} s, seed {f.seed}; real: {f.engine}, sim: {f.profile}",
             f"the host's cores during each real run, against calibration: {runs or '?'};",
             "sim x host: the simulator with the profile's times scaled by its run's",
             f"{'figure':<20}{'policy':<13}{'real':>10}{'sim':>10}{'sim/real':>10}"
             f"{'sim x host':>12}{'/real':>8}", "-" * 83]
    for key, label in FIGURES:
        for name in f.real:
            r = f.real[name].get(key, math.nan)
            s, x = (d.get(name, {}).get(key, math.nan) for d in (f.sim, f.sim_scaled))
            lines.append(f"{label:<20}{name:<13}{_cell(r, key):>10}{_cell(s, key):>10}"
                         f"{_ratio_cell(s, r):>10}{_cell(x, key):>12}{_ratio_cell(x, r):>8}")
    names = list(f.real)
    if len(names) == 2:
        a, b = names
        word = {"a": a, "b": b, "=": "tie"}
        lines += ["", f"which policy is better ({a} vs {b}; tie: within 2%):",
                  f"{'figure':<20}{'real':>13}{'sim':>13}{'sim x host':>13}  same order"]
        for key, label in FIGURES:
            rw, sw = better(f.real[a], f.real[b], key), better(f.sim[a], f.sim[b], key)
            xw = better(f.sim_scaled[a], f.sim_scaled[b], key) \
                if {a, b} <= set(f.sim_scaled) else "="
            lines.append(f"{label:<20}{word[rw]:>13}{word[sw]:>13}{word[xw]:>13}  "
                         f"{'yes' if rw == sw else 'no'}/{'yes' if rw == xw else 'no'}")
    if f.steps:
        lines += ["", "round-robin's TTFT over llm's in virtual time, from the README's claim "
                  "to this engine:", f"{'model':<58}{'p50':>8}{'p90':>8}{'llm p90':>10}"]
        for row in f.steps:
            lines.append(f"{row['step'][:57]:<58}{row['rr_over_llm_p50']:>7.1f}x"
                         f"{row['rr_over_llm_p90']:>7.1f}x{row['llm_ttft_p90_s']:>9.2f}s")
    return "\n".join(lines)
