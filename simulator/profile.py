"""Engine profiles: model × device, with the KV-cache size and a step-time model: a roofline
derived from first principles for the GPU profiles, or a fit of times measured on a real
engine (`llmtraffic bench calibrate`, profiles/*.json). Every constant says where it comes from."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from llmtraffic.contracts.prompt import CHARS_PER_TOKEN

GB = 1e9
#: Measured profiles written by `llmtraffic bench calibrate` (one JSON file each).
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class StepFit:
    """Seconds of one engine iteration, fitted by least squares on times measured on a real
    engine: a fixed cost per step, plus a cost per prefill token, per query-key pair of
    prefill attention (the quadratic term: a chunk of n tokens after c computed ones has
    n·c + n(n+1)/2 pairs), per decoding sequence, per context token a decoding sequence
    reads, per distinct LoRA adapter in the batch, per token computed through an adapter
    (prefill or decode; on CPU a LoRA token costs about as much again as a base one), and
    per token of a batch with an adapter that does not run through one itself: vLLM's CPU
    LoRA ops (`lora/ops/torch_ops`, bgmv/sgmv over every token, the adapter gathered per
    token) skip the LoRA math only when no sequence of the batch has an adapter
    (`punica_wrapper/utils.py`, `compute_meta`'s `no_lora`), so a base-model prompt that
    shares a step with any adapter's request pays for it too; GPU kernels skip such tokens
    and fit 0 here."""

    base_s: float
    prefill_token_s: float
    prefill_pair_s: float
    decode_seq_s: float
    decode_context_s: float
    adapter_s: float
    adapter_token_s: float = 0.0
    lora_batch_token_s: float = 0.0

    def seconds(self, prefill_tokens: int, prefill_pairs: int, decode_seqs: int,
                decode_context: int, adapters: int, adapter_tokens: int = 0,
                lora_batch_tokens: int = 0) -> float:
        return (self.base_s + prefill_tokens * self.prefill_token_s
                + prefill_pairs * self.prefill_pair_s + decode_seqs * self.decode_seq_s
                + decode_context * self.decode_context_s + adapters * self.adapter_s
                + adapter_tokens * self.adapter_token_s
                + lora_batch_tokens * self.lora_batch_token_s)


@dataclass(frozen=True)
class Profile:
    """One model on one GPU, as vLLM would run it.

    Step time (one engine iteration) is a roofline: an iteration reads all weights once
    and the KV of every scheduled token's context (memory time), and does
    `flops_per_token` of matmul work per scheduled token (compute time); it takes the
    larger of the two plus a fixed scheduler/launch overhead. A measured profile
    (`step_fit`, `kv_blocks`) replaces both with what a real engine showed."""

    name: str
    model: str  # served model name
    gpu: str
    gpu_memory_bytes: float
    weights_bytes: float
    kv_bytes_per_token: int
    activation_reserve_bytes: float  # activations, CUDA graphs, allocator slack
    mem_bandwidth: float  # bytes/s, spec sheet
    mem_efficiency: float  # achieved fraction of peak bandwidth in decode
    peak_flops: float  # dense fp16/bf16 tensor FLOP/s, spec sheet
    mfu: float  # achieved fraction of peak in prefill
    flops_per_token: float  # ≈ 2 × parameters
    step_overhead_s: float  # scheduler + kernel launch per iteration
    #: FLOPs of prefill attention per query-key pair: QK^T and attention x V, 2 FLOPs per
    #: multiply-add each, over every layer: 4 x n_layers x d_model (PaLM, Chowdhery et al.
    #: 2022, appendix B: 6N + 12·L·H·Q·T training FLOPs per token, a third of it forward).
    #: A chunk of n tokens after c computed ones has n·c + n(n+1)/2 pairs.
    attention_flops_per_pair: float = 0.0
    gpu_memory_utilization: float = 0.9  # vLLM's default (`--gpu-memory-utilization`)
    block_size: int = 16  # vLLM's default KV block on CUDA (`--block-size`)
    max_num_seqs: int = 256  # vLLM default
    max_num_batched_tokens: int = 2048  # vLLM V1 chunked-prefill budget (online serving)
    max_model_len: int = 4096  # Llama-2's context length
    max_loras: int = 4  # the seed's `--max-loras 4` (deploy/seed/vllm-deployment.yaml)
    max_cpu_loras: int = 12  # the seed's `--max-cpu-loras 12`
    #: Disk -> host -> GPU for a rank-16 7B adapter (~40 MB): the host -> GPU copy below
    #: plus reading and parsing the safetensors file (LoRAX measured 0.5-1 s when every
    #: layer was copied from pageable memory: predibase/lorax#433).
    lora_load_cold_s: float = 0.1
    #: Host -> GPU (vLLM's CPU LoRA cache to a GPU slot). The bytes alone are ~3 ms over
    #: PCIe (~40 MB at ~12 GB/s), but vLLM's activate_adapter copies each layer's A and B
    #: (~450 small tensors for Llama-2-7B) from pageable, non-contiguous memory: published
    #: figures are tens of ms (vllm-project/vllm#31317 measured the swap and cut it ~40% by
    #: pinning; vllm-project/vllm#31941 overlaps it with prefill because it is a visible
    #: part of TTFT; issue 16 of this project: "tens of milliseconds").
    lora_load_warm_s: float = 0.03
    #: Added to a step whose batch runs any adapter (the LoRA kernels over the batch):
    #: Punica (Chen et al., MLSys 2024, abstract) "only adding 2ms latency per token" for
    #: batches of distinct adapters on A100 with its SGMV kernels, which vLLM vendors
    #: (vllm-project/vllm#1804). Punica's SGMV cost barely depends on how many distinct
    #: adapters share the batch, so the simulator charges it once per step, not per adapter.
    lora_step_overhead_s: float = 0.002
    # ---- measured on a real engine (profiles/*.json); the roofline's defaults otherwise
    step_fit: StepFit | None = None  # replaces the roofline when set
    kv_blocks: int | None = None  # KV blocks the real engine's page reported
    chars_per_token: float = CHARS_PER_TOKEN  # of the real tokenizer on the workloads' text
    #: Seconds a request spends outside the engine before its first token reaches the
    #: client: HTTP, tokenization, detokenization, the first SSE event.
    frontend_s: float = 0.0
    #: The same when the pod has requests in flight: its API server handles their tokens
    #: every step in the process that takes the new request in and sends its first token
    #: (measured beside a decoding request, less the wait for the step in flight, which the
    #: engine model has); None: as `frontend_s`.
    frontend_busy_s: float | None = None
    #: Fraction by which a step slows for each other pod stepping at the same time on the
    #: same host (pods sharing CPU cores); 0 for pods with a device each.
    host_contention: float = 0.0
    #: Where the measured constants come from: command, date, raw measurements.
    calibration: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def frontend(self, busy: bool) -> float:
        """Seconds outside the engine for a request arriving at a pod that is `busy`
        (has requests in flight) or idle."""
        if busy and self.frontend_busy_s is not None:
            return self.frontend_busy_s
        return self.frontend_s

    def num_gpu_blocks(self, gpu_memory_utilization: float | None = None) -> int:
        if self.kv_blocks is not None:
            if gpu_memory_utilization is not None:
                raise ValueError(
                    f"profile {self.name}: the KV cache was measured ({self.kv_blocks} "
                    f"blocks); gpu_memory_utilization does not apply, set the number of "
                    f"blocks instead (--num-gpu-blocks-override)")
            return self.kv_blocks
        util = self.gpu_memory_utilization if gpu_memory_utilization is None \
            else gpu_memory_utilization
        if not 0 < util <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {util}")
        free = self.gpu_memory_bytes * util - self.weights_bytes - self.activation_reserve_bytes
        blocks = int(free // (self.kv_bytes_per_token * self.block_size))
        if blocks <= 0:
            raise ValueError(
                f"profile {self.name}: gpu_memory_utilization {util} leaves no room for the "
                f"KV cache after {self.weights_bytes / GB:.1f} GB of weights; raise it")
        return blocks

    def step_time(self, prefill_tokens: int, decode_seqs: int, context_tokens: int,
                  adapters: int = 0, *, prefill_pairs: int | None = None,
                  decode_context: int | None = None, adapter_tokens: int = 0,
                  lora_batch_tokens: int = 0) -> float:
        """Seconds for one iteration computing `prefill_tokens` prompt tokens and one token
        for each of `decode_seqs` sequences, reading `context_tokens` tokens of KV (of which
        `decode_context` by decoding sequences; `prefill_pairs` query-key pairs of prefill
        attention; `adapter_tokens` of all tokens through `adapters` LoRA adapters, and
        `lora_batch_tokens` the others of a batch with an adapter: `StepFit`'s last term).
        Without pairs and decode context, a prefill is taken as one chunk from scratch and
        the rest of the context as read by decodes."""
        if prefill_pairs is None:
            prefill_pairs = prefill_tokens * (prefill_tokens + 1) // 2
        if self.step_fit is not None:
            if decode_context is None:
                decode_context = max(0, context_tokens - prefill_tokens)
            return self.step_fit.seconds(prefill_tokens, prefill_pairs, decode_seqs,
                                         decode_context, adapters, adapter_tokens,
                                         lora_batch_tokens)
        memory = (self.weights_bytes + context_tokens * self.kv_bytes_per_token) / (
            self.mem_bandwidth * self.mem_efficiency)
        compute = ((prefill_tokens + decode_seqs) * self.flops_per_token
                   + prefill_pairs * self.attention_flops_per_pair) / (self.peak_flops * self.mfu)
        lora = self.lora_step_overhead_s if adapters else 0.0
        return self.step_overhead_s + max(memory, compute) + lora


# Llama-2-7B fp16 on one NVIDIA A10 (24 GB GDDR6, 600 GB/s, 125 TFLOPS dense fp16 tensor)
# as the seed deploys it (--gpu-memory-utilization 0.8, --max-loras 4, --max-cpu-loras 12).
#  * weights: 6.74e9 params × 2 bytes = 13.5 GB (FACTS.md);
#  * KV per token: 32 layers × 4096 hidden × 2 (K,V) × 2 bytes = 512 KiB (FACTS.md);
#  * KV blocks: (24 GB × 0.8 − 13.5 GB − 1.0 GB reserve) / (16 × 512 KiB) ≈ 560 blocks
#    ≈ 9,000 tokens ("a few hundred blocks", FACTS.md);
#  * decode floor: 13.5 GB / (600 GB/s × 0.8 achieved) ≈ 28 ms + 2 ms overhead ≈ 30 ms
#    per step, in the 25–35 ms ITL range reported for 7B models on A10 at low batch;
#  * prefill: 2 × 6.74e9 ≈ 13.5 GFLOP per token (FACTS.md: ≈ 14) at 50% MFU of 125 TFLOPS
#    → ≈ 0.22 ms per token, i.e. ≈ 0.22 s for a 1,000-token prompt; plus attention,
#    4 × 32 layers × 4096 = 0.52 MFLOP per query-key pair (PaLM's count, see
#    `attention_flops_per_pair`): +8% for a 4,096-token prompt, +2% at 1,024;
#  * 80% of peak bandwidth and 50% MFU are assumptions (no published A10 figure found),
#    chosen so the decode floor lands in the ITL range above; 2 ms a step for vLLM's
#    scheduler and launches likewise;
#  * LoRA: `Profile`'s defaults (30 ms host -> GPU, 2 ms a step with adapters; sourced
#    there);
#  * tokenizer: 2.0 characters per token on the workloads' text, as a real tokenizer
#    measured it: the model kit's byte-level BPE gives 2.00 on the workloads' words (its
#    `tokenizer.json`, 20,000 words) and the real vLLM engine reported 2.006
#    (profiles/vllm-cpu-tiny.json, `llmtraffic bench calibrate --engine vllm`). The
#    balancer estimates 4 (contracts/prompt.py), so its estimate is not exact here, as it
#    is not against a real engine (Llama-2's 32k vocabulary would give more characters per
#    token than the kit's 4k; no measured figure for it on this text).
LLAMA2_7B_A10 = Profile(
    name="llama2-7b-a10", model="meta-llama/Llama-2-7b-hf", gpu="NVIDIA A10 24GB",
    gpu_memory_bytes=24 * GB, weights_bytes=13.5 * GB, kv_bytes_per_token=32 * 4096 * 2 * 2,
    activation_reserve_bytes=1.0 * GB, mem_bandwidth=600 * GB, mem_efficiency=0.8,
    peak_flops=125e12, mfu=0.5, flops_per_token=13.5e9, step_overhead_s=0.002,
    attention_flops_per_pair=4 * 32 * 4096,
    gpu_memory_utilization=0.8, max_num_seqs=256, max_num_batched_tokens=2048,
    max_model_len=4096, max_loras=4, max_cpu_loras=12, chars_per_token=2.0)

# Llama-3-8B bf16 on one H100 SXM (80 GB HBM3, 3.35 TB/s, 989 TFLOPS dense bf16).
#  * weights: 8.03e9 params × 2 bytes = 16.1 GB;
#  * KV per token (GQA, 8 KV heads × 128 dims): 32 layers × 1024 × 2 × 2 bytes = 128 KiB;
#  * KV blocks: (80 GB × 0.9 − 16.1 GB − 3 GB reserve) / (16 × 128 KiB) ≈ 25,000 blocks;
#  * decode floor: 16.1 GB / (3.35 TB/s × 0.75) ≈ 6.4 ms + 1.5 ms overhead ≈ 8 ms per step
#    (public vLLM runs report 7–12 ms ITL at low batch);
#  * prefill: 16 GFLOP per token at 45% MFU of 989 TFLOPS → ≈ 36 µs per token; attention
#    4 × 32 layers × 4096 (32 query heads × 128) per query-key pair, as Llama-2-7B's;
#  * 75% of bandwidth, 45% MFU and 1.5 ms a step are assumptions like the A10's;
#  * LoRA: 15 ms host -> GPU (the A10's 30 ms at H100's PCIe Gen5, twice Gen4's
#    bandwidth), 1 ms a step with adapters (Punica's A100 2 ms scaled by the H100's 1.6x
#    memory bandwidth, rounded down); tokenizer as the A10 profile's.
LLAMA3_8B_H100 = Profile(
    name="llama3-8b-h100", model="meta-llama/Meta-Llama-3-8B-Instruct", gpu="NVIDIA H100 SXM",
    gpu_memory_bytes=80 * GB, weights_bytes=16.1 * GB, kv_bytes_per_token=32 * 1024 * 2 * 2,
    activation_reserve_bytes=3.0 * GB, mem_bandwidth=3350 * GB, mem_efficiency=0.75,
    peak_flops=989e12, mfu=0.45, flops_per_token=16.06e9, step_overhead_s=0.0015,
    gpu_memory_utilization=0.9, max_num_seqs=256, max_num_batched_tokens=8192,
    max_model_len=8192, max_loras=4, max_cpu_loras=12, attention_flops_per_pair=4 * 32 * 4096,
    lora_load_cold_s=0.06, lora_load_warm_s=0.015, lora_step_overhead_s=0.001,
    chars_per_token=2.0)



def profile_from_json(data: Mapping[str, Any], where: str = "profile") -> Profile:
    """A measured profile from its JSON form (`profile_to_json`); errors name the field."""
    known = {f.name for f in fields(Profile)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; a profile has "
                         f"{', '.join(sorted(known))}")
    values = dict(data)
    if values.get("step_fit") is not None:
        try:
            values["step_fit"] = StepFit(**values["step_fit"])
        except TypeError as e:
            raise ValueError(f"{where}: step_fit: {e}") from None
    try:
        return Profile(**values)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def profile_to_json(profile: Profile) -> dict[str, Any]:
    """The JSON form of a profile (field by field; `step_fit` as an object)."""
    out: dict[str, Any] = {}
    for f in fields(Profile):
        value = getattr(profile, f.name)
        if isinstance(value, StepFit):
            value = {g.name: getattr(value, g.name) for g in fields(StepFit)}
        out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


def load_profiles(folder: Path = PROFILES_DIR) -> dict[str, Profile]:
    """Every `*.json` profile in `folder`, by name."""
    out: dict[str, Profile] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path.name}: not a readable JSON profile ({e}); rerun "
                             "`llmtraffic bench calibrate` to write it again") from None
        profile = profile_from_json(data, path.name)
        out[profile.name] = profile
    return out


PROFILES: dict[str, Profile] = {p.name: p for p in (LLAMA2_7B_A10, LLAMA3_8B_H100)}
PROFILES.update(load_profiles())
DEFAULT_PROFILE = LLAMA2_7B_A10.name


def get_profile(name: str | Profile) -> Profile:
    """The profile called `name` (a Profile is its own answer: a variant made in code)."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown engine profile {name!r}; known profiles: "
                         f"{', '.join(sorted(PROFILES))}") from None


def blocks_for(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size)
