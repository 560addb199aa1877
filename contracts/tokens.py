"""The token series by model (asm_llm_proxy_*): counters and TTFT/duration histograms fed
from `LLMRecord`s, label values capped, checkpointable; and their families."""

from __future__ import annotations

from operator import attrgetter
from typing import Iterator

from prometheus_client.core import Metric

from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import (MAX_LABEL_VALUES, Hist, LabelCap, clean_label,
                                           counter_family, hist_in, histogram_family)
from llmtraffic.contracts.record import FIELD_NAMES, LLMRecord

_CACHEABLE = (str, int, type(None))  # label values whose equality means the same label


class TokenCounters:
    """asm_llm_proxy_* series. `dimensions` are LLMRecord fields used as labels (default
    `model`); each label keeps at most `max_values_per_label` values, the rest are `other`."""

    def __init__(self, dimensions: tuple[str, ...] = ("model",),
                 max_values_per_label: int = MAX_LABEL_VALUES) -> None:
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
        # dimension values (the model alone, or a tuple) -> (label key, code -> requests key);
        # a field's values keep one type (the parser's converters see to it), so equal
        # values mean equal labels
        self._keys: dict[object, tuple[tuple[str, ...], dict]] = {}
        self._model_only = self.dimensions == ("model",)
        self._values = attrgetter(*self.dimensions) if len(self.dimensions) > 1 else None

    @property
    def overflow(self) -> dict[str, int]:
        """Dimension -> values folded into `other`."""
        return self._cap.overflow

    def _entry(self, raw: object, values: tuple) -> tuple[tuple[str, ...], dict]:
        """(label key, response_code -> requests key) for a record's dimension values;
        remembered only when no value was folded into `other` (each such record counts
        toward the overflow) and every value is a str, int or None (equal means same
        label)."""
        key = tuple(self._cap(d, v) for d, v in zip(self.dimensions, values))
        entry: tuple[tuple[str, ...], dict] = (key, {})
        if (len(self._keys) < self.max_values * 4
                and all(type(v) in _CACHEABLE for v in values)
                and all(clean_label(v) in self._cap.seen[d]  # folded values never are
                        for d, v in zip(self.dimensions, values))):
            self._keys[raw] = entry
        return entry

    def observe(self, rec: LLMRecord) -> bool:
        """Count one record; False (and nothing counted) when it carries no model."""
        model = rec.model
        if not model:
            return False
        if self._model_only:
            entry = self._keys.get(model)
            if entry is None:
                entry = self._entry(model, (model,))
        else:
            raw = self._values(rec)
            entry = self._keys.get(raw)
            if entry is None:
                entry = self._entry(raw, raw)
        key, codes = entry
        p = rec.prompt_tokens
        if p is not None:
            prompt = self.prompt
            prompt[key] = prompt.get(key, 0.0) + p
        c = rec.completion_tokens
        if c is not None:
            completion = self.completion
            completion[key] = completion.get(key, 0.0) + c
        code = rec.response_code
        rk = codes.get(code)
        if rk is None:
            rk = codes[code] = (key[0], "" if code is None else str(code))
        requests = self.requests
        requests[rk] = requests.get(rk, 0.0) + 1
        if rec.ttft_ms is not None:
            hist_in(self.ttft, key[0], m.TTFT.buckets).observe(rec.ttft_ms / 1000)
        if rec.duration_ms is not None:
            hist_in(self.duration, key[0], m.DURATION.buckets).observe(rec.duration_ms / 1000)
        return True

    # ---- checkpoint --------------------------------------------------------------------
    def state(self) -> dict:
        return {"dimensions": list(self.dimensions),
                "prompt": [[list(k), v] for k, v in self.prompt.items()],
                "completion": [[list(k), v] for k, v in self.completion.items()],
                "requests": [[list(k), v] for k, v in self.requests.items()],
                "ttft": {k: [h.counts, h.sum] for k, h in self.ttft.items()},
                "duration": {k: [h.counts, h.sum] for k, h in self.duration.items()},
                "overflow": dict(self.overflow)}

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


def overflow_family(c: TokenCounters) -> Metric:
    """llmtraffic_exporter_label_overflow_total: values folded into `other`, by label."""
    return counter_family(m.LABEL_OVERFLOW, ((((k,), v)) for k, v in list(c.overflow.items())))
