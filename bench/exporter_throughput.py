"""Access-log throughput of the exporter's real path (Tailer → FastJsonParser → TokenCounters,
i.e. `ExporterApp.poll`) on realistic Istio JSON lines, beside naive `json.loads` counting
and Google's mtail (Debian `mtail`, when installed) running an equivalent program (the same
token counters, requests by model and code, and duration histogram) on the same file, in the
same run; lines/s (wall and per CPU-second), MB/s, µs/line and RSS per mode, and the ratio of
the exporter to mtail per CPU-second.

    python -m bench.exporter_throughput [--lines 1000000] [--block-mb 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from llmtraffic.exporter.app import ExporterApp, ExporterOptions

GOAL_LINES_PER_S = 250_000
GOAL_RSS_MB = 100.0
#: (model, weight): base models and LoRA adapters as the seed serves them.
MODELS = (("meta-llama/Llama-2-7b-hf", 30), ("sql-lora", 20), ("sql-lora-1", 8),
          ("tweet-summary", 15), ("tweet-summary-1", 7),
          ("meta-llama/Meta-Llama-3-8B-Instruct", 20))
AGENTS = ("OpenAI/Python 1.54.3", "python-requests/2.32.3", "curl/8.5.0",
          "Go-http-client/1.1", "langchain-openai/0.2.9 OpenAI/Python 1.55.0")
ERRORS = (("429", "-"), ("503", "UF"), ("400", "-"), ("504", "UT"))
#: mtail's equivalent of the exporter's job on these lines: the asm_llm_proxy_* counters and
#: the duration histogram (regular expressions; mtail has no JSON decoder, and no per-field
#: validation: a "-" token count simply does not match).
MTAIL_PROGRAM = r"""
counter asm_llm_proxy_prompt_tokens_total by model
counter asm_llm_proxy_completion_tokens_total by model
counter asm_llm_proxy_requests_total by model, response_code
histogram asm_llm_proxy_request_duration_seconds by model buckets %s

/"response_code":"(?P<code>\d+)".*"duration":(?P<duration>\d+),.*"request_model":"(?P<model>[^"]+)"/ {
  asm_llm_proxy_requests_total[$model][$code]++
  asm_llm_proxy_request_duration_seconds[$model] = $duration / 1000.0
  /"request_prompt_tokens":"(?P<prompt>\d+)"/ {
    asm_llm_proxy_prompt_tokens_total[$model] += $prompt
  }
  /"request_completion_tokens":"(?P<completion>\d+)"/ {
    asm_llm_proxy_completion_tokens_total[$model] += $completion
  }
}
"""


@dataclass
class Totals:
    """What the generated lines should count to: per model prompt/completion tokens and
    requests per (model, response_code)."""

    lines: int = 0
    bytes: int = 0
    prompt: dict[str, int] = field(default_factory=dict)
    completion: dict[str, int] = field(default_factory=dict)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)


def istio_line(rng: random.Random, i: int, models: list[str], weights: list[int],
               totals: Totals) -> bytes:
    """One Istio JSON access-log line (~700 bytes: 18 Istio fields, then ASM's LLM fields
    as strings; 3% errors logged with "-" tokens)."""
    model = rng.choices(models, weights)[0]
    ok = rng.random() < 0.97
    code, flags = ("200", "-") if ok else rng.choice(ERRORS)
    prompt, completion = rng.randrange(20, 2048), rng.randrange(1, 1024)
    ms = int(completion * rng.uniform(20, 40)) + rng.randrange(20, 400)
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    rid = f"{rng.getrandbits(128):032x}"
    line = orjson.dumps({
        "start_time": f"2026-11-24T03:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}."
                      f"{i % 1000:03d}Z",
        "method": "POST", "path": rng.choice(("/v1/chat/completions", "/v1/completions")),
        "protocol": "HTTP/1.1", "response_code": code, "response_flags": flags,
        "bytes_received": prompt * 4 + 120, "bytes_sent": completion * 4 + 300 if ok else 96,
        "duration": ms, "upstream_service_time": str(ms - 3),
        "x_forwarded_for": ip, "user_agent": rng.choice(AGENTS),
        "request_id": f"{rid[:8]}-{rid[8:12]}-4{rid[13:16]}-a{rid[17:20]}-{rid[20:]}",
        "authority": "llm-gateway.inference.svc.cluster.local",
        "upstream_host": f"10.8.{rng.randrange(4)}.{rng.randrange(2, 30)}:8000",
        "upstream_cluster": "outbound|8000||vllm-llama2-7b-pool.default.svc.cluster.local",
        "downstream_remote_address": f"{ip}:{rng.randrange(32768, 60999)}",
        "route_name": "llm-route",
        "request_model": model,
        "request_prompt_tokens": str(prompt) if ok else "-",
        "request_completion_tokens": str(completion) if ok else "-",
    }) + b"\n"
    totals.lines += 1
    totals.bytes += len(line)
    if ok:
        totals.prompt[model] = totals.prompt.get(model, 0) + prompt
        totals.completion[model] = totals.completion.get(model, 0) + completion
    totals.requests[(model, code)] = totals.requests.get((model, code), 0) + 1
    return line


def generate(path: str, lines: int, seed: int = 0) -> Totals:
    rng = random.Random(seed)
    models, weights = [m for m, _ in MODELS], [w for _, w in MODELS]
    totals = Totals()
    with open(path, "wb") as fh:
        for start in range(0, lines, 10_000):
            fh.write(b"".join(istio_line(rng, i, models, weights, totals)
                              for i in range(start, min(lines, start + 10_000))))
    return totals


# ---- memory ----------------------------------------------------------------------------

def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs), so each mode's peak
    is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


# ---- the modes -------------------------------------------------------------------------

@dataclass
class Result:
    mode: str
    lines: int
    bytes: int
    seconds: float
    cpu_seconds: float
    rss_before_mb: float
    rss_after_mb: float
    rss_peak_mb: float
    prompt: dict[str, int]
    completion: dict[str, int]
    requests: dict[tuple[str, str], int]

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds

    @property
    def lines_per_cpu_s(self) -> float:
        """Lines per second of one busy core (robust to other processes on the machine)."""
        return self.lines / self.cpu_seconds


Timed = tuple[int, int, float, float, Any]  # lines, bytes, wall s, CPU s, app or counts


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _measure(mode: str, body: Callable[[], Timed]) -> Result:
    """Run body() (it times its own work) under RSS watch."""
    reset_peak()
    before = rss_mb()
    lines, nbytes, seconds, cpu, out = body()
    after, peak = rss_mb(), _status_mb("VmHWM")
    if isinstance(out, ExporterApp):
        c = out.counters
        prompt = {k[0]: int(v) for k, v in c.prompt.items()}
        completion = {k[0]: int(v) for k, v in c.completion.items()}
        requests = {k: int(v) for k, v in c.requests.items()}
        out.tailer.close()
    else:
        prompt, completion, requests = out
    return Result(mode, lines, nbytes, seconds, cpu, before, after, peak, prompt, completion,
                  requests)


def exporter_tail(log: str, block: int) -> Result:
    """The exporter following a growing file: `block` bytes appended (kernel copy from
    `log`, not timed) before each poll; only poll() is timed."""
    def body() -> Timed:
        with tempfile.TemporaryDirectory() as d:
            live = os.path.join(d, "access.log")
            open(live, "wb").close()
            app = ExporterApp(ExporterOptions(access_logs=[live], listen="127.0.0.1:0"))
            size, copied, lines, wall, cpu = os.path.getsize(log), 0, 0, 0.0, 0.0
            with open(log, "rb") as src, open(live, "wb") as dst:
                while copied < size:
                    copied += os.sendfile(dst.fileno(), src.fileno(), copied,
                                          min(block, size - copied))
                    t, c = _clocks()
                    lines += app.poll()
                    wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
            return lines, copied, wall, cpu, app
    return _measure(f"exporter, tail ({block / 2**20:g} MB/poll)", body)


def exporter_backlog(log: str) -> Result:
    """The exporter started with --from-beginning on the whole file: polls (each a bounded
    batch) until it has caught up."""
    def body() -> Timed:
        app = ExporterApp(ExporterOptions(access_logs=[log], listen="127.0.0.1:0",
                                          from_beginning=True))
        t, c = _clocks()
        lines = app.poll()
        while app.tailer.more:
            lines += app.poll()
        return (lines, os.path.getsize(log), time.perf_counter() - t,
                time.process_time() - c, app)
    return _measure("exporter, backlog", body)


def naive(log: str, loads: Callable[[bytes], Any], name: str) -> Result:
    """Baseline: read lines, `loads` each, count tokens per model in dicts."""
    def body() -> Timed:
        prompt: dict[str, int] = {}
        completion: dict[str, int] = {}
        requests: dict[tuple[str, str], int] = {}
        lines = 0
        t0, c0 = _clocks()
        with open(log, "rb") as fh:
            for raw in fh:
                lines += 1
                obj = loads(raw)
                model = obj.get("request_model")
                if not model:
                    continue
                p, c = obj.get("request_prompt_tokens"), obj.get("request_completion_tokens")
                if p not in (None, "-"):
                    prompt[model] = prompt.get(model, 0) + int(p)
                if c not in (None, "-"):
                    completion[model] = completion.get(model, 0) + int(c)
                k = (model, str(obj.get("response_code", "")))
                requests[k] = requests.get(k, 0) + 1
        return (lines, os.path.getsize(log), time.perf_counter() - t0,
                time.process_time() - c0, (prompt, completion, requests))
    return _measure(f"naive {name} + dicts", body)


def _mtail_values(doc: dict, name: str) -> dict[tuple[str, ...], int]:
    return {tuple(lv["Labels"]): int(lv["Value"]["Value"])
            for m in doc.get(name, ()) for lv in m.get("LabelValues", ())}


def mtail(log: str, lines: int) -> Result | None:
    """Google's mtail on the same file (`--one_shot`: read it to the end, print the metrics);
    CPU time and peak RSS are the child process's. None when mtail is not installed."""
    exe = shutil.which("mtail")
    if exe is None:
        return None
    from llmtraffic.contracts.series import DURATION_BUCKETS

    with tempfile.TemporaryDirectory() as d:
        prog = os.path.join(d, "llm.mtail")
        with open(prog, "w") as fh:
            fh.write(MTAIL_PROGRAM % ", ".join(map(str, DURATION_BUCKETS)))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        out = subprocess.run([exe, "--one_shot", "--one_shot_format=json", "--progs", prog,
                              "--logs", log, "--logtostderr", "--port", "0"],
                             capture_output=True, timeout=3600, check=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    doc = json.loads(out.stdout)
    prompt = {k[0]: v for k, v in _mtail_values(doc, "asm_llm_proxy_prompt_tokens_total").items()}
    completion = {k[0]: v for k, v in
                  _mtail_values(doc, "asm_llm_proxy_completion_tokens_total").items()}
    requests = _mtail_values(doc, "asm_llm_proxy_requests_total")
    return Result("mtail (same counters, regexes)", lines, os.path.getsize(log), wall, cpu,
                  float("nan"), float("nan"), after.ru_maxrss / 1024, prompt, completion,
                  requests)  # type: ignore[arg-type]


# ---- the benchmark ---------------------------------------------------------------------

def run(lines: int = 1_000_000, block_mb: float = 1.0, seed: int = 0,
        backlog: bool = True, directory: str | None = None) -> dict[str, Any]:
    """Generate the log, run every mode on it, return totals and results."""
    with tempfile.TemporaryDirectory(dir=directory) as d:
        log = os.path.join(d, "access.log")
        t = time.perf_counter()
        totals = generate(log, lines, seed)
        gen_s = time.perf_counter() - t
        results = [exporter_tail(log, int(block_mb * 2**20)),
                   naive(log, json.loads, "json.loads"),
                   naive(log, orjson.loads, "orjson.loads")]
        if backlog:
            results.append(exporter_backlog(log))
        theirs = mtail(log, totals.lines)
        if theirs is not None:
            results.append(theirs)
    return {"totals": totals, "generate_s": gen_s, "results": results}


def report(out: dict[str, Any]) -> str:
    totals: Totals = out["totals"]
    res: list[Result] = out["results"]
    base = next(r for r in res if "json.loads" in r.mode and "orjson" not in r.mode)
    rows = [f"{totals.lines:,} lines, {totals.bytes / totals.lines:.0f} bytes/line, "
            f"{totals.bytes / 2**20:.0f} MB (generated in {out['generate_s']:.1f} s; "
            f"read from the page cache); lines/s and MB/s are wall time, lines/CPU-s and "
            f"CPU µs/line one busy core",
            f"{'mode':<30} {'lines/s':>9} {'lines/CPU-s':>11} {'MB/s':>5} {'CPU µs/line':>11} "
            f"{'CPU/wall':>8} {'vs json':>7} {'RSS before':>10} {'after':>6} {'peak':>6}  "
            f"counts"]
    for r in res:
        exact = (r.lines == totals.lines and r.prompt == totals.prompt
                 and r.completion == totals.completion and r.requests == totals.requests)
        rows.append(f"{r.mode:<30} {r.lines_per_s:>9,.0f} {r.lines_per_cpu_s:>11,.0f} "
                    f"{r.bytes / 2**20 / r.seconds:>5.0f} {r.cpu_seconds / r.lines * 1e6:>11.2f} "
                    f"{r.cpu_seconds / r.seconds:>8.0%} "
                    f"{r.lines_per_cpu_s / base.lines_per_cpu_s:>6.2f}x "
                    f"{r.rss_before_mb:>8.0f}MB {r.rss_after_mb:>4.0f}MB {r.rss_peak_mb:>4.0f}MB  "
                    f"{'exact' if exact else 'MISMATCH'}")
    tail = res[0]
    pct = (tail.lines_per_cpu_s / GOAL_LINES_PER_S - 1) * 100
    rows.append(f"goal: >= {GOAL_LINES_PER_S // 1000}k lines/s on one core: "
                + (f"met by {pct:.0f}%" if pct >= 0 else f"missed by {-pct:.0f}%")
                + f" ({tail.mode}: {tail.lines_per_cpu_s:,.0f} lines/CPU-s, "
                  f"{tail.lines_per_s:,.0f} lines/s wall)")
    theirs = next((r for r in res if r.mode.startswith("mtail")), None)
    if theirs is None:
        rows.append("mtail: not installed (Debian: apt-get install mtail), not compared")
    else:
        rows.append(f"vs mtail: the exporter (tail) does {tail.lines_per_cpu_s:,.0f} lines/CPU-s, "
                    f"mtail {theirs.lines_per_cpu_s:,.0f}: "
                    f"{tail.lines_per_cpu_s / theirs.lines_per_cpu_s:.2f}x mtail")
    for r in res:
        if r.mode.startswith("exporter"):
            margin = GOAL_RSS_MB - r.rss_peak_mb
            rows.append(f"goal: RSS < {GOAL_RSS_MB:.0f} MB: "
                        + (f"met by {margin:.0f} MB" if margin > 0 else
                           f"missed by {-margin:.0f} MB")
                        + f" ({r.mode}: peak {r.rss_peak_mb:.0f} MB, growth "
                          f"{r.rss_after_mb - r.rss_before_mb:+.0f} MB)")
    return "\n".join(rows)


def profile(lines: int, block_mb: float, top: int = 15) -> None:
    """cProfile of the tail mode: the hottest functions by own time."""
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "access.log")
        generate(log, lines)
        prof = cProfile.Profile()
        prof.runcall(exporter_tail, log, int(block_mb * 2**20))
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.exporter_throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--block-mb", type=float, default=1.0,
                    help="bytes appended per poll in the tail mode (default: 1 MB)")
    ap.add_argument("--no-backlog", dest="backlog", action="store_false",
                    help="skip the backlog mode (--from-beginning over the whole file)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true",
                    help="instead, print a cProfile of the tail mode (200k lines at most)")
    args = ap.parse_args(argv)
    if args.profile:
        profile(min(args.lines, 200_000), args.block_mb)
        return 0
    print(report(run(args.lines, args.block_mb, args.seed, args.backlog)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
