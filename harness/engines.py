"""The pods a measurement runs against: real vLLM engines started here (the configuration the
CPU profile is calibrated on), pods someone else started (a pods file), or simulated pods of
a profile; each yields a `Fleet` and is stopped on exit if it was started here."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import aiohttp

from llmtraffic.contracts.pods import pods_from_file, require_ports
from llmtraffic.harness.stack import Fleet, Stack, StackError, start_fleet
from llmtraffic.simulator.vllmfleet import (VllmFleet, VllmFleetConfig, VllmNotInstalled,
                                            VllmStartError)
from llmtraffic.simulator.workloads import BASE_MODEL, SEED_ADAPTERS

ENGINES = ("vllm", "sim")
POOL = "bench-pool"
WARM_UP_PROMPT = "warm up " * 150  # a few hundred tokens: past one 128-token block


def warm_up(urls: Sequence[str], models: Sequence[str] = (BASE_MODEL, *SEED_ADAPTERS)) -> None:
    """One short request per model on every freshly started pod, so that what is measured
    next does not pay the engine's first use of each adapter and prompt shape."""
    async def pod(session: aiohttp.ClientSession, url: str) -> None:
        for model in models:
            body = {"model": model, "prompt": WARM_UP_PROMPT, "max_tokens": 2}
            async with session.post(url + "/v1/completions", json=body,
                                    timeout=aiohttp.ClientTimeout(total=300)) as r:
                await r.read()

    async def all_pods() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(pod(session, u) for u in urls))

    asyncio.run(all_pods())


def real_fleet_config(pods: int, log_dir: Path, vllm_python: str | None = None
                      ) -> VllmFleetConfig:
    """The real fleet `bench calibrate` and `bench fidelity` run: the model kit with the
    seed's ten adapters and `VllmFleetConfig`'s flags (--max-loras 4, --max-num-seqs 16,
    128 MiB of KV), on free ports."""
    return VllmFleetConfig(pods=pods, base_port=0, log_dir=log_dir, vllm_python=vllm_python)


@contextlib.contextmanager
def open_pods(engine: str, workdir: Path, *, pods: int = 2, pods_file: str | None = None,
              profile: str | None = None, vllm_python: str | None = None,
              timeout: float = 600.0, say: Callable[[str], None] = print) -> Iterator[Fleet]:
    """`pods_file`: the pods it names (any engine; nothing is started). Else `vllm`: real
    engines started here; `sim`: simulated pods of `profile` in one process."""
    if pods_file:
        found = require_ports(pods_from_file(pods_file), pods_file)
        if not found:
            raise ValueError(f"{pods_file}: no pods listed")
        say(f"pods from {pods_file}: {', '.join(p.address for p in found)}")
        yield Fleet("pods-file", tuple(f"http://{p.address}" for p in found), POOL, None)
        return
    if engine == "sim":
        with Stack(workdir / "sim") as stack:
            yield start_fleet(stack, "pods", pods, POOL, profile=profile or "llama2-7b-a10")
        return
    if engine != "vllm":
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    fleet = VllmFleet(real_fleet_config(pods, workdir / "vllm-logs", vllm_python))
    try:
        fleet.start()
        say(f"starting {pods} real vLLM pods (logs in {fleet.log_dir}); about 1-4 minutes")
        fleet.wait_ready(timeout)
        say("ready: " + ", ".join(f"{p.url} after {p.ready_after:.0f} s" for p in fleet.pods))
        yield Fleet("vllm", tuple(fleet.urls), POOL, None)
    except (VllmNotInstalled, VllmStartError) as e:
        raise StackError(str(e)) from None
    finally:
        fleet.stop()
