"""Shared fixtures."""

from __future__ import annotations

import socket
import sys

import pytest

from llmtraffic.harness.prometheus import free_port


@pytest.fixture
def port() -> int:
    """A free loopback TCP port."""
    return free_port()


@pytest.fixture
def port_pair() -> int:
    """A loopback port P such that P and P + 1 are both free (for `--base-port` commands
    that bind consecutive ports; a lone free port's neighbour may be some other test's)."""
    for _ in range(100):
        base = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free loopback ports found")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the real vLLM fleet early when a test of tests/realvllm will run."""
    if any("realvllm" in item.nodeid.split("/") for item in session.items):
        from tests.realvllm.conftest import start_fleet
        start_fleet()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if "tests.realvllm.conftest" in sys.modules:
        sys.modules["tests.realvllm.conftest"].stop_fleet()
