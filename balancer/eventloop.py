"""Which asyncio event loop a long-running command runs on: uvloop (libuv) when installed,
else the standard one. uvloop takes about a quarter off the proxy's CPU per request and its
added latency (`python -m bench.balancer_overhead`, side by side)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
CHOICES: tuple[str, ...] = ("auto", "uvloop", "asyncio")


class EventLoopError(RuntimeError):
    """The loop asked for cannot be used here."""


def loop_name(choice: str) -> str:
    """The loop `run(..., choice)` will use: 'uvloop' or 'asyncio'."""
    if choice not in CHOICES:
        raise EventLoopError(f"unknown event loop {choice!r}; choose one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise EventLoopError("--loop uvloop: uvloop is not installed (pip install uvloop; "
                                 "it has no Windows build), or use --loop asyncio") from None
        return "asyncio"
    return "uvloop"


def run(coro: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """`asyncio.run(coro)` on the chosen loop."""
    name = loop_name(choice)
    log.info("event loop: %s", name)
    if name == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)
