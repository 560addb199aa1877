"""A real Prometheus, with the project's scrape config and rules, scraping two real vLLM
pods, two balancer replicas and the exporter tailing both replicas' access logs: every
number the dashboards show equals the truth (tokens and requests counted once, ready pods
not added up over replicas), and every dashboard query and recording rule written for V1
names returns data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from llmtraffic.contracts import series as m
from llmtraffic.dashboards import rules
from llmtraffic.dashboards.scrapeconfig import SCRAPE_CONFIG, LocalPod, localize
from llmtraffic.dashboards.targets import all_queries
from llmtraffic.exporter.app import ExporterApp, ExporterOptions
from llmtraffic.harness.prometheus import PrometheusServer
from tests.balancer.conftest import POOL, client, records, wait_for
from tests.prometheus.test_scrape_dashboards_live import run_until_all_answer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the first waits for the fleet

#: Queries that only answer once something goes wrong (a circuit opens, a request is
#: retried or shed, the Kubernetes API is watched): the run below has none of those.
NEEDS_AN_EVENT = ("circuit", "retr", "shed", "discovery", "kubernetes api")


def local_pods(fleet, balancers, exporter) -> list[LocalPod]:
    pods = [LocalPod(p.name, labels={"app": POOL},
                     annotations={"prometheus.io/scrape": "true",
                                  "prometheus.io/port": str(p.port),
                                  "prometheus.io/path": "/metrics"}) for p in fleet.pods]
    pods += [LocalPod(f"llmtraffic-balancer-{i}",
                      labels={"app.kubernetes.io/name": "llmtraffic-balancer"},
                      ports={"metrics": b.port}) for i, b in enumerate(balancers)]
    pods.append(LocalPod("llmtraffic-exporter-0",
                         labels={"app.kubernetes.io/name": "llmtraffic-exporter"},
                         ports={"metrics": exporter.port}))
    return pods


async def value(prom: PrometheusServer, expr: str) -> float:
    got = await asyncio.to_thread(prom.query, expr)
    return sum(float(s["value"][1]) for s in got)


async def test_dashboards_count_each_fact_once_over_real_pods(real_fleet, make_app,
                                                              tmp_path: Path):
    replicas = [await make_app(real_fleet.addresses, scrape_interval=0.5) for _ in range(2)]
    pods_file = tmp_path / "pods.yaml"
    pods_file.write_text(yaml.safe_dump({"pods": [
        {"name": p.name, "address": p.address, "pool": POOL} for p in real_fleet.pods]}))
    exporter = ExporterApp(ExporterOptions(
        access_logs=[r.options.access_log for r in replicas], pods_file=str(pods_file),
        listen="127.0.0.1:0", poll_interval=0.05, from_beginning=True, scrape_interval=0.5))
    await exporter.start()
    config = localize(SCRAPE_CONFIG.read_text(), local_pods(real_fleet, replicas, exporter),
                      tmp_path / "sd", scrape_interval="1s", evaluation_interval="1s")
    prom = PrometheusServer(tmp_path / "prom", config)
    try:
        await asyncio.to_thread(prom.start)
        truth = {"prompt": 0, "completion": 0, "requests": 0}
        for i in range(12):
            c = client(replicas[i % 2], timeout=120)
            model, prompt = ("tweet-summary", "llama2")[i % 2], f"request {i} " * 40
            if i % 4 < 2:
                usage = (await c.completions.create(model=model, prompt=prompt,
                                                    max_tokens=6)).usage
            else:  # streamed: the TTFT panels need them
                stream = await c.chat.completions.create(
                    model=model, max_tokens=6, stream=True,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": prompt}])
                usage = None
                async for chunk in stream:
                    usage = chunk.usage or usage
            truth["prompt"] += usage.prompt_tokens
            truth["completion"] += usage.completion_tokens
            truth["requests"] += 1
        await wait_for(lambda: sum(len(records(r)) for r in replicas) == 12, "12 lines")
        exprs = {
            "prompt": f"sum({m.PROMPT_TOKENS.name}_total)",
            "completion": f"sum({m.COMPLETION_TOKENS.name}_total)",
            "requests": f"sum({m.REQUESTS.name}_total)",
            "balancer prompt": f"sum({m.BALANCER_PROMPT_TOKENS.name}_total)",
            "balancer requests": f"sum({m.BALANCER_REQUESTS.name}_total)",
        }
        want = {"prompt": truth["prompt"], "completion": truth["completion"],
                "requests": 12, "balancer prompt": truth["prompt"], "balancer requests": 12}
        got: dict[str, float] = {}
        for _ in range(60):
            got = {k: await value(prom, e) for k, e in exprs.items()}
            if got == want:
                break
            await asyncio.sleep(0.5)
        assert got == want
        # the overview's "Ready pods" panel, with two balancers and the exporter scraped
        ready = [e for t, e in all_queries(rate_interval="10s", range_="30s")
                 if t.endswith("/ Ready pods")]
        assert ready and await value(prom, ready[0]) == len(real_fleet.pods)

        named = [(t, e) for t, e in all_queries(rate_interval="10s", range_="30s")
                 if not any(w in t.lower() for w in NEEDS_AN_EVENT)]
        empty = await asyncio.to_thread(run_until_all_answer, prom, named, 40)
        assert not empty, f"dashboard queries without data: {empty}"
        records_ = sorted({r["record"] for g in rules.recording_groups() for r in g["rules"]})
        empty = await asyncio.to_thread(run_until_all_answer, prom,
                                        [(n, n) for n in records_], 40)
        assert not empty, f"recording rules without data: {empty}"
    finally:
        await asyncio.to_thread(prom.stop)
        await exporter.stop()
