"""The command lines of `llmtraffic bench calibrate` (a measured profile from real engines)
and `llmtraffic bench fidelity` (the simulator with that profile beside the real engines)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from llmtraffic.harness.options import parse_load

ENGINE_HELP = ("vllm: real vLLM engines started here (2 pods, the model kit and the seed's "
               "ten adapters, from the venv `bash scripts/install-vllm` makes); sim: "
               "simulated pods of --profile (a check of the command itself)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["vllm", "sim"], default="vllm",
                   help=f"{ENGINE_HELP} (default: %(default)s)")
    p.add_argument("--pods-file", default=None,
                   help="measure the pods this file lists instead of starting any (e.g. the "
                   "file `llmtraffic sim --engine vllm --pods-file F` writes)")
    p.add_argument("--vllm-python", default=None, metavar="PATH",
                   help="with --engine vllm: the vLLM venv's python")
    p.add_argument("--workdir", default=None,
                   help="logs and configs (default: a temporary directory)")


def add_parsers(bsub: argparse._SubParsersAction) -> None:
    c = bsub.add_parser(
        "calibrate", help="measure real engines and write the simulator's profile of them",
        description="Start the real fleet (or use --pods-file), time a prefill step by "
        "prompt length, a decode step by batch size and context, LoRA adapters in the "
        "batch, two pods stepping at once and the time outside the engine; read the KV "
        "blocks and block size from the page; fit the simulator's step-time model and "
        "write a profile with the command, the date and the raw measurements inside.")
    _common(c)
    c.add_argument("--profile", default="vllm-cpu-tiny",
                   help="with --engine sim: the profile of the simulated pods")
    c.add_argument("--name", default="vllm-cpu-tiny",
                   help="the written profile's name (default: %(default)s)")
    c.add_argument("--out", default=None,
                   help="where to write it (default: the simulator's profiles folder, "
                   "<name>.json, where --profile NAME finds it)")
    c.add_argument("--quick", action="store_true",
                   help="fewer prompt lengths and batch sizes (about 2 minutes)")
    c.add_argument("--rounds", type=int, default=None,
                   help="times each measurement is taken, in a new random order each round; "
                   "the fit uses their medians (default: 3, 2 with --quick)")
    c.add_argument("--seed", type=int, default=1, help="prompt seed (default: %(default)s)")
    c.set_defaults(func=_calibrate)

    f = bsub.add_parser(
        "fidelity", help="the simulator beside real engines on the same seeded load",
        description="One seeded workload through the real engines (llm, then round-robin, "
        "behind the balancer) and through the simulator with the engines' measured profile: "
        "TTFT p50/p90, throughput, prefix-cache hit rate and preemptions side by side with "
        "sim/real, the policies' order on both, and the steps from the seed's A10 model to "
        "the CPU engine that explain the simulator's larger llm-vs-round-robin gap.")
    _common(f)
    f.add_argument("--profile", default="vllm-cpu-tiny",
                   help="the simulator's profile of the engines (default: %(default)s)")
    f.add_argument("--workload", default="cpu-mix",
                   help="seed-lora, shared-prefix, mixed or cpu-mix (default: %(default)s)")
    rate = f.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="arrivals per second")
    rate.add_argument("--load", type=parse_load, default=None,
                      help="arrivals as a fraction of the capacity the profile predicts "
                      "for the pods (a backlog served at full batches; default: 0.3 when "
                      "--rate is not given)")
    f.add_argument("--duration", type=float, default=120.0,
                   help="seconds of arrivals (default: %(default)s)")
    f.add_argument("--seed", type=int, default=1, help="workload seed (default: %(default)s)")
    f.add_argument("--no-explain", dest="explain", action="store_false",
                   help="leave out the steps from the A10 model to this engine")
    f.add_argument("--json", dest="json_out", help="write the results as JSON here")
    f.set_defaults(func=_fidelity)


def _workdir(args: argparse.Namespace, prefix: str) -> Path:
    return Path(args.workdir or tempfile.mkdtemp(prefix=prefix))


def _calibrate(args: argparse.Namespace) -> int:
    from llmtraffic.harness import calibration as cal
    from llmtraffic.harness.engines import open_pods, real_fleet_config
    from llmtraffic.harness.stack import StackError
    from llmtraffic.simulator.profile import get_profile

    workdir = _workdir(args, "llmtraffic-calibrate-")
    plan = cal.Plan.quick() if args.quick else cal.Plan()
    if args.rounds:
        plan.rounds = args.rounds
    command = f"llmtraffic bench calibrate --engine {args.engine}" + \
        (" --quick" if args.quick else "") + (f" --rounds {args.rounds}" if args.rounds else "") \
        + (" --pods-file FILE" if args.pods_file else "")
    try:
        fleet_cfg = real_fleet_config(2, workdir)
        base = get_profile(args.profile) if args.engine == "sim" else None
        with open_pods(args.engine, workdir, pods_file=args.pods_file, profile=args.profile,
                       vllm_python=args.vllm_python) as fleet:
            m = asyncio.run(cal.measure(list(fleet.urls), plan, args.seed))
        device = (f"CPU: vllm-cpu {m.engine_version}, the model kit" if args.engine == "vllm"
                  else f"simulated pods of {args.profile}")
        profile = cal.build_profile(
            m, name=args.name, device=device,
            max_num_seqs=base.max_num_seqs if base else fleet_cfg.max_num_seqs,
            max_model_len=base.max_model_len if base else fleet_cfg.max_model_len,
            max_loras=base.max_loras if base else fleet_cfg.max_loras,
            max_cpu_loras=base.max_cpu_loras if base else fleet_cfg.max_cpu_loras or 0,
            kv_cache_bytes=fleet_cfg.kv_cache_memory_bytes, command=command, base=base)
    except (ValueError, RuntimeError, OSError, StackError) as e:
        print(f"llmtraffic bench calibrate: {e}", file=sys.stderr)
        return 2
    path = cal.write_profile(profile, Path(args.out) if args.out
                             else cal.default_profile_path(args.name))
    print(cal.summary(profile))
    print(f"wrote {path}")
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    from llmtraffic.harness import fidelity as fid
    from llmtraffic.harness.engines import open_pods
    from llmtraffic.harness.stack import StackError
    from llmtraffic.simulator.profile import get_profile
    from llmtraffic.simulator.workloads import make_workload

    workdir = _workdir(args, "llmtraffic-fidelity-")
    try:
        profile = get_profile(args.profile)
        with open_pods(args.engine, workdir, pods_file=args.pods_file, profile=args.profile,
                       vllm_python=args.vllm_python) as fleet:
            pods = len(fleet.urls)
            cap = fid.capacity(args.workload, profile, pods, args.seed)
            rate = args.rate or (args.load or 0.3) * cap
            reqs = make_workload(args.workload, rate, args.duration, args.seed)
            print(f"{len(reqs)} requests at {rate:.2f} req/s ({rate / cap:.0%} of the "
                  f"{cap:.2f} req/s {profile.name} predicts for {pods} pods)", flush=True)
            run = fid.Fidelity(args.workload, pods, rate, args.duration, args.seed,
                               profile.name, "pods file" if args.pods_file else args.engine)
            run.real, run.host = fid.run_real(fleet, reqs, workdir, args.seed, profile)
        run.sim = fid.run_sim(profile, reqs, pods, args.duration, args.seed)
        run.speeds = [fid.engine_speed(profile, run.real[name], reqs, pods, args.duration,
                                       args.seed, name) for name in run.real]
        run.sim_scaled = fid.run_sim_scaled(profile, run.speeds, reqs, pods, args.duration,
                                            args.seed)
        if args.explain:
            run.steps = fid.explain(fid.ladder(profile, args.workload, pods, rate / cap,
                                               args.duration), args.seed)
    except (ValueError, RuntimeError, OSError, StackError) as e:
        print(f"llmtraffic bench fidelity: {e}", file=sys.stderr)
        return 2
    print(fid.format_fidelity(run))
    print(f"logs and configs: {workdir}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(run.as_dict(), indent=1, default=str) + "\n")
        print(f"wrote {args.json_out}")
    return 0
