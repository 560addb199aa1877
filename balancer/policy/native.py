"""The llm policy's native core (C, `balancer/policy/csrc/`, built by `pip install` when a
C compiler is present): `core` is the extension module, or None and `missing` says why.
The pure-Python policy is the reference; the native one picks exactly alike, faster."""

from __future__ import annotations

from types import ModuleType

core: ModuleType | None
missing: str | None
try:
    from llmtraffic.balancer.policy import _native as core
    missing = None
except ImportError as e:  # not built: no compiler at install time, or a source checkout
    core = None
    missing = (f"{e}; build it with `pip install -e .` (needs a C compiler) or "
               "`python setup.py build_ext --inplace`")
