"""`llmtraffic balancer`: the command that runs the proxy (or, with `--mode extproc`, the
Envoy endpoint picker) from resource files and a pods source."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import yaml
from pydantic import ValidationError

from llmtraffic.balancer.config import ConfigError
from llmtraffic.balancer.eventloop import EventLoopError, loop_name
from llmtraffic.balancer.eventloop import run as run_loop
from llmtraffic.balancer.options import BalancerCommand, ExtProcOptions, ProxyOptions
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.balancer.workers import WorkerSeat, default_workers, serve_workers
from llmtraffic.contracts.flags import OptionError, add_flags, from_flags
from llmtraffic.contracts.serving import stop_event

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "balancer", help="LLM-aware load balancer (OpenAI proxy or Envoy ext_proc picker)",
        description="Route each LLM request to the vLLM pod that will serve it soonest. "
        "Pools, models and routes come from InferencePool / InferenceModel / LLMRoute YAML "
        "(e.g. deploy/seed/*.yaml); pods from --pods-file or the Kubernetes API.",
        epilog="example: llmtraffic balancer --config deploy/seed/*.yaml --pods-file pods.yaml "
        "--listen 127.0.0.1:8080 --access-log access.log")
    add_flags(p, BalancerCommand, ExtProcOptions, ProxyOptions)
    p.set_defaults(func=_run)


def load_policy_config(path: str | None) -> PolicyConfig | None:
    if not path:
        return None
    try:
        data = yaml.safe_load(open(path)) or {}
        return PolicyConfig.model_validate(data)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{path}: {errs}") from None


def make_discovery(cmd: BalancerCommand, pods_required: bool = True):
    if cmd.kubernetes:
        from llmtraffic.balancer.kube import KubeDiscovery

        return KubeDiscovery(namespace=cmd.namespace)
    from llmtraffic.balancer.discovery import StaticDiscovery

    if not cmd.config:
        raise ConfigError("give --config FILE… (InferencePool/InferenceModel/LLMRoute YAML) "
                          "or --kubernetes")
    if not cmd.pods_file and pods_required:
        raise ConfigError("give --pods-file FILE (`pods: [{name, address, labels}]`) or "
                          "--kubernetes")
    return StaticDiscovery(cmd.config, cmd.pods_file)


def front_end_options(cmd: BalancerCommand, args: argparse.Namespace
                      ) -> ProxyOptions | ExtProcOptions:
    """The options of the front end `--mode` names, with what the command reads itself."""
    policy_config = load_policy_config(cmd.policy_config_file)
    if cmd.mode == "extproc":
        return from_flags(ExtProcOptions, args, policy_config=policy_config)
    return from_flags(ProxyOptions, args, policy_config=policy_config,
                      api_key=os.environ.get(cmd.api_key_env) or None,
                      metrics_token=os.environ.get(cmd.metrics_token_env) or None)


def _run(args: argparse.Namespace) -> int:
    try:
        cmd = from_flags(BalancerCommand, args)
        if cmd.check:
            from llmtraffic.balancer.check import run_check

            return run_check(lambda: make_discovery(cmd, pods_required=False), cmd.output,
                             sys.stdout, front_end_options(cmd, args))
        loop_name(cmd.loop)
        opts = front_end_options(cmd, args)
        discovery = make_discovery(cmd)
        if isinstance(opts, ExtProcOptions):
            serve_extproc = _extproc()
            if (cmd.workers or 1) > 1:
                raise ConfigError(f"--workers {cmd.workers}: the ext_proc picker runs in one "
                                  "process; --workers applies to --mode proxy")
        workers = 1 if isinstance(opts, ExtProcOptions) else cmd.workers or default_workers()
    except (ConfigError, ImportError, EventLoopError, OptionError) as e:
        print(f"llmtraffic balancer: {e}", file=sys.stderr)
        return 2
    if isinstance(opts, ExtProcOptions):
        return run_loop(_serve(serve_extproc(discovery, opts)),
                        "asyncio" if cmd.loop == "auto" else cmd.loop)
    from llmtraffic.balancer.proxy import BalancerApp

    if workers > 1:
        return _serve_workers(cmd, opts, workers)
    return run_loop(_serve_proxy(BalancerApp(discovery, opts)), cmd.loop)


def _serve_workers(cmd: BalancerCommand, opts: ProxyOptions, workers: int) -> int:
    """`workers` forked proxies on one port (balancer.workers); the banner once all listen."""
    from llmtraffic.contracts.serving import parse_listen

    host, port = parse_listen(opts.listen)
    # each worker scrapes its share of the pods and hands the outcomes to the others (one
    # scrape of a pod per period for all of them); the budget is the balancer's, split
    opts = opts.model_copy(update={"scrape_budget": opts.scrape_budget / workers})

    def run_worker(seat: WorkerSeat, ready) -> int:
        from llmtraffic.balancer.proxy import BalancerApp
        from llmtraffic.balancer.scrapeshare import WorkerScrapeShare

        try:
            app = BalancerApp(make_discovery(cmd), opts, seat=seat)
            app.scraper.share = WorkerScrapeShare(seat)
        except Exception as e:  # reported by the parent, which stops the others
            ready.send(("error", f"worker {seat.index}: {type(e).__name__}: {e}"))
            return 2
        return run_loop(_serve_proxy(app, ready), cmd.loop)

    return serve_workers(workers, host, port, run_worker, lambda port, serves: (
        f"llmtraffic balancer: http://{host}:{port} workers={workers} {serves}"))


def _extproc():
    """The ext_proc server, or ImportError naming the extra that brings gRPC."""
    try:
        from llmtraffic.balancer.extproc import serve_extproc
    except ImportError as e:
        raise ImportError(f"--mode extproc needs gRPC ({e}): pip install "
                          "'llmtraffic[extproc]'") from None
    return serve_extproc


async def _serve_proxy(app, ready=None) -> int:
    """Serve until SIGINT/SIGTERM; a worker (`ready`: its pipe to the parent) reports its
    start there and the parent prints the banner."""
    stop = stop_event(app.core.reopen_logs)
    try:
        await app.start()
    except OSError as e:
        why = f"cannot listen on {app.options.listen}: {e}"
        if ready is not None:
            ready.send(("error", why))
        else:
            print(f"llmtraffic balancer: {why}", file=sys.stderr)
        await app.stop()
        return 2
    quiet_gc()
    serves = (f"policy={app.policy.name} pods={len(app.store.pods())} "
              f"loop={type(asyncio.get_running_loop()).__module__.split('.')[0]}")
    if ready is not None:
        ready.send(("ok", serves))
    else:
        print(f"llmtraffic balancer: http://{app.options.listen.rsplit(':', 1)[0]}:{app.port} "
              f"{serves}", flush=True)
    await stop.wait()
    await app.stop()
    return 0


#: Allocations between two young-generation collections while serving (Python's default is
#: 700, a few requests' worth: collections then cost a tenth of the proxy's CPU).
GC_GEN0 = 20_000


def quiet_gc() -> None:
    """Once started: what start-up allocated (modules, resources, the policy's tables) is
    moved out of the collector's sight (`gc.freeze`), and young collections run after
    GC_GEN0 allocations rather than 700, so serving does not keep re-scanning them."""
    import gc

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0, older, oldest)


async def _serve(coro) -> int:
    return await coro
