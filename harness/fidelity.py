"""`llmtraffic bench fidelity`: one seeded workload through real engines (each policy in turn,
behind the balancer) and through the simulator with the engines' measured profile, side by
side with the ratio sim/real per figure; which policy is better on each, with each figure's
spread from resampling the requests; and the steps from the seed's A10 model to the CPU
engine in virtual time, which show where a large simulated llm-vs-round-robin gap goes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from llmtraffic.harness.engines import warm_up
from llmtraffic.harness.hostload import HostLoad
from llmtraffic.harness.live import RouterSpec, run_router
from llmtraffic.harness.loadclient import Outcome
from llmtraffic.harness.routing import measure_capacity, policy_factory
from llmtraffic.harness.stack import Fleet
from llmtraffic.simulator.cluster import Cluster, ClusterConfig, quantile
from llmtraffic.simulator.engine import SimRequest
from llmtraffic.simulator.profile import Profile, StepFit, get_profile
from llmtraffic.simulator.workloads import WorkloadRequest, make_workload

POLICIES = ("llm", "round-robin")
#: The balancer's scrape interval in both worlds (`run_router` starts it with this one).
SCRAPE_INTERVAL_S = 0.1
#: Seconds of the load's first arrivals run through the balancer (round-robin, salted apart,
#: not measured) before the first policy: freshly started CPU engines run their first
#: batches of the load's shapes (long prompts, several adapters in a batch) slowly, which
#: `warm_up`'s one short request per model does not cover; without it whichever policy ran
#: first had the worse real TTFT p90 (llm first: 0.540 s vs round-robin's 0.446; round-robin
#: first: 0.507 s vs llm's 0.427), its first 15-30 s slow.
WARM_LOAD_S = 30.0
#: Figures compared, with how the table names them; "lower" is better for all but hits.
FIGURES = (("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p90_s", "TTFT p90 (s)"),
           ("throughput_tok_s", "throughput (tok/s)"), ("prefix_hit_rate", "prefix hit rate"),
           ("preemptions", "preemptions"))
HIGHER_IS_BETTER = {"throughput_tok_s", "prefix_hit_rate"}
GOAL = 0.25  # each figure within 25% of the real engine's
#: Figures whose spread comes from resampling the requests (the others are set by the
#: arrivals: throughput, or are counts: preemptions; within 2% of each other is a tie).
PER_REQUEST = ("ttft_p50_s", "ttft_p90_s", "prefix_hit_rate")
#: engine_speed's bisection: between these factors, to within 1% (8 halvings of 8x)
SPEED_RANGE = (0.5, 4.0)
SPEED_STEPS = 8
RESAMPLES = 1000
BLOCKS = 12  # of consecutive arrivals the requests are resampled in: 10 s of a 120 s run
LEVEL = 0.95  # the interval kept of the resampled ratios
#: One request as a run saw it: (index in the workload, TTFT s, prompt tokens, of them
#: prefix-cache hits); a figure's key "requests" holds them.
Sample = tuple[int, float, int, int]


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
    #: How contended the host's cores were during each policy's real run against the
    #: profile's calibration, by `HostLoad`'s probe (1 = the same, 2 = twice).
    host: list[float] = field(default_factory=list)
    #: How much slower the real engines decoded during each policy's run than the profile
    #: (`engine_speed`), and the simulator again for each policy with the profile's times
    #: scaled by it: the serving stack and other work on a shared machine take the cores.
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
    """Each policy in turn behind the balancer on `fleet`, prompts salted per run, after the
    load's first WARM_LOAD_S seconds run unmeasured (`warm_load`) to warm the engines. How
    contended the host was during each run (`HostLoad`), against `profile`'s calibration,
    is its host figure. Returns (figures per policy, host figures)."""
    rng = random.Random()  # the salt must differ from any earlier run on these pods
    then = profile.calibration.get("host_stretch", math.nan)
    warm_up(fleet.urls)  # the first policy must not pay the adapters' first use
    warm = warm_load(reqs)
    say(f"warming the engines: the load's first {WARM_LOAD_S:.0f} s ({len(warm)} requests), "
        "not measured")
    run_router(RouterSpec("llmtraffic", "round-robin"), workdir / "warm-up",
               salted(warm, new_salt(rng)), len(fleet.urls), 1.0, seed, fleet)
    out, speeds = {}, []
    for name in policies:
        say(f"real engines, policy {name}: {len(reqs)} requests")
        outcomes: list[Outcome] = []
        with HostLoad() as host:
            figures, _ = run_router(RouterSpec("llmtraffic", name), workdir, salted(
                reqs, new_salt(rng)), len(fleet.urls), 1.0, seed, fleet, keep=outcomes)
        figures["requests"] = [(o.index, o.ttft, o.prompt_tokens, o.cached_tokens)
                               for o in outcomes if o.ok and o.ttft is not None]
        out[name] = figures
        speeds.append(host.stretch / then if then and then == then else math.nan)
        say(f"  the host ran CPU work {host.stretch:.2f}x its CPU time ({speeds[-1]:.2f}x as "
            "slow as at calibration)")
    return out, speeds


def warm_load(reqs: Sequence[WorkloadRequest], seconds: float = WARM_LOAD_S
              ) -> list[WorkloadRequest]:
    """The requests arriving in the load's first `seconds`: what `run_real` runs, unmeasured,
    before the first policy."""
    return [w for w in reqs if w.arrival < seconds]


def slower(profile: Profile, factor: float) -> Profile:
    """`profile` on a host `factor` times as slow: every measured time scaled."""
    if factor != factor or profile.step_fit is None:
        return profile
    fit = StepFit(*(getattr(profile.step_fit, f.name) * factor
                    for f in fields(StepFit)))
    return replace(profile, name=f"{profile.name} x{factor:.2f}", step_fit=fit,
                   frontend_s=profile.frontend_s * factor,
                   frontend_busy_s=None if profile.frontend_busy_s is None
                   else profile.frontend_busy_s * factor,
                   lora_load_cold_s=profile.lora_load_cold_s * factor)


def engine_speed(profile: Profile, real: Mapping[str, float],
                 reqs: Sequence[WorkloadRequest], pods: int, duration: float, seed: int,
                 policy: str) -> float:
    """The factor by which the profile's times must be scaled for the simulator's TPOT
    p50 (the decode steps) to be the real run's: how fast the real engines ran then.
    Bisected within SPEED_RANGE (a slower engine also batches more, so the TPOT grows
    faster than the factor); NaN without a real TPOT. TPOT is not a figure the table
    compares."""
    want = real.get("tpot_p50_s", math.nan)
    if not want == want or want <= 0:
        return math.nan
    low, high = SPEED_RANGE
    for _ in range(SPEED_STEPS):
        mid = math.sqrt(low * high)
        got = run_sim(slower(profile, mid), reqs, pods, duration, seed,
                      [policy])[policy]["tpot_p50_s"]
        if not got == got:
            return math.nan
        low, high = (mid, high) if got < want else (low, mid)
    return math.sqrt(low * high)


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
        cluster = Cluster(cfg, policy_factory(name, seed))
        r = cluster.run(reqs, duration)
        figures = r.as_dict()
        # as the client measures it: every token over the time the last one took
        figures["throughput_tok_s"] = r.output_tokens / r.last_finish_s \
            if r.last_finish_s > 0 else math.nan
        figures["requests"] = sim_samples(cluster.requests, cluster.frontend)
        # as the client measures it: the time after the first token over the tokens after it
        figures["tpot_p50_s"] = quantile([
            (q.token_times[-1] - q.token_times[0]) / (len(q.token_times) - 1)
            for q in cluster.requests if len(q.token_times) > 1], 0.5)
        out[name] = figures
    return out


def sim_samples(requests: Sequence[SimRequest], frontend: Mapping[str, float]
                ) -> list[Sample]:
    """The simulated requests that got a first token, as the client would see them
    (`frontend`: each one's seconds outside the engine, `Cluster.frontend`)."""
    return [(int(q.request_id), q.first_token - q.arrival + frontend[q.request_id],
             q.num_prompt, q.num_cached_tokens) for q in requests
            if q.first_token is not None and q.finish_reason != "abort"]


# ---- which policy is better, and by more than the noise? --------------------------------
def figure(samples: Sequence[Sample], key: str) -> float:
    """A per-request figure of a run's requests (the hit rate over their prompt tokens)."""
    if key == "prefix_hit_rate":
        prompt = sum(s[2] for s in samples)
        return sum(s[3] for s in samples) / prompt if prompt else math.nan
    return quantile([s[1] for s in samples], 0.5 if key == "ttft_p50_s" else 0.9)


@dataclass(frozen=True)
class Spread:
    """Policy b's figure over policy a's, with the LEVEL interval of that ratio over
    RESAMPLES resamples of the requests (paired: both policies served the same ones;
    `spread`)."""

    ratio: float
    low: float
    high: float

    def verdict(self, key: str) -> str:
        """"a" or "b" when the interval leaves out 1 (one is better beyond the noise),
        "=" when it does not."""
        if not (self.low > 1.0 or self.high < 1.0):
            return "="
        return "b" if (self.low > 1.0) == (key in HIGHER_IS_BETTER) else "a"

    def cell(self) -> str:
        if self.ratio != self.ratio:
            return "-"
        return f"{self.ratio:.2f} {self.low:.2f}-{self.high:.2f}"


NO_SPREAD = Spread(math.nan, math.nan, math.nan)


def spread(a: Sequence[Sample], b: Sequence[Sample], key: str, seed: int = 1) -> Spread:
    """b's `key` over a's on the requests both got a first token for, and its interval:
    the requests resampled in BLOCKS runs of consecutive arrivals, because a shared
    host's noise comes in bursts that slow neighbouring requests alike (resampled one by
    one, the interval was too narrow for the same run repeated: 1.03-1.27, then 0.86-1.00)."""
    by_index = {s[0]: s for s in b}
    pairs = sorted(((s, by_index[s[0]]) for s in a if s[0] in by_index),
                   key=lambda pair: pair[0][0])
    if not pairs:
        return NO_SPREAD

    def ratio(ps: Sequence[tuple[Sample, Sample]]) -> float:
        return _ratio(figure([q for _, q in ps], key), figure([p for p, _ in ps], key))

    size = -(-len(pairs) // BLOCKS)
    blocks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    rng = random.Random(seed)
    draws = sorted(ratio([pair for block in rng.choices(blocks, k=len(blocks))
                          for pair in block]) for _ in range(RESAMPLES))
    cut = int(RESAMPLES * (1.0 - LEVEL) / 2)
    return Spread(ratio(pairs), draws[cut], draws[RESAMPLES - 1 - cut])


def order(real: Spread, sim: Spread, key: str) -> str:
    """"same": both resolve the same policy as better; "differs": they resolve opposite
    ones, or one resolves a policy and the other's interval leaves out its ratio; "tie
    within noise": neither resolves one, or one does within the other's interval."""
    r, s = real.verdict(key), sim.verdict(key)
    if r == s:
        return "same" if r != "=" else "tie within noise"
    if "=" not in (r, s):
        return "differs"
    tie, sure = (real, sim) if r == "=" else (sim, real)
    return "tie within noise" if tie.low <= sure.ratio <= tie.high else "differs"


def policy_order(f: "Fidelity") -> list[dict]:
    """Per figure: each world's cell (the ratio and its interval, or the 2% rule's winner),
    its verdict, and the order of the simulator and of the scaled one against real."""
    a, b = list(f.real)
    worlds = {"real": f.real, "sim": f.sim, "sim x host": f.sim_scaled}
    rows = []
    for key, label in FIGURES:
        both = {w: d for w, d in worlds.items() if {a, b} <= set(d)}
        if key in PER_REQUEST:
            spreads = {w: spread(d[a].get("requests") or (), d[b].get("requests") or (), key)
                       for w, d in both.items()}
            got = {w: spreads.get(w, NO_SPREAD) for w in worlds}
            cells = {w: x.cell() for w, x in got.items()}
            verdicts = {w: x.verdict(key) for w, x in got.items()}
            orders = {w: order(got["real"], got[w], key) if w in both else "-"
                      for w in ("sim", "sim x host")}
        else:
            verdicts = {w: better(d[a], d[b], key) if w in both else "="
                        for w, d in worlds.items()}
            cells = {w: {"a": a, "b": b, "=": "tie"}[v] if w in both else "-"
                     for w, v in verdicts.items()}
            orders = {w: ("same" if verdicts[w] == verdicts["real"] else "differs")
                      if w in both else "-" for w in ("sim", "sim x host")}
        rows.append({"figure": label, "key": key, "cells": cells, "verdicts": verdicts,
                     "order": orders})
    return rows


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
    """The side-by-side table (at most 100 columns), the policies' order on each, and the
    ladder when it was run. `*` marks a ratio more than 25% away from 1."""
    runs = ", ".join(f"{name} {x:.2f}x" for name, x in zip(f.real, f.speeds))
    host = ", ".join(f"{x:.2f}x" for x in f.host)
    lines = [f"bench fidelity: {f.workload}, {f.pods} pods, {f.rate:.2f} req/s for "
             f"{f.duration:.0f} s, seed {f.seed}; real: {f.engine}, sim: {f.profile}",
             f"the real engines decoded (TPOT p50) {runs or '?'} as slow as the profile;",
             f"the host probe (HostLoad) against calibration: {host or '?'}; sim x host: the "
             "simulator with", "the profile's times scaled by its run's engines' speed",
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
        lines += ["", f"which policy is better: {b}'s figure over {a}'s, and its "
                  f"{LEVEL:.0%} interval over {RESAMPLES}",
                  f"resamples of the requests (paired, in {BLOCKS} blocks of consecutive "
                  "arrivals); a policy is better", "where the interval leaves out 1; "
                  "throughput and preemptions: the better policy, a tie within 2%.",
                  "Order against the real run:",
                  "same, differs, or tie within noise (neither resolves a better policy, or "
                  "one does inside the", "other's interval)",
                  f"{'figure':<19}{'real':>15}{'sim':>15}{'sim x host':>15}  order: sim/x host"]
        for row in policy_order(f):
            c, o = row["cells"], row["order"]
            lines.append(f"{row['figure']:<19}{c['real']:>15}{c['sim']:>15}"
                         f"{c['sim x host']:>15}  {o['sim']}/{o['sim x host']}")
    if f.steps:
        lines += ["", "round-robin's TTFT over llm's in virtual time, from the README's claim "
                  "to this engine:", f"{'model':<58}{'p50':>8}{'p90':>8}{'llm p90':>10}"]
        for row in f.steps:
            lines.append(f"{row['step'][:57]:<58}{row['rr_over_llm_p50']:>7.1f}x"
                         f"{row['rr_over_llm_p90']:>7.1f}x{row['llm_ttft_p90_s']:>9.2f}s")
    return "\n".join(lines)
