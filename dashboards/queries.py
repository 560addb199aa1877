"""Every PromQL expression the dashboards and the Prometheus rules use, built from the names
declared in contracts/series.py (ours) and contracts/vllm.py (vLLM's, V1 and legacy), plus
`substitute()` which makes a dashboard query runnable against a real Prometheus (the list of
every query is `dashboards.targets`)."""

from __future__ import annotations

import re
from typing import Literal

from llmtraffic.dashboards import promql
from llmtraffic.contracts import series as m
from llmtraffic.contracts import vllm as v

Kind = Literal["counter", "gauge", "histogram"]

#: How vLLM exposes each of its families (counters get `_total` on the wire, histograms
#: `_bucket`/`_sum`/`_count`), from the table in contracts/vllm.py.
VLLM_KINDS: dict[str, Kind] = {f.name: f.exposed_type for f in v.FAMILIES.values()}
#: vLLM names that only pre-V1 engines expose.
VLLM_LEGACY = frozenset(f.name for f in v.FAMILIES.values() if f.generation == "legacy")


def vllm_exposed(name: str) -> tuple[str, ...]:
    """Sample names vLLM puts on the wire for a declared name."""
    try:
        return v.FAMILIES[name].exposed()
    except KeyError:
        raise KeyError(f"{name!r} is not a vLLM family; add its row to the table in "
                       "contracts/vllm.py") from None


def vllm_exposed_names(*, legacy: bool = True) -> set[str]:
    return {n for name in VLLM_KINDS if legacy or name not in VLLM_LEGACY
            for n in vllm_exposed(name)}


def _sample(metric: m.Series | str, part: str) -> str:
    """The exposed sample name of `metric` (ours or vLLM's) for `part` in
    {"", "_total", "_bucket", "_sum", "_count"}; KeyError on a kind mismatch."""
    names = m.exposed_names(metric) if isinstance(metric, m.Series) else vllm_exposed(metric)
    base = metric.name if isinstance(metric, m.Series) else metric
    wanted = base + part
    if wanted not in names:
        raise KeyError(f"{base} does not expose {wanted!r} (it exposes {', '.join(names)})")
    return wanted


def gauge(metric: m.Series | str) -> str:
    return _sample(metric, "")


def counter(metric: m.Series | str) -> str:
    return _sample(metric, "_total")


def bucket(metric: m.Series | str) -> str:
    return _sample(metric, "_bucket")


def hsum(metric: m.Series | str) -> str:
    return _sample(metric, "_sum")


def hcount(metric: m.Series | str) -> str:
    return _sample(metric, "_count")


def sel(name: str, matchers: str = "") -> str:
    """`name{matchers}`; `matchers` is the inside of the braces, possibly empty."""
    return f"{name}{{{matchers}}}" if matchers else name


def join(*matchers: str) -> str:
    return ", ".join(x for x in matchers if x)


def by(labels: str) -> str:
    return f" by ({labels})" if labels else ""


# ---- building blocks shared by dashboards and rules -------------------------------------
# `f` is the label-matcher text, `w` the range (e.g. "5m" or "$__rate_interval"), `grp`
# the comma-separated labels to keep.

def rate_sum(sample: str, f: str, w: str, grp: str) -> str:
    return f"sum{by(grp)} (rate({sel(sample, f)}[{w}]))"


def either_rate_sum(v1: str, legacy: str, f: str, w: str, grp: str) -> str:
    """Rate of a series that V1 and legacy vLLM name differently (`a or b`)."""
    return (f"sum{by(grp)} (rate({sel(v1, f)}[{w}]) or rate({sel(legacy, f)}[{w}]))")


def quantile(q: float, bucket_sample: str, f: str, w: str, grp: str) -> str:
    keep = join("le", grp)
    return f"histogram_quantile({q}, sum by ({keep}) (rate({sel(bucket_sample, f)}[{w}])))"


def either_quantile(q: float, v1_bucket: str, legacy_bucket: str, f: str, w: str,
                    grp: str) -> str:
    keep = join("le", grp)
    return (f"histogram_quantile({q}, sum by ({keep}) (rate({sel(v1_bucket, f)}[{w}]) or "
            f"rate({sel(legacy_bucket, f)}[{w}])))")


def kv_usage(f: str) -> str:
    """KV-cache usage (0-1) per series, V1 `kv_cache_usage_perc` else legacy
    `gpu_cache_usage_perc`."""
    return f"({sel(gauge(v.KV_CACHE_USAGE), f)} or {sel(gauge(v.LEGACY_GPU_CACHE_USAGE), f)})"


def kv_usage_agg(op: str, f: str, grp: str) -> str:
    return f"{op}{by(grp)} {kv_usage(f)}"


def queue_time_mean(f: str, w: str, grp: str) -> str:
    """Mean time requests spent queued (V1 request_queue_time, legacy time_in_queue)."""
    num = either_rate_sum(hsum(v.QUEUE_TIME), hsum(v.LEGACY_TIME_IN_QUEUE), f, w, grp)
    den = either_rate_sum(hcount(v.QUEUE_TIME), hcount(v.LEGACY_TIME_IN_QUEUE), f, w, grp)
    return f"{num} / {den}"


def prefix_hit_ratio(f: str, w: str, grp: str) -> str:
    hits = either_rate_sum(counter(v.PREFIX_CACHE_HITS), counter(v.LEGACY_PREFIX_CACHE_HITS),
                           f, w, grp)
    queries = either_rate_sum(counter(v.PREFIX_CACHE_QUERIES),
                              counter(v.LEGACY_PREFIX_CACHE_QUERIES), f, w, grp)
    return f"{hits} / {queries}"


def ttft(q: float, f: str, w: str, grp: str) -> str:
    return quantile(q, bucket(v.TTFT), f, w, grp)


def inter_token_latency(q: float, f: str, w: str, grp: str) -> str:
    return either_quantile(q, bucket(v.INTER_TOKEN_LATENCY),
                           bucket(v.LEGACY_TIME_PER_OUTPUT_TOKEN), f, w, grp)


def histogram_mean(metric: m.Series | str, f: str, w: str, grp: str) -> str:
    return f"{rate_sum(hsum(metric), f, w, grp)} / {rate_sum(hcount(metric), f, w, grp)}"


def ratio_or_zero(numerator: str, denominator: str) -> str:
    """`numerator / denominator` that reads 0 (not "no data") while the numerator's counter
    has not been created yet, e.g. an error counter before the first error."""
    return f"({numerator} or 0 * {denominator}) / {denominator}"


# ---- Grafana variables as they appear in dashboard queries ------------------------------
RATE = "$__rate_interval"
RANGE = "$__range"
NS_POOL = 'namespace=~"$namespace", pool=~"$pool"'   # vLLM series (scrape-job labels)
POOL = 'pool=~"$pool"'                                # our llmtraffic_pod_*/pool_* series
MODEL = 'model=~"$model"'                             # gateway (asm_llm_proxy_*) series
POOL_A = 'pool=~"$pool_a"'
POOL_B = 'pool=~"$pool_b"'

_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def substitute(expr: str, *, rate_interval: str = "1m", range_: str = "5m") -> str:
    """Replace Grafana variables: `$__rate_interval`/`$__interval` by `rate_interval`,
    `$__range` by `range_`, every other variable by the regex-all value `.*`."""
    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("__rate_interval", "__interval"):
            return rate_interval
        if name == "__range":
            return range_
        return ".*"
    return _VARIABLE.sub(repl, expr)


def is_legacy_only(expr: str) -> bool:
    """True when every series `expr` selects is a legacy (pre-V1) vLLM series, so a V1
    engine leaves it empty by design."""
    legacy = {n for name in VLLM_LEGACY for n in vllm_exposed(name)}
    names = promql.metric_names(expr)
    return bool(names) and names <= legacy
