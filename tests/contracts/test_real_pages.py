"""The parser on pages a real vLLM 0.32 (CPU) served (tests/fixtures/vllm/, captured as its
README says): every field read equals what prometheus_client's own parser finds there."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts.vllm import parse_metrics

PAGES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"


def reference(text: str) -> dict:
    """The fields we read, as prometheus_client parses them."""
    samples = {}
    lora: list[tuple[float, dict]] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "vllm:lora_requests_info":
                lora.append((s.value, s.labels))
            elif s.name == "vllm:cache_config_info":
                samples["block_size"] = int(s.labels["block_size"])
                samples["num_gpu_blocks"] = int(s.labels["num_gpu_blocks"])
            else:
                samples[s.name] = samples.get(s.name, 0.0) + s.value
    newest = max(lora, key=lambda x: x[0])[1] if lora else {}
    split = lambda v: tuple(a for a in (v or "").split(",") if a)  # noqa: E731
    return {"running": samples["vllm:num_requests_running"],
            "waiting": samples["vllm:num_requests_waiting"],
            "kv_usage": samples["vllm:kv_cache_usage_perc"],
            "prefix_queries": samples["vllm:prefix_cache_queries_total"],
            "prefix_hits": samples["vllm:prefix_cache_hits_total"],
            "prompt_tokens": samples["vllm:prompt_tokens_total"],
            "generation_tokens": samples["vllm:generation_tokens_total"],
            "block_size": samples["block_size"], "num_gpu_blocks": samples["num_gpu_blocks"],
            "running_adapters": split(newest.get("running_lora_adapters")),
            "waiting_adapters": split(newest.get("waiting_lora_adapters")),
            "max_lora": int(newest.get("max_lora", 0))}


@pytest.mark.parametrize("page", sorted(p.name for p in PAGES.glob("*.txt")))
def test_a_real_page_reads_as_prometheus_client_reads_it(page):
    text = (PAGES / page).read_text()
    got = parse_metrics(text.encode())
    want = reference(text)
    assert {k: getattr(got, k) for k in want} == want
    assert not got.legacy and got.bad_lines == 0
    assert got.models == ("meta-llama/Llama-2-7b-hf",)  # LoRA requests too: the base name


def test_what_a_real_cpu_page_shows():
    """The facts the policy and dashboards must be built for (FACTS.md, real vLLM)."""
    busy = parse_metrics((PAGES / "busy.txt").read_bytes())
    assert busy.block_size == 128 and busy.num_gpu_blocks == 512  # 65,536 tokens of KV
    assert (busy.running, busy.waiting) == (6, 2)
    # the newest of four label sets is the state; running and waiting lists are the same
    assert busy.running_adapters == ("tweet-summary", "sql-lora", "tweet-summary-1",
                                     "sql-lora-1")
    assert busy.waiting_adapters == busy.running_adapters and busy.max_lora == 4
    # the two requests waiting for a LoRA slot are in neither list, only in this count
    assert busy.waiting_deferred == 2
    after = parse_metrics((PAGES / "after_prefix.txt").read_bytes())
    assert (after.prefix_queries, after.prefix_hits) == (1204, 512)  # 4 blocks of 128
    idle = parse_metrics((PAGES / "idle.txt").read_bytes())
    assert idle.running_adapters == () and idle.kv_usage == 0
