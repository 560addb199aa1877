"""Calibration of the simulator: one pod's TTFT, inter-token latency and output tokens/s at
concurrency 1, 8 and 32 (closed loop, virtual time), beside the published or derived
figures each profile's constants come from.

    python -m bench.sim_calibration [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from llmtraffic.simulator.engine import Engine, EngineConfig, SimRequest
from llmtraffic.simulator.profile import PROFILES, Profile

PROMPT_TOKENS = 512
OUTPUT_TOKENS = 128

#: Reference figures per profile: (what, value, source). Roofline values are derived in
#: simulator/profile.py from spec sheets; the ranges are public measurements of vLLM.
REFERENCES: dict[str, list[tuple[str, str, str]]] = {
    "llama2-7b-a10": [
        ("ITL at concurrency 1", "25-35 ms", "7B fp16 decode on A10: 13.5 GB / 600 GB/s "
         "memory floor (FACTS.md: ~22 ms) + overhead; public A10 vLLM runs report ~30 ms"),
        ("TTFT of a 512-token prompt, idle", "~0.1-0.15 s", "13.5 GFLOP/token x 512 at "
         "~60 TFLOPS achieved (half of 125 TFLOPS fp16 peak)"),
        ("KV capacity", "~9,000 tokens (560 blocks)", "FACTS.md: 0.5 MB/token, "
         "gpu_memory_utilization 0.8"),
    ],
    "llama3-8b-h100": [
        ("ITL at concurrency 1", "7-12 ms", "16 GB / 3.35 TB/s floor + overhead; vLLM "
         "benchmarks of Llama-3-8B on H100"),
        ("TTFT of a 512-token prompt, idle", "~20 ms", "16 GFLOP/token x 512 at ~450 "
         "TFLOPS achieved"),
        ("output tokens/s at concurrency 32", "~2,500-3,500", "vLLM serving benchmarks of "
         "8B models on one H100 at moderate concurrency"),
    ],
}


def closed_loop(profile: Profile, concurrency: int, requests: int = 96,
                seed: int = 1) -> dict[str, float]:
    """`concurrency` clients each sending the next request when the previous finishes."""
    engine = Engine(EngineConfig.from_profile(profile), profile, seed=seed)
    rng = random.Random(seed)
    now = 0.0
    sent = 0
    done: list[SimRequest] = []

    def submit(t: float) -> None:
        nonlocal sent
        ids = [rng.randrange(1 << 30) for _ in range(PROMPT_TOKENS)]
        engine.add_request(SimRequest(str(sent), ids, OUTPUT_TOKENS, t), t)
        sent += 1

    for _ in range(concurrency):
        submit(0.0)
    while engine.has_work():
        res = engine.step(now)
        now += res.duration
        for out in res.outputs:
            if out.finished:
                done.append(out.request)
                if sent < requests:
                    submit(now)
    ttft = [r.first_token - r.arrival for r in done]
    itl = [(r.token_times[-1] - r.token_times[0]) / (len(r.token_times) - 1) for r in done]
    tokens = sum(r.num_generated for r in done)
    return {"concurrency": concurrency, "ttft_mean_s": statistics.fmean(ttft),
            "ttft_p50_s": statistics.median(ttft), "itl_mean_s": statistics.fmean(itl),
            "output_tok_s": tokens / now}


def calibrate() -> dict[str, list[dict[str, float]]]:
    return {name: [closed_loop(p, c) for c in (1, 8, 32)] for name, p in PROFILES.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    results = calibrate()
    for name, rows in results.items():
        p = PROFILES[name]
        print(f"\n{name}  ({p.model} on {p.gpu}; {p.num_gpu_blocks()} KV blocks, "
              f"prompt {PROMPT_TOKENS} / output {OUTPUT_TOKENS} tokens)")
        print(f"{'concurrency':>12} {'TTFT mean':>10} {'TTFT p50':>10} {'ITL':>9} "
              f"{'out tok/s':>10}")
        for r in rows:
            print(f"{r['concurrency']:>12} {r['ttft_mean_s'] * 1000:>8.0f}ms "
                  f"{r['ttft_p50_s'] * 1000:>8.0f}ms {r['itl_mean_s'] * 1000:>7.1f}ms "
                  f"{r['output_tok_s']:>10.0f}")
        print("  references:")
        for what, value, source in REFERENCES[name]:
            print(f"   - {what}: {value}  [{source}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
