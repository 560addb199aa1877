"""`llmtraffic demo`: two seed-like simulated fleets, one behind the LLM-aware balancer and
one behind round-robin, the exporter tailing both access logs, the same seeded load through
each at once; then a comparison table and, in the output folder, plots, the enriched log,
the dashboards and a Prometheus config for the demo's ports (Prometheus started if present)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import urllib.request
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from llmtraffic.contracts.flags import NOT_A_FLAG, Flag, OptionError, add_flags, from_flags
from llmtraffic.harness.options import Load
from llmtraffic.harness.interrupt import run_until_interrupted
from llmtraffic.harness.loadclient import Outcome, replay, summarize
from llmtraffic.harness.podsampler import PodSampler
from llmtraffic.harness.progress import Progress
from llmtraffic.harness.routing import RoutingRun, measure_capacity
from llmtraffic.harness.runreport import LiveRun, headline, write_run_report
from llmtraffic.harness.table import format_table
from llmtraffic.harness.timeline import Samples
from llmtraffic.harness.stack import (Fleet, Stack, StackError, start_balancer, start_exporter,
                                      start_fleet)
from llmtraffic.harness.engines import real_fleet_config, warm_up
from llmtraffic.harness.fidelity import capacity as profile_capacity, new_salt, salted
from llmtraffic.simulator.profile import get_profile
from llmtraffic.simulator.vllmfleet import VllmFleet, VllmNotInstalled, VllmStartError
from llmtraffic.simulator.workloads import make_workload
from llmtraffic.dashboards.build import dashboard_files
from llmtraffic.dashboards.scrapeconfig import SCRAPE_CONFIG, LocalPod, localize
from llmtraffic.contracts import series as m
from llmtraffic.harness.prometheus import PrometheusError, PrometheusServer

log = logging.getLogger(__name__)

POOL_LLM = "vllm-llama2-7b-pool"  # the seed's pool name
POOL_RR = "vllm-llama2-7b-pool-rr"
WORKLOAD = "seed-lora"
#: --engine vllm: the workload the CPU carries and the measured profile of its capacity.
VLLM_WORKLOAD, VLLM_PROFILE = "cpu-mix", "vllm-cpu-tiny"


class DemoOptions(BaseModel):
    """`llmtraffic demo`'s options, one flag each (`contracts.flags`)."""

    model_config = ConfigDict(extra="forbid")

    quick: bool = Field(False, description="a 10-second run (tests, a first look)")
    duration: float = Field(60.0, gt=0, le=3600, description="seconds of arrivals (wall "
                            "clock); the requests still running then finish")
    out: Annotated[Path, Flag(metavar="DIR")] = Field(Path("llmtraffic-demo"),
                                                      description="output folder")
    engine: Literal["sim", "vllm"] = Field(
        "sim", description="sim: two simulated fleets, one per balancer, at once; vllm: one "
        "fleet of real vLLM engines (CPU build, the model kit; `bash scripts/install-vllm`) "
        "behind each balancer in turn, in real time, on the cpu-mix workload")
    pods: Annotated[int | None, Flag(shown_default="3 per pool; 2 with --engine vllm")] = \
        Field(None, ge=1, le=32, description="pods per pool")
    load: Annotated[Load | None, Flag(shown_default="0.9; 0.3 with --engine vllm")] = Field(
        None, description="arrivals as a fraction of the pods' measured capacity (a "
        "backlog at full batches), e.g. 0.9 for 90%")
    time_scale: float = Field(2.0, gt=0, le=10,
                              description="simulated seconds per wall second")
    seed: int = Field(1, description="workload seed")
    no_prometheus: bool = Field(False, description="do not start Prometheus even if it is "
                                "on the PATH")
    serve: bool | None = Field(None, description="after the run, keep everything (and "
                               "Prometheus) up until Ctrl-C (default: when interactive, "
                               "except with --quick)")
    scrape_interval: Annotated[str, NOT_A_FLAG] = "2s"  # Prometheus's


@dataclass
class Side:
    """One half of the comparison: a fleet and the balancer in front of it."""

    policy: str
    fleet: Fleet
    url: str
    access_log: Path
    outcomes: list[Outcome] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    samples: Samples = field(default_factory=list)  # the pods' pages during the load


class Demo:
    """`with Demo(options) as demo: demo.start(); demo.run()` — processes stop on exit."""

    def __init__(self, options: DemoOptions) -> None:
        self.o = options
        self.out = options.out
        self.stack = Stack(self.out)
        self.sides: list[Side] = []
        self.exporter_url = ""
        self.prometheus: PrometheusServer | None = None
        self.rate = 0.0
        self.capacity = 0.0
        self.origin = 0.0  # event-loop time the load began
        self.started = self.ended = 0.0  # unix times of the load
        self.vllm: VllmFleet | None = None  # --engine vllm: the one real fleet
        self.workload = VLLM_WORKLOAD if options.engine == "vllm" else WORKLOAD

    def __enter__(self) -> "Demo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        self.stack.stop()
        if self.vllm is not None:
            self.vllm.stop()
            self.vllm = None

    # ---- start ---------------------------------------------------------------------------
    def start(self) -> None:
        o = self.o
        self.out.mkdir(parents=True, exist_ok=True)
        for old in ("access-llm.log", "access-round-robin.log", "enriched.log"):
            (self.out / old).unlink(missing_ok=True)
        say(core_line())
        if o.engine == "vllm":
            urls = self._start_vllm()
        else:
            say(f"starting {o.pods} simulated vLLM pods per pool (Llama-2-7B on A10, the "
                f"seed's 10 LoRA adapters; pool {POOL_RR} speaks vLLM's legacy metric names)")
        for policy, pool, version, seed in (("llm", POOL_LLM, "v1", o.seed),
                                            ("round-robin", POOL_RR, "legacy", o.seed)):
            fleet = Fleet(f"pods-{policy}", urls, pool) if o.engine == "vllm" else \
                start_fleet(self.stack, f"pods-{policy}", o.pods, pool,
                            time_scale=o.time_scale, seed=seed, metrics_version=version)
            access = self.out / f"access-{policy}.log"
            url = start_balancer(self.stack, f"balancer-{policy}", fleet, policy, access)
            self.sides.append(Side(policy, fleet, url, access))
            say(f"  {policy:<12} balancer {url}  ->  {', '.join(fleet.urls)}")
        fleets = [s.fleet for s in self.sides][:1 if o.engine == "vllm" else None]
        self.exporter_url = start_exporter(self.stack, [s.access_log for s in self.sides],
                                           fleets, self.out / "enriched.log")
        say(f"  exporter     {self.exporter_url}/metrics (tails both access logs)")
        self._prometheus()

    def _start_vllm(self) -> tuple[str, ...]:
        """The one fleet of real engines both balancers take in turn; its URLs."""
        o = self.o
        say(f"starting {o.pods} real vLLM pods (vllm-cpu, the model kit's tiny Llama with the "
            f"seed's 10 LoRA adapters; about 1-4 minutes), shared by both balancers in turn")
        self.vllm = VllmFleet(real_fleet_config(o.pods, self.out / "logs" / "vllm"))
        try:
            self.vllm.start().wait_ready(600)
        except (VllmNotInstalled, VllmStartError) as e:
            raise StackError(str(e)) from None
        warm_up(self.vllm.urls)  # the first side must not pay the adapters' first use
        return tuple(self.vllm.urls)

    def local_pods(self) -> list[LocalPod]:
        """The demo's processes as the Kubernetes pods scrape.yml expects."""
        pods = []
        seen: set[str] = set()  # --engine vllm: both pools are the same pods
        for side in self.sides:
            for i, addr in enumerate(side.fleet.addresses):
                if addr in seen:
                    continue
                seen.add(addr)
                port = int(addr.rsplit(":", 1)[1])
                pods.append(LocalPod(f"{side.fleet.pool}-{i}", labels={"app": side.fleet.pool},
                                     annotations={"prometheus.io/scrape": "true",
                                                  "prometheus.io/port": str(port),
                                                  "prometheus.io/path": "/metrics"},
                                     ports={"http": port}))
            port = int(side.url.rsplit(":", 1)[1])
            pods.append(LocalPod(f"llmtraffic-balancer-{side.policy}",
                                 labels={"app.kubernetes.io/name": "llmtraffic-balancer"},
                                 ports={"metrics": port}))
        pods.append(LocalPod("llmtraffic-exporter-0",
                             labels={"app.kubernetes.io/name": "llmtraffic-exporter"},
                             ports={"metrics": int(self.exporter_url.rsplit(":", 1)[1])}))
        return pods

    def _prometheus(self) -> None:
        pdir = self.out / "prometheus"
        config = localize(SCRAPE_CONFIG.read_text(), self.local_pods(), pdir / "sd",
                          scrape_interval=self.o.scrape_interval,
                          evaluation_interval=self.o.scrape_interval)
        if self.o.no_prometheus or not shutil.which("prometheus"):
            pdir.mkdir(parents=True, exist_ok=True)
            (pdir / "prometheus.yml").write_text(config)
            why = "disabled" if self.o.no_prometheus else "not on the PATH"
            say(f"  prometheus   not started ({why}); config for these ports: "
                f"{pdir / 'prometheus.yml'}")
            return
        shutil.rmtree(pdir / "data", ignore_errors=True)
        try:
            self.prometheus = PrometheusServer(pdir, config).start()
            say(f"  prometheus   {self.prometheus.url}  (config {pdir / 'prometheus.yml'})")
        except PrometheusError as e:
            say(f"  prometheus   could not start: {e}")

    # ---- run -----------------------------------------------------------------------------
    def run(self) -> RoutingRun:
        o = self.o
        if o.engine == "vllm":
            self.capacity = profile_capacity(VLLM_WORKLOAD, get_profile(VLLM_PROFILE), o.pods,
                                             o.seed)
        else:
            self.capacity = o.pods * measure_capacity(WORKLOAD, seed=o.seed)
        self.rate = o.load * self.capacity
        reqs = make_workload(self.workload, self.rate, o.duration * o.time_scale, o.seed)
        what = ("cpu-mix: 8 apps with their own system prompt and model" if o.engine == "vllm"
                else f"{WORKLOAD}: the seed's adapters, Zipf popularity, ShareGPT-like lengths")
        say(f"\n{len(reqs)} requests ({what}) at {o.load:.0%} of capacity through each "
            f"balancer, {o.duration:.0f} s (x{o.time_scale:g} simulated time)")
        t0 = time.monotonic()
        self.started = time.time()
        run_until_interrupted(self._drive(reqs))
        self.ended = time.time()
        elapsed = time.monotonic() - t0
        for side in self.sides:
            side.figures.update(summarize(side.outcomes, elapsed, o.time_scale))
        results = {f"{s.policy}": s.figures for s in self.sides}
        return RoutingRun(self.workload, o.load, o.pods, o.duration * o.time_scale, o.seed,
                          self.capacity, self.rate, results, {})

    async def _drive(self, reqs) -> None:
        self.origin = asyncio.get_running_loop().time()
        progress = Progress(len(reqs), [s.policy for s in self.sides], self.o.duration)
        in_turn = self.o.engine == "vllm"  # one fleet: the sides sample it in turn
        samplers = [] if in_turn else [PodSampler(list(s.fleet.urls), interval=1.0)
                                       for s in self.sides]
        for sm in samplers:
            await sm.__aenter__()
        ticker = asyncio.create_task(progress.tick())
        try:
            if in_turn:
                return await self._drive_in_turn(reqs, progress)
            done = await asyncio.gather(*(
                replay(s.url, reqs, time_scale=self.o.time_scale,
                       on_done=lambda out, p=s.policy: progress.done(p, out))
                for s in self.sides))
        finally:
            ticker.cancel()
            for sm in samplers:
                await sm.__aexit__(None, None, None)
            progress.finish()
        for side, outcomes, sm in zip(self.sides, done, samplers):
            side.outcomes = outcomes
            side.figures = sm.summary(self.o.time_scale)
            side.samples = sm.samples

    async def _drive_in_turn(self, reqs, progress: Progress) -> None:
        """One fleet of real engines: each policy in turn, its prompts salted apart (the
        other's prefix cache does not count), its times shifted to begin at the origin."""
        loop = asyncio.get_running_loop()
        for side in self.sides:
            shift = loop.time() - self.origin
            async with PodSampler(list(side.fleet.urls), interval=1.0) as sm:
                side.outcomes = await replay(
                    side.url, salted(reqs, new_salt(random.Random())),
                    on_done=lambda out, p=side.policy: progress.done(p, out))
            for out in side.outcomes:
                out.start -= shift
            side.figures = sm.summary(1.0)
            side.samples = [(t - shift, pages) for t, pages in sm.samples]

    def serve_forever(self) -> None:
        """Keep every process up until Ctrl-C, saying where each one answers."""
        for side in self.sides:
            say(f"\n{side.policy} balancer: {side.url}/v1/completions")
        say(f"exporter: {self.exporter_url}/metrics")
        if self.prometheus is not None:
            say(f"Prometheus: {self.prometheus.url}  (import {self.out / 'dashboards'}/*.json "
                "into Grafana with it as the datasource)")
        say("serving until Ctrl-C")
        while True:
            time.sleep(3600)

    # ---- report --------------------------------------------------------------------------
    def exporter_tokens(self) -> dict[tuple[str, str], tuple[float, float]]:
        """(lb_policy, model) -> (prompt, completion) tokens as the exporter counted them."""
        with urllib.request.urlopen(self.exporter_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[tuple[str, str], list[float]] = {}
        names = {m.PROMPT_TOKENS.name: 0, m.COMPLETION_TOKENS.name: 1}
        for fam in text_string_to_metric_families(text):
            if fam.name not in names:
                continue
            for s in fam.samples:
                if s.name.endswith("_total"):
                    key = (s.labels.get("lb_policy", ""), s.labels.get("model", ""))
                    out.setdefault(key, [0.0, 0.0])[names[fam.name]] += s.value
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def write_outputs(self, run: RoutingRun, tokens: str) -> list[Path]:
        """report.html with its PNGs, the dashboards and results.json; returns them."""
        live = LiveRun(run, {s.policy: s.outcomes for s in self.sides},
                       {s.policy: s.samples for s in self.sides}, self.origin, self.started,
                       self.ended, self.o.time_scale,
                       {s.policy: s.fleet.pool for s in self.sides})
        scrape = float(self.o.scrape_interval.rstrip("s"))
        if self.prometheus is not None:
            time.sleep(2 * scrape)  # the run's last samples scraped
            live.ended = time.time()
        written = write_run_report(self.out, live, prom=self.prometheus,
                                   rate_interval=f"{max(4 * scrape, 5):g}s",
                                   intro=self.intro(run), extra=tokens)
        ddir = self.out / "dashboards"
        ddir.mkdir(exist_ok=True)
        for name, text in dashboard_files().items():
            (ddir / name).write_text(text)
            written.append(ddir / name)
        results = self.out / "results.json"
        results.write_text(json.dumps({**run.as_dict(), "exporter_tokens": [
            {"lb_policy": p, "model": mo, "prompt_tokens": a, "completion_tokens": b}
            for (p, mo), (a, b) in self.exporter_tokens().items()]}, indent=2) + "\n")
        written.append(results)
        return written

    def intro(self, run: RoutingRun) -> str:
        o = self.o
        n = sum(len(s.outcomes) for s in self.sides[:1])
        if o.engine == "vllm":
            return (f"{o.pods} real vLLM pods (vllm-cpu; the model kit's tiny Llama with the "
                    f"seed's 10 LoRA adapters), behind each balancer in turn; the same {n} "
                    f"seeded {self.workload} requests at {o.load:.0%} of the capacity the "
                    f"measured profile {VLLM_PROFILE} predicts, arriving over "
                    f"{o.duration:.0f} s (wall clock: times are real, not simulated).")
        return (f"{o.pods} simulated vLLM pods per pool (Llama-2-7B on an A10, the seed's 10 "
                f"LoRA adapters); the same {n} seeded {WORKLOAD} requests through each "
                f"balancer at {o.load:.0%} of the pods' measured capacity, arriving over "
                f"{o.duration * o.time_scale:.0f} simulated seconds ({o.duration:.0f} s wall "
                f"clock at x{o.time_scale:g}; the load took {self.ended - self.started:.0f} s "
                "wall clock with the last requests finishing).")


def tokens_table(tokens: dict[tuple[str, str], tuple[float, float]]) -> str:
    lines = [f"{'lb_policy':<13}{'model':<28}{'prompt tokens':>15}{'completion tokens':>19}"]
    for (policy, model), (prompt, completion) in tokens.items():
        lines.append(f"{policy:<13}{model:<28}{prompt:>15.0f}{completion:>19.0f}")
    return "\n".join(lines)


def say(text: str) -> None:
    print(text, flush=True)


# ---- command line --------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="see LLM-aware vs round-robin balancing in one command",
                       description="Start two seed-like simulated vLLM fleets (3 pods, the "
                       "seed's LoRA adapters), the LLM-aware balancer in front of one and "
                       "round-robin in front of the other, and the exporter tailing both "
                       "access logs; send the same seeded load through each; print a "
                       "comparison and write plots, the enriched log, the dashboards and a "
                       "Prometheus config into --out. Ctrl-C stops everything.")
    add_flags(p, DemoOptions)
    p.set_defaults(func=_run)


def core_line() -> str:
    """Which core the llm policy runs, said first: a C build that failed at install time is
    otherwise silent until a balancer starts."""
    from llmtraffic.balancer.policy import native

    if native.core is not None:
        return "llm policy: native C core"
    return (f"llm policy: pure-Python core, several times slower (the C core is not built: "
            f"{native.missing}; Debian's compiler and headers: apt-get install gcc "
            "python3-dev)")


def prepare_out(out: Path) -> None:
    """Create the output folder and prove it writable; OSError says which and what to do."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".llmtraffic-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"--out {out}: cannot write there ({e.strerror or e}); give a folder "
                      "you can write, e.g. --out ./llmtraffic-demo") from None


def resolve_engine(opts: DemoOptions) -> DemoOptions:
    """The defaults that depend on --engine: real engines run in real time, 2 pods shared by
    both balancers, at 0.3 of what they carry at full batches (the measured profile's)."""
    vllm = opts.engine == "vllm"
    return opts.model_copy(update={
        "pods": opts.pods or (2 if vllm else 3),
        "load": opts.load or (0.3 if vllm else 0.9),
        "time_scale": 1.0 if vllm else opts.time_scale})


def _run(args: argparse.Namespace) -> int:
    # Ctrl-C and SIGTERM both stop everything cleanly, even when started from a shell or
    # service manager that ignores SIGINT for background jobs (Python's SIGINT handler
    # raises KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        opts = resolve_engine(from_flags(DemoOptions, args))
        if opts.quick:
            opts = opts.model_copy(update={"duration": 10.0, "scrape_interval": "1s"})
        prepare_out(opts.out)
    except (OptionError, OSError) as e:
        print(f"llmtraffic demo: {e}", file=sys.stderr)
        return 2
    demo = Demo(opts)
    t0 = time.monotonic()
    try:
        demo.start()
        run = demo.run()
        say("\n" + format_table(run, name="lb_policy"))
        if opts.engine == "vllm":
            say("real engines in real time: every time here is wall-clock seconds (what the "
                "table calls simulated is x1)")
        time.sleep(1.0)  # the exporter polls the logs every 0.2 s
        tokens = ("tokens by model as the exporter counted them from the balancers' access "
                  "logs:\n" + tokens_table(demo.exporter_tokens()))
        say("\n" + tokens)
        written = demo.write_outputs(run, tokens)
        say(f"\nwrote {written[0]} (open it in a browser), {written[1]}, "
            f"{opts.out / 'panels'}/, {opts.out / 'dashboards'}/, {written[-1]}, "
            f"{opts.out / 'enriched.log'}, logs in {opts.out / 'logs'}/")
        line = headline(run)
        say(("\n" + line if line else "") +
            f"\nthe demo took {time.monotonic() - t0:.0f} s (wall clock)")
        serve = opts.serve if opts.serve is not None else (
            sys.stdin.isatty() and not opts.quick)
        if serve:
            demo.serve_forever()
        return 0
    except KeyboardInterrupt:
        say("\nstopping")
        return 130
    except Exception as e:  # a child that would not start: say which and where its log is
        from llmtraffic.harness.stack import StackError

        if isinstance(e, StackError):
            print(f"llmtraffic demo: {e}", file=sys.stderr)
            return 1
        raise
    finally:
        demo.stop()
