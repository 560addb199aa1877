"""Options models on the command line: each field of a pydantic options model is one flag
(`--field-name`, help from its description, default shown), and parsed arguments go back
through the model, a bad value refused in one line (`--scrape-interval 0: must be >= 0.05`)."""

from __future__ import annotations

import argparse
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo


@dataclass(frozen=True, slots=True)
class Flag:
    """What a field's type and name do not say about its flag (put it in `Annotated`)."""

    name: str | None = None  # default: --field-name
    metavar: str | None = None
    shown_default: str | None = None  # help shows this; the parser leaves the value None
    text: bool = False  # one string on the command line, which the model parses
    hidden: bool = False  # not on the command line: set by the program


#: A field the program sets (a secret read from the environment, a test's knob).
NOT_A_FLAG = Flag(hidden=True)


class OptionError(ValueError):
    """A command-line value the options model refuses; the message is one line."""


def flag_of(field: FieldInfo) -> Flag:
    return next((m for m in field.metadata if isinstance(m, Flag)), Flag())


def flag_name(name: str, field: FieldInfo) -> str:
    return flag_of(field).name or "--" + name.replace("_", "-")


def _dest(name: str, field: FieldInfo) -> str:
    return flag_name(name, field).lstrip("-").replace("-", "_")


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else str
    return annotation


def _shown(value: Any) -> str | None:
    if value is None or value is False or value in ((), []):
        return None
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _argument(field: FieldInfo, flag: Flag) -> dict[str, Any]:
    """add_argument's keywords for one field."""
    kind = _unwrap(field.annotation)
    default = None if flag.shown_default else field.get_default(call_default_factory=True)
    help_ = (field.description or "").replace("%", "%%")
    shown = flag.shown_default or _shown(default)
    if shown is not None:
        help_ += f" (default: {shown})".replace("%", "%%")
    kw: dict[str, Any] = {"help": help_}
    if kind is bool and default is None:  # None: the program decides; --x / --no-x say
        return {**kw, "action": argparse.BooleanOptionalAction, "default": None}
    if kind is bool:
        return {**kw, "action": "store_true", "default": bool(default)}
    kw["default"] = default
    if flag.metavar:
        kw["metavar"] = flag.metavar
    if flag.text:
        kw["default"] = _shown(default)
        return kw
    if get_origin(kind) is Literal:
        return {**kw, "choices": get_args(kind)}
    if get_origin(kind) in (list, tuple):
        return {**kw, "nargs": "+", "default": list(default or ())}
    if kind in (int, float):
        kw["type"] = kind
    return kw


def add_flags(parser: argparse.ArgumentParser, *models: type[BaseModel]) -> None:
    """One flag per field of `models`; a field two models share is added once, from the
    first model, whose default must be the other's too (or None: each model's own)."""
    seen: dict[str, Any] = {}  # dest -> the flag's default
    for model in models:
        for name, field in model.model_fields.items():
            flag = flag_of(field)
            dest = _dest(name, field)
            if flag.hidden:
                continue
            kw = _argument(field, flag)
            if dest in seen:
                if seen[dest] is not None and seen[dest] != kw["default"]:
                    raise ValueError(f"{model.__name__}.{name}: default {kw['default']!r} "
                                     f"differs from {seen[dest]!r}, which its flag shows")
                continue
            seen[dest] = kw["default"]
            parser.add_argument(flag_name(name, field), dest=dest, **kw)


def from_flags(model: type[BaseModel], args: argparse.Namespace, **values: Any):
    """`model` from parsed arguments (a flag left None takes the model's default) and
    `values` the program sets; OptionError names the flag and value that were refused."""
    given: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        flag = flag_of(field)
        value = None if flag.hidden else getattr(args, _dest(name, field), None)
        if value is not None:
            given[name] = value
    given.update(values)
    try:
        return model.model_validate(given)
    except ValidationError as e:
        raise OptionError(describe_errors(model, e)) from None


def describe_errors(model: type[BaseModel], error: ValidationError) -> str:
    """One line: `--flag value: what it must be`, for each refused field."""
    out = []
    for err in error.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        field = model.model_fields.get(name)
        where = flag_name(name, field) if field is not None else name or model.__name__
        out.append(f"{where} {_number(err.get('input'))}: {_requirement(err)}")
    return "; ".join(out)


def _number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}


def _requirement(err: Any) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] in _BOUNDS:
        return f"must be {_BOUNDS[err['type']]} {_number(next(iter(ctx.values())))}"
    if err["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return err["msg"][:1].lower() + err["msg"][1:]
