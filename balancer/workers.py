"""The proxy on several cores: `serve_workers` forks N worker processes that listen on one
port (SO_REUSEPORT), each a whole `BalancerApp` with its own store and policy state; the
parent forwards SIGTERM/SIGINT/SIGHUP to them and waits. A worker's seat (`WorkerSeat`)
says where it listens and where its peers serve their series for one merged /metrics."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable

log = logging.getLogger(__name__)

#: Seconds a worker may take to start (scrape once, listen) before the start is abandoned.
START_TIMEOUT = 60.0


def default_workers(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may run on: its CPU affinity (e.g. a container's cpuset),
    at most its cgroup's CPU limit rounded up (`cpu.max`, e.g. a Kubernetes CPU limit)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    try:
        quota, period = open(cpu_max).read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


@dataclass(frozen=True)
class WorkerSeat:
    """Worker `index` of `count`: listens on (host, port) beside the others, and serves its
    own series to its peers on a Unix socket in `rundir` (made fresh for each run)."""

    index: int
    count: int
    host: str
    port: int
    rundir: str

    def socket_path(self, index: int) -> str:
        return os.path.join(self.rundir, f"worker-{index}.sock")

    def peers(self) -> list[str]:
        return [self.socket_path(i) for i in range(self.count) if i != self.index]

    def listen_socket(self) -> socket.socket:
        """This worker's listening socket on the shared port (the kernel spreads new
        connections over the workers' sockets)."""
        return _reuseport_socket(self.host, self.port, listen=True)


def _reuseport_socket(host: str, port: int, listen: bool) -> socket.socket:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("--workers above 1 needs SO_REUSEPORT, which this system lacks; "
                      "run --workers 1")
    family, kind, proto, _, addr = socket.getaddrinfo(host or None, port,
                                                      type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if listen:
            sock.listen(1024)
            sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def serve_workers(count: int, host: str, port: int,
                  run_worker: Callable[[WorkerSeat, Connection], int],
                  banner: Callable[[int, str], str]) -> int:
    """Fork `count` workers (`run_worker(seat, ready)` in each: it sends ("ok", what it
    serves) or ("error", why it could not start) on `ready`, then serves until SIGTERM and
    returns its exit code); print `banner(port, what worker 0 serves)` once all listen;
    forward signals; return 0 when every worker ended 0.
    A worker that dies on its own stops the rest (the supervisor restarts the whole)."""
    try:
        holder = _reuseport_socket(host, port, listen=False)  # holds the port; port 0 picks
    except OSError as e:
        print(f"llmtraffic balancer: cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 2
    port = holder.getsockname()[1]
    rundir = tempfile.mkdtemp(prefix="llmtraffic-balancer-")
    ctx = multiprocessing.get_context("fork")
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Connection] = []
    try:
        for i in range(count):
            parent, child = ctx.Pipe(duplex=False)
            seat = WorkerSeat(i, count, host, port, rundir)
            p = ctx.Process(target=_worker_main, args=(run_worker, seat, child),
                            name=f"balancer-worker-{i}")
            p.start()
            child.close()
            procs.append(p)
            pipes.append(parent)
        stopping = _forward_signals(procs)
        ok, said = _await_ready(procs, pipes)
        if not ok:
            print(f"llmtraffic balancer: {said}", file=sys.stderr)
            _signal_all(procs, signal.SIGTERM)
            _join(procs)
            return 2
        print(banner(port, said), flush=True)
        return _supervise(procs, stopping)
    finally:
        _signal_all(procs, signal.SIGTERM)
        _join(procs)
        holder.close()
        shutil.rmtree(rundir, ignore_errors=True)


def _worker_main(run_worker: Callable[[WorkerSeat, Connection], int], seat: WorkerSeat,
                 ready: Connection) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # the worker's loop installs its own
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a log reopen must not kill it meanwhile
    sys.exit(run_worker(seat, ready))


def _forward_signals(procs: list) -> list[bool]:
    """SIGTERM/SIGINT: every worker drains and stops; SIGHUP: every worker reopens its logs.
    Returns a flag list whose first item turns True once a stop was asked for."""
    stopping = [False]

    def forward(sig: int, _frame) -> None:
        if sig != signal.SIGHUP:
            stopping[0] = True
        _signal_all(procs, signal.SIGTERM if sig == signal.SIGINT else sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    return stopping


def _signal_all(procs: list, sig: int) -> None:
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass


def _await_ready(procs: list, pipes: list[Connection]) -> tuple[bool, str]:
    """(True, what worker 0 serves) once every worker said "ok", else (False, what went
    wrong)."""
    waiting = dict(zip(pipes, procs))
    first = ""
    while waiting:
        ready = wait(list(waiting), timeout=START_TIMEOUT)
        if not ready:
            return False, f"{len(waiting)} worker(s) did not start within {START_TIMEOUT:g} s"
        for conn in ready:
            proc = waiting.pop(conn)  # type: ignore[arg-type]
            try:
                kind, said = conn.recv()
            except EOFError:
                proc.join(5)
                return False, f"worker {proc.name} exited with {proc.exitcode} while starting"
            if kind != "ok":
                return False, str(said)
            if proc is procs[0]:
                first = said
    return True, first


def _supervise(procs: list, stopping: list[bool]) -> int:
    alive = list(procs)
    rc = 0
    while alive:
        ended = wait([p.sentinel for p in alive])
        for p in [p for p in alive if p.sentinel in ended]:
            p.join()
            alive.remove(p)
            if p.exitcode:
                rc = 1
            if not stopping[0]:
                log.error("balancer worker %s (pid %s) exited with %s on its own: stopping "
                          "the others", p.name, p.pid, p.exitcode)
                print(f"llmtraffic balancer: worker {p.name} exited with {p.exitcode}; "
                      "stopping", file=sys.stderr, flush=True)
                stopping[0] = True
                rc = 1
                _signal_all(alive, signal.SIGTERM)
    return rc


def _join(procs: list, timeout: float = 5.0) -> None:
    for p in procs:
        if p.pid is not None:
            p.join(timeout)
            if p.exitcode is None:
                p.kill()
                p.join(5)
