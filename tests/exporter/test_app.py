"""The exporter end to end: lines in, exact per-model token sums out on /metrics, bad lines
counted by reason, crash safety under SIGKILL with rotation, and a real Prometheus (Debian
package) scraping it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.exporter.app import ExporterApp, ExporterOptions
from llmtraffic.harness.prometheus import PrometheusServer, free_port

MODELS = ("tweet-summary", "sql-lora", "meta-llama/Llama-2-7b-hf")


def istio_line(i: int) -> bytes:
    """A line as ASM writes it: Istio JSON keys, string values, LLM fields."""
    return orjson.dumps({
        "start_time": "2026-11-24T03:00:00.000Z", "method": "POST",
        "path": "/v1/chat/completions" if i % 2 else "/v1/completions",
        "protocol": "HTTP/1.1", "response_code": "200", "response_flags": "-",
        "duration": str(100 + i % 50), "upstream_service_time": "99",
        "request_id": f"req-{i}", "authority": "test.com", "upstream_host": "10.0.0.1:8000",
        "bytes_received": "300", "bytes_sent": "900",
        "request_model": MODELS[i % 3], "request_prompt_tokens": str(i % 7 + 1),
        "request_completion_tokens": str(i % 11 + 1)})


def expected(n_from: int, n_to: int) -> tuple[dict, dict]:
    p = {m: 0 for m in MODELS}
    c = {m: 0 for m in MODELS}
    for i in range(n_from, n_to):
        p[MODELS[i % 3]] += i % 7 + 1
        c[MODELS[i % 3]] += i % 11 + 1
    return p, c


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def token_sums(port: int, kind: str = "prompt") -> dict:
    name = f"asm_llm_proxy_{kind}_tokens_total"
    return {dict(k[1])["model"]: v for k, v in scrape(port).items() if k[0] == name}


def append(path, lines) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(ln + b"\n" for ln in lines))


def wait_until(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_sums_bad_lines_and_streaming(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    app = ExporterApp(ExporterOptions(access_logs=[str(log)], listen="127.0.0.1:0",
                                      poll_interval=0.05,
                                      enriched_log=str(tmp_path / "enriched.log")))
    await app.start()
    try:
        good = [istio_line(i) for i in range(300)]
        bad = [b'{"request_model": "x", "request_prompt_tok', b'{"request_model": "\xff"}',
               b'{"request_model": "x", "request_prompt_tokens": "many"}',
               b'{"request_model": "' + b"y" * (1 << 20) + b'"}', b"[]"]
        stream = orjson.dumps({"model": "sql-lora", "prompt_tokens": 5, "completion_tokens": 6,
                               "stream": True, "response_code": 200})
        append(log, good[:150] + bad + good[150:] + [stream])
        for _ in range(100):
            await asyncio.sleep(0.05)
            if sum(app.stats.lines.values()) >= 306:
                break
        s = await asyncio.to_thread(scrape, app.port)
        p, c = expected(0, 300)
        p["sql-lora"] += 5
        c["sql-lora"] += 6
        got_p = await asyncio.to_thread(token_sums, app.port, "prompt")
        got_c = await asyncio.to_thread(token_sums, app.port, "completion")
        assert got_p == p and got_c == c
        errors = {dict(k[1])["reason"]: v for k, v in s.items()
                  if k[0] == "llmtraffic_exporter_parse_errors_total"}
        assert errors == {"invalid_json": 1, "not_utf8": 1, "wrong_type": 1, "too_long": 1,
                          "not_object": 1}
    finally:
        await app.stop()
    enriched = (tmp_path / "enriched.log").read_bytes().splitlines()
    assert len(enriched) == 301


def _start_exporter(log, pos, port) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmtraffic", "exporter", "--access-log", str(log),
         "--positions", str(pos), "--listen", f"127.0.0.1:{port}", "--from-beginning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_with_rotation_keeps_totals_exact(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    pos = tmp_path / "positions.json"
    port = free_port()
    proc = _start_exporter(log, pos, port)
    n = 0
    try:
        def write(k):
            nonlocal n
            for start in range(n, n + k, 500):
                append(log, [istio_line(i) for i in range(start, min(n + k, start + 500))])
            n += k

        def caught_up():
            return token_sums(port) == expected(0, n)[0]

        write(4000)
        wait_until(caught_up)
        os.rename(log, tmp_path / "access.log.1")  # rename-and-create
        append(tmp_path / "access.log.1", [istio_line(n)])
        n += 1
        log.write_bytes(b"")
        write(3000)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)  # mid-stream, no chance to save
        proc.wait(10)
        write(3000)  # written while the exporter is down
        proc = _start_exporter(log, pos, port)
        wait_until(caught_up)
        with open(log, "r+b") as f:  # copytruncate, exporter running and caught up
            f.truncate(0)
        write(2000)
        wait_until(caught_up)
        assert token_sums(port, "completion") == expected(0, n)[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.mark.e2e
async def test_real_prometheus_scrapes_per_model_sums(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"")
    app = ExporterApp(ExporterOptions(access_logs=[str(log)], listen="127.0.0.1:0",
                                      poll_interval=0.05))
    await app.start()
    config = f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: llmtraffic
    static_configs: [{{targets: ["127.0.0.1:{app.port}"]}}]
"""
    prom = PrometheusServer(tmp_path / "prom", config)
    try:
        await asyncio.to_thread(prom.start)
        append(log, [istio_line(i) for i in range(900)])
        p, _ = expected(0, 900)

        def done(result):
            got = {r["metric"]["model"]: float(r["value"][1]) for r in result}
            return got == {m: float(v) for m, v in p.items()}

        await asyncio.to_thread(prom.wait_for,
                                "sum by (model) (asm_llm_proxy_prompt_tokens_total)", 30, done)
        up = await asyncio.to_thread(prom.query, 'up{job="llmtraffic"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        await asyncio.to_thread(prom.stop)
        await app.stop()


def test_backlog_in_bounded_batches_with_checkpoints_is_exact_across_a_crash(tmp_path):
    """--from-beginning over a backlog many read budgets long: each poll handles one
    bounded batch; a checkpoint after any poll restores counters, positions and the
    enriched log together, so a crash mid-backlog neither loses nor repeats a line."""
    log, pos, enriched = tmp_path / "access.log", tmp_path / "pos.json", tmp_path / "e.log"
    append(log, [istio_line(i) for i in range(3000)])

    def new_app() -> ExporterApp:
        app = ExporterApp(ExporterOptions(access_logs=[str(log)], listen="127.0.0.1:0",
                                          from_beginning=True, positions=str(pos),
                                          enriched_log=str(enriched)))
        app.tailer.max_read_bytes = 16_000  # ~60 lines per poll
        app._restore()
        return app

    app = new_app()
    handled = [app.poll() for _ in range(10)]
    assert app.tailer.more and all(0 < n < 100 for n in handled)
    app.checkpoint()
    for _ in range(5):
        app.poll()  # counted and written after the checkpoint, then a crash
    app.enricher.flush()
    app.tailer.close()

    app = new_app()
    while True:
        app.poll()
        if not app.tailer.more:
            break
    app.checkpoint()
    p, c = expected(0, 3000)
    assert {k[0]: v for k, v in app.counters.prompt.items()} == p
    assert {k[0]: v for k, v in app.counters.completion.items()} == c
    app.enricher.close()
    app.tailer.close()
    ids = [orjson.loads(x)["request_id"] for x in enriched.read_bytes().splitlines()]
    assert ids == [f"req-{i}" for i in range(3000)]


def test_exporter_flags_and_defaults_are_kept() -> None:
    from llmtraffic.cli import build_parser
    from llmtraffic.contracts.flags import from_flags

    args = vars(build_parser().parse_args(["exporter"]))
    assert {k: args.get(k, "missing") for k in (
        "access_log", "format", "mapping", "pods", "pods_file", "listen", "enriched_log",
        "positions", "from_beginning", "scrape_interval", "scrape_timeout", "dimensions",
        "max_label_values")} == {
        "access_log": [], "format": "json", "mapping": None, "pods": [], "pods_file": None,
        "listen": "0.0.0.0:9100", "enriched_log": None, "positions": None,
        "from_beginning": False, "scrape_interval": 1.0, "scrape_timeout": 1.0,
        "dimensions": "model", "max_label_values": 200}
    args = build_parser().parse_args(["exporter", "--access-log", "a", "b", "--dimensions",
                                      "model, pool,"])
    opts = from_flags(ExporterOptions, args)
    assert opts.access_logs == ["a", "b"] and opts.dimensions == ("model", "pool")


def test_the_exporter_needs_ports_in_the_pods_file(tmp_path) -> None:
    """It reads no InferencePool, so an address without a port has no target port."""
    pods = tmp_path / "pods.yaml"
    pods.write_text("pods:\n- {name: vllm-0, address: 10.0.0.5, labels: {app: x}}\n")
    with pytest.raises(ValueError, match=r"pods.yaml: pod vllm-0 \(10.0.0.5\) has no port"):
        ExporterApp(ExporterOptions(pods_file=str(pods)))
    with pytest.raises(ValueError, match="absent.yaml: pods file not found"):
        ExporterApp(ExporterOptions(pods_file=str(tmp_path / "absent.yaml")))
