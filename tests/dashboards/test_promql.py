"""The small PromQL reader that finds the metric names an expression selects."""

from __future__ import annotations

import pytest

from llmtraffic.dashboards.promql import label_values_selector, metric_names


@pytest.mark.parametrize(("expr", "names"), [
    ("up", {"up"}),
    ('up{job="vllm"} == 0', {"up"}),
    ('sum by (pool) (rate(a_total{pool=~"$pool"}[$__rate_interval])) / b',
     {"a_total", "b"}),
    ("histogram_quantile(0.9, sum by (le, model_name) (rate(vllm:x_bucket[5m])))",
     {"vllm:x_bucket"}),
    ("max by (pool) (vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)",
     {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"}),
    ("topk by (pod) (1, vllm:lora_requests_info{pool=~\".*\"})", {"vllm:lora_requests_info"}),
    ("a / on (pool) group_left (model) b", {"a", "b"}),
    ("sum without (instance, job) (x) offset 5m", {"x"}),
    ("(sum(rate(e_total[1m])) or vector(0)) / sum(rate(l_total[1m]))", {"e_total", "l_total"}),
    ('absent(vllm:num_requests_running{job="vllm"})', {"vllm:num_requests_running"}),
    ('x{reason="and or by"} > bool 1e3', {"x"}),
    ("pool:vllm_num_requests_waiting:sum > 10 and deriv(pool:vllm_num_requests_waiting:sum[10m]) > 0",
     {"pool:vllm_num_requests_waiting:sum"}),
    ("rate(x[5m:30s])", {"x"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_label_values_selector() -> None:
    assert label_values_selector('label_values(x{namespace=~"$ns"}, pool)') == (
        'x{namespace=~"$ns"}', "pool")
    with pytest.raises(ValueError, match="label_values"):
        label_values_selector("query_result(up)")
