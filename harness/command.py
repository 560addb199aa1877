"""`llmtraffic bench routing|live|calibrate|fidelity`: the benchmarks from the command line
(calibrate and fidelity, against real engines, in harness/enginebench.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import tempfile
from pathlib import Path

from llmtraffic.harness.enginebench import add_parsers as add_engine_parsers
from llmtraffic.harness.live import DEFAULT_ROUTERS
from llmtraffic.harness.options import parse_load


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    try:
        out = [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4, got {value!r}")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"replica counts must be >= 1, got {value!r}")
    return out


def _seeds(value: str) -> list[int]:
    try:
        out = [int(v) for v in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a seed or a comma list like 1,2,3, "
                                         f"got {value!r}")
    if not out:
        raise argparse.ArgumentTypeError("expected at least one seed")
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="compare routing policies and routers on the same work",
                       description="Routing-quality benchmarks. `routing` runs in virtual time "
                       "(fast, deterministic); `live` drives real-time simulated pods through "
                       "real routers.")
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCH")

    r = bsub.add_parser("routing", help="policies side by side in virtual time",
                        description="Every policy on the same seeded arrivals, on a fresh "
                        "virtual-time fleet of simulated vLLM engines, at a load relative to "
                        "the fleet's capacity stored in harness/capacity.json (measured once "
                        "per profile, workload and pod count on calibration seed 1000; "
                        "`bench capacity` regenerates it). greedy-oracle (alias oracle) is a "
                        "greedy per-request heuristic with clairvoyance (exact engine state, "
                        "true output lengths), not a bound: it cannot see that a pick takes "
                        "the KV cache or LoRA slot the next arrivals need, so llm can beat it.")
    r.add_argument("--workload", default="seed-lora",
                   help="seed-lora, shared-prefix, mixed or multi-turn; comma-separate "
                   "several (default: %(default)s)")
    r.add_argument("--pods", type=int, default=4, help="simulated pods (default: %(default)s)")
    r.add_argument("--load", type=parse_load, default=0.9,
                   help="offered load as a fraction of the fleet's measured capacity, e.g. "
                   "0.9 for 90%% (default: %(default)s)")
    r.add_argument("--policies", type=_csv, default=["round-robin", "least-request", "llm",
                                                     "greedy-oracle"],
                   help="comma-separated: round-robin, random, least-request, llm, "
                   "greedy-oracle (or oracle) (default: round-robin,least-request,llm,"
                   "greedy-oracle)")
    r.add_argument("--duration", type=float, default=None,
                   help="simulated seconds of arrivals (default: 600; with --grid 720 / "
                   "pods, at least 45: 360 s on 2 pods, 45 s on 16)")
    r.add_argument("--seed", "--seeds", dest="seed", type=_seeds, default=None,
                   help="workload and engine seed; a comma list (e.g. 1,2,3,4,5,6,7,8) runs "
                   "each and ends with the geometric mean of each policy's TTFT p90 over the "
                   "seeds and its ratio to greedy-oracle and round-robin. The llm weights "
                   "were tuned on seeds 1-16: report on others (default: 1; with --grid "
                   "the reporting seeds 201,202,203)")
    r.add_argument("--policy-config", type=_policy_config, default=None,
                   metavar="FILE|JSON",
                   help="the llm policy's PolicyConfig: a YAML/JSON file or inline JSON, e.g. "
                   "'{\"scorers\": {\"queue\": 3, \"kv\": 2, \"lora\": 12, \"prefix\": 6}}' "
                   "(default: PolicyConfig's defaults)")
    r.add_argument("--grid", action="store_true",
                   help="the untuned grid instead of one run: loads 0.5/0.7/0.9/1.0 x pods "
                   "2/4/8/16 x workloads seed-lora, shared-prefix, mixed, multi-turn x the "
                   "reporting seeds, policies round-robin, least-request, llm and "
                   "greedy-oracle, 720/pods simulated s each; one table per workload with the "
                   "llm policy's TTFT p90 over greedy-oracle's and least-request's and its "
                   "throughput over round-robin's on every seed, each policy's sheds, and "
                   "the cells that miss the goals. The full grid (768 runs) took 23 minutes "
                   "on 2 processes of a 2-core machine busy with other work (load average "
                   "5-6); --workload, --pods and --load "
                   "are ignored")
    r.add_argument("--quick", action="store_true",
                   help="with --grid: one seed (the first reporting seed), 2 pods at load "
                   "0.9, 20 simulated s per workload (seconds; for tests)")
    r.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="with --grid: append each finished run here (JSON lines) and reuse "
                   "the runs it holds, so a grid that was stopped resumes where it was")
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="with --grid: processes running the grid's runs (default: the CPU "
                   "count, %(default)s)")
    r.add_argument("--scrape-interval", type=float, default=0.1,
                   help="seconds between metric refreshes seen by the balancer "
                   "(default: %(default)s)")
    r.add_argument("--replicas", type=_ints, default=[1],
                   help="balancer replicas sharing nothing but the pods; a comma list "
                   "(e.g. 1,2,3,4) compares them and prints the TTFT p90 change against the "
                   "first (default: 1)")
    r.add_argument("--profile", default="llama2-7b-a10", help="engine profile")
    r.add_argument("--json", dest="json_out", help="write the results as JSON here")
    r.add_argument("--plot", help="write a PNG of TTFT p50/p90/p99 and queue time per policy "
                    "here")
    r.set_defaults(func=_routing)

    c = bsub.add_parser("capacity", help="measure and store fleet capacities",
                        description="Measure each fleet's capacity on each workload (a "
                        "saturating backlog on calibration seed 1000, see harness/capacity.py) "
                        "and store it in harness/capacity.json, which bench routing reads.")
    c.add_argument("--profile", default="llama2-7b-a10", help="engine profile")
    c.add_argument("--workload", type=_csv,
                   default=["seed-lora", "shared-prefix", "mixed", "multi-turn"],
                   help="comma-separated workloads (default: the grid's four)")
    c.add_argument("--pods", type=_ints, default=[2, 4, 8, 16],
                   help="comma-separated pod counts (default: 2,4,8,16)")
    c.set_defaults(func=_capacity)

    lv = bsub.add_parser("live", help="routers side by side on real-time simulated pods",
                         description="Each router in turn in front of a fresh fleet of "
                         "real-time simulated pods, on the same seeded arrivals; an async "
                         "streaming client measures TTFT, inter-token and e2e latency. Times "
                         "are simulated seconds (wall x --time-scale).")
    lv.add_argument("--workload", default="seed-lora", help="seed-lora, shared-prefix or mixed")
    lv.add_argument("--pods", type=int, default=4, help="simulated pods (default: %(default)s)")
    rate = lv.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="arrivals per simulated second")
    rate.add_argument("--load", type=parse_load, default=None,
                      help="arrivals as a fraction of the fleet's capacity measured in virtual "
                      "time (default: 0.9 when --rate is not given)")
    lv.add_argument("--duration", type=float, default=120.0,
                    help="simulated seconds of arrivals (default: %(default)s)")
    lv.add_argument("--time-scale", type=float, default=1.0,
                    help="run the pods this many times faster than real time "
                    "(default: %(default)s)")
    lv.add_argument("--routers", type=_csv, default=list(DEFAULT_ROUTERS),
                    help="comma-separated llmtraffic[:POLICY] and vllm-router:POLICY "
                    f"(default: {','.join(DEFAULT_ROUTERS)})")
    lv.add_argument("--seed", type=int, default=1, help="workload and pod seed")
    lv.add_argument("--pods-file", default=None,
                    help="drive the pods this file lists (e.g. real vLLM: `llmtraffic sim "
                    "--engine vllm --pods-file F`) instead of starting simulated ones; every "
                    "router in turn in front of the same pods, in real time")
    lv.add_argument("--profile", default="llama2-7b-a10",
                    help="engine profile of the simulated pods and of the capacity --load "
                    "is a fraction of (e.g. vllm-cpu-tiny for the real CPU fleet; default: "
                    "%(default)s)")
    lv.add_argument("--workdir", default=None,
                    help="logs and configs of the run (default: a temporary directory)")
    lv.add_argument("--json", dest="json_out", help="write the results as JSON here")
    lv.add_argument("--plot", help="write a PNG of TTFT p50/p90/p99 and queue time per router "
                    "here")
    lv.set_defaults(func=_live)
    add_engine_parsers(bsub)  # calibrate, fidelity


def _policy_config(value: str):
    """--policy-config: inline JSON (starting with '{') or a YAML/JSON file."""
    from pydantic import ValidationError

    from llmtraffic.balancer.command import load_policy_config
    from llmtraffic.balancer.config import ConfigError
    from llmtraffic.balancer.policy.settings import PolicyConfig

    try:
        if value.lstrip().startswith("{"):
            return PolicyConfig.model_validate(json.loads(value))
        return load_policy_config(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"inline JSON: {e}") from None
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise argparse.ArgumentTypeError(f"inline JSON: {errs}") from None
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _capacity(args: argparse.Namespace) -> int:
    from llmtraffic.harness.capacity import CAPACITY_FILE, write_capacities

    try:
        table = write_capacities(args.profile, args.workload, args.pods)
    except ValueError as e:
        print(f"llmtraffic bench capacity: {e}", file=sys.stderr)
        return 2
    for w in args.workload:
        print(f"{w}: " + ", ".join(f"{n} pods {table[w][str(n)]:.3f} req/s" for n in args.pods))
    print(f"wrote {CAPACITY_FILE.name}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    from llmtraffic.harness import grid

    opts = dict(grid.QUICK) if args.quick else {}
    default_seeds = opts.pop("seeds", grid.REPORTING_SEEDS)
    seeds = args.seed or list(default_seeds)
    if args.duration is not None:
        opts["duration"] = args.duration

    def progress(done: int, total: int) -> None:
        if done % 16 == 0 or done == total:
            print(f"{done}/{total} runs", file=sys.stderr, flush=True)
    try:
        result = grid.run_grid(seeds=seeds, profile=args.profile,
                               policy_config=args.policy_config, jobs=max(1, args.jobs),
                               progress=progress,
                               checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                               **opts)
    except ValueError as e:
        print(f"llmtraffic bench routing: {e}", file=sys.stderr)
        return 2
    print(grid.format_grid(result))
    missed = grid.missed_cells(result)
    print(textwrap.fill("cells missing a goal: " + ("; ".join(missed) if missed else "none"),
                        100, break_on_hyphens=False))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result.as_dict(), f, indent=1)
        print(f"wrote {args.json_out}")
    return 0


def _routing(args: argparse.Namespace) -> int:
    if args.grid:
        return _grid(args)
    if args.seed is None:
        args.seed = [1]
    if args.duration is None:
        args.duration = 600.0
    from llmtraffic.harness.charts import summary_chart
    from llmtraffic.harness.routing import policy_name

    try:
        args.policies = [policy_name(p) for p in args.policies]
    except ValueError as e:
        print(f"llmtraffic bench routing: {e}", file=sys.stderr)
        return 2
    from llmtraffic.harness.routing import (format_seed_summary, run_routing, seed_summary,
                                            write_json)
    from llmtraffic.harness.table import format_table

    runs = []
    for workload, seed in [(w, s) for w in _csv(args.workload) for s in args.seed]:
        try:
            run = None
            for replicas in args.replicas:
                one = run_routing(workload, pods=args.pods, load=args.load,
                                  policies=args.policies, duration=args.duration,
                                  seed=seed, scrape_interval=args.scrape_interval,
                                  replicas=replicas, profile=args.profile,
                                  capacity_rps=run.capacity_rps if run else None,
                                  policy_config=args.policy_config)
                if len(args.replicas) > 1:
                    one.policies = {f"{p} x{replicas}": r for p, r in one.policies.items()}
                    one.cpu_seconds = {f"{p} x{replicas}": c
                                       for p, c in one.cpu_seconds.items()}
                if run is None:
                    run = one
                else:
                    run.policies.update(one.policies)
                    run.cpu_seconds.update(one.cpu_seconds)
        except ValueError as e:
            print(f"llmtraffic bench routing: {e}", file=sys.stderr)
            return 2
        assert run is not None
        print(format_table(run))
        if len(args.replicas) > 1:
            print(replica_change(run, args.policies, args.replicas))
        print()
        runs.append(run)
    summary = seed_summary(runs) if len(args.seed) > 1 else None
    if summary:
        print(format_seed_summary(summary))
    if args.json_out:
        write_json(runs, args.json_out, summary)
        print(f"wrote {args.json_out}")
    if args.plot:
        summary_chart(runs, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _live(args: argparse.Namespace) -> int:
    from llmtraffic.harness.engines import open_pods
    from llmtraffic.harness.live import run_live
    from llmtraffic.harness.charts import summary_chart
    from llmtraffic.harness.routing import write_json
    from llmtraffic.harness.table import format_table
    from llmtraffic.harness.stack import StackError

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llmtraffic-live-"))
    try:
        with open_pods("sim", workdir, pods_file=args.pods_file) if args.pods_file \
                else contextlib.nullcontext() as fleet:
            run = run_live(args.workload, args.pods, args.duration, args.routers, workdir,
                           rate=args.rate, load=args.load, time_scale=args.time_scale,
                           seed=args.seed, profile=args.profile, fleet=fleet)
    except (ValueError, StackError) as e:
        print(f"llmtraffic bench live: {e}", file=sys.stderr)
        return 2
    print(format_table(run, name="router"))
    print(f"logs and configs: {workdir}")
    if args.json_out:
        write_json([run], args.json_out)
        print(f"wrote {args.json_out}")
    if args.plot:
        summary_chart([run], args.plot)
        print(f"wrote {args.plot}")
    return 0


def replica_change(run, policies: list[str], replicas: list[int]) -> str:
    """TTFT p90 of each replica count against the first, per policy."""
    lines = []
    for p in policies:
        base = run.policies[f"{p} x{replicas[0]}"]["ttft_p90_s"]
        for r in replicas[1:]:
            v = run.policies[f"{p} x{r}"]["ttft_p90_s"]
            lines.append(f"{p}: TTFT p90 with {r} replicas {v:.3f}s vs {replicas[0]}: "
                         f"{base:.3f}s ({(v / base - 1) * 100:+.1f}%)")
    return "\n".join(lines)
