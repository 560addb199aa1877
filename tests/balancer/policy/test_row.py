"""The native core's pod row (`row.py`: COLUMNS and pod_row; csrc/native.h) and how a pod
table is made: the columns, scorers, reasons and parameters by name, each checked."""

from __future__ import annotations

import math

import random

import pytest

from llmtraffic.balancer.policy import native
from llmtraffic.balancer.policy.llm import LLMPolicy
from llmtraffic.balancer.policy.row import COLUMNS, pod_row
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics
from tests.balancer.policy.candidates import NOW, address

CORE = native.core


def pods():
    store = MetricsStore(stale_after=2.0)
    store.set_pods([Pod("p0", address(0), {}, "pool"), Pod("p1", address(1), {}, "pool")])
    store.update(address(0), PodMetrics(waiting=2, kv_usage=0.5, running_adapters=("a",),
                                        waiting_adapters=("b",), max_lora=4), NOW)
    store.acquire(address(0))
    store.mark_error(address(1), "refused", NOW)
    return store.snapshot(NOW).pods


def test_pod_row_is_the_columns_values():
    fresh, broken = pods()
    assert pod_row(fresh) == (address(0), ("a",), ("b",), (3.0, 0.5, 1.0, 1.0, 1.0, 2))
    assert pod_row(broken) == (address(1), (), (), (0.0, 0.0, 0.0, 1.0, 0.0, math.inf))
    assert dict(zip(COLUMNS, pod_row(fresh)[3])) == {
        "queue": 3.0, "kv_usage": 0.5, "fresh": 1.0, "ready": 1.0, "usable": 1.0,
        "lora_free": 2}


def test_the_native_core_reads_the_same_columns():
    assert CORE is not None, f"native core not built: {native.missing}"
    assert CORE.COLUMNS == COLUMNS


def table_args(**change):
    args = dict(row=pod_row, columns=COLUMNS, scorers={"queue": 1.0, "prefix": 2.0},
                reasons=("prefix",), params={"queue_threshold": 5, "kv_threshold": 0.8,
                                             "prefix_queue_tokens": 64,
                                             "tokens_per_block": 32, "queue_span": 16})
    return {**args, **change}


@pytest.mark.parametrize("change,error,match", [
    ({"columns": COLUMNS[:-1]}, ValueError, "has 5 columns but this native core reads 6"),
    ({"columns": ("waiting", *COLUMNS[1:])}, ValueError, "column 0 is 'waiting'"),
    ({"scorers": {"fastest": 1.0}}, ValueError, "'fastest' has no native twin"),
    ({"scorers": (1.0,) * 8}, TypeError, "dict"),  # no positional weights
    ({"params": {"queue_threshold": 5, "kv_threshold": 0.8}}, ValueError,
     "lacks queue_span, which queue reads"),
    ({"params": {**table_args()["params"], "lora_bonus": 1}}, ValueError,
     "unknown parameter 'lora_bonus'"),
    ({"reasons": ("queue",)}, ValueError, "reason 'queue' is not"),
    ({"reasons": ("prefix", "prefix")}, ValueError, "named twice"),
    ({"row": None}, TypeError, "callable"),
])
def test_a_table_refuses_a_bad_configuration_saying_what(change, error, match):
    with pytest.raises(error, match=match):
        CORE.PodTable(**table_args(**change))


def test_a_row_of_another_width_is_refused_and_the_table_stays_usable():
    snap = pods()
    short = CORE.PodTable(**table_args(row=lambda s: (*pod_row(s)[:3], pod_row(s)[3][:-1])))
    pick = (snap, None, {}, 10, False, {}, random.Random(1).randrange, 2)
    with pytest.raises(ValueError, match="tuple of 6 values"):
        short.pick(*pick)
    good = CORE.PodTable(**table_args())
    assert good.pick(*pick)[0] is snap[0]
    policy = LLMPolicy(native=True)
    assert policy.native_table().pick(*pick)[0] is snap[0]
