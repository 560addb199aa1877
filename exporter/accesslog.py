"""Access-log lines -> `LLMRecord`: Envoy/Istio JSON lines and Envoy TEXT lines (given
their format string) parsed through a configurable key mapping; it reads back the lines
the balancer writes (`contracts.record`).

Mapping: each canonical field lists the keys that may hold it; the first key present wins.
Presets: `istio` (Istio JSON + ASM's request_model / request_prompt_tokens /
request_completion_tokens), `llmtraffic` (our own balancer's lines), `ai-gateway` (Envoy
AI Gateway `gen_ai.*` and APISIX `llm_*` names), `envoy-ai-gateway` (the Envoy AI Gateway's
documented JSON access log, both its `genai_*` and `gen_ai.*` eras, and its dynamic-metadata
keys), `higress` (Higress's ai-statistics `ai_log`, a JSON object inside a string, whose keys
are read as `ai_log.<key>`); the default accepts all of them but `higress`. A YAML file can
extend or override it:

    preset: istio            # optional, default "all"
    expand: [ai_log]         # optional: string fields holding a JSON object
    fields:
      model: [x_model, request_model]
      prompt_tokens: [x_in_tokens]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Protocol

import orjson
import yaml

from llmtraffic.contracts.record import (BOOL_FIELDS, FIELD_NAMES, FLOAT_FIELDS, INT_FIELDS,
                                        LLMTRAFFIC_KEYS, MAX_INT, LLMRecord)

DEFAULT_MAX_LINE_BYTES = 64 * 1024


ISTIO: dict[str, list[str]] = {
    **{f: [k] for f, k in LLMTRAFFIC_KEYS.items()},
    "model": ["request_model", "model"],
    "prompt_tokens": ["request_prompt_tokens", "prompt_tokens"],
    "completion_tokens": ["request_completion_tokens", "completion_tokens"],
    "total_tokens": ["request_total_tokens", "total_tokens"],
}
AI_GATEWAY: dict[str, list[str]] = {
    "model": ["gen_ai.request.model", "llm_model"],
    "target_model": ["gen_ai.response.model"],
    "prompt_tokens": ["gen_ai.usage.input_tokens", "llm_prompt_tokens"],
    "completion_tokens": ["gen_ai.usage.output_tokens", "llm_completion_tokens"],
    "total_tokens": ["gen_ai.usage.total_tokens", "llm_total_tokens"],
    "ttft_ms": ["llm_time_to_first_token", "gen_ai.server.time_to_first_token"],
}
#: Envoy's own fields under the keys Istio's JSON format (and our balancer) writes them.
ENVOY_COMMON: dict[str, list[str]] = {
    f: [LLMTRAFFIC_KEYS[f]] for f in (
        "start_time", "method", "path", "protocol", "response_code", "response_flags",
        "duration_ms", "upstream_service_time_ms", "x_forwarded_for", "user_agent",
        "request_id", "authority", "upstream_host", "upstream_cluster", "bytes_received",
        "bytes_sent", "downstream_remote_address", "route_name")}
#: The Envoy AI Gateway's access-log keys (site/docs/capabilities/observability/accesslogs.md:
#: `genai_*` at first, `gen_ai.*` since), its headers as the JSON keys it names them with, and
#: the dynamic metadata keys of its docs' llmRequestCosts (read over ALS / OTLP).
ENVOY_AI_GATEWAY: dict[str, list[str]] = {
    "model": ["gen_ai.request.model", "genai_model_name", "x-ai-eg-model"],
    "target_model": ["gen_ai.request.model_override", "genai_model_name_override",
                     "gen_ai.response.model", "model_name_override"],
    "prompt_tokens": ["gen_ai.usage.input_tokens", "genai_tokens_input", "llm_input_token"],
    "completion_tokens": ["gen_ai.usage.output_tokens", "genai_tokens_output",
                          "llm_output_token"],
    "total_tokens": ["gen_ai.usage.total_tokens", "genai_tokens_total", "llm_total_token"],
    "path": ["x-envoy-origin-path"], "authority": [":authority"], "user_agent": ["user-agent"],
    "request_id": ["x-request-id"], "x_forwarded_for": ["x-forwarded-for"],
    "upstream_service_time_ms": ["x-envoy-upstream-service-time"],
}
#: Higress ai-statistics: `{"ai_log": "{\"model\":..., \"input_token\":\"10\", ...}"}`
#: beside Istio's keys (plugins/wasm-go/extensions/ai-statistics/README.md).
HIGRESS: dict[str, list[str]] = {
    "model": ["ai_log.model"], "prompt_tokens": ["ai_log.input_token"],
    "completion_tokens": ["ai_log.output_token"],
    "ttft_ms": ["ai_log.llm_first_token_duration"],
    "duration_ms": ["ai_log.llm_service_duration"],
}
PRESETS: dict[str, dict[str, list[str]]] = {
    "istio": ISTIO,
    "llmtraffic": {f: [k] for f, k in LLMTRAFFIC_KEYS.items()},
    "ai-gateway": AI_GATEWAY,
}
#: Keys whose string value is a JSON object read as `<key>.<inner key>`, per preset.
EXPAND: dict[str, tuple[str, ...]] = {"higress": ("ai_log",)}


def _merge(*maps: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in maps:
        for f, keys in m.items():
            out.setdefault(f, [])
            out[f] += [k for k in keys if k not in out[f]]
    return out


PRESETS["envoy-ai-gateway"] = _merge(ENVOY_COMMON, ENVOY_AI_GATEWAY)
PRESETS["higress"] = _merge(ENVOY_COMMON, HIGRESS)
PRESETS["all"] = _merge(ISTIO, PRESETS["llmtraffic"], AI_GATEWAY, ENVOY_AI_GATEWAY)
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


class ParseError(ValueError):
    """A line that cannot be read; `reason` is one of REASONS."""

    REASONS = ("empty", "not_utf8", "too_long", "invalid_json", "not_object", "wrong_type",
               "format_mismatch")

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class FieldMapping:
    """canonical field -> candidate keys, first present wins; `expand`: keys whose string
    value holds a JSON object, read as `<key>.<inner key>`."""

    keys: dict[str, list[str]]
    expand: tuple[str, ...] = ()

    @classmethod
    def preset(cls, name: str = "all") -> "FieldMapping":
        try:
            return cls({f: list(k) for f, k in PRESETS[name].items()}, EXPAND.get(name, ()))
        except KeyError:
            raise ValueError(f"unknown mapping preset {name!r}; choose one of "
                             f"{', '.join(sorted(PRESETS))}") from None

    def token_keys(self) -> tuple[str, ...]:
        """Every key a token count may come from."""
        return tuple(k for f in TOKEN_FIELDS for k in self.keys.get(f, ()))

    @classmethod
    def load(cls, path: str, preset: str = "all") -> "FieldMapping":
        """A YAML mapping file (see the module docstring); `preset` unless it names one."""
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read the field mapping: {e}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: a mapping file is a YAML object with `preset` and "
                             "`fields`")
        start = cls.preset(doc.get("preset", preset))
        base = start.keys
        expand = doc.get("expand", start.expand)
        if isinstance(expand, str):
            expand = [expand]
        if not isinstance(expand, (list, tuple)) or not all(isinstance(k, str) for k in expand):
            raise ValueError(f"{path}: expand: give a key or a list of keys")
        for f, keys in (doc.get("fields") or {}).items():
            if f not in FIELD_NAMES:
                raise ValueError(f"{path}: fields.{f}: unknown field; known fields: "
                                 f"{', '.join(FIELD_NAMES)}")
            if isinstance(keys, str):
                keys = [keys]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError(f"{path}: fields.{f}: give a key or a list of keys")
            base[f] = keys
        return cls(base, tuple(expand))


def _to_int(v: Any) -> int:
    if type(v) is int and 0 <= v <= MAX_INT:  # fast path: a plain JSON integer in range
        return v
    if isinstance(v, bool):
        raise ParseError("wrong_type")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str):
        try:
            n = int(v)
        except ValueError:
            raise ParseError("wrong_type", f"not an integer: {v[:40]!r}") from None
    elif isinstance(v, float) and v.is_integer():
        n = int(v)
    else:
        raise ParseError("wrong_type", f"not an integer: {type(v).__name__}")
    if n < 0 or n > MAX_INT:
        raise ParseError("wrong_type", f"out of range: {n}")
    return n


def _to_float(v: Any) -> float:
    if type(v) is int and v >= 0:  # fast path: a plain JSON integer
        return float(v)
    if isinstance(v, bool):
        raise ParseError("wrong_type")
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            raise ParseError("wrong_type", f"not a number: {v[:40]!r}") from None
    else:
        raise ParseError("wrong_type", f"not a number: {type(v).__name__}")
    if x != x or x < 0 or x == float("inf"):
        raise ParseError("wrong_type", f"not a duration: {x}")
    return x


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v in ("true", "True", "1", 1):
        return True
    if v in ("false", "False", "0", 0):
        return False
    raise ParseError("wrong_type", f"not a boolean: {v!r}"[:60])


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise ParseError("wrong_type", f"not a string: {type(v).__name__}")


def _converter(field: str) -> Callable[[Any], Any]:
    if field in INT_FIELDS:
        return _to_int
    if field in FLOAT_FIELDS:
        return _to_float
    if field in BOOL_FIELDS:
        return _to_bool
    return _to_str


class LineParser(Protocol):
    mapping: FieldMapping
    plan: "_Plan"

    def parse(self, line: bytes) -> LLMRecord: ...

    def parse_many(self, lines: list[bytes], failed: Callable[[str], None]
                   ) -> tuple[list[LLMRecord], list[bytes]]: ...

    def fields(self, line: bytes) -> dict[str, Any]: ...


def parse_each(parse: Callable[[bytes], LLMRecord], lines: list[bytes],
               failed: Callable[[str], None]) -> tuple[list[LLMRecord], list[bytes]]:
    """`lines` through `parse` one by one: the records and the lines they came from, in
    order; each line that raises ParseError is given to `failed` (its reason) instead."""
    recs: list[LLMRecord] = []
    kept: list[bytes] = []
    for line in lines:
        try:
            recs.append(parse(line))
        except ParseError as e:
            failed(e.reason)
            continue
        kept.append(line)
    return recs, kept


#: Distinct key sets ("shapes") a plan compiles a builder for; lines of other shapes take
#: the generic loop. A gateway's format gives one or a few shapes.
MAX_SHAPES = 64

#: Conversion code per converter, for one value `{v}` in a compiled builder (see
#: _Plan.compile_shape); any exception sends the line through the generic loop, which decides
#: as it always did.
_CODE = {
    _to_str: """\
    if type({v}) is str:
        if {v} == "-":
            {v} = None
    elif {v} is not None:
        {v} = to_str({v})
""",
    _to_int: """\
    if type({v}) is int and 0 <= {v} <= MAX_INT:
        pass
    elif type({v}) is str and {v} != "-":
        {v} = int({v})
        if not 0 <= {v} <= MAX_INT:
            raise ValueError
    elif {v} is None or {v} == "-":
        {v} = None
    else:
        {v} = to_int({v})
""",
    _to_float: """\
    if type({v}) is int and {v} >= 0:
        {v} = float({v})
    elif type({v}) is str and {v} != "-":
        {v} = float({v})
        if not 0.0 <= {v} < INF:
            raise ValueError
    elif {v} is None or {v} == "-":
        {v} = None
    else:
        {v} = to_float({v})
""",
    _to_bool: """\
    if {v} is None or {v} == "-":
        {v} = None
    else:
        {v} = to_bool({v})
""",
}


_Builder = Callable[[dict], LLMRecord | None]  # None: the line is not of its shape

#: Names a compiled builder binds as defaults (locals are the fastest names to load).
_BUILDER_LOCALS = ("get", "type", "str", "int", "float", "len", "LLMRecord", "MAX_INT",
                   "INF", "to_str", "to_int", "to_float", "to_bool")


class _Plan:
    """key -> (field, rank, converter, shared) so a line costs one lookup per key it has;
    only `shared` fields (more than one key can fill them) need the rank bookkeeping.

    `record` compiles, per shape (the line's keys) where every field has at most one
    candidate key, a builder that reads exactly those keys and converts inline; other
    shapes, and any line whose values the builder does not accept, take `record_generic`,
    so the result (record or ParseError) is always the generic loop's."""

    def __init__(self, mapping: FieldMapping) -> None:
        plan: dict[str, tuple[str, int, Callable[[Any], Any]]] = {}
        for f, keys in mapping.keys.items():
            conv = _converter(f)
            for rank, k in enumerate(keys):
                if k not in plan:
                    plan[k] = (f, rank, conv)
        keys_per_field: dict[str, int] = {}
        for f, _, _ in plan.values():
            keys_per_field[f] = keys_per_field.get(f, 0) + 1
        self.by_key: dict[str, tuple[str, int, Callable[[Any], Any], bool]] = {
            k: (f, rank, conv, keys_per_field[f] > 1) for k, (f, rank, conv) in plan.items()}
        self._shapes: dict[tuple[str, ...], _Builder | None] = {}
        self._last: _Builder = lambda obj: None

    def record(self, obj: dict[str, Any]) -> LLMRecord:
        try:
            rec = self._last(obj)
            if rec is not None:
                return rec
            build = self._builder(obj)
            if build is not None:
                rec = build(obj)
                if rec is not None:
                    self._last = build
                    return rec
        except Exception:  # a value the builder does not take: the generic loop decides
            pass
        return self.record_generic(obj)

    def _builder(self, obj: dict[str, Any]) -> _Builder | None:
        shape = tuple(obj)
        try:
            return self._shapes[shape]
        except KeyError:
            pass
        if len(self._shapes) >= MAX_SHAPES:
            return None  # too many shapes: new ones take the generic loop
        build = self._shapes[shape] = self.compile_shape(shape)
        return build

    def compile_shape(self, shape: tuple[str, ...]) -> _Builder | None:
        """A builder for lines with exactly the keys of `shape` (None from it for any other
        line), or None when a field has several candidate keys in the shape (the winner
        then depends on values and order: the generic loop handles it)."""
        by_field: dict[str, tuple[str, Callable[[Any], Any]]] = {}
        others: list[str] = []
        for k in shape:
            hit = self.by_key.get(k)
            if hit is None:
                others.append(k)
                continue
            if hit[0] in by_field:
                return None
            by_field[hit[0]] = (k, hit[2])
        names = list(by_field)
        v = [f"v{i}" for i in range(len(names))]
        code = [f"def build(o, {', '.join(f'{n}={n}' for n in _BUILDER_LOCALS)}):\n"
                f"    if len(o) != {len(shape)}:\n        return None\n    try:\n"]
        if names:  # one C call fetches every value (KeyError: another shape)
            code.append(f"        {', '.join(v)}, = get(o){',' if len(v) == 1 else ''}\n")
        if others:
            code.append("        if " + " or ".join(f"{k!r} not in o" for k in others)
                        + ":\n            return None\n")
        code.append("    except KeyError:\n        return None\n")
        code += [_CODE[by_field[f][1]].format(v=var) for f, var in zip(names, v)]
        code.append("    r = LLMRecord()\n")  # absent fields stay None
        code += [f"    r.{f} = {var}\n" for f, var in zip(names, v)]
        code.append("    return r\n")
        keys = [by_field[f][0] for f in names]
        env: dict[str, Any] = {
            "get": (lambda o: (o[keys[0]],)) if len(keys) == 1 else itemgetter(*keys),
            "type": type, "str": str, "int": int, "float": float, "len": len,
            "LLMRecord": LLMRecord, "MAX_INT": MAX_INT,
            "INF": float("inf"), "to_str": _to_str, "to_int": _to_int, "to_float": _to_float,
            "to_bool": _to_bool}
        exec(compile("".join(code), f"<accesslog builder {len(self._shapes)}>", "exec"), env)
        return env["build"]

    def record_generic(self, obj: dict[str, Any]) -> LLMRecord:
        """The generic loop: one lookup per key, ranks for shared fields."""
        rec = LLMRecord()
        ranks: dict[str, int] = {}
        by_key = self.by_key
        to_str = _to_str
        for k, v in obj.items():
            hit = by_key.get(k)
            if hit is None or v is None or v == "-":
                continue
            f, rank, conv, shared = hit
            if shared:
                if ranks.get(f, 99) <= rank:
                    continue
                ranks[f] = rank
            setattr(rec, f, v if conv is to_str and type(v) is str else conv(v))
        return rec


def _check(line: bytes, max_line_bytes: int) -> None:
    if len(line) > max_line_bytes:
        raise ParseError("too_long", f"{len(line)} bytes > {max_line_bytes}")
    if not line.strip():
        raise ParseError("empty")


def expand_fields(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`obj` with each of `keys` whose value is a string holding a JSON object read as
    `<key>.<inner key>` (Higress's ai_log); "-" or null is no value."""
    for k in keys:
        v = obj.get(k)
        if v is None or v == "-" or v == "":
            continue
        try:
            inner = orjson.loads(v) if isinstance(v, str) else None
        except orjson.JSONDecodeError:
            inner = None
        if type(inner) is not dict:
            raise ParseError("wrong_type", f"{k}: not a JSON object in a string: {str(v)[:40]!r}")
        obj = {**obj, **{f"{k}.{ik}": iv for ik, iv in inner.items()}}
    return obj


class JsonLineParser:
    """Envoy/Istio JSON access-log lines."""

    def __init__(self, mapping: FieldMapping | None = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.mapping = mapping or FieldMapping.preset()
        self.plan = _Plan(self.mapping)
        self.expand = self.mapping.expand
        self.max_line_bytes = max_line_bytes

    def parse(self, line: bytes) -> LLMRecord:
        return self.plan.record(self.fields(line))

    def parse_many(self, lines: list[bytes], failed: Callable[[str], None]
                   ) -> tuple[list[LLMRecord], list[bytes]]:
        """Records of `lines` and the lines they came from (see `parse_each`)."""
        return parse_each(self.parse, lines, failed)

    def fields(self, line: bytes) -> dict[str, Any]:
        """The line's keys and values before the mapping (ParseError if it is no object)."""
        if len(line) > self.max_line_bytes:
            raise ParseError("too_long", f"{len(line)} bytes > {self.max_line_bytes}")
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            if not line.strip():  # a blank line never loads: tell it apart only then
                raise ParseError("empty") from None
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise ParseError("not_utf8") from None
            raise ParseError("invalid_json", str(e)[:80]) from None
        if type(obj) is not dict:
            raise ParseError("not_object", type(obj).__name__)
        return expand_fields(obj, self.expand) if self.expand else obj


# ---- Envoy TEXT format ---------------------------------------------------------------------
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% '
    '%CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" '
    '%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% '
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
    '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% '
    '%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n')

#: Envoy command -> the JSON key Istio's JSON format uses for it (our mapping reads those).
COMMAND_KEYS = {
    "START_TIME": "start_time", "REQ(:METHOD)": "method",
    "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": "path", "REQ(:PATH)": "path",
    "PROTOCOL": "protocol", "RESPONSE_CODE": "response_code",
    "RESPONSE_FLAGS": "response_flags", "BYTES_RECEIVED": "bytes_received",
    "BYTES_SENT": "bytes_sent", "DURATION": "duration",
    "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)": "upstream_service_time",
    "REQ(X-FORWARDED-FOR)": "x_forwarded_for", "REQ(USER-AGENT)": "user_agent",
    "REQ(X-REQUEST-ID)": "request_id", "REQ(:AUTHORITY)": "authority",
    "UPSTREAM_HOST": "upstream_host", "UPSTREAM_CLUSTER": "upstream_cluster",
    "UPSTREAM_CLUSTER_RAW": "upstream_cluster",
    "DOWNSTREAM_REMOTE_ADDRESS": "downstream_remote_address", "ROUTE_NAME": "route_name",
}
_COMMAND = re.compile(r"%([A-Z_]+(?:\([^)]*\))?)(?::\d+)?%")


def _command_key(cmd: str) -> str:
    """The JSON key a command's value is read under: Istio's name for well-known commands,
    else the last segment of a FILTER_STATE/DYNAMIC_METADATA/REQ/RESP key, e.g.
    %FILTER_STATE(wasm.asm.llmproxy.request_model:PLAIN)% -> request_model."""
    if cmd in COMMAND_KEYS:
        return COMMAND_KEYS[cmd]
    m = re.match(r"(?:FILTER_STATE|DYNAMIC_METADATA|REQ|RESP|TRAILER)\((.*)\)$", cmd)
    if not m:
        return cmd.lower()
    inner = m.group(1)
    if inner.endswith((":PLAIN", ":TYPED")):
        inner = inner.rsplit(":", 1)[0]
    inner = inner.rsplit(":", 1)[-1]  # DYNAMIC_METADATA(ns:key) -> key
    return inner.rsplit(".", 1)[-1] if cmd.startswith("FILTER_STATE") else inner


class TextLineParser:
    """Envoy TEXT access-log lines, given the format string they were written with."""

    def __init__(self, fmt: str, mapping: FieldMapping | None = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.mapping = mapping or FieldMapping.preset()
        self.plan = _Plan(self.mapping)
        self.max_line_bytes = max_line_bytes
        fmt = fmt.rstrip("\n")
        pattern = ["^"]
        self.keys: list[str] = []
        pos = 0
        matches = list(_COMMAND.finditer(fmt))
        if not matches:
            raise ValueError(f"format {fmt[:60]!r} has no %COMMAND%; give an Envoy format "
                             "string such as '%START_TIME% %REQ(:METHOD)% ...'")
        for i, m in enumerate(matches):
            pattern.append(re.escape(fmt[pos:m.start()]))
            nxt = fmt[m.end():matches[i + 1].start()] if i + 1 < len(matches) \
                else fmt[m.end():]
            stop = nxt[:1]
            pattern.append(f"([^{re.escape(stop)}]*)" if stop else "(.*)")
            self.keys.append(_command_key(m.group(1)))
            pos = m.end()
        pattern.append(re.escape(fmt[pos:]) + "$")
        self.regex = re.compile("".join(pattern))

    def parse(self, line: bytes) -> LLMRecord:
        return self.plan.record(self.fields(line))

    def parse_many(self, lines: list[bytes], failed: Callable[[str], None]
                   ) -> tuple[list[LLMRecord], list[bytes]]:
        """Records of `lines` and the lines they came from (see `parse_each`)."""
        return parse_each(self.parse, lines, failed)

    def fields(self, line: bytes) -> dict[str, Any]:
        """The line's values under their commands' keys, before the mapping."""
        _check(line, self.max_line_bytes)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("not_utf8") from None
        m = self.regex.match(text.rstrip("\r\n"))
        if m is None:
            raise ParseError("format_mismatch", text[:60])
        return dict(zip(self.keys, m.groups()))


#: --format values: JSON lines read with a preset's mapping (json: the default, all of them).
JSON_FORMATS = ("json", *sorted(p for p in PRESETS if p != "all"))


def make_parser(fmt: str = "json", mapping: FieldMapping | None = None,
                max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> LineParser:
    """`json` (every preset's keys but Higress's), a preset's name (JSON lines with that
    mapping: istio, llmtraffic, ai-gateway, envoy-ai-gateway, higress), `istio-text` (Istio's
    default text format) or `envoy:<FORMAT STRING>`."""
    if fmt in JSON_FORMATS:
        if mapping is None and fmt != "json":
            mapping = FieldMapping.preset(fmt)
        if mapping is not None and mapping.expand:
            return JsonLineParser(mapping, max_line_bytes)
        from llmtraffic.exporter.fastjson import FastJsonParser  # it builds on this module

        return FastJsonParser(mapping, max_line_bytes)
    if fmt == "istio-text":
        return TextLineParser(ISTIO_TEXT_FORMAT, mapping, max_line_bytes)
    if fmt.startswith("envoy:"):
        return TextLineParser(fmt[len("envoy:"):], mapping, max_line_bytes)
    raise ValueError(f"unknown access-log format {fmt!r}: use {', '.join(JSON_FORMATS)}, "
                     "istio-text or envoy:'<Envoy format string>'")
