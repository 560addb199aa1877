"""Shared fixtures."""

from __future__ import annotations

import pytest

from llmtraffic.prometheus import free_port


@pytest.fixture
def port() -> int:
    """A free loopback TCP port."""
    return free_port()
