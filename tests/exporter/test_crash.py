"""Crash safety at volume: 100,000 access-log lines written while the log is rotated both ways
(rename-and-create while the exporter runs and while it is down, copytruncate while it runs)
and the exporter process is killed with SIGKILL mid-stream three times and started again;
token sums, request counts and the enriched log are exact: nothing lost, nothing twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter

import orjson

from llmtraffic.harness.prometheus import free_port
from tests.exporter.test_app import MODELS, append, expected, istio_line, scrape, wait_until

TOTAL = 100_000


def start(log, pos, enriched, port) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmtraffic", "exporter", "--access-log", str(log),
         "--positions", str(pos), "--listen", f"127.0.0.1:{port}", "--from-beginning",
         "--enriched-log", str(enriched)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def requests_by_model(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in scrape(port).items():
        if name == "asm_llm_proxy_requests_total":
            model = dict(labels)["model"]
            out[model] = out.get(model, 0) + v
    return out


def checkpoint_inode(pos) -> int | None:
    try:
        data = orjson.loads(pos.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    files = data["positions"]["files"]
    return next(iter(files.values()))["ino"] if files else None


def test_100k_lines_rotated_both_ways_across_sigkills_are_exact(tmp_path):
    log, pos, enriched = tmp_path / "access.log", tmp_path / "pos.json", tmp_path / "e.log"
    log.write_bytes(b"")
    port = free_port()
    n = 0

    def write(k: int) -> None:
        nonlocal n
        for first in range(n, n + k, 1000):
            append(log, [istio_line(i) for i in range(first, min(n + k, first + 1000))])
        n += k

    def exact() -> bool:
        p, _ = expected(0, n)
        sums = {dict(k[1])["model"]: v for k, v in scrape(port).items()
                if k[0] == "asm_llm_proxy_prompt_tokens_total"}
        return sums == p

    proc = start(log, pos, enriched, port)
    try:
        wait_until(lambda: scrape(port) is not None, 60)  # following the log before any line
        for cycle in range(3):
            write(8000)
            os.rename(log, tmp_path / f"access.log.{cycle}a")  # rename while running
            write(8000)
            # the exporter's checkpoint has moved to the new file ...
            wait_until(lambda: checkpoint_inode(pos) == os.stat(log).st_ino, 60)
            write(8000)
            proc.send_signal(signal.SIGKILL)  # ... and it dies in the middle of more lines
            proc.wait(10)
            write(3000)  # while it is down: lines, a rename, more lines in the new file
            os.rename(log, tmp_path / f"access.log.{cycle}b")
            write(3000)
            proc = start(log, pos, enriched, port)
            wait_until(exact, 60)
            shutil.copyfile(log, tmp_path / f"access.log.{cycle}c")  # copytruncate, caught up
            with open(log, "r+b") as f:
                f.truncate(0)
            write(3000)
            wait_until(exact, 60)
        write(TOTAL - n)
        wait_until(exact, 60)
        assert n == TOTAL
        p, c = expected(0, TOTAL)
        got = scrape(port)
        assert {dict(k[1])["model"]: v for k, v in got.items()
                if k[0] == "asm_llm_proxy_completion_tokens_total"} == c
        assert requests_by_model(port) == Counter(MODELS[i % 3] for i in range(TOTAL))
        rotations = {dict(k[1])["kind"]: v for k, v in got.items()
                     if k[0] == "llmtraffic_exporter_rotations_total"}
        assert rotations.get("rename", 0) >= 1 and rotations.get("truncate", 0) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    # the enriched log was rewound with the counters at each restart: one line per line
    ids = [orjson.loads(line)["request_id"] for line in enriched.read_bytes().splitlines()]
    assert len(ids) == TOTAL and len(set(ids)) == TOTAL
