"""Processes of a live run on this machine: simulated pod fleets, llmtraffic balancers,
vllm-router, the exporter. Each is a child process with its own log file, started on free
loopback ports, waited for until it answers, and stopped (TERM, then KILL) on exit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmtraffic.simulator.workloads import BASE_MODEL, SEED_ADAPTERS
from llmtraffic.harness.child import stop_child
from llmtraffic.harness.prometheus import free_port

LLMTRAFFIC = [sys.executable, "-m", "llmtraffic"]


class StackError(RuntimeError):
    """A process of the stack did not start; the message names its log file."""


@dataclass
class Proc:
    """One child process and its log."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None

    def start(self, env: dict[str, str] | None = None) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      env={**os.environ, **(env or {})})
        log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Until `url` answers 200; StackError with the log's tail if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(f"{self.name} exited ({self.popen and self.popen.returncode})"
                                 f"; its log {self.log_path} ends with:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise StackError(f"{self.name} did not answer {url} within {timeout:g} s; log "
                         f"{self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU of the process so far (Linux /proc), 0 when gone."""
        if self.popen is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def signal(self, sig: int) -> None:
        """Send `sig` to the process's group (it runs in a session of its own)."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it is still running after `timeout` seconds."""
        if self.popen is not None:
            stop_child(self.popen, timeout, group=True)


@dataclass
class Stack:
    """The processes of one run; `stop()` ends them all in reverse order."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def add(self, name: str, argv: list[str], ready_url: str | None = None,
            timeout: float = 30.0) -> Proc:
        proc = Proc(name, argv, self.workdir / "logs" / f"{name}.log").start()
        self.procs.append(proc)
        if ready_url:
            proc.wait_http(ready_url, timeout)
        return proc

    def stop(self, timeout: float = 10.0) -> None:
        """Every process gets SIGTERM at once; stragglers get SIGKILL after `timeout`."""
        for proc in reversed(self.procs):
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            proc.stop(max(0.1, deadline - time.monotonic()))
        self.procs.clear()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Fleet:
    """A started fleet: simulated pods (`proc` runs them), or engines started elsewhere
    (real vLLM, a pods file; `proc` None)."""

    name: str
    urls: tuple[str, ...]
    pool: str
    proc: Proc | None = None

    @property
    def addresses(self) -> list[str]:
        return [u.split("://", 1)[1] for u in self.urls]


def consecutive_ports(n: int) -> int:
    """A base port with n free consecutive ports after it (best effort)."""
    for _ in range(50):
        base = free_port()
        if base + n < 65000 and all(_free(base + i) for i in range(n)):
            return base
    raise StackError(f"no {n} consecutive free loopback ports found")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_fleet(stack: Stack, name: str, pods: int, pool: str, *, time_scale: float = 1.0,
                seed: int = 0, profile: str = "llama2-7b-a10",
                metrics_version: str = "v1") -> Fleet:
    """`llmtraffic sim` serving the seed's base model and 10 adapters on consecutive ports."""
    base = consecutive_ports(pods)
    argv = [*LLMTRAFFIC, "sim", "--pods", str(pods), "--base-port", str(base),
            "--seed-adapters", "--time-scale", str(time_scale), "--seed", str(seed),
            "--profile", profile, "--metrics-version", metrics_version]
    proc = stack.add(name, argv)
    urls = tuple(f"http://127.0.0.1:{base + i}" for i in range(pods))
    for u in urls:
        proc.wait_http(u + "/health")
    return Fleet(name, urls, pool, proc)


def pool_resources(pool: str, criticality: str = "Critical") -> list[dict]:
    """An InferencePool selecting `app: <pool>` plus an InferenceModel for the base model and
    each of the seed's adapters (the seed itself only lists tweet-summary)."""
    docs: list[dict] = [{
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferencePool",
        "metadata": {"name": pool}, "spec": {"targetPortNumber": 8000,
                                             "selector": {"app": pool}}}]
    for model in (BASE_MODEL, *SEED_ADAPTERS):
        docs.append({
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferenceModel",
            "metadata": {"name": f"{pool}-{model.replace('/', '-').lower()}"},
            "spec": {"modelName": model, "criticality": criticality,
                     "poolRef": {"name": pool}, "targetModels": [{"name": model,
                                                                  "weight": 100}]}})
    return docs


def write_balancer_files(workdir: Path, fleet: Fleet) -> tuple[Path, Path]:
    """The resource YAML and pods file a balancer in front of `fleet` reads."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{fleet.pool}-resources.yaml"
    config.write_text(yaml.safe_dump_all(pool_resources(fleet.pool), sort_keys=False))
    pods = workdir / f"{fleet.pool}-pods.yaml"
    pods.write_text(yaml.safe_dump({"pods": [
        {"name": f"{fleet.pool}-{i}", "address": a, "labels": {"app": fleet.pool}}
        for i, a in enumerate(fleet.addresses)]}, sort_keys=False))
    return config, pods


def start_balancer(stack: Stack, name: str, fleet: Fleet, policy: str,
                   access_log: Path | None = None, scrape_interval: float = 0.1) -> str:
    """An `llmtraffic balancer` in front of `fleet`; returns its base URL."""
    config, pods = write_balancer_files(stack.workdir / "config", fleet)
    port = free_port()
    argv = [*LLMTRAFFIC, "balancer", "--config", str(config), "--pods-file", str(pods),
            "--listen", f"127.0.0.1:{port}", "--policy", policy,
            "--scrape-interval", str(scrape_interval), "--seed", "1",
            "--workers", "1"]  # one process per policy compared, as before --workers
    if access_log is not None:
        argv += ["--access-log", str(access_log)]
    url = f"http://127.0.0.1:{port}"
    stack.add(name, argv, url + "/ready")
    return url


def vllm_router_binary() -> str:
    """The `vllm-router` on the PATH, or StackError saying how to install it."""
    binary = shutil.which("vllm-router")
    if binary is None:
        raise StackError("vllm-router is not installed: pip install vllm-router "
                         "(it is in llmtraffic's dev extra), or leave the vllm-router:* "
                         "routers out of --routers")
    return binary


def start_vllm_router(stack: Stack, name: str, fleet: Fleet, policy: str) -> str:
    """vllm-router (PyPI) in front of `fleet`; returns its base URL."""
    binary = vllm_router_binary()
    port, prom = free_port(), free_port()
    argv = [binary, "--worker-urls", *fleet.urls, "--policy", policy, "--host", "127.0.0.1",
            "--port", str(port), "--prometheus-port", str(prom)]
    url = f"http://127.0.0.1:{port}"
    stack.add(name, argv, url + "/health", timeout=60)
    return url


def start_exporter(stack: Stack, access_logs: list[Path], fleets: list[Fleet],
                   enriched_log: Path, dimensions: str = "model,lb_policy") -> str:
    """`llmtraffic exporter` tailing `access_logs` and scraping every pod; returns its URL."""
    pods_file = stack.workdir / "config" / "exporter-pods.yaml"
    pods_file.parent.mkdir(parents=True, exist_ok=True)
    pods_file.write_text(yaml.safe_dump({"pods": [
        {"name": f"{f.pool}-{i}", "address": a, "labels": {"app": f.pool}, "pool": f.pool}
        for f in fleets for i, a in enumerate(f.addresses)]}, sort_keys=False))
    for path in access_logs:
        path.touch()
    port = free_port()
    argv = [*LLMTRAFFIC, "exporter", "--access-log", *map(str, access_logs),
            "--pods-file", str(pods_file), "--listen", f"127.0.0.1:{port}",
            "--enriched-log", str(enriched_log), "--from-beginning",
            "--dimensions", dimensions]
    url = f"http://127.0.0.1:{port}"
    stack.add("exporter", argv, url + "/health")
    return url
