"""contracts.serving: reading --listen, and the stop event every serving command awaits
(SIGINT/SIGTERM set it, SIGHUP reopens logs)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from llmtraffic.contracts.serving import parse_listen, stop_event


def test_parse_listen():
    assert parse_listen("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)
    with pytest.raises(ValueError, match="give host:port"):
        parse_listen("localhost")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_set_the_stop_event(sig):
    async def main() -> tuple[bool, bool, int]:
        reopened = []
        stop = stop_event(lambda: reopened.append(1))
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0.05)
            before = stop.is_set()
            os.kill(os.getpid(), sig)
            await asyncio.wait_for(stop.wait(), 10)
            return before, stop.is_set(), len(reopened)
        finally:
            loop = asyncio.get_running_loop()
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(s)

    assert asyncio.run(main()) == (False, True, 1)


def test_without_reopen_logs_sighup_is_left_alone():
    async def main() -> bool:
        before = signal.getsignal(signal.SIGHUP)
        stop_event()
        loop = asyncio.get_running_loop()
        try:
            return signal.getsignal(signal.SIGHUP) is before
        finally:
            for s in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(s)

    assert asyncio.run(main())
