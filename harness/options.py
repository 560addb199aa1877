"""Options the demo and the routing benchmarks share, declared once (bounds and help): the
offered load as a fraction of the fleet's measured capacity."""

from __future__ import annotations

import argparse
from typing import Annotated

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

LOAD_RULE = "give a fraction of capacity above 0 and at most 2, e.g. 0.9 for 90%"


def _fraction(value: float) -> float:
    if not 0 < value <= 2:
        raise ValueError(LOAD_RULE)
    return value


#: Arrivals as a fraction of capacity: 0.9 is 90% (a percentage such as 90 is refused).
Load = Annotated[float, AfterValidator(_fraction), Field(
    description="arrivals as a fraction of the pods' measured capacity, e.g. 0.9 for 90% "
    "(at most 2)")]

_LOAD = TypeAdapter(Load)


def parse_load(text: str) -> float:
    """An argparse `type` for --load: the `Load` field's rule, refused in one line."""
    try:
        return _LOAD.validate_python(float(text))
    except (ValueError, ValidationError):
        raise argparse.ArgumentTypeError(f"{text!r}: {LOAD_RULE}") from None
