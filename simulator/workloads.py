"""Named, documented benchmark workloads: seeded Poisson arrivals of LLM requests whose
prompt text, model/adapter, output length and criticality follow a published shape.

Every workload is a pure function of (rate, duration, seed); the same requests drive the
virtual-time cluster, the live benchmark and the demo, so routers are compared on the
same work."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Callable, Iterator

from llmtraffic.contracts.prompt import CHARS_PER_TOKEN

#: The seed's served base model and its ten LoRA adapters (deploy/seed/vllm-deployment.yaml).
BASE_MODEL = "meta-llama/Llama-2-7b-hf"
SEED_ADAPTERS = ("sql-lora", "sql-lora-1", "sql-lora-2", "sql-lora-3", "sql-lora-4",
                 "tweet-summary", "tweet-summary-1", "tweet-summary-2", "tweet-summary-3",
                 "tweet-summary-4")

# ShareGPT shape, from the vLLM paper (Kwon et al., SOSP 2023, Fig. 11): mean input
# 161 tokens, mean output 338 tokens, both long-tailed. We use lognormals with those means.
SHAREGPT_PROMPT_MEAN = 161
SHAREGPT_OUTPUT_MEAN = 338
#: Characters per token of the workloads' text under a real tokenizer: the model kit's
#: byte-level BPE (simulator/modelkit/tokenizer.json) gives 2.00 on these words (20,000
#: of them), and a real vLLM engine reported 2.006 (profiles/vllm-cpu-tiny.json,
#: `llmtraffic bench calibrate --engine vllm`). Lengths below are in such tokens (the GPU
#: profiles tokenize at this ratio), so the balancer's 4-character estimate
#: (contracts/prompt.py) sees half of them, as it would against a real engine.
TEXT_CHARS_PER_TOKEN = 2
_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
          "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
          "zulu").split()


@dataclass(slots=True, frozen=True)
class WorkloadRequest:
    """One request of a workload: what a client sends, plus the true output length."""

    index: int
    arrival: float  # seconds from the start
    model: str  # the `model` field the client sends
    prompt: str
    max_tokens: int
    output_len: int  # tokens the (simulated) model generates before EOS (<= max_tokens)
    criticality: str = "Critical"
    group: str = ""  # e.g. the shared-prefix group or the adapter, for reports


def _lognormal(rng: random.Random, mean: float, sigma: float, lo: int, hi: int) -> int:
    mu = math.log(mean) - sigma * sigma / 2  # so that E[X] = mean
    return max(lo, min(hi, int(rng.lognormvariate(mu, sigma))))


def filler_text(rng: random.Random, tokens: int, chars_per_token: int = CHARS_PER_TOKEN
                ) -> str:
    """Random text of exactly `tokens * chars_per_token` characters."""
    n = tokens * chars_per_token
    words: list[str] = []
    size = 0
    while size < n:
        w = rng.choice(_WORDS)
        words.append(w)
        size += len(w) + 1
    return " ".join(words)[:n].ljust(n)


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (k ** s) for k in range(1, n + 1)]


def _arrivals(rate: float, duration: float, rng: random.Random) -> Iterator[float]:
    t = rng.expovariate(rate)
    while t < duration:
        yield t
        t += rng.expovariate(rate)


def seed_lora(rate: float, duration: float, seed: int = 1, *,
              base_fraction: float = 0.3, zipf_s: float = 1.1) -> list[WorkloadRequest]:
    """The seed's fleet: 10 LoRA adapters with Zipf popularity (s=1.1) plus 30% base-model
    traffic; ShareGPT-like lognormal prompt (mean 161) and output (mean 338) lengths."""
    rng = random.Random(seed)
    weights = _zipf_weights(len(SEED_ADAPTERS), zipf_s)
    out: list[WorkloadRequest] = []
    for i, t in enumerate(_arrivals(rate, duration, rng)):
        model = BASE_MODEL if rng.random() < base_fraction else \
            rng.choices(SEED_ADAPTERS, weights)[0]
        p = _lognormal(rng, SHAREGPT_PROMPT_MEAN, 1.0, 4, 1536)
        o = _lognormal(rng, SHAREGPT_OUTPUT_MEAN, 0.8, 4, 1024)
        out.append(WorkloadRequest(i, t, model, filler_text(rng, p, TEXT_CHARS_PER_TOKEN),
                                   max_tokens=o, output_len=o, group=model))
    return out


def shared_prefix(rate: float, duration: float, seed: int = 1, *, groups: int = 16,
                  system_prompt_tokens: int = 1024, question_tokens: int = 64,
                  output_tokens: int = 128) -> list[WorkloadRequest]:
    """Groups sharing long system prompts, like inference-perf's `shared_prefix` data: 16
    groups, a 1,024-token system prompt per group, a 64-token question, 128 output tokens.
    Groups are equally popular; each pod's KV cache holds only part of all the prefixes,
    so where a request lands decides whether its prefix is a cache hit."""
    rng = random.Random(seed)
    cpt = TEXT_CHARS_PER_TOKEN
    prefixes = [f"[system {g:02d}] " + filler_text(rng, system_prompt_tokens, cpt)
                for g in range(groups)]
    # keep prefixes a whole number of tokens so that prefix ids are a prefix of prompt ids
    prefixes = [p[: len(p) // cpt * cpt] for p in prefixes]
    out: list[WorkloadRequest] = []
    for i, t in enumerate(_arrivals(rate, duration, rng)):
        g = rng.randrange(groups)
        prompt = prefixes[g] + filler_text(rng, question_tokens, cpt)
        out.append(WorkloadRequest(i, t, BASE_MODEL, prompt, max_tokens=output_tokens,
                                   output_len=output_tokens, group=f"prefix-{g:02d}"))
    return out


def mixed(rate: float, duration: float, seed: int = 1) -> list[WorkloadRequest]:
    """Half `seed-lora`, half `shared-prefix`, with 20% of the LoRA traffic Sheddable."""
    a = seed_lora(rate / 2, duration, seed)
    b = shared_prefix(rate / 2, duration, seed + 1000)
    rng = random.Random(seed + 2000)
    merged = sorted(
        [WorkloadRequest(0, r.arrival, r.model, r.prompt, r.max_tokens, r.output_len,
                         "Sheddable" if rng.random() < 0.2 else "Critical", r.group)
         for r in a] + b,
        key=lambda r: r.arrival)
    return [WorkloadRequest(i, r.arrival, r.model, r.prompt, r.max_tokens, r.output_len,
                            r.criticality, r.group) for i, r in enumerate(merged)]


def _bursty_arrivals(rate: float, lo: float, hi: float, rng: random.Random,
                     burst: tuple[float, float], factor: float) -> Iterator[float]:
    """Poisson arrivals from `lo` to `hi`, `rate` a second, `factor` times denser within
    `burst` (start, end)."""
    b0, b1 = burst
    for a, b, r in ((lo, b0, rate), (b0, b1, rate * factor), (b1, hi, rate)):
        t = a + rng.expovariate(r)  # memoryless: each piece starts afresh at its start
        while t < b:
            yield t
            t += rng.expovariate(r)


#: The multi-turn chat shape (`multi_turn`): token lengths, turns and pacing.
CHAT = {"system": 200, "turns_mean": 4.0, "max_turns": 8, "user_mean": 80, "answer_mean": 200,
        "max_context": 3072, "think_s": 10.0, "think_mean_s": 20.0}


def _chat_turns(rng: random.Random) -> list[tuple[int, int]]:
    """(user message, answer) token lengths of one conversation's turns: lognormal, turns
    geometric (mean CHAT["turns_mean"]), stopping before the conversation would pass
    CHAT["max_context"] tokens."""
    out: list[tuple[int, int]] = []
    size = CHAT["system"]
    for _ in range(int(CHAT["max_turns"])):
        u = _lognormal(rng, CHAT["user_mean"], 0.8, 4, 512)
        o = _lognormal(rng, CHAT["answer_mean"], 0.8, 4, 1024)
        if size + u + o + 8 > CHAT["max_context"]:  # 8: the turn's role markers
            break
        out.append((u, o))
        size += u + o + 8
        if rng.random() < 1.0 / CHAT["turns_mean"]:
            break
    return out


@functools.lru_cache(maxsize=1)
def _mean_chat_turns() -> float:
    """Turns per conversation, averaged over 4,000 conversations of a fixed seed (the
    context cap makes it less than the geometric mean)."""
    rng = random.Random(0)
    return sum(len(_chat_turns(rng)) for _ in range(4000)) / 4000


def multi_turn(rate: float, duration: float, seed: int = 1, *,
               burst: tuple[float, float] = (0.4, 0.5), burst_factor: float = 3.0
               ) -> list[WorkloadRequest]:
    """Chat conversations on the base model: each turn resends the conversation so far (a
    200-token system prompt, every earlier user message and answer) plus a new user
    message, so a conversation's turns share a prefix that grows turn by turn. Lognormal
    user messages (mean 80 tokens) and answers (mean 200); turns per conversation geometric
    (mean 4, at most 8, fewer once the conversation would pass 3,072 tokens, inside
    Llama-2's 4,096). A turn follows the previous one after 10 s plus an exponential think
    time (mean 20 s), open loop (it does not wait for the answer). Conversations start as
    Poisson arrivals, three times denser from 40% to 50% of the run (a burst), and already
    before it starts (so requests average `rate` a second from the first second on, not
    only once conversations are under way). The shape is a choice, not a published trace:
    ShareGPT-like lengths spread over turns."""
    rng = random.Random(seed)
    cpt = TEXT_CHARS_PER_TOKEN
    warmup = CHAT["max_turns"] * (CHAT["think_s"] + 3 * CHAT["think_mean_s"])
    b0, b1 = burst[0] * duration, burst[1] * duration
    base = rate / _mean_chat_turns() * duration / (duration + (burst_factor - 1) * (b1 - b0))
    starts = _bursty_arrivals(base, -warmup, duration, rng, (b0, b1), burst_factor)
    requests: list[WorkloadRequest] = []
    for n, t in enumerate(starts):
        turns = _chat_turns(rng)
        times = []
        for _ in turns:
            times.append(t)
            t += CHAT["think_s"] + rng.expovariate(1.0 / CHAT["think_mean_s"])
        if times[-1] < 0:
            continue  # over before the run starts
        history = f"[chat {n:05d}] " + filler_text(rng, int(CHAT["system"]), cpt)
        for (u, o), at in zip(turns, times):
            prompt = f"{history}\nUser: {filler_text(rng, u, cpt)}\nAssistant: "
            if 0 <= at < duration:
                requests.append(WorkloadRequest(0, at, BASE_MODEL, prompt, max_tokens=o,
                                                output_len=o, group=f"chat-{n:05d}"))
            history = prompt + filler_text(rng, o, cpt)  # the answer, resent next turn
    requests.sort(key=lambda r: r.arrival)
    return [WorkloadRequest(i, r.arrival, r.model, r.prompt, r.max_tokens, r.output_len,
                            r.criticality, r.group) for i, r in enumerate(requests)]


#: The apps of `cpu_mix`, most popular first: each has its own system prompt and model.
CPU_MIX_MODELS = (BASE_MODEL, "sql-lora", "tweet-summary", BASE_MODEL, "sql-lora-1",
                  "tweet-summary-1", "sql-lora-2", "tweet-summary-2")


def cpu_mix(rate: float, duration: float, seed: int = 1, *, system_prompt_tokens: int = 160,
            question_mean: int = 40, output_mean: int = 48,
            zipf_s: float = 1.1) -> list[WorkloadRequest]:
    """What the llm policy acts on, at a size a 2-core CPU vLLM (2,048-token context)
    carries: 8 apps with Zipf popularity (s=1.1), each with its own system prompt (160
    tokens of 4 characters: 640 characters, several 128-token blocks with the model kit's
    tokenizer) and its own model (two on the base model, six on the seed's adapters: more
    than the 4 LoRA slots); a lognormal question (mean 40, 8-160) and output (mean 48,
    8-160). `bench fidelity` runs it on the real CPU fleet and on the simulator."""
    rng = random.Random(seed)
    prompts = [f"[app {k}] " + filler_text(rng, system_prompt_tokens)
               for k in range(len(CPU_MIX_MODELS))]
    weights = _zipf_weights(len(CPU_MIX_MODELS), zipf_s)
    out: list[WorkloadRequest] = []
    for i, t in enumerate(_arrivals(rate, duration, rng)):
        k = rng.choices(range(len(CPU_MIX_MODELS)), weights)[0]
        q = _lognormal(rng, question_mean, 0.6, 8, 160)
        o = _lognormal(rng, output_mean, 0.6, 8, 160)
        out.append(WorkloadRequest(i, t, CPU_MIX_MODELS[k], prompts[k] + filler_text(rng, q),
                                   max_tokens=o, output_len=o, group=f"app-{k}"))
    return out


WORKLOADS: dict[str, Callable[..., list[WorkloadRequest]]] = {
    "seed-lora": seed_lora,
    "shared-prefix": shared_prefix,
    "mixed": mixed,
    "multi-turn": multi_turn,
    "cpu-mix": cpu_mix,
}


def make_workload(name: str, rate: float, duration: float, seed: int = 1
                  ) -> list[WorkloadRequest]:
    """Requests of workload `name` at `rate` requests/s for `duration` seconds."""
    try:
        fn = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of: "
                         f"{', '.join(sorted(WORKLOADS))}") from None
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be positive (got {rate}, {duration})")
    return fn(rate, duration, seed)
