"""How contended the host's cores are while a measurement runs: a small separate process
spins for 5 ms of CPU every half second and reports the wall time that took over the CPU
time it got (1: a core whenever it wanted one; 3: a third of the time). Engine steps on a
shared machine stretch alike, so runs taken at different times can be compared."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time

from llmtraffic.harness.child import stop_child

#: The probe: a CPU-bound slice and how long it waited for it, as a line per sample.
_PROBE = """
import sys, time
while True:
    w0, c0 = time.perf_counter(), time.process_time()
    while time.process_time() - c0 < 0.005:
        pass
    print((time.perf_counter() - w0) / max(1e-9, time.process_time() - c0), flush=True)
    time.sleep(%r)
"""


class HostLoad:
    """`with HostLoad() as load: ...; load.stretch` (NaN when no sample arrived)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self.times: list[float] = []  # time.monotonic() of each sample's arrival
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "HostLoad":
        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE % self.interval],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                value = float(line)
            except ValueError:
                continue
            self.times.append(time.monotonic())
            self.samples.append(value)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            stop_child(self._proc, 5)
        if self._reader is not None:
            self._reader.join(5)

    @property
    def stretch(self) -> float:
        """The median of wall over CPU time: how many times longer CPU work took."""
        return statistics.median(self.samples) if self.samples else float("nan")

    def between(self, start: float, end: float) -> float:
        """The mean stretch of the samples taken from `start` to `end` (time.monotonic()),
        or of the nearest sample when none fell inside; NaN without samples."""
        inside = [v for t, v in zip(self.times, self.samples) if start <= t <= end]
        if inside:
            return statistics.fmean(inside)
        if not self.samples:
            return float("nan")
        mid = (start + end) / 2
        return min(zip(self.times, self.samples), key=lambda tv: abs(tv[0] - mid))[1]
