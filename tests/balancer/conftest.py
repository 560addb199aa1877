"""Fixtures for the balancer's proxy tests: the seed's resource files, extra InferenceModels,
a factory of started `BalancerApp`s over simulator pods, one of fake pods, and small
helpers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

import openai
import pytest

from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.proxy import BalancerApp, ProxyOptions
from llmtraffic.contracts.store import MetricsStore, Pod
from llmtraffic.simulator.server import SimFleet
from llmtraffic.simulator.workloads import SEED_ADAPTERS
from tests.fixtures.fakepod import FakePod

SEED_DIR = Path(__file__).resolve().parents[2] / "deploy" / "seed"
SEED_FILES = sorted(str(p) for p in SEED_DIR.glob("*.yaml"))
POOL = "vllm-llama2-7b-pool"
LABELS = {"app": POOL}
BASE = "meta-llama/Llama-2-7b-hf"  # the simulator's default profile serves this base model
LORAS = {a: f"/adapters/{a}" for a in SEED_ADAPTERS}

#: InferenceModels beside the seed's tweet-summary (Critical): Standard adapters, the base
#: model under a short name, a Sheddable one, and a weighted split.
EXTRA_MODELS = f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {{name: sql-lora}}
spec:
  modelName: sql-lora
  criticality: Standard
  poolRef: {{name: {POOL}}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {{name: llama2}}
spec:
  modelName: llama2
  criticality: Standard
  poolRef: {{name: {POOL}}}
  targetModels: [{{name: {BASE}}}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {{name: batch}}
spec:
  modelName: batch
  criticality: Sheddable
  poolRef: {{name: {POOL}}}
  targetModels: [{{name: {BASE}}}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata: {{name: mix}}
spec:
  modelName: mix
  poolRef: {{name: {POOL}}}
  targetModels:
  - {{name: sql-lora-2, weight: 3}}
  - {{name: sql-lora-3, weight: 1}}
  - {{name: sql-lora-4, weight: 0}}
"""


def seed_pods(addresses: list[str]) -> list[Pod]:
    """Pods labelled like the seed's Deployment, so the seed InferencePool selects them."""
    return [Pod(f"vllm-{i}", a, dict(LABELS)) for i, a in enumerate(addresses)]


def records(app: BalancerApp) -> list[dict[str, Any]]:
    """The access-log lines the app wrote so far."""
    path = Path(app.options.access_log or "")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def client(app: BalancerApp, host: str = "test.com", api_key: str = "x",
           timeout: float = 20.0) -> openai.AsyncOpenAI:
    """The openai SDK pointed at the balancer, sending the seed route's Host header."""
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{app.port}/v1", api_key=api_key,
                              max_retries=0, timeout=timeout,
                              default_headers={"Host": host})


def total_inflight(app: BalancerApp) -> int:
    return sum(app.store.inflight(p.address) for p in app.store.pods())


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `cond` until true; fail naming `what` after `timeout` seconds (a hang detector,
    not a speed assertion)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def next_scrape(app: BalancerApp) -> None:
    """Wait until every pod has been scraped after this moment (so in-flight accounting
    since the last scrape is back to zero and metrics describe the pods' present state)."""
    t = time.monotonic()

    def done() -> bool:
        return all(p.scraped_at is not None and p.scraped_at > t
                   for p in app.store.snapshot(time.monotonic()).pods)

    await wait_for(done, "a scrape of every pod")


async def stop_pod(fleet: SimFleet, i: int) -> None:
    """Kill pod i of a thread-hosted fleet without blocking this event loop."""
    fut = asyncio.run_coroutine_threadsafe(fleet.servers[i].stop(), fleet.loop)  # type: ignore
    await asyncio.wait_for(asyncio.wrap_future(fut), 30)


@pytest.fixture
def extra_models(tmp_path: Path) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(EXTRA_MODELS)
    return str(path)


@pytest.fixture
async def fakes():
    """`await fakes(**FakePod options)`: started fake pods, stopped at the end."""
    started: list[FakePod] = []

    async def make(**kw) -> FakePod:
        pod = await FakePod(BASE, **kw).start()
        started.append(pod)
        return pod

    yield make
    for pod in started:
        await pod.stop()


@pytest.fixture
async def make_app(tmp_path: Path, extra_models: str):
    """`await make_app(addresses, policy=..., **ProxyOptions fields)`: a started balancer
    over the seed files plus `extra_models`, writing its access log under tmp_path. Scrapes
    are frequent with a generous timeout: a loaded test machine must not mark pods down."""
    apps: list[BalancerApp] = []

    async def make(addresses: list[str], *, pods: list[Pod] | None = None,
                   configs: list[str] | None = None, store: MetricsStore | None = None,
                   **options: Any) -> BalancerApp:
        opts = dict(listen="127.0.0.1:0", access_log=str(tmp_path / f"access-{len(apps)}.log"),
                    scrape_interval=0.05, scrape_timeout=5.0, seed=7)
        opts.update(options)
        discovery = StaticDiscovery(configs or SEED_FILES + [extra_models],
                                    pods=seed_pods(addresses) if pods is None else pods)
        app = BalancerApp(discovery, ProxyOptions(**opts), store=store)
        await app.start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.stop()
