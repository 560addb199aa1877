"""Ending a child process: SIGTERM (to it, or to its process group when it runs in a session
of its own), up to a timeout to exit, then SIGKILL; reaped either way."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_child(popen: subprocess.Popen, timeout: float = 10.0, group: bool = False) -> None:
    """SIGTERM `popen` (with `group`, its whole process group: everything it started), wait
    up to `timeout` seconds, then SIGKILL it and wait for it. A child already gone is fine."""
    _send(popen, signal.SIGTERM, group)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        _send(popen, signal.SIGKILL, group)
        popen.wait()


def _send(popen: subprocess.Popen, sig: int, group: bool) -> None:
    if popen.poll() is not None:
        return
    try:
        if group:
            os.killpg(popen.pid, sig)  # start_new_session: the group's id is the child's pid
        else:
            popen.send_signal(sig)
    except ProcessLookupError:
        pass
