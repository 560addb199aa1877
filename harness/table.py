"""The results table of a routing run (bench routing, bench live, the demo): one row per
figure and one column per policy or router, no wider than 100 columns, times labelled
simulated, sheds and unfinished requests beside the percentiles (which are given over served
requests and counting those as failures), and what the greedy oracle is when it ran."""

from __future__ import annotations

import math
import textwrap

from llmtraffic.harness.routing import ORACLE, RoutingRun

WIDTH = 100
LABEL = 24

#: (key in a policy's results, row label, format)
ROWS = (
    ("ttft_p50_s", "TTFT p50 (s)", ".3f"),
    ("ttft_p90_s", "TTFT p90 (s)", ".3f"),
    ("ttft_p99_s", "TTFT p99 (s)", ".3f"),
    ("shed", "  shed (429)", "d"),
    ("failed", "  unfinished / failed", "d"),
    ("ttft_p50_failed_s", "  p50, failures inf (s)", ".3f"),
    ("ttft_p90_failed_s", "  p90, failures inf (s)", ".3f"),
    ("ttft_p99_failed_s", "  p99, failures inf (s)", ".3f"),
    ("e2e_p90_s", "end-to-end p90 (s)", ".3f"),
    ("itl_p90_s", "inter-token p90 (s)", ".4f"),
    ("queue_time_mean_s", "queue time mean (s)", ".3f"),
    ("throughput_tok_s", "output tokens/s", ".0f"),
    ("completed", "served", "d"),
    ("kv_usage_mean", "KV-cache use mean", ".2f"),
    ("kv_usage_spread", "KV-cache use spread", ".2f"),
    ("prefix_hit_rate", "prefix-cache hit rate", ".2f"),
)

ORACLE_NOTE = (f"{ORACLE}: a greedy per-request heuristic with clairvoyance, not a bound. "
               "It sees every engine's exact state and each request's true output length, "
               "and sends each request where its first token comes soonest; being greedy, "
               "it cannot see that a pick takes the KV cache or LoRA slot the next arrivals "
               "need, so a policy that keeps adapters together (llm) can beat it.")


def _cell(value: object, fmt: str, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    if fmt == "d":
        return f"{int(value):>{width}d}"  # type: ignore[call-overload]
    return f"{value:>{width}{fmt}}"


def format_table(run: RoutingRun, name: str = "policy") -> str:
    """The run's figures, one column per policy, in blocks no wider than 100 columns."""
    source = f" ({run.capacity_source})" if run.capacity_source else ""
    head = (f"{run.workload}: {run.pods} pods at load {run.load:.2g} ({run.rate_rps:.2f} of "
            f"{run.capacity_rps:.2f} req/s measured capacity{source}), {run.duration:.0f} "
            f"simulated s of arrivals, seed {run.seed}; times in simulated seconds")
    lines = textwrap.wrap(head, WIDTH)
    names = list(run.policies)
    rows = [r for r in ROWS if any(r[0] in run.policies[n] for n in names)]
    for i, block in enumerate(_blocks(names)):
        lines += [""] if i else []
        lines.append(f"{name:<{LABEL}}" + "".join(f"{n:>{w}}" for n, w in block))
        for key, label, fmt in rows:
            lines.append(f"{label:<{LABEL}}" + "".join(
                _cell(run.policies[n].get(key), fmt, w) for n, w in block))
    if ORACLE in names:
        lines += textwrap.wrap(ORACLE_NOTE, WIDTH)
    return "\n".join(lines)


def _blocks(names: list[str]) -> list[list[tuple[str, int]]]:
    """Columns (name, width) packed into blocks that fit beside the labels in WIDTH."""
    blocks: list[list[tuple[str, int]]] = [[]]
    used = LABEL
    for n in names:
        w = max(11, len(n) + 2)
        if blocks[-1] and used + w > WIDTH:
            blocks.append([])
            used = LABEL
        blocks[-1].append((n, w))
        used += w
    return blocks
