"""The JSON access-log decoder that validates as it parses: per mapping, msgspec Structs made
from the keys the lines use fill `LLMRecord`s in C, field types checked as they are read; any
line it does not take (a new shape, a value of another kind, anything unusual) goes through
`JsonLineParser`'s path, which decides as it always did. So records, errors and counts are
exactly JsonLineParser's (tests/exporter/test_fastjson.py proves it line for line).

A decoder is made for a *layout*: per field, the key it is read from, whether its numbers come
as JSON numbers or as strings (Istio's %FILTER_STATE% values are strings) and whether it was
seen holding Envoy's "-" (no value), which is then turned into None; a string field not known
to hold "-" takes only strings of two characters or more, so a "-" there sends the line to the
reference path, which teaches the layout. The mapping's other keys the lines carried null or
"-" must stay so; the keys the mapping does not read are read as scalars (an object, an array
or an integer outside int64 sends the line to the reference path); any key the layout has not
seen sends the line to the reference path, which teaches it. Everything is decoded, nothing
skipped, so UTF-8, escapes and numbers are checked as orjson checks them; a line over the limit
takes the reference path. `parse_many` does a batch: decoded in one C loop, finished (numbers
written as strings, "-") in one loop, in C when `contracts._records` is built."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress, islice
from textwrap import indent
from typing import Annotated, Any, Callable, Literal

import msgspec
import orjson

from llmtraffic.contracts.record import (BOOL_FIELDS, FIELD_NAMES, FLOAT_FIELDS, INT_FIELDS,
                                        MAX_INT, LLMRecord)
from llmtraffic.exporter.accesslog import (DEFAULT_MAX_LINE_BYTES, FieldMapping,
                                           JsonLineParser, ParseError, parse_each)

try:
    from llmtraffic.contracts._records import finish as native_finish
except ImportError:  # not built (no C compiler at install time): the Python loop does it
    native_finish = None

#: Layouts a parser makes decoders for; lines of other layouts take the reference path.
MAX_LAYOUTS = 64
#: Other keys remembered per layout (each a field of its Struct).
MAX_OTHER_KEYS = 64
#: Numbers-as-strings remembered with their value (token counts, codes, durations repeat).
MAX_KNOWN = 1 << 16
_MISS = object()
_INF = float("inf")
_INT = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
_FLOAT = Annotated[float, msgspec.Meta(ge=0.0, le=1.7976931348623157e308)]
_STR2 = Annotated[str, msgspec.Meta(min_length=2)]  # "-" (and "", "x") are not taken
#: Record fields holding strings (the others are numbers or booleans).
_STR_FIELDS = frozenset(FIELD_NAMES) - INT_FIELDS - FLOAT_FIELDS - BOOL_FIELDS
#: A key the mapping does not read: any scalar orjson reads the same way.
_OTHER = str | bool | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | float | None

#: ((field, key, strings or "-" seen), ...), mapped keys seen empty, other keys
Layout = tuple[tuple[tuple[str, str, bool], ...], frozenset[str], frozenset[str]]


def _batch_code(fixes: str, head: str, native: bool) -> list[str]:
    """The source of `fix(recs, start)`: the statements `fixes` over records[start:], each
    record they fail returned; with `native`, C's `finish` first and the statements only
    for the records it left."""
    if native:
        return ["def one(r, " + head, indent(fixes, " " * 4),
                "def fix(recs, start, finish=finish, names=names, one=one):\n",
                "    bad = []\n    for k in finish(recs, start, *names):\n",
                "        try:\n            one(recs[k])\n",
                "        except Exception:\n            bad.append(k)\n    return bad\n"]
    return ["def fix(recs, start, " + head, "    bad = []\n    k = start\n",
            "    for r in islice(recs, start, None):\n        try:\n", indent(fixes, " " * 12),
            "        except Exception:\n            bad.append(k)\n",
            "        k += 1\n    return bad\n"]


@dataclass(frozen=True, slots=True)
class _Fast:
    """A layout's decoder: `parse` one line (or hand it to the reference path), `decode`
    only (msgspec), and `fix(records, start)` finishing records[start:] as `parse` does
    (None: nothing to finish), returning the positions it could not finish."""

    parse: Callable[[bytes], LLMRecord]
    decode: Callable[[bytes], LLMRecord]
    fix: Callable[[list, int], list[int]] | None


def _field_type(field: str, loose: bool) -> Any:
    """`loose`: numbers as strings (or "-") for a numeric field, "-" or short strings for a
    string field."""
    if field in INT_FIELDS:
        return (_INT | str | None) if loose else (_INT | None)
    if field in FLOAT_FIELDS:
        return (_FLOAT | str | None) if loose else (_FLOAT | None)
    if field in BOOL_FIELDS:
        return bool | None
    return (str | None) if loose else (_STR2 | None)


class FastJsonParser(JsonLineParser):
    """JsonLineParser with the msgspec path in front (mappings without `expand`). `parse` is
    the current layout's decoder, rebound as layouts are learned: look it up per line."""

    def __init__(self, mapping: FieldMapping | None = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, native: bool = True) -> None:
        super().__init__(mapping, max_line_bytes)
        # finishes a batch's records in C when built (contracts/csrc/records.c)
        self._native = native_finish if native else None
        self._rank = {k: (f, r) for f, keys in self.mapping.keys.items()
                      for r, k in enumerate(keys)}
        # None: a layout msgspec cannot decode (a key with a quote or a control character)
        self._layouts: dict[Layout, _Fast | None] = {}
        self._layout: Layout | None = None
        self._fast: _Fast | None = None  # the current layout's
        self._slow = super().parse
        # numbers written as strings, as `_to_int` / `_to_float` read them, remembered
        self._ints: dict[str, int | None] = {"-": None}
        self._floats: dict[str, float | None] = {"-": None}
        self.parse: Callable[[bytes], LLMRecord] = self._first  # type: ignore[method-assign]

    def _first(self, line: bytes) -> LLMRecord:
        return self._learn(line, self._eligible(line))

    def _eligible(self, line: bytes) -> bool:
        return len(line) <= self.max_line_bytes

    def _int(self, text: str) -> int:
        """A count written as a string, as `_to_int` reads it (ValueError: the reference
        path decides); up to MAX_KNOWN remembered."""
        n = int(text)
        if not 0 <= n <= MAX_INT:
            raise ValueError(text)
        if len(self._ints) < MAX_KNOWN:
            self._ints[text] = n
        return n

    def _float(self, text: str) -> float:
        """A duration written as a string, as `_to_float` reads it."""
        x = float(text)
        if not 0.0 <= x < _INF:
            raise ValueError(text)
        if len(self._floats) < MAX_KNOWN:
            self._floats[text] = x
        return x

    # ---- learning a layout ---------------------------------------------------------------
    def _learn(self, line: bytes, eligible: bool) -> LLMRecord:
        """The reference path; its line's layout becomes the fast path's (bounded)."""
        rec = self._slow(line)
        if eligible:
            layout = self._layout_of(orjson.loads(line))
            if layout is not None:
                if layout not in self._layouts and len(self._layouts) < MAX_LAYOUTS:
                    self._layouts[layout] = self._compile(layout)
                fast = self._layouts.get(layout)
                if fast is not None:
                    self._layout, self._fast = layout, fast
                    self.parse = fast.parse  # type: ignore[method-assign]
        return rec

    # ---- a batch -------------------------------------------------------------------------
    def parse_many(self, lines: list[bytes], failed: Callable[[str], None]
                   ) -> tuple[list[LLMRecord], list[bytes]]:
        """What `parse` makes of each line, in order, with the records and the lines they
        came from (a line that raises ParseError is given to `failed`). The current layout
        decodes every line up to the first it does not take in one C loop, then finishes
        those records in one Python loop; that line takes the reference path (which may
        teach a new layout), and the rest goes on from it."""
        if max(map(len, lines), default=0) > self.max_line_bytes:
            return parse_each(self.parse, lines, failed)  # a line over the limit: per line
        recs: list[LLMRecord | None] = []
        errors = False
        i, n = 0, len(lines)
        while i < n:
            fast = self._fast
            if fast is not None:
                try:
                    recs.extend(map(fast.decode, islice(lines, i, None) if i else lines))
                    stop = n
                except Exception:  # recs holds the records decoded before the line
                    stop = len(recs)
                if fast.fix is not None and stop > i:
                    for k in fast.fix(recs, i):
                        recs[k] = rec = self._one(lines[k], failed)
                        errors = errors or rec is None
                if stop == n:
                    break
                i = stop
            recs.append(rec := self._one(lines[i], failed))
            errors = errors or rec is None
            i += 1
        if not errors:
            return recs, lines  # type: ignore[return-value]
        kept = [r is not None for r in recs]
        return list(compress(recs, kept)), list(compress(lines, kept))  # type: ignore[arg-type]

    def _one(self, line: bytes, failed: Callable[[str], None]) -> LLMRecord | None:
        """One line the current layout did not take, through the reference path."""
        try:
            return self._learn(line, True)
        except ParseError as e:
            failed(e.reason)
            return None

    def _layout_of(self, obj: dict[str, Any]) -> Layout | None:
        """The line's layout merged with the current one (fields this line lacks keep the
        current layout's key), or None when a value is of a kind the fast path never takes."""
        best: dict[str, tuple[int, str, Any]] = {}
        dashes: dict[str, str] = {}  # field -> a key of it holding "-"
        empty: set[str] = set()  # mapped keys holding null or "-"
        others: set[str] = set()
        for k, v in obj.items():
            hit = self._rank.get(k)
            if hit is None:
                others.add(k)
            elif v is None or v == "-":
                empty.add(k)
                if v is not None:
                    dashes.setdefault(hit[0], k)
            elif hit[0] not in best or hit[1] < best[hit[0]][0]:
                best[hit[0]] = (hit[1], k, v)
        chosen: dict[str, tuple[str, bool]] = {}
        if self._layout is not None:
            chosen = {f: (k, loose) for f, k, loose in self._layout[0]}
            empty |= self._layout[1]
            others |= self._layout[2]
        for f, k in dashes.items():
            if f not in best and f not in BOOL_FIELDS:
                chosen[f] = (k, True)
        for f, (_, k, v) in best.items():
            numeric = f in INT_FIELDS or f in FLOAT_FIELDS
            if f in BOOL_FIELDS:
                if type(v) is not bool:
                    return None  # "true" as a string: the reference path
                loose = False
            elif numeric:
                loose = type(v) is str
            elif type(v) is str:
                loose = len(v) < 2
            else:
                return None  # a number for a string field: converted by the reference path
            old = chosen.get(f)
            chosen[f] = (k, loose or (old is not None and old[0] == k and old[1]))
        if len(others) > MAX_OTHER_KEYS:
            return None
        fields = tuple((f, *chosen[f]) for f in FIELD_NAMES if f in chosen)
        return fields, frozenset(empty - {k for _, k, _ in fields}), frozenset(others)

    def _compile(self, layout: Layout) -> Callable[[bytes], LLMRecord] | None:
        """A Struct for the layout (a subclass of LLMRecord: decoding makes the record) and
        the function that screens a line, decodes it, turns "-" into None and string numbers
        into numbers as `_to_int`/`_to_float` would, and hands anything else to `_learn`."""
        chosen, empty, others = layout
        by_field = {f: (k, loose) for f, k, loose in chosen}
        fields: list[tuple[str, Any, Any]] = []
        for f in FIELD_NAMES:
            if f in by_field:
                fields.append((f, _field_type(f, by_field[f][1]),
                               msgspec.field(default=None, name=by_field[f][0])))
            else:  # read from no key: a name no gateway writes, and typed None (null only)
                fields.append((f, None, msgspec.field(default=None, name="\u00a7" + f)))
        fields += [(f"_a{i}", Literal["-"] | None, msgspec.field(default=None, name=k))
                   for i, k in enumerate(sorted(empty))]
        fields += [(f"_o{i}", _OTHER, msgspec.field(default=None, name=k))
                   for i, k in enumerate(sorted(others))]
        try:
            struct = msgspec.defstruct(f"Fast{len(self._layouts)}", fields,
                                       bases=(LLMRecord,), forbid_unknown_fields=True, gc=False)
            decode = msgspec.json.Decoder(struct).decode
        except (ValueError, TypeError):  # a key msgspec cannot name: the reference path
            return None
        fixes = ""  # the statements that finish a decoded record `r`
        for f, _, loose in chosen:
            if not loose:
                continue
            if f in INT_FIELDS or f in FLOAT_FIELDS:
                get, conv = ("iget", "int") if f in INT_FIELDS else ("fget", "float")
                fixes += (f"v = r.{f}\nif v.__class__ is str:\n    n = {get}(v, MISS)\n"
                          f"    r.{f} = n if n is not MISS else {conv}(v)\n")
            else:
                fixes += f"if r.{f} == '-':\n    r.{f} = None\n"
        head = ("iget=iget, fget=fget, int=int, float=float, MISS=MISS, learn=learn, "
                "len=len, islice=islice, MAX_LEN=MAX_LEN):\n")
        code = ["def parse(line, decode=decode, " + head,
                "    if len(line) > MAX_LEN:\n        return learn(line, False)\n",
                "    try:\n        r = decode(line)\n", indent(fixes, " " * 8),
                "    except Exception:\n        return learn(line, True)\n    return r\n"]
        if fixes:
            code += _batch_code(fixes, head, self._native is not None)
        env: dict[str, Any] = {"decode": decode, "iget": self._ints.get,
                               "fget": self._floats.get, "int": self._int,
                               "float": self._float, "MISS": _MISS, "learn": self._learn,
                               "islice": islice, "MAX_LEN": self.max_line_bytes,
                               "finish": self._native, "names": tuple(
                                   tuple(f for f, _, loose in chosen if loose and f in kind)
                                   for kind in (INT_FIELDS, FLOAT_FIELDS, _STR_FIELDS))}
        exec(compile("".join(code), f"<fastjson layout {len(self._layouts)}>", "exec"), env)
        return _Fast(env["parse"], decode, env.get("fix"))
