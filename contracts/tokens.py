"""The token series by model (asm_llm_proxy_*): counters and TTFT/duration histograms fed
from `LLMRecord`s, label values capped, checkpointable; and their families. The rules that
keep clients and pods from poisoning them live here once, for the balancer and the exporter
alike: a 404's model takes no label slot (`UNKNOWN_MODEL`), and a request's usage beyond
`MAX_REQUEST_TOKENS` is not counted (`llmtraffic_exporter_usage_rejected_total`)."""

from __future__ import annotations

from bisect import bisect_left
from operator import attrgetter
from typing import Iterator, Sequence

from prometheus_client.core import Metric

from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import (MAX_LABEL_VALUES, Hist, LabelCap, clean_label,
                                           counter_family, hist_in, histogram_family)
from llmtraffic.contracts.record import FIELD_NAMES, LLMRecord

try:
    from llmtraffic.contracts._records import tally as native_tally
except ImportError:  # not built (no C compiler at install time): Python counts every record
    native_tally = None

_CACHEABLE = (str, int, type(None))  # label values whose equality means the same label
#: The model label of every 404 (a model the routing does not know, or a pod does not
#: serve): junk names from clients never take one of the capped label slots.
UNKNOWN_MODEL = "unknown"
#: Tokens one request may report per usage field; more is a broken or lying pod.
MAX_REQUEST_TOKENS = 100_000_000
#: What the counters keep per dimension values (see TokenCounters._keys).
_Entry = tuple[tuple[str, ...], dict, list, list]


def counted_model(rec: LLMRecord) -> str | None:
    """The model label `rec` counts under."""
    return UNKNOWN_MODEL if rec.response_code == 404 and rec.model else rec.model


def counted_usage(rec: LLMRecord) -> tuple[int | None, int | None] | None:
    """(prompt, completion) tokens to count for `rec`; None when either is beyond
    MAX_REQUEST_TOKENS (neither is counted then)."""
    p, c = rec.prompt_tokens, rec.completion_tokens
    if (p is not None and not 0 <= p <= MAX_REQUEST_TOKENS) or \
            (c is not None and not 0 <= c <= MAX_REQUEST_TOKENS):
        return None
    return p, c


class TokenCounters:
    """asm_llm_proxy_* series. `dimensions` are LLMRecord fields used as labels (default
    `model`); each label keeps at most `max_values_per_label` values, the rest are `other`."""

    def __init__(self, dimensions: tuple[str, ...] = ("model",),
                 max_values_per_label: int = MAX_LABEL_VALUES, native: bool = True) -> None:
        for d in dimensions:
            if d not in FIELD_NAMES:
                raise ValueError(f"unknown dimension {d!r}; use LLMRecord fields such as "
                                 "model, target_model, pool, lb_policy, response_code")
        if "model" not in dimensions:
            dimensions = ("model", *dimensions)
        self.dimensions = tuple(dimensions)
        self.max_values = max_values_per_label
        self.prompt: dict[tuple[str, ...], float] = {}
        self.completion: dict[tuple[str, ...], float] = {}
        self.requests: dict[tuple[str, str], float] = {}
        self.ttft: dict[str, Hist] = {}
        self.duration: dict[str, Hist] = {}
        self._cap = LabelCap(self.dimensions, max_values_per_label)
        self.usage_rejected = 0  # records whose usage was beyond MAX_REQUEST_TOKENS
        self._model_at = self.dimensions.index("model")
        # dimension values (the model alone, or a tuple) -> (label key, code -> [requests key,
        # requests in this batch], [its TTFT Hist, its duration Hist] once used, [prompt and
        # completion tokens in this batch or None, label key]); a field's values keep one type
        # (the parser's converters see to it), so equal values mean equal labels
        self._keys: dict[object, _Entry] = {}
        self._model_only = self.dimensions == ("model",)
        self._values = attrgetter(*self.dimensions) if len(self.dimensions) > 1 else None
        # counts the common record in C when built and counting by model only
        self._tally = native_tally if native and self._model_only else None

    @property
    def overflow(self) -> dict[str, int]:
        """Dimension -> values folded into `other`."""
        return self._cap.overflow

    def _entry(self, raw: object, values: tuple) -> _Entry:
        """(label key, response_code -> requests cell, histograms, token sums) for a record's
        dimension values;
        remembered only when no value was folded into `other` (each such record counts
        toward the overflow) and every value is a str, int or None (equal means same
        label)."""
        key = tuple(self._cap(d, v) for d, v in zip(self.dimensions, values))
        entry: _Entry = (key, {}, [None, None], [None, None, key])
        if (len(self._keys) < self.max_values * 4
                and all(type(v) in _CACHEABLE for v in values)
                and all(clean_label(v) in self._cap.seen[d]  # folded values never are
                        for d, v in zip(self.dimensions, values))):
            self._keys[raw] = entry
        return entry

    def observe(self, rec: LLMRecord) -> bool:
        """Count one record; False (and nothing counted) when it carries no model."""
        self.observe_many((rec,))
        return bool(rec.model)

    def observe_many(self, recs: Sequence[LLMRecord]) -> list[int]:
        """Count each record that carries a model (the others are not counted); returns
        the positions in `recs` of the counted records with no token field at all (prompt,
        completion and total None). One loop for a whole batch, this runs for every line:
        tokens and requests add up in their entry's cells and reach the counters once per
        batch (`_flush`)."""
        bare: list[int] = []
        sums: list[list] = []  # token cells used in this batch
        cells: list[list] = []  # requests cells used in this batch
        keys, entry_of, hist = self._keys, self._entry, self._hist
        model_only, values, at = self._model_only, self._values, self._model_at
        tally = self._tally
        rejected = 0
        i = -1
        taken = -1  # C counted the records before it and left the one at it to us
        try:
            for rec in recs:
                i += 1
                if i < taken:
                    continue
                if tally is not None and i > taken:  # C counts from here up to one it leaves
                    taken = tally(recs, i, keys, sums, cells, MAX_REQUEST_TOKENS)
                    if taken > i:
                        continue
                model = rec.model  # counted_model(rec), inlined
                if not model:
                    continue
                code = rec.response_code
                if code == 404:
                    model = UNKNOWN_MODEL
                if model_only:
                    entry = keys.get(model)
                    if entry is None:
                        entry = entry_of(model, (model,))
                else:
                    raw = values(rec)
                    if model is not rec.model:
                        raw = raw[:at] + (model,) + raw[at + 1:]
                    entry = keys.get(raw)
                    if entry is None:
                        entry = entry_of(raw, raw)
                key, codes, hists, acc = entry
                p, c = rec.prompt_tokens, rec.completion_tokens  # counted_usage, inlined
                if p is None and c is None:
                    if rec.total_tokens is None:
                        bare.append(i)
                elif (p is not None and not 0 <= p <= MAX_REQUEST_TOKENS) or \
                        (c is not None and not 0 <= c <= MAX_REQUEST_TOKENS):
                    rejected += 1
                else:
                    if acc[0] is None and acc[1] is None:
                        sums.append(acc)
                    if p is not None:
                        acc[0] = p if acc[0] is None else acc[0] + p
                    if c is not None:
                        acc[1] = c if acc[1] is None else acc[1] + c
                cell = codes.get(code)
                if cell is None:
                    cell = codes[code] = [(key[0], "" if code is None else str(code)), 0]
                if not cell[1]:
                    cells.append(cell)
                cell[1] += 1
                x = rec.ttft_ms
                if x is not None:
                    h = hists[0] or hist(hists, 0, key[0])
                    x /= 1000
                    h.counts[bisect_left(h.buckets, x)] += 1  # Hist.observe, inlined
                    h.sum += x
                x = rec.duration_ms
                if x is not None:
                    h = hists[1] or hist(hists, 1, key[0])
                    x /= 1000
                    h.counts[bisect_left(h.buckets, x)] += 1
                    h.sum += x
        finally:
            self._flush(sums, cells)
            self.usage_rejected += rejected
        return bare

    def _flush(self, sums: list[list], cells: list[list]) -> None:
        """A batch's token sums and requests into the counters; the cells start over."""
        prompt, completion, requests = self.prompt, self.completion, self.requests
        for acc in sums:
            p, c, key = acc
            if p is not None:
                prompt[key] = prompt.get(key, 0.0) + p
            if c is not None:
                completion[key] = completion.get(key, 0.0) + c
            acc[0] = acc[1] = None
        for cell in cells:
            rk, n = cell
            requests[rk] = requests.get(rk, 0.0) + n
            cell[1] = 0

    def _hist(self, hists: list, i: int, model: str) -> Hist:
        """The TTFT (i=0) or duration (i=1) histogram of `model`, kept in its entry."""
        table, series = (self.ttft, m.TTFT) if i == 0 else (self.duration, m.DURATION)
        h = hists[i] = hist_in(table, model, series.buckets)
        return h

    # ---- checkpoint --------------------------------------------------------------------
    def state(self) -> dict:
        return {"dimensions": list(self.dimensions),
                "prompt": [[list(k), v] for k, v in self.prompt.items()],
                "completion": [[list(k), v] for k, v in self.completion.items()],
                "requests": [[list(k), v] for k, v in self.requests.items()],
                "ttft": {k: [h.counts, h.sum] for k, h in self.ttft.items()},
                "duration": {k: [h.counts, h.sum] for k, h in self.duration.items()},
                "overflow": dict(self.overflow), "usage_rejected": self.usage_rejected}

    def restore(self, state: dict) -> None:
        if list(state.get("dimensions", [])) != list(self.dimensions):
            raise ValueError(f"checkpoint was written with dimensions {state.get('dimensions')}"
                             f", now {list(self.dimensions)}; delete the positions file or "
                             "keep the same --dimensions")
        self.prompt = {tuple(k): v for k, v in state["prompt"]}
        self.completion = {tuple(k): v for k, v in state["completion"]}
        self.requests = {tuple(k): v for k, v in state["requests"]}  # type: ignore[misc]
        self.ttft = {k: Hist(m.TTFT.buckets, list(c), s) for k, (c, s) in state["ttft"].items()}
        self.duration = {k: Hist(m.DURATION.buckets, list(c), s)
                         for k, (c, s) in state["duration"].items()}
        self._cap.overflow = dict(state.get("overflow", {}))
        self.usage_rejected = state.get("usage_rejected", 0)
        self._keys.clear()
        for key in [*self.prompt, *self.completion]:
            for d, v in zip(self.dimensions, key):
                self._cap.seen[d].add(v)


def token_families(c: TokenCounters) -> Iterator[Metric]:
    """The asm_llm_proxy_* families of `c`."""
    yield counter_family(m.PROMPT_TOKENS, iter(list(c.prompt.items())), c.dimensions)
    yield counter_family(m.COMPLETION_TOKENS, iter(list(c.completion.items())), c.dimensions)
    yield counter_family(m.REQUESTS, iter(list(c.requests.items())))
    for series, table in ((m.TTFT, c.ttft), (m.DURATION, c.duration)):
        snap = dict(table)
        yield histogram_family(series, {k: h.counts for k, h in snap.items()},
                               {k: h.sum for k, h in snap.items()}, series.labels)
    yield overflow_family(c)
    yield rejected_family(c)


def overflow_family(c: TokenCounters) -> Metric:
    """llmtraffic_exporter_label_overflow_total: values folded into `other`, by label."""
    return counter_family(m.LABEL_OVERFLOW, ((((k,), v)) for k, v in list(c.overflow.items())))


def rejected_family(c: TokenCounters) -> Metric:
    """llmtraffic_exporter_usage_rejected_total: records whose usage was not counted."""
    return counter_family(m.USAGE_REJECTED, iter([((), float(c.usage_rejected))]))
