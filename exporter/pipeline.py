"""The one path every access-log record takes, whatever brought it (a followed file, a
container log, Envoy's ALS, OTLP): the mapping → token counters → a record naming a model but
no tokens counted by reason and said once → the enriched log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from llmtraffic.contracts.record import LLMRecord
from llmtraffic.contracts.tokens import TokenCounters
from llmtraffic.exporter.accesslog import LineParser, ParseError
from llmtraffic.exporter.collector import ExporterStats
from llmtraffic.exporter.enrich import Enricher

log = logging.getLogger(__name__)
#: Lines parsed, counted and written together: enough to leave the per-line loops to the
#: parser and the counters, few enough that their records stay in the CPU's cache (a whole
#: read's records, a thousand and more, made the exporter slower than one line at a time).
BATCH = 64

#: Why a record that names a model carries no token count.
WITHOUT_TOKENS = {
    "error_response": "its response was not 2xx, so nothing was generated",
    "empty": "its token fields are there but empty ('-' or null): the gateway knew no usage "
             "(e.g. a stream without include_usage)",
    "not_logged": "it has none of the token fields the mapping reads: add them to the "
                  "gateway's access-log format, or pick the gateway's --format / a --mapping "
                  "that names them",
}


@dataclass(frozen=True, slots=True)
class Origin:
    """The Kubernetes pod whose log a record came from (container log file, OTLP resource)."""

    pod: str | None = None
    namespace: str | None = None
    container: str | None = None


class Pipeline:
    """Records in, counted and written; `lines()` is the hot path of followed files."""

    def __init__(self, parser: LineParser, counters: TokenCounters, stats: ExporterStats,
                 enricher: Enricher | None = None) -> None:
        self.parser = parser
        self.counters = counters
        self.stats = stats
        self.enricher = enricher
        self.token_keys = frozenset(parser.mapping.token_keys())
        self._said: set[str] = set()

    def lines(self, lines: list[bytes], origin: Origin | None = None) -> None:
        """Parse, count and write the lines, a batch at a time (the per-line work is in the
        parser's and the counters' loops); a bad line is counted under its reason."""
        parse_many, failed = self.parser.parse_many, self.stats.parse_error
        for at in range(0, len(lines), BATCH):
            recs, kept = parse_many(lines[at:at + BATCH], failed)
            self._records(recs, kept, origin)

    def _records(self, recs: list[LLMRecord], sources: list[bytes] | list[dict[str, Any]],
                 origin: Origin | None) -> None:
        """Counted, the ones without tokens said, then written; `sources[i]` is the line or
        the fields `recs[i]` came from."""
        if origin is not None:
            pod, namespace, container = origin.pod, origin.namespace, origin.container
            for rec in recs:
                rec.source_pod, rec.source_namespace, rec.source_container = \
                    pod, namespace, container
        for i in self.counters.observe_many(recs):
            self._without_tokens(recs[i], sources[i])
        if self.enricher is not None:
            write = self.enricher.write
            for rec in recs:
                write(rec)

    def fields(self, obj: dict[str, Any], origin: Origin | None = None) -> None:
        """One record given as keys and values (a receiver's entry), through the mapping."""
        try:
            rec = self.parser.plan.record(obj)
        except ParseError as e:
            self.stats.parse_error(e.reason)
            return
        self._records([rec], [obj], origin)

    def _without_tokens(self, rec: LLMRecord, source: bytes | dict[str, Any]) -> None:
        code = rec.response_code
        if code is not None and not 200 <= code < 300:
            reason = "error_response"
        else:
            obj = source if isinstance(source, dict) else self.parser.fields(source)
            reason = "empty" if self.token_keys & obj.keys() else "not_logged"
        self.stats.without_tokens[reason] = self.stats.without_tokens.get(reason, 0) + 1
        if reason not in self._said:
            self._said.add(reason)
            extra = ""
            if reason == "not_logged":
                keys = sorted(source if isinstance(source, dict) else
                              self.parser.fields(source))
                extra = (f"; the mapping reads {', '.join(sorted(self.token_keys))}; this "
                         f"record has {', '.join(keys[:30])}")
            log.warning("a record for model %r carries no token count: %s (counted in "
                        "llmtraffic_exporter_records_without_tokens_total{reason=%r}; said "
                        "once)%s", rec.model, WITHOUT_TOKENS[reason], reason, extra)
