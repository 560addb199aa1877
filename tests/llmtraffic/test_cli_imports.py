"""Building the command line loads every subcommand's module; that must not pull in
numpy or matplotlib (the demo's and benchmarks' plots), so the exporter sidecar, the
simulator and the balancer stay lean."""

from __future__ import annotations

import subprocess
import sys


def test_the_command_line_does_not_load_numpy():
    code = ("import sys, llmtraffic.cli as c; c.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
