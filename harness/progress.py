"""The progress line of a live run: requests finished per side against the total (the bar
is full only when every request is done), wall seconds so far against the arrivals'
duration, and how many are still running once arrivals are over."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from llmtraffic.harness.loadclient import Outcome


class Progress:
    """Redrawn in place on a terminal; otherwise a line every `every` seconds."""

    def __init__(self, total: int, sides: list[str], arrivals_s: float, *,
                 every: float = 10.0, stream: TextIO | None = None) -> None:
        self.total = total
        self.arrivals_s = arrivals_s
        self.counts = {s: [0, 0] for s in sides}  # ok, failed
        self.every = every
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()

    def done(self, side: str, out: Outcome) -> None:
        self.counts[side][0 if out.ok else 1] += 1

    def line(self) -> str:
        t = time.monotonic() - self.t0
        finished = sum(ok + bad for ok, bad in self.counts.values())
        want = self.total * len(self.counts)
        bar = "#" * (30 * finished // want if want else 30)
        sides = "  ".join(f"{s}: {ok}/{self.total} done" + (f", {bad} failed" if bad else "")
                          for s, (ok, bad) in self.counts.items())
        when = (f"{t:4.0f}s of {self.arrivals_s:.0f}s of arrivals" if t < self.arrivals_s
                else f"{t:4.0f}s, arrivals over, {want - finished} still running")
        return f"[{bar:<30}] {when}  {sides}"

    async def tick(self) -> None:
        """Draw until cancelled."""
        last = -self.every
        while True:
            if self.tty:
                print("\r" + self.line(), end="", file=self.stream, flush=True)
            elif time.monotonic() - last >= self.every:
                last = time.monotonic()
                print(self.line(), file=self.stream, flush=True)
            await asyncio.sleep(0.5)

    def finish(self) -> None:
        print(("\r" if self.tty else "") + self.line(), file=self.stream, flush=True)
