"""The llm policy's native core (C, `balancer/policy/csrc/`, built by `pip install` when a
C compiler is present): `core` is the extension module, or None and `missing` says why.
The pure-Python policy is the reference; the native one picks exactly alike, faster."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

#: Names a build of `_native` to load instead of the installed one (scripts/test-sanitizers
#: loads one built with AddressSanitizer and UBSan this way).
FILE_VARIABLE = "LLMTRAFFIC_NATIVE_FILE"
_NAME = "llmtraffic.balancer.policy._native"


def _load(path: str) -> ModuleType:
    """The extension module in `path`, registered as `_native` (a later
    `from llmtraffic.balancer.policy import _native` gets this one)."""
    spec = importlib.util.spec_from_file_location(_NAME, path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise ImportError(f"{FILE_VARIABLE}={path!r} is not an extension module file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_NAME] = module
    setattr(sys.modules["llmtraffic.balancer.policy"], "_native", module)
    return module


core: ModuleType | None
missing: str | None
try:
    if os.environ.get(FILE_VARIABLE):
        core = _load(os.environ[FILE_VARIABLE])
    else:
        from llmtraffic.balancer.policy import _native as core
    missing = None
except ImportError as e:  # not built: no compiler at install time, or a source checkout
    core = None
    missing = (f"{e}; build it with `pip install -e .` (needs a C compiler) or "
               "`python setup.py build_ext --inplace`")
