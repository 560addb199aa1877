"""harness.child.stop_child: SIGTERM, then SIGKILL for a child that ignores it; a process
group ends whole; a child already gone is no error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from llmtraffic.harness.child import stop_child

IGNORES_TERM = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")


def _started(code: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, **kw)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    return p


def test_sigterm_ends_a_willing_child():
    p = _started("import time; print('ready', flush=True); time.sleep(60)")
    stop_child(p, 10)
    assert p.returncode == -15


def test_a_child_ignoring_sigterm_is_killed():
    p = _started(IGNORES_TERM)
    stop_child(p, 0.2)
    assert p.returncode == -9


def test_group_reaches_the_grandchild():
    sleeper = "import time; print('ready', flush=True); time.sleep(60)"
    code = ("import subprocess, sys, time; "
            f"c = subprocess.Popen([sys.executable, '-c', {sleeper!r}], "
            "stdout=subprocess.PIPE); c.stdout.readline(); print(c.pid, flush=True); "
            "print('ready', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         start_new_session=True)
    assert p.stdout is not None
    grandchild = int(p.stdout.readline())
    assert p.stdout.readline() == b"ready\n"
    try:
        stop_child(p, 10, group=True)
        assert p.returncode == -15
        for _ in range(200):  # reparented, it is gone (or a zombie) once the signal lands
            if not _running(grandchild):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"grandchild {grandchild} outlived its group's SIGTERM")
    finally:
        if _running(grandchild):
            os.kill(grandchild, 9)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_already_gone():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stop_child(p, 1)
    stop_child(p, 1, group=True)
    assert p.returncode == 0
