"""The checkpoint's shape, checked field by field when it is loaded: a positions file whose
version, offsets, fingerprints, counter values or histograms are not what the exporter
writes is refused with the field that is wrong and what to do, before anything is counted
from it (a counter value "x" used to make /metrics answer 500 for ever)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr,
                      ValidationError)

from llmtraffic.contracts import series as m

CHECKPOINT_VERSION = 1


def _count(v: float) -> float:
    if not (0 <= v < math.inf):
        raise ValueError(f"a count must be a finite number >= 0, got {v!r}")
    return v


Count = Annotated[float, Field(strict=True), AfterValidator(_count)]  # an int is a float too
Offset = Annotated[StrictInt, Field(ge=0)]


class _Strict(BaseModel):
    """Containers as JSON gives them (a tuple is a list there); every leaf strict."""

    model_config = ConfigDict(extra="allow")


class FilePosition(_Strict):
    dev: StrictInt
    ino: StrictInt
    offset: Offset
    fp: StrictStr
    fp_len: Annotated[StrictInt, Field(ge=0, le=4096)]


class Positions(_Strict):
    files: dict[str, FilePosition] = {}


def _hist(buckets: tuple[float, ...]):
    def check(v: tuple[list[Count], Count]) -> tuple[list[Count], Count]:
        if len(v[0]) != len(buckets) + 1:
            raise ValueError(f"a histogram has {len(buckets) + 1} counts, got {len(v[0])}")
        return v
    return AfterValidator(check)


class Counters(_Strict):
    dimensions: list[StrictStr]
    prompt: list[tuple[list[StrictStr], Count]]
    completion: list[tuple[list[StrictStr], Count]]
    requests: list[tuple[tuple[StrictStr, StrictStr], Count]]
    ttft: dict[str, Annotated[tuple[list[Count], Count], _hist(m.TTFT.buckets)]]
    duration: dict[str, Annotated[tuple[list[Count], Count], _hist(m.DURATION.buckets)]]
    overflow: dict[str, Offset] = {}
    usage_rejected: Offset = 0


class Checkpoint(_Strict):
    version: StrictInt
    positions: Positions
    counters: Counters
    containers: dict[str, Any] = {}
    enriched_offset: Offset | None = None


def validate_checkpoint(path: str, data: dict) -> dict:
    """`data` as loaded from `path`, if every field is what the exporter writes; else a
    ValueError naming the first fields that are wrong and what to do."""
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {data.get('version')!r} is not "
                         f"{CHECKPOINT_VERSION}; {WHAT_TO_DO}")
    try:
        Checkpoint.model_validate(data)
    except ValidationError as e:
        wrong = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'the file'}: "
                          f"{err['msg'][:1].lower()}{err['msg'][1:]}"
                          for err in e.errors()[:3])
        raise ValueError(f"{path}: the positions file is corrupt ({wrong}); "
                         f"{WHAT_TO_DO}") from None
    return data


WHAT_TO_DO = ("move it away to start over (lines already read will be read again, from "
              "where --from-beginning says)")
