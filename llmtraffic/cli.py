"""The `llmtraffic` command line: one subcommand per component, each defined next to the
component it runs (`add_parser(subparsers)` in the module listed below)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from llmtraffic import __version__

#: Modules that define a subcommand through `add_parser(subparsers)`; the parser they add
#: sets `func(args) -> int`.
COMMAND_MODULES = (
    "llmtraffic.simulator.server",
    "llmtraffic.balancer.command",
    "llmtraffic.exporter.app",
    "llmtraffic.harness.command",
    "llmtraffic.dashboards.build",
    "llmtraffic.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmtraffic",
        description="LLM-aware traffic for vLLM fleets: observe every request (model, tokens, "
        "latency) and send each one to the pod that will serve it soonest.",
    )
    parser.add_argument("--version", action="version", version=f"llmtraffic {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity on stderr (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
