"""A small PromQL reader: which metric names an expression selects. Used to check every
dashboard query and rule against the names the exporter, balancer and vLLM expose."""

from __future__ import annotations

import re

#: Words that look like identifiers but are PromQL syntax.
KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
})
#: Aggregation operators; they may be followed by `by (...)` before their parenthesis.
AGGREGATIONS = frozenset({
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio",
})

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by `expr`: identifiers that are not functions, aggregation
    operators, keywords, label names (inside `{}` or grouping clauses) or durations.

    >>> sorted(metric_names('sum by (pool) (rate(a_total{pool=~"$pool"}[5m])) / b'))
    ['a_total', 'b']
    """
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if word in KEYWORDS or word in AGGREGATIONS:
            continue
        if rest.startswith("("):  # a function call
            continue
        names.add(word)
    return names


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.*),\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$")


def label_values_selector(query: str) -> tuple[str, str]:
    """Split a Grafana `label_values(selector, label)` variable query into its parts;
    ValueError if the query has another shape."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return match.group("selector"), match.group("label")
