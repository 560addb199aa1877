"""`llmtraffic balancer`: the command that runs the proxy (or, with `--mode extproc`, the
Envoy endpoint picker) from resource files and a pods source."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import yaml
from pydantic import ValidationError

from llmtraffic.balancer.config import ConfigError
from llmtraffic.balancer.eventloop import CHOICES, EventLoopError, loop_name
from llmtraffic.balancer.eventloop import run as run_loop
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.balancer.policy.registry import POLICY_NAMES

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "balancer", help="LLM-aware load balancer (OpenAI proxy or Envoy ext_proc picker)",
        description="Route each LLM request to the vLLM pod that will serve it soonest. "
        "Pools, models and routes come from InferencePool / InferenceModel / LLMRoute YAML "
        "(e.g. deploy/seed/*.yaml); pods from --pods-file or the Kubernetes API.",
        epilog="example: llmtraffic balancer --config deploy/seed/*.yaml --pods-file pods.yaml "
        "--listen 127.0.0.1:8080 --access-log access.log")
    p.add_argument("--config", nargs="+", default=[], metavar="FILE",
                   help="YAML files with InferencePool, InferenceModel and LLMRoute objects "
                   "(other kinds are skipped)")
    p.add_argument("--pods-file", metavar="FILE",
                   help="YAML `pods: [{name, address, labels}]`; pool membership comes from "
                   "each InferencePool's selector, an address without a port takes the "
                   "pool's target port")
    p.add_argument("--kubernetes", action="store_true",
                   help="discover pools, models, routes and ready pods from the Kubernetes "
                   "API (in-cluster, else kubeconfig) instead of files")
    p.add_argument("--namespace", default=None,
                   help="with --kubernetes: watch this namespace (default: the pod's own, "
                   "else 'default')")
    p.add_argument("--mode", choices=["proxy", "extproc"], default="proxy",
                   help="proxy: OpenAI-compatible HTTP proxy; extproc: Envoy ext_proc "
                   "endpoint picker (gRPC) (default: %(default)s)")
    p.add_argument("--listen", default=None,
                   help="host:port (default: 0.0.0.0:8080 for proxy, 0.0.0.0:9002 for "
                   "extproc)")
    p.add_argument("--health-listen", default="0.0.0.0:9003",
                   help="extproc: gRPC health service address (default: %(default)s)")
    p.add_argument("--policy", choices=POLICY_NAMES, default="llm",
                   help="llm (LLM-aware, default), round-robin (what a Kubernetes Service "
                   "does), random, least-request")
    p.add_argument("--policy-config", metavar="FILE",
                   help="YAML with the llm policy's weights and thresholds (fields of "
                   "PolicyConfig: queue_weight, kv_weight, lora_weight, prefix_weight, "
                   "queue_threshold, kv_threshold, ...)")
    p.add_argument("--access-log", metavar="PATH",
                   help="append one JSON line per request here ('-' for stdout); the "
                   "exporter reads it with --format json")
    p.add_argument("--scrape-interval", type=float, default=0.1,
                   help="seconds between scrapes of every pod's /metrics "
                   "(default: %(default)s)")
    p.add_argument("--scrape-timeout", type=float, default=1.0,
                   help="per-pod scrape timeout in seconds (default: %(default)s)")
    p.add_argument("--api-key-env", default="LLMTRAFFIC_API_KEY", metavar="VAR",
                   help="if this environment variable is set, clients must send "
                   "`Authorization: Bearer <its value>` (default: %(default)s)")
    p.add_argument("--metrics-token-env", default="LLMTRAFFIC_METRICS_TOKEN", metavar="VAR",
                   help="if set, /metrics needs `Authorization: Bearer <its value>` "
                   "(default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                   help="larger request bodies get 413 (default: %(default)s)")
    p.add_argument("--max-header-bytes", type=int, default=8190,
                   help="a longer request line or header gets 400; at most 128 headers "
                   "(default: %(default)s)")
    p.add_argument("--retries", type=int, default=2,
                   help="other pods tried when the picked pod cannot be reached "
                   "(default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=120.0,
                   help="seconds a pod may stay silent mid-request before the request "
                   "fails (default: %(default)s)")
    p.add_argument("--breaker-failures", type=int, default=5, metavar="N",
                   help="failed answers in a row (5xx, failed connect) after which a pod's "
                   "circuit opens: no requests go there for --breaker-cooldown, then one "
                   "probe (default: %(default)s)")
    p.add_argument("--breaker-cooldown", type=float, default=10.0, metavar="SECONDS",
                   help="how long an open circuit keeps its pod out (default: %(default)s)")
    p.add_argument("--max-label-values", type=int, default=200,
                   help="distinct model names kept per metric label; the rest are counted "
                   "as 'other' (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="seed the policy's tie-breaks")
    p.add_argument("--loop", choices=CHOICES, default="auto",
                   help="event loop: uvloop (about a quarter less CPU and added latency per "
                   "request), asyncio, or auto = uvloop when installed for the proxy and "
                   "asyncio for --mode extproc (gRPC's own) (default: %(default)s)")
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


def make_discovery(args: argparse.Namespace):
    if args.kubernetes:
        from llmtraffic.balancer.kube import KubeDiscovery

        return KubeDiscovery(namespace=args.namespace)
    from llmtraffic.balancer.discovery import StaticDiscovery

    if not args.config:
        raise ConfigError("give --config FILE… (InferencePool/InferenceModel/LLMRoute YAML) "
                          "or --kubernetes")
    if not args.pods_file:
        raise ConfigError("give --pods-file FILE (`pods: [{name, address, labels}]`) or "
                          "--kubernetes")
    return StaticDiscovery(args.config, args.pods_file)


def _run(args: argparse.Namespace) -> int:
    try:
        loop_name(args.loop)
        discovery = make_discovery(args)
        policy_config = load_policy_config(args.policy_config)
    except (ConfigError, ImportError, EventLoopError) as e:
        print(f"llmtraffic balancer: {e}", file=sys.stderr)
        return 2
    if args.breaker_failures < 1 or not args.breaker_cooldown > 0 \
            or args.max_label_values < 1:
        print("llmtraffic balancer: --breaker-failures and --max-label-values must be >= 1 "
              "and --breaker-cooldown > 0", file=sys.stderr)
        return 2
    api_key = os.environ.get(args.api_key_env) or None
    metrics_token = os.environ.get(args.metrics_token_env) or None
    if args.mode == "extproc":
        from llmtraffic.balancer.extproc import ExtProcOptions, serve_extproc

        opts = ExtProcOptions(listen=args.listen or "0.0.0.0:9002",
                              health_listen=args.health_listen, policy=args.policy,
                              policy_config=policy_config, access_log=args.access_log,
                              scrape_interval=args.scrape_interval,
                              scrape_timeout=args.scrape_timeout, seed=args.seed,
                              max_body_bytes=args.max_body_bytes,
                              breaker_failures=args.breaker_failures,
                              breaker_cooldown=args.breaker_cooldown,
                              max_label_values=args.max_label_values)
        return run_loop(_serve(serve_extproc(discovery, opts)),
                        "asyncio" if args.loop == "auto" else args.loop)
    from llmtraffic.balancer.proxy import BalancerApp, ProxyOptions

    opts = ProxyOptions(listen=args.listen or "0.0.0.0:8080", policy=args.policy,
                        policy_config=policy_config, access_log=args.access_log,
                        api_key=api_key, metrics_token=metrics_token,
                        scrape_interval=args.scrape_interval,
                        scrape_timeout=args.scrape_timeout,
                        max_body_bytes=args.max_body_bytes, retries=args.retries,
                        max_header_bytes=args.max_header_bytes,
                        idle_timeout=args.idle_timeout, seed=args.seed,
                        breaker_failures=args.breaker_failures,
                        breaker_cooldown=args.breaker_cooldown,
                        max_label_values=args.max_label_values)
    return run_loop(_serve_proxy(BalancerApp(discovery, opts)), args.loop)


async def _serve_proxy(app) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if app.access_log is not None:
        loop.add_signal_handler(signal.SIGHUP, app.access_log.reopen)
    try:
        await app.start()
    except OSError as e:
        print(f"llmtraffic balancer: cannot listen on {app.options.listen}: {e}",
              file=sys.stderr)
        await app.stop()
        return 2
    print(f"llmtraffic balancer: http://{app.options.listen.rsplit(':', 1)[0]}:{app.port} "
          f"policy={app.policy.name} pods={len(app.store.pods())} "
          f"loop={type(loop).__module__.split('.')[0]}", flush=True)
    await stop.wait()
    await app.stop()
    return 0


async def _serve(coro) -> int:
    return await coro
