"""Small helpers every serving process shares: reading a `--listen host:port`, and the
event that SIGINT or SIGTERM sets to stop a server (SIGHUP reopening its log files)."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: give host:port, e.g. 0.0.0.0:9100")
    return host or "0.0.0.0", int(port)


def stop_event(reopen_logs: Callable[[], None] | None = None) -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets, on the running loop; SIGHUP calls `reopen_logs`
    (when given), for log rotation. A server awaits the event, then stops."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if reopen_logs is not None:
        loop.add_signal_handler(signal.SIGHUP, reopen_logs)
    return stop
