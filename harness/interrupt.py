"""Running a live run's event loop so that Ctrl-C (or SIGTERM) cancels it cleanly: every
request and session is closed inside the loop, then KeyboardInterrupt is raised outside it,
with the program's own signal handlers back in place."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_until_interrupted(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, where SIGINT and SIGTERM cancel `coro` (which cleans up as on
    any cancellation) and then raise KeyboardInterrupt in the caller."""
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}

    async def main() -> tuple[bool, T | None]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in SIGNALS:
            loop.add_signal_handler(sig, task.cancel)
        try:
            return False, await coro
        except asyncio.CancelledError:
            return True, None

    try:
        interrupted, result = asyncio.run(main())
    finally:  # closing the loop reset SIGINT and SIGTERM to Python's defaults
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if interrupted:
        raise KeyboardInterrupt
    return result  # type: ignore[return-value]
