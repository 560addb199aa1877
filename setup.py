"""Builds the optional C extensions: the llm policy's native core
(`llmtraffic.balancer.policy._native`, C sources in balancer/policy/csrc/) and the exporter's
record finisher (`llmtraffic.contracts._records`) and vLLM page scan
(`llmtraffic.contracts._pagescan`), C sources in contracts/csrc/. Everything else is in
pyproject.toml. Without a C compiler the install still succeeds and the same Python code runs
instead."""

import sys

from setuptools import Extension, setup

SOURCES = ["module.c", "xxh64.c", "prefix.c", "table.c", "scorers.c"]
# identical float results to the Python reference: no fused multiply-add contraction
ARGS = ["/O2", "/fp:precise"] if sys.platform == "win32" else \
    ["-O2", "-std=c11", "-ffp-contract=off", "-fno-strict-aliasing"]

setup(ext_modules=[Extension(
    "llmtraffic.balancer.policy._native",
    sources=[f"balancer/policy/csrc/{s}" for s in SOURCES],
    depends=["balancer/policy/csrc/native.h"],
    extra_compile_args=ARGS,
    optional=True,
), Extension(
    "llmtraffic.contracts._records",
    sources=["contracts/csrc/records.c"],
    extra_compile_args=ARGS,
    optional=True,
), Extension(
    "llmtraffic.contracts._pagescan",
    sources=["contracts/csrc/pagescan.c"],
    extra_compile_args=ARGS,
    optional=True,
)])
